"""Every command, given bad input or unreachable surroundings, says what is wrong in one line.

Each case runs ``python -m ops.cli ...`` as a subprocess, with its own data directory, Kafka at a
closed loopback port, ClickHouse embedded (chDB) in that directory, and no worker. The cases run
concurrently, once per module; each test asserts on one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from kafka.errors import KafkaTimeoutError

from config.settings import Settings
from ops.admin import WorkerError
from ops.cli import explain

REPO = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1
NO_SUCH = "no-such-dir/events.jsonl"  # relative to the case's directory


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit_code: int
    message: str  # the expected stderr line, after "loyalty <command>: "; {dir}: the case's directory
    env: tuple[tuple[str, str], ...] = ()
    stdout: str = ""  # expected in stdout too


CASES = {
    "query-bad-sql": Case(("query", "SELEC 1"), 2, "ClickHouse: Syntax error: failed at position"),
    "query-no-schema": Case(("query", "SELECT nope FROM loyalty.alerts"), 2,
                            "ClickHouse: Database loyalty does not exist (UNKNOWN_DATABASE); "
                            "`loyalty init` creates the schema"),
    "query-clickhouse-unreachable": Case(
        ("query", "SELECT 1"), 1, "cannot reach ClickHouse at http://127.0.0.1:1/: Connection refused",
        env=(("LOYALTY_CLICKHOUSE_DSN", "http://reader:pa55word@127.0.0.1:1/"),)),
    "replay-missing-file": Case(("replay", "--events", NO_SUCH, "--as-of", "latest", "--out", "out.jsonl"), 2,
                                f"No such file or directory: {NO_SUCH}"),
    "replay-bad-as-of": Case(("replay", "--events", NO_SUCH, "--as-of", "last week", "--out", "out.jsonl"), 2,
                             "--as-of: 'last week' is not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z) "
                             "nor epoch milliseconds"),
    "backtest-missing-file": Case(("backtest", "--events", NO_SUCH, "--cutoff", "2024-01-01"), 2,
                                  f"No such file or directory: {NO_SUCH}"),
    "backtest-bad-cutoff": Case(("backtest", "--events", NO_SUCH, "--cutoff", "2024-02-30"), 2,
                                "--cutoff: '2024-02-30' is not an ISO-8601 time"),
    "backtest-personas-not-json": Case(
        ("backtest", "--events", "events.jsonl", "--cutoff", "2024-01-01", "--personas", "events.jsonl"), 2,
        "--personas events.jsonl: not JSON (Expecting value: line 1 column 1 (char 0))"),
    "simulate-bad-end": Case(("simulate", "--dry-run", "--end", "tomorrow"), 2,
                             "--end: 'tomorrow' is not an ISO-8601 time"),
    "simulate-broker-unreachable": Case(("simulate", "--customers", "3", "--ledger", "ledger.jsonl"), 1,
                                        f"cannot reach Kafka at {CLOSED} (LOYALTY_KAFKA_BOOTSTRAP)"),
    "status-broker-unreachable": Case(("status",), 1, f"Kafka at {CLOSED}: configured broker does not answer",
                                      stdout="Worker at http://127.0.0.1:1: not running"),
    "dead-letters-broker-unreachable": Case(("dead-letters", "list"), 1,
                                            f"cannot reach Kafka at {CLOSED} (LOYALTY_KAFKA_BOOTSTRAP) within 5s"),
    "init-broker-unreachable": Case(("init",), 1, f"cannot reach Kafka at {CLOSED}"),
    "worker-broker-unreachable": Case(("worker",), 1, f"cannot reach Kafka at {CLOSED}"),
    "demo-broker-unreachable": Case(("demo", "--once"), 1, f"cannot reach Kafka at {CLOSED}"),
    "report-no-schema": Case(("report",), 2, "ClickHouse: Database loyalty does not exist (UNKNOWN_DATABASE)"),
    "report-html-no-directory": Case(("report", "--html", "no-such-dir/report.html"), 2,
                                     "--html no-such-dir/report.html: the directory {dir}/no-such-dir does not exist"),
    "config-not-a-number": Case(("config",), 2, "invalid configuration: LOYALTY_PARTITIONS: Input should be a "
                                "valid integer, unable to parse string as an integer (got 'zero')",
                                env=(("LOYALTY_PARTITIONS", "zero"),)),
    "config-out-of-range": Case(("config",), 2, "invalid configuration: LOYALTY_PARTITIONS: Input should be "
                                "greater than or equal to 1 (got '0')", env=(("LOYALTY_PARTITIONS", "0"),)),
    "config-bad-time": Case(("config",), 2, "invalid configuration: LOYALTY_EARLIEST_EVENT_TIME: 'the nineties' is "
                            "not an ISO-8601 time", env=(("LOYALTY_EARLIEST_EVENT_TIME", "the nineties"),)),
    "config-bad-log-level": Case(("config",), 2, "invalid configuration: LOYALTY_LOG_LEVEL: must be one of DEBUG, "
                                 "INFO, WARNING, ERROR, CRITICAL (got 'LOUD')", env=(("LOYALTY_LOG_LEVEL", "LOUD"),)),
}
# `kafka status` reports on stdout and exits 3 when the broker is not running (its documented code)
KAFKA_STATUS = Case(("kafka", "status"), 3, "", stdout=f"Kafka at {CLOSED}: configured broker does not answer")
# --debug and LOYALTY_LOG_LEVEL=DEBUG add the traceback; the message stays the last line
DEBUG_CASES = {
    "debug-flag": Case(("--debug", "replay", "--events", NO_SUCH, "--as-of", "latest", "--out", "o"), 2,
                       f"No such file or directory: {NO_SUCH}"),
    "debug-flag-after-the-command": Case(("replay", "--debug", "--events", NO_SUCH, "--as-of", "latest", "--out", "o"),
                                         2, f"No such file or directory: {NO_SUCH}"),
    "debug-log-level": Case(("replay", "--events", NO_SUCH, "--as-of", "latest", "--out", "o"), 2,
                            f"No such file or directory: {NO_SUCH}", env=(("LOYALTY_LOG_LEVEL", "DEBUG"),)),
}


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    directory: Path


def _environment(directory: Path, extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update({
        "LOYALTY_DATA_DIR": str(directory / "var"),
        "LOYALTY_KAFKA_BOOTSTRAP": CLOSED,
        "LOYALTY_CLICKHOUSE_DSN": f"chdb://{directory / 'clickhouse'}",
        "LOYALTY_WEB_PORT": "1",
        "LOYALTY_KAFKA_CACHE_DIR": str(directory / "kafka-cache"),
    })
    env.update(dict(extra))
    return env


def _run(case: Case, directory: Path) -> Outcome:
    directory.mkdir(parents=True)
    (directory / "events.jsonl").write_text("")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ops.cli", *case.args], cwd=directory,
                            env={**_environment(directory, case.env), "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60, check=False)
    return Outcome(result.returncode, result.stdout, result.stderr, time.monotonic() - started, directory)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("cli")
    every = {**CASES, **DEBUG_CASES, "kafka-status": KAFKA_STATUS}
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(_run, case, root / name) for name, case in every.items()}
        return {name: future.result() for name, future in futures.items()}


def _command(case: Case) -> str:
    return next(a for a in case.args if not a.startswith("--"))


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line(outcomes: dict[str, Outcome], name: str):
    case, got = CASES[name], outcomes[name]
    assert got.returncode == case.exit_code, got.stderr
    assert "Traceback" not in got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    prefix = f"loyalty {_command(case)}: "
    assert lines[0].startswith(prefix + case.message.format(dir=got.directory.resolve())), lines[0]
    assert case.stdout in got.stdout


def test_kafka_status_says_the_broker_does_not_answer(outcomes: dict[str, Outcome]):
    got = outcomes["kafka-status"]
    assert got.returncode == 3 and KAFKA_STATUS.stdout in got.stdout and "Traceback" not in got.stderr


def test_a_password_in_the_clickhouse_url_is_never_shown(outcomes: dict[str, Outcome]):
    got = outcomes["query-clickhouse-unreachable"]
    assert "pa55word" not in got.stderr + got.stdout


@pytest.mark.parametrize("name", list(DEBUG_CASES))
def test_debug_adds_the_traceback(outcomes: dict[str, Outcome], name: str):
    case, got = DEBUG_CASES[name], outcomes[name]
    assert got.returncode == case.exit_code
    assert "Traceback (most recent call last)" in got.stderr and "FileNotFoundError" in got.stderr
    assert got.stderr.strip().splitlines()[-1] == f"loyalty replay: {case.message}"


def test_the_exit_codes_are_in_the_help():
    result = subprocess.run([sys.executable, "-m", "ops.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                            check=True, env={**_environment(REPO, ()), "PYTHONPATH": str(REPO)})
    assert "exit codes:" in result.stdout and "2    bad input" in result.stdout


# -- the messages of errors a subprocess cannot provoke cheaply ----------------------------------

SETTINGS = Settings(kafka_bootstrap="kafka:9092", clickhouse_dsn="https://reader:s3cret@ch.example:8443/")


@pytest.mark.parametrize(
    "error, exit_code, message",
    [
        (WorkerError(400, "the worker answered 400: DatabaseError: Code: 47. DB::Exception: Unknown expression "
                          "identifier `nope` in scope SELECT nope. (UNKNOWN_IDENTIFIER) (version 25.8.1)"),
         2, "ClickHouse: Unknown expression identifier `nope` in scope SELECT nope (UNKNOWN_IDENTIFIER)"),
        (WorkerError(400, "the worker answered 400: table other.t: only the tables of loyalty may be read"),
         2, "the worker answered 400: table other.t: only the tables of loyalty may be read"),
        (WorkerError(503, "the worker answered 503: crashed"), 1, "the worker answered 503: crashed"),
        (KafkaTimeoutError("Unable to bootstrap from ['kafka:9092']"), 1,
         "Kafka at kafka:9092: KafkaTimeoutError: Unable to bootstrap from ['kafka:9092']"),
        (OperationalError("Error HTTPSConnectionPool(host='ch.example', port=8443): Max retries exceeded "
                          "(Caused by NewConnectionError(\"[Errno -2] Name or service not known\"))"), 1,
         "cannot reach ClickHouse at https://ch.example:8443/: Name or service not known"),
        (DatabaseError("HTTPDriver for https://ch.example:8443 received ClickHouse error code 164\n Code: 164. "
                       "DB::Exception: Code: 164. DB::Exception: Cannot modify 'readonly' setting in readonly mode. "
                       "(READONLY) (version 25.8.1). (READONLY)"), 2,
         "ClickHouse: Cannot modify 'readonly' setting in readonly mode (READONLY)"),
        (ConnectionRefusedError(111, "Connection refused"), 1, "[Errno 111] Connection refused"),
        (PermissionError(13, "Permission denied", "/root/x"), 2, "Permission denied: /root/x"),
        (ValueError("rate must be positive, not -1.0"), 2, "rate must be positive, not -1.0"),
    ],
)
def test_explain(error: BaseException, exit_code: int, message: str):
    assert explain(error, SETTINGS) == (exit_code, message)


def test_other_errors_keep_their_traceback():
    assert explain(KeyError("bug"), SETTINGS) is None
    assert explain(AttributeError("bug"), SETTINGS) is None
