"""The ``loyalty`` command.

Errors a user can act on (bad arguments or settings, a missing file, SQL that ClickHouse refuses,
a broker, ClickHouse or worker that cannot be reached) end the command with one line on stderr,
``loyalty <command>: <what is wrong>``, and the exit code of :data:`EPILOG`; :func:`explain` is
the one place that turns them into that line. Anything else is a bug and keeps its traceback;
``--debug`` (or LOYALTY_LOG_LEVEL=DEBUG) shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import traceback
import urllib.error
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from config.settings import Settings, load_settings, parse_time_ms
from ops import broker

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2  # as argparse's own usage errors
EXIT_UNREACHABLE = 1

EPILOG = """\
exit codes:
  0    done
  2    bad input: an argument, a setting (LOYALTY_*), a file, or SQL that ClickHouse refuses
  1    something the command needs failed or cannot be reached: Kafka, ClickHouse, the worker
  3    `kafka status`: the broker is not running
  130  interrupted
Errors are one line on stderr; --debug (or LOYALTY_LOG_LEVEL=DEBUG) adds the traceback."""


class CliError(Exception):
    """An error the message fully explains; ``exit_code`` as in :data:`EPILOG`."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _setup_logging(settings: Settings, debug: bool = False) -> None:
    logging.basicConfig(level="DEBUG" if debug else settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # kafka-python's note that its network loop was held up (a busy machine, or a long send loop)
    # is about its own internals: nothing a user of the command can act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.DEBUG if debug else logging.ERROR)
    # Their warnings on an unreachable server repeat the error the command reports in one line
    # (clickhouse_connect sets the "urllib3" logger itself when imported, hence the child's name).
    for noisy in ("urllib3.connectionpool", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else max(logging.ERROR, logging.getLogger().level))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> None:
    """Columns padded to their widest cell, a rule under the header; None prints as blank."""
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print(indent + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if n == 0:
            print(indent + "  ".join("-" * w for w in widths))


# -- ClickHouse reads, wherever the engine lives -------------------------------------------


def worker_running(settings: Settings) -> bool:
    from ops.admin import worker_get

    try:
        worker_get(settings, "/health", timeout=2.0)
        return True
    except (urllib.error.URLError, OSError, RuntimeError):
        return False


def clickhouse_query(settings: Settings, sql: str) -> tuple[list[str], list[Sequence[Any]]]:
    """Run a read query: through the worker when it owns the embedded engine, else directly."""
    if settings.embedded_clickhouse and worker_running(settings):
        from ops.admin import worker_query

        columns, rows = worker_query(settings, sql)
        return columns, list(rows)
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        columns, tuples = sink.query(sql)
        return columns, list(tuples)
    finally:
        sink.close()


# -- commands --------------------------------------------------------------------------------


def cmd_kafka(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "start":
        st = broker.start(settings)
        print(f"Kafka {'is running' if st.running else 'is NOT running'} at {st.bootstrap}: {st.detail}")
        return 0 if st.running else 1
    if args.action == "stop":
        stopped = broker.stop(settings)
        print("Kafka stopped" if stopped else "Kafka was not running (or is not managed here)")
        return 0
    st = broker.status(settings)
    print(f"Kafka at {st.bootstrap}: {st.detail}")
    return 0 if st.running else 3


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    from ops.admin import create_topics
    from sinks.clickhouse import ClickHouseSink

    if settings.uses_local_kafka:
        broker.start(settings)
    broker.require(settings)
    created = create_topics(settings)
    print(f"Topics: created {', '.join(created) if created else 'none (all exist)'}")
    if settings.embedded_clickhouse and worker_running(settings):
        print("ClickHouse: the running worker owns the embedded engine and migrates it at start")
        return 0
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        applied = sink.migrate()
    finally:
        sink.close()
    print(f"ClickHouse ({settings.clickhouse_database}): applied {', '.join(applied) if applied else 'nothing (up to date)'}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from ops.admin import create_topics, start_groups_at_the_beginning
    from streams.app import make_pipeline, tune_garbage_collector

    if settings.uses_local_kafka and not broker.status(settings).running:
        broker.start(settings)
    broker.require(settings)
    created = create_topics(settings)
    if created:
        logger.info("created topics: %s", ", ".join(created))
    from streams.sink import sink_group_id

    start_groups_at_the_beginning(settings, (settings.app_id, sink_group_id(settings)))
    if args.role == "sink":
        import asyncio

        from streams.app import serve_sink

        asyncio.run(serve_sink(settings))
        return 0
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pipeline = make_pipeline(settings, role=args.role)
    pipeline.prepare()
    worker = faust.Worker(pipeline.app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=False, redirect_stdouts=False)
    tune_garbage_collector()
    worker.execute_from_commandline()
    return 0


def _parse_time(text: str, option: str) -> int:
    """ISO-8601 (UTC when no offset is given) or epoch milliseconds, as epoch milliseconds."""
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from exc


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from ops.simulate import generate, simulate_main, write_replay_file

    end_ms = int(time.time() * 1000) if args.end is None else _parse_time(args.end, "--end")
    if args.events_out or args.dry_run:
        events = generate(args.customers, args.days, args.seed, end_ms, args.history_days, currency=settings.currency)
        if args.events_out:
            n = write_replay_file(args.events_out, events)
            print(f"Wrote {n:,} events of {args.customers:,} customers to {args.events_out}")
            personas_path = Path(args.events_out).with_suffix(".personas.json")
            import json as _json

            from ops.simulate import personas

            personas_path.write_text(_json.dumps(personas(args.customers, args.seed), indent=0))
            print(f"Wrote the customers' personas (ground truth) to {personas_path}")
        if args.dry_run:
            return 0
    broker.require(settings)
    report = simulate_main(settings, customers=args.customers, days=args.days, seed=args.seed, rate=args.rate,
                           ledger_path=Path(args.ledger), history_days=args.history_days,
                           duplicate_rate=args.duplicate_rate, malformed_rate=args.malformed_rate, end_ms=end_ms)
    print(report)
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from domain.model import DEFAULT_PARAMS
    from domain.model.replay import run_replay

    as_of = None if args.as_of == "latest" else _parse_time(args.as_of, "--as-of")
    params = DEFAULT_PARAMS if args.params == "default" else None
    learned = _churn_model_option(args.churn_model)
    started = time.monotonic()
    summary = run_replay(args.events, as_of, args.out, horizon_days=args.horizon_days or settings.churn_horizon_days,
                         currency=settings.currency, params=params, earliest_ms=settings.earliest_event_ms,
                         learned=learned)
    print(summary.format())
    print(f"replayed in {time.monotonic() - started:.1f}s")
    return 0


def _churn_model_option(value: str) -> Any:
    """--churn-model: 'fit', 'none', or a JSON file of a published model."""
    if value == "fit":
        return "fit"
    if value == "none":
        return None
    from domain.model.churn_learned import LearnedChurnModel

    try:
        return LearnedChurnModel.from_dict(_read_json(value, "--churn-model"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"--churn-model {value}: not a churn model ({exc})") from exc


SIMULATED_END = "2026-11-01T00:00:00Z"
DATASET_CUTOFFS = {
    # (cut-off, horizon) pairs whose horizon ends inside the data and whose training period
    # (one horizon before the cut-off) starts after the first purchases
    "cdnow": [("1997-10-01T00:00:00Z", 90), ("1998-01-01T00:00:00Z", 90), ("1998-04-01T00:00:00Z", 90),
              ("1997-10-01T00:00:00Z", 180), ("1998-01-01T00:00:00Z", 180)],
    "simulated": [("2026-05-01T00:00:00Z", 90), ("2026-08-01T00:00:00Z", 90), ("2026-05-01T00:00:00Z", 180)],
}


def cmd_backtest(settings: Settings, args: argparse.Namespace) -> int:
    from domain.model.backtest import compare_churn, run_backtest

    horizons = args.horizon_days or [settings.churn_horizon_days]
    if args.events is not None:
        if not args.cutoff:
            raise CliError("--cutoff is required with --events")
        cutoffs = [_parse_time(c, "--cutoff") for c in args.cutoff]
        personas = _read_json(args.personas, "--personas") if args.personas else None
        report = run_backtest(args.events, cutoffs[0], horizons[0], currency=settings.currency,
                              earliest_ms=settings.earliest_event_ms)
        print(report.format())
        from domain.model.replay import read_events_file

        events: list[Any] = read_events_file(args.events, settings.currency, settings.earliest_event_ms).events
        pairs = [(c, h) for c in cutoffs for h in horizons]
    else:
        events = _dataset_events(args.dataset or "simulated", settings)
        personas = None
        if args.cutoff:
            pairs = [(_parse_time(c, "--cutoff"), h) for c in args.cutoff for h in horizons]
        else:
            pairs = [(_parse_time(c, "--cutoff"), h) for c, h in DATASET_CUTOFFS[args.dataset or "simulated"]]
    print("\nlearned churn risk against BG/NBD (trained one horizon before each cut-off):")
    verdicts = []
    for cutoff, horizon in pairs:
        comparison = compare_churn(events, cutoff, horizon)
        print()
        print(comparison.format())
        verdicts.append(f"  cut-off {_iso(cutoff)}, horizon {horizon} d: AUC {comparison.learned.auc:.4f} vs "
                        f"{comparison.bgnbd.auc:.4f}, Brier {comparison.learned.brier:.4f} vs "
                        f"{comparison.bgnbd.brier:.4f}: {comparison.verdict()}")
    print("\nsummary (learned vs BG/NBD):")
    print("\n".join(verdicts))
    if args.events is None and (args.dataset or "simulated") != "simulated":
        return 0  # no product categories in the public histories: nothing to suggest from
    from domain.model.backtest_suggest import backtest_suggestions

    print()
    print(backtest_suggestions(events, pairs[0][0]).format())
    if args.events is None:
        return 0
    cutoff, horizon = pairs[0]
    if args.alerts:
        from domain.alerts import AlertRules
        from domain.alerts.backtest import backtest_gone_quiet

        rules = AlertRules(quiet_tolerance_gap_share=settings.alert_quiet_tolerance_gaps)
        print()
        print(backtest_gone_quiet(events, cutoff, horizon, rules=rules).format())
    if personas is not None:
        from domain.model.backtest import persona_confusion

        print()
        print(persona_confusion(personas, report.tiers).format())
    return 0


def _dataset_events(name: str, settings: Settings) -> list[Any]:
    if name == "simulated":
        from ops.simulate import generate

        print("generating the simulated history (1,000 customers, 456 days, seed 42) ...", flush=True)
        return generate(1000, 1, 42, _parse_time(SIMULATED_END, "--end"), 455, currency=settings.currency)
    from ops.datasets import DatasetError, load_events

    try:
        return list(load_events(name))
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _read_json(path: str, option: str) -> Any:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CliError(f"{option} {path}: not JSON ({exc})") from exc


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from ops.deadletters import republish

    def select(letter: dict) -> bool:
        return ((args.error_type is None or letter["error_type"] == args.error_type)
                and (args.stage is None or letter["stage"] == args.stage))

    broker.require(settings)
    report = republish(settings, select, dry_run=args.action == "list")
    print(report.format())
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from ops.admin import consumer_lag, worker_get

    problems = []
    st = broker.status(settings)
    print(f"Kafka at {st.bootstrap}: {st.detail}")
    if not st.running:
        problems.append(f"Kafka at {st.bootstrap}: {st.detail}")
    else:
        from streams.sink import sink_group_id

        for group in (settings.app_id, sink_group_id(settings)):
            print(f"  consumer group {group}:")
            for topic, figures in consumer_lag(settings, group).items():
                print(f"    {topic}: end {figures['end']}, committed {figures['committed']}, lag {figures['lag']}")
    if worker_running(settings):
        info = worker_get(settings, "/status")
        print(f"Worker at {settings.web_url}: up, role {info.get('role')}")
        if "processed" in info:
            print("  processed: " + ", ".join(f"{k} {v}" for k, v in sorted(info["processed"].items())))
        if "sink" in info:
            sink = info["sink"]
            print(f"  ClickHouse sink: {sink['batches']} batches, retries {sink['sink_retries']}, "
                  + ", ".join(f"{k} {v}" for k, v in sorted(sink["copied"].items())))
    else:
        print(f"Worker at {settings.web_url}: not running")
    try:
        columns, rows = clickhouse_query(settings, _COUNTS_SQL.format(db=settings.clickhouse_database))
        print("ClickHouse rows (deduplicated):")
        print_table(columns, rows)
    except Exception as exc:  # noqa: BLE001 - status reports what it cannot reach, then fails below
        explained = explain(exc, settings)
        if explained is None:
            raise
        print(f"ClickHouse: not readable: {explained[1]}")
        problems.append(explained[1])
    if problems:
        raise CliError("; ".join(problems), EXIT_UNREACHABLE)
    return 0


_COUNTS_SQL = """
SELECT 'purchases' AS table, count() AS rows FROM {db}.purchases FINAL
UNION ALL SELECT 'calls', count() FROM {db}.calls FINAL
UNION ALL SELECT 'visits', count() FROM {db}.visits FINAL
UNION ALL SELECT 'relationships', count() FROM {db}.relationships FINAL
UNION ALL SELECT 'dead_letters', count() FROM {db}.dead_letters FINAL
"""


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    columns, rows = clickhouse_query(settings, args.sql)
    print_table(columns, rows)
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from ops.report import build_report, render_html, render_text

    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise CliError(f"--html {args.html}: the directory {Path(args.html).resolve().parent} does not exist")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(lambda sql: clickhouse_query(settings, sql), settings.clickhouse_database,
                          top=args.top, days=args.days, currency=settings.currency, generated_at=stamp)
    print(render_text(report), end="")
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"\nWrote {args.html}")
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print_table(["variable", "value", "meaning"], settings.described())
    return 0


def cmd_compile(settings: Settings, args: argparse.Namespace) -> int:
    from ops import compile as compiled

    if args.clean:
        removed = compiled.clean()
        print(f"removed {len(removed)} compiled files: the sources run" if removed else "nothing compiled to remove")
        return 0
    try:
        compiled.compile_modules()
    except compiled.CompileError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, not {args.workers}")
    size = DEMO_QUICK if args.quick else DEMO_DEFAULT
    customers = size.customers if args.customers is None else args.customers
    history_days = size.history_days if args.history_days is None else args.history_days
    if customers < 1 or args.days <= 0 or history_days < 0:
        raise CliError("--customers and --days must be positive and --history-days not negative")
    return run_demo(settings, customers=customers, days=args.days, seed=args.seed, once=args.once,
                    workers=args.workers, history_days=history_days)


class DemoSize(NamedTuple):
    customers: int
    history_days: float


DEMO_DEFAULT = DemoSize(customers=300, history_days=365.0)
"""The demo's base: a year of history, so the tiers show, for a base that runs in about a minute
on two cores (docs/performance.md: a year of 1,000 customers cost about 310 CPU-seconds)."""
DEMO_QUICK = DemoSize(customers=150, history_days=90.0)
"""``demo --quick``: a smaller base and a quarter of history, for a fast look and for the tests."""
DEMO_WORKERS = 1
"""State workers the demo starts. Two finished 500 customers in 71 s once, but in another run the
state workers' committed offsets stalled for 48 s after their start-up rebalance, which the demo's
wait (lag 0) then waited out; one has no rebalance (97 to 115 s for 500 customers)."""


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command that also takes --debug after its name (SUPPRESS keeps the top-level value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return sub.add_parser(name, help=help, parents=[common], epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty", description="loyalty-stream: customer interactions in, loyalty signals out.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="debug logging, and the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "kafka", help="start, stop or check the local Kafka broker")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_kafka)

    p = _command(sub, "init", help="create topics and the ClickHouse schema (idempotent)")
    p.set_defaults(func=cmd_init)

    p = _command(sub, "worker", help="run the stream worker")
    p.add_argument("--role", choices=("state", "sink", "all"), default="all",
                   help="state: the Faust state worker only (any number join one group); sink: the ClickHouse "
                   "sink only (one per embedded engine); all: both in one process (default)")
    p.set_defaults(func=cmd_worker)

    p = _command(sub, "compile", help="compile the loyalty model's hot modules to C with mypyc (optional, faster)")
    p.add_argument("--clean", action="store_true", help="remove the compiled modules: the sources run again")
    p.set_defaults(func=cmd_compile)

    p = _command(sub, "simulate", help="publish a synthetic customer base's interactions")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--days", type=float, default=1.0, help="days of interactions to publish (ending now)")
    p.add_argument("--history-days", type=float, default=0.0, help="extra days of history before them")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    p.add_argument("--ledger", default="var/ledger.jsonl", help="where to write what was sent")
    p.add_argument("--duplicate-rate", type=float, default=0.0)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--events-out", help="also write the events as JSON lines for replay/backtest")
    p.add_argument("--dry-run", action="store_true", help="generate (and write --events-out) without publishing")
    p.add_argument("--end", help="end of the simulated window (ISO-8601; default now)")
    p.set_defaults(func=cmd_simulate)

    p = _command(sub, "replay", help="run the loyalty model over a history file, without Kafka")
    p.add_argument("--events", required=True, help="JSON lines: {type, event_id, customer_id, occurred_at, ...}")
    p.add_argument("--as-of", required=True, help="ISO-8601 time, or 'latest' (each customer as of their newest event)")
    p.add_argument("--out", required=True, help="where to write one JSON signal per customer")
    p.add_argument("--horizon-days", type=int, default=None, help="churn horizon (default LOYALTY_CHURN_HORIZON_DAYS)")
    p.add_argument("--params", choices=["fit", "default"], default="fit",
                   help="fit BG/NBD on the file (default) or use the published default parameters")
    p.add_argument("--churn-model", default="fit",
                   help="fit (train the learned churn model on the file, default), none (BG/NBD alone), "
                        "or a JSON file of a published model")
    p.set_defaults(func=cmd_replay)

    p = _command(sub, "backtest", help="score as of a cut-off and compare with the following horizon")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--events", help="JSON lines of events (as for replay)")
    source.add_argument("--dataset", choices=["simulated", "cdnow"],
                        help="a built-in history instead of --events: simulated (default) or cdnow (public, "
                             "fetched from PyPI into ~/.cache/loyalty-stream/datasets)")
    p.add_argument("--cutoff", action="append", help="ISO-8601 time; repeat for several (default with --dataset: "
                                                      "the dataset's cut-offs and horizons)")
    p.add_argument("--horizon-days", type=int, action="append", help="repeat for several")
    p.add_argument("--personas", help="JSON {customer_id: persona} for a persona x tier confusion matrix")
    p.add_argument("--alerts", action="store_true", help="also backtest gone_quiet alerts against a naive rule")
    p.set_defaults(func=cmd_backtest)

    p = _command(sub, "dead-letters", help="list dead letters, or re-publish them once the cause is fixed")
    p.add_argument("action", choices=["list", "republish"])
    p.add_argument("--error-type", help="only this error type, e.g. ValidationError")
    p.add_argument("--stage", help="only this stage: decode, validate, deliver")
    p.set_defaults(func=cmd_dead_letters)

    p = _command(sub, "status", help="consumer lag, events processed, rows in ClickHouse")
    p.set_defaults(func=cmd_status)

    p = _command(sub, "query", help="run a read-only SQL query against ClickHouse")
    p.add_argument("sql")
    p.set_defaults(func=cmd_query)

    p = _command(sub, "report", help="key loyalty figures as tables; --html writes a page with charts")
    p.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page with charts")
    p.add_argument("--top", type=int, default=10, help="customers at risk to list")
    p.add_argument("--days", type=int, default=30, help="days of daily figures")
    p.set_defaults(func=cmd_report)

    p = _command(sub, "config", help="print the effective configuration (secrets masked)")
    p.set_defaults(func=cmd_config)

    p = _command(sub, "demo", help="the main job: broker, workers, a year of history, a live day, a summary")
    p.add_argument("--customers", type=int, default=None,
                   help=f"customers of the simulated base (default {DEMO_DEFAULT.customers:,}; "
                        f"{DEMO_QUICK.customers:,} with --quick)")
    p.add_argument("--days", type=float, default=1.0, help="live days to publish after the history (ending now)")
    p.add_argument("--history-days", type=float, default=None,
                   help=f"days of history before them (default {DEMO_DEFAULT.history_days:g}; "
                        f"{DEMO_QUICK.history_days:g} with --quick)")
    p.add_argument("--quick", action="store_true", help="a smaller base and a shorter history, for a fast look")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--once", action="store_true", help="exit after the summary instead of running until Ctrl-C")
    p.add_argument("--workers", type=int, default=DEMO_WORKERS,
                   help="state workers to start beside the ClickHouse sink (each its own process; "
                        f"default {DEMO_WORKERS})")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(args.debug)
    settings: Settings | None = None
    try:
        settings = load_settings()
        debug = debug or settings.log_level.upper() == "DEBUG"
        _setup_logging(settings, debug)
        return int(args.func(settings, args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        explained = explain(exc, settings)
        if explained is None:
            raise  # not an error of the input or the surroundings: a bug, with its traceback
        if debug:
            traceback.print_exc()
        code, message = explained
        print(f"loyalty {args.command}: {message}", file=sys.stderr)
        return code


# -- errors, in one line -------------------------------------------------------------------------


def explain(exc: BaseException, settings: Settings | None) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can act on; None for anything else."""
    from pydantic import ValidationError

    clickhouse_error = _loaded("clickhouse_connect.driver.exceptions", "ClickHouseError")
    clickhouse_unreachable = _loaded("clickhouse_connect.driver.exceptions", "OperationalError")
    kafka_error = _loaded("kafka.errors", "KafkaError")
    worker_error = _loaded("ops.admin", "WorkerError")
    publish_errors = (_loaded("ops.simulate", "BrokerUnavailableError"), _loaded("ops.simulate", "PublishError"))

    if isinstance(exc, CliError):
        return exc.exit_code, _one_line(str(exc))
    if isinstance(exc, ValidationError):
        return EXIT_BAD_INPUT, "invalid configuration: " + _settings_errors(exc)
    if isinstance(exc, (broker.BrokerError, publish_errors)):
        return EXIT_UNREACHABLE, _one_line(str(exc))
    if isinstance(exc, kafka_error):
        where = f" at {settings.bootstrap}" if settings is not None else ""
        return EXIT_UNREACHABLE, _one_line(f"Kafka{where}: {exc}")  # str() starts with the class name
    if isinstance(exc, clickhouse_unreachable):
        where = f" at {_without_password(settings.clickhouse_url)}" if settings is not None else ""
        return EXIT_UNREACHABLE, f"cannot reach ClickHouse{where}: {_connection_reason(str(exc))}"
    if isinstance(exc, clickhouse_error):
        return EXIT_BAD_INPUT, _clickhouse_message(str(exc))
    if isinstance(exc, worker_error):
        detail = _clickhouse_message(str(exc)) if "DB::Exception" in str(exc) else _one_line(str(exc))
        return (EXIT_BAD_INPUT if 400 <= exc.status < 500 else EXIT_UNREACHABLE), detail
    if isinstance(exc, urllib.error.URLError):
        where = f" at {settings.web_url}" if settings is not None else ""
        return EXIT_UNREACHABLE, f"cannot reach the worker{where}: {exc.reason}"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return EXIT_BAD_INPUT, f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, OSError):  # connection refused, timed out, ...
        return EXIT_UNREACHABLE, _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, ValueError):  # the project's own checks of an argument's value
        return EXIT_BAD_INPUT, _one_line(str(exc))
    return None


def _loaded(module: str, name: str) -> Any:
    """An exception class of a module already imported, else ``()``, of which nothing is an instance.

    A module never imported raised nothing; importing the clients here would cost a failing
    command half a second.
    """
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else ()


def _one_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _settings_errors(exc: Any) -> str:
    """pydantic's errors as ``LOYALTY_<NAME>: <problem> (got <value>)``; secrets are never echoed."""
    from pydantic import SecretStr

    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error.get("loc") else ""
        field = Settings.model_fields.get(name)
        secret = (field is not None and "SecretStr" in str(field.annotation)) or isinstance(error.get("input"), SecretStr)
        message = error["msg"].removeprefix("Value error, ")
        got = "" if secret or "input" not in error or isinstance(error["input"], dict) else f" (got {error['input']!r})"
        parts.append(f"LOYALTY_{name.upper()}: {message}{got}" if name else message)
    return _one_line("; ".join(parts), limit=500)


def _clickhouse_message(text: str) -> str:
    """``ClickHouse: <what it said> (<ERROR_NAME>)`` from a server or chDB error."""
    names = re.findall(r"\(([A-Z][A-Z0-9_]+)\)", text)
    body = text.rsplit("DB::Exception: ", 1)[-1]
    body = re.split(r"\n|\. Expected one of:| \(version ", body)[0]
    body = re.sub(r"\s*\([A-Z][A-Z0-9_]+\)\s*$", "", body).rstrip(". ")
    name = names[-1] if names else ""
    hint = "; `loyalty init` creates the schema" if name in ("UNKNOWN_DATABASE", "UNKNOWN_TABLE") else ""
    return _one_line(f"ClickHouse: {body}" + (f" ({name})" if name else "") + hint)


def _connection_reason(text: str) -> str:
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return match.group(1).strip() if match else _one_line(text, limit=200)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


if __name__ == "__main__":
    sys.exit(main())
