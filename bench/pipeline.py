"""End-to-end pipeline benchmark: events per second, freshness and BI latency, against a baseline.

Usage (from the repository root; Java 17+ and Maven as for the tests)::

    .venv/bin/python bench/pipeline.py             # 300,000 events / 100,000 customers, then 1,000,000 customers
    .venv/bin/python bench/pipeline.py --quick     # 30,000 events / 10,000 customers, then 100,000 customers
    .venv/bin/python bench/pipeline.py --quick --no-scale --profile   # cProfile the worker (figures distorted)
    .venv/bin/python bench/pipeline.py --quick --no-scale --py-spy    # sample it with py-spy during P

Options: ``--events``, ``--customers``, ``--scale-customers`` (0: no scaling run),
``--bi-customers``, ``--freshness-seconds``, ``--freshness-share``, ``--bi-pause``, ``--no-bi-load``,
``--marker-ms``,
``--p-timeout`` (cap on one P, default 1800 s; a capped P is the rate so far), ``--partitions``,
``--seed``, ``--json``, ``--keep-data``, ``--profile`` (cProfile), ``--py-spy`` (sampling, needs
``.venv/bin/python -m pip install py-spy``); ``--help`` lists them all. The default run takes
about an hour on two cores (most of it the 3,000,000-event P), ``--quick`` about ten minutes.

Everything runs in one invocation, on one machine, over the same generated data, so each
figure can be read as a ratio against a baseline taken minutes apart (other work on the machine
moves both). It starts its own Kafka broker (:mod:`ops.broker`, free port, data under
``var/bench/broker``) and stops it at the end. Per size:

1. **Data.** :func:`ops.simulate.generate` for the customers, with ``history_days``
   calibrated so there are about ``events / customers`` events each (all three kinds), encoded
   with the project's codec and published to fresh topics *before* anything consumes them.
2. **B, the baseline**: a plain aiokafka consumer reads every input partition from the start in
   batches (``getmany``) and Avro-decodes each record with ``codec(kind).decode``, nothing else.
   Passes repeat until 5 s are measured and the median counts; taken before and after P, B is
   the mean of the two (both are reported).
3. **Pre-load** (main size only): rows for ``--bi-customers`` minus ``--customers`` other
   customers are inserted into ``signals_current`` of the worker's chDB directory (migrations
   first, through :class:`~sinks.clickhouse.ClickHouseSink`, in a child process
   that exits before the worker opens the directory), so BI queries see 1,000,000 customers.
4. **P, the pipeline**: ``python -m ops.cli worker`` as a subprocess with its own app
   id, topic prefix, data directory and web port. P = events / (time from the first event
   consumed, i.e. the earliest ``ingested_at`` the worker stamped, to the moment ClickHouse shows
   every customer's signal: ``count()`` and ``sum(version)`` of ``signals_current FINAL`` equal to
   the customers and events sent, checked right after ``GET /status`` counts every message
   processed). Also: worker CPU per event, its peak memory (VmHWM), CPU by thread name, the rate
   in each quarter of the run, and how often ``GET /status`` got no answer within 15 s (the
   worker's event loop was busy that long).
5. **Freshness** (main size only): new customers' events published at 80% of P with a
   rate-limited kafka-python producer; every ``--marker-ms`` the next event of a customer not yet
   seen is a marker, and its latency is from ``producer.send`` to the first poll (every 100 ms,
   ``POST /clickhouse/query``) whose answer shows that customer in ``signals_current``: an upper
   bound, at most one poll interval plus one query late. "Kept up" says whether at most one
   second of events was still pending when the last one was sent; if not, the latencies grow
   with the length of the load and are queueing, not the pipeline's floor.
6. **BI latency**: ``SELECT tier, count() FROM signals_current FINAL GROUP BY tier`` through the
   worker's query endpoint (the worker owns the embedded engine), back to back with 0.2 s pauses
   while the freshness load runs; also a few with the worker idle, for reference.
7. **Scaling**: steps 1, 2 and 4 again with ``--scale-customers`` customers and the same events
   per customer; the change is judged on P/B, so load that moves both cancels out.

Prints a table and the goals (met or not) and writes every figure to ``var/bench-pipeline.json``;
logs, worker output and profiles stay in ``var/bench/<size>/`` until the next run replaces them. Bulky data (broker log, RocksDB,
chDB) is deleted at the end unless ``--keep-data``. This is a measurement, not a test: nothing
fails when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config.settings import Settings
from config.topics import KIND_BY_SUFFIX, Topics
from domain.model import TIERS
from domain.records import Event
from ops import broker
from ops.admin import create_topics
from ops.simulate import Outgoing, encode_event, generate, send_outgoing
from schemas import codec

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "var" / "bench"
TIER_QUERY = "SELECT tier, count() FROM {db}.signals_current FINAL GROUP BY tier ORDER BY tier"
GOALS = {
    "p_over_b": 0.45,  # P >= 0.45 B
    "freshness_p99_s": 1.0,  # at 80% of P
    "bi_p50_ms": 25.0,  # during ingest
    "scaling_drop": 0.20,  # P falls by less than this from the main size to the scaling size
}
FRESHNESS_SHARE = 0.8  # the goal's load: 80% of the measured maximum rate P
POLL_SECONDS = 0.1
BI_PAUSE_SECONDS = 0.2


# -- small helpers ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose successor is free too (the local broker's controller takes port + 1)."""
    for _ in range(50):
        port = free_port()
        if port < 65_000 and not broker.port_open("127.0.0.1", port + 1, timeout=0.2):
            return port
    raise RuntimeError("no two consecutive free ports found")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


SOURCE_DIRS = ("domain", "config", "schemas", "sinks", "streams", "ops")


def source_version() -> dict[str, Any]:
    """The commit measured, and the files that differ from it (read-only git commands)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--", *SOURCE_DIRS).splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "src_changed_since_commit": changed}


# -- the worker process -------------------------------------------------------------------------


class Worker:
    """``loyalty worker`` as a child process, optionally under cProfile, with /proc readings."""

    def __init__(self, settings: Settings, log_path: Path, profile_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.profile_path = profile_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        command = [sys.executable]
        if self.profile_path is not None:
            command += ["-m", "cProfile", "-o", str(self.profile_path)]
        command += ["-m", "ops.cli", "worker"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(command, env=self.settings.child_environment(os.environ), cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.get("/health", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"worker not healthy after {timeout:.0f}s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.settings.web_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"worker answered {exc.code} to {path}: {exc.read().decode(errors='replace')}") from exc

    def query(self, sql: str) -> list[list[Any]]:
        rows: list[list[Any]] = self.get("/clickhouse/query", {"sql": sql})["rows"]
        return rows

    def processed(self) -> tuple[int, int]:
        """(messages processed, messages dead-lettered) over all agents, from GET /status."""
        totals = self.get("/status", timeout=15)["processed"].values()
        return sum(t.get("messages", 0) for t in totals), sum(t.get("dead_lettered", 0) for t in totals)

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (every thread) so far."""
        return _stat_cpu(Path(f"/proc/{self.pid}/stat"))

    def threads_cpu(self) -> dict[str, float]:
        """CPU seconds by thread name; chDB names its pools, Python threads are all "python", so
        the event loop's thread (the main one) is told apart as "python-main"."""
        by_name: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip().rstrip("0123456789")
                if name == "python":
                    name = "python-main" if task.name == str(self.pid) else "python-other"
                by_name[name] = by_name.get(name, 0.0) + _stat_cpu(task / "stat")
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
        busiest = sorted(by_name.items(), key=lambda item: -item[1])[:10]
        return {name: round(seconds, 2) for name, seconds in busiest}

    def memory_mb(self) -> dict[str, float]:
        """Peak (VmHWM) and current (VmRSS) resident memory, MB."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
        return fields

    def stop(self, timeout: float = 120.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _stat_cpu(path: Path) -> float:
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- data -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """Encoded messages ready to publish, and what they add up to."""

    messages: list[Outgoing]
    customers: int
    kinds: dict[str, int]
    history_days: float
    generate_seconds: float

    @property
    def events(self) -> int:
        return len(self.messages)


def calibrate_history_days(events_per_customer: float, seed: int, end_ms: int, sample: int = 4000) -> float:
    """history_days giving about ``events_per_customer`` events each (a 1-day live window after it).

    Events per customer grow linearly with the history; two small samples fix the line.
    """
    at0 = len(generate(sample, 1, seed, end_ms, 0)) / sample
    at10 = len(generate(sample, 1, seed, end_ms, 10)) / sample
    return max(0.0, 10 * (events_per_customer - at0) / (at10 - at0))


def build_workload(customers: int, events_per_customer: float, seed: int, prefix: str = "C") -> Workload:
    """Generated events of ``customers`` customers, their ids starting with ``prefix``, encoded."""
    end_ms = int(time.time() * 1000) - 60_000
    started = time.perf_counter()
    history = calibrate_history_days(events_per_customer, seed, end_ms)
    events: list[Event] = generate(customers, 1, seed, end_ms, history)
    if prefix != "C":
        events = [dataclasses.replace(ev, customer_id=prefix + ev.customer_id[1:]) for ev in events]
    messages = [Outgoing(ev.kind, ev.customer_id.encode(), encode_event(ev), None, "event") for ev in events]
    kinds = Counter(ev.kind for ev in events)
    distinct = len({ev.customer_id for ev in events})
    if set(kinds) != {"purchase", "call", "visit"}:
        raise RuntimeError(f"the workload lacks a kind of event: {dict(kinds)}")
    return Workload(messages, distinct, dict(kinds), round(history, 2), time.perf_counter() - started)


def publish_all(settings: Settings, messages: Sequence[Outgoing]) -> float:
    """Publish as fast as the producer goes (acks=all); return messages per second."""
    report = send_outgoing(_producer(settings, linger_ms=50), messages, Topics(settings.topic_prefix))
    if report.failed or report.sent != len(messages):
        raise RuntimeError(f"publishing failed: {report.summary()}")
    return report.per_second


def _producer(settings: Settings, linger_ms: int) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(**settings.kafka_python_config(), acks="all", linger_ms=linger_ms,
                         enable_idempotence=True, max_request_size=settings.max_message_bytes,
                         batch_size=256 * 1024)


# -- B: the baseline ------------------------------------------------------------------------------


def baseline(settings: Settings, expected: int, min_seconds: float = 5.0, max_passes: int = 7,
             timeout: float = 1800.0) -> dict[str, Any]:
    """Consume every input record from the start and decode it; events per second.

    A pass over a small workload takes a fraction of a second, too short to be steady on a shared
    machine: passes repeat until ``min_seconds`` have been measured, and the median pass counts.
    """
    rates: list[float] = []
    total = 0.0
    while total < min_seconds and len(rates) < max_passes:
        count, seconds = asyncio.run(_consume_and_decode(settings, expected, timeout))
        if count < expected:
            raise RuntimeError(f"baseline read {count:,} of {expected:,} records within {timeout:.0f}s")
        rates.append(count / seconds)
        total += seconds
    return {"events": expected, "passes": len(rates), "pass_rates": [round(r) for r in rates],
            "events_per_second": round(statistics.median(rates), 1)}


async def _consume_and_decode(settings: Settings, expected: int, timeout: float) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = Topics(settings.topic_prefix)
    codecs = {name: codec(KIND_BY_SUFFIX[name[len(settings.topic_prefix):]]) for name in topics.inputs}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=settings.max_message_bytes,
        client_id="bench-baseline",
    )
    await consumer.start()
    try:
        # the topics are this run's own, created with settings.partitions partitions
        partitions = [TopicPartition(t, p) for t in topics.inputs for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            if batches and not first:
                first = time.perf_counter()
            for tp, records in batches.items():
                decode = codecs[tp.topic].decode
                for record in records:
                    decode(record.value)
                count += len(records)
            last = time.perf_counter()
        return count, last - first
    finally:
        await consumer.stop()


# -- BI pre-load ------------------------------------------------------------------------------------


def preload_signals(dsn: str, database: str, customers: int, chunk: int = 100_000) -> None:
    """Migrate, then insert ``customers`` current signals (ids B0000001...) in parts, 10% twice.

    Runs in a child process: chDB lets one process open a directory, and the worker needs it next.
    """
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(dsn, database)
    try:
        sink.migrate()
        for start in range(0, customers, chunk):
            sink.client.command(_preload_sql(database, start, min(chunk, customers - start), version=1))
        # a newer version for every tenth customer, in its own part, so FINAL has rows to collapse
        sink.client.command(_preload_sql(database, 0, customers, version=2, where="number % 10 = 0"))
    finally:
        sink.close()


def _preload_sql(db: str, start: int, count: int, version: int, where: str = "1") -> str:
    tiers = "[" + ", ".join(f"'{t}'" for t in TIERS) + "]"
    return f"""
        INSERT INTO {db}.signals_current (customer_id, version, as_of, model_version, loyalty_score, tier,
            tier_reason, churn_risk, horizon_days, expected_purchases, purchase_gap_days, purchase_gap_source,
            purchases, spend_365d_minor, greeting_hint, params_source, updated_at)
        SELECT concat('B', leftPad(toString(number + 1), 7, '0')), {version}, now64(3), 'bench',
            (h % 1000) / 10, arrayElement({tiers}, 1 + h % {len(TIERS)}), 'pre-loaded by bench/pipeline.py',
            (bitShiftRight(h, 10) % 1000) / 1000, 90, (bitShiftRight(h, 20) % 100) / 10,
            7 + bitShiftRight(h, 30) % 30, 'population',
            bitShiftRight(h, 40) % 20, bitShiftRight(h, 8) % 500000, '', 'default', now64(3)
        FROM (SELECT number, cityHash64(number, {version}) AS h FROM numbers({start}, {count}))
        WHERE {where}"""


def run_preload(settings: Settings, customers: int) -> float:
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=preload_signals,
                        args=(settings.clickhouse_url, settings.clickhouse_database, customers))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"pre-loading signals failed (exit code {child.exitcode})")
    return time.perf_counter() - started


# -- P: the pipeline --------------------------------------------------------------------------------


def measure_pipeline(worker: Worker, workload: Workload, timeout: float,
                     py_spy_output: Path | None = None) -> dict[str, Any]:
    """Start the worker on the pre-published backlog; time it until ClickHouse shows every signal."""
    db = worker.settings.clickhouse_database
    spawned = time.time()
    worker.start()
    healthy = time.time()
    sampler = PySpy(worker.pid, py_spy_output) if py_spy_output is not None else None
    cpu_start = worker.cpu_seconds()
    deadline = time.monotonic() + timeout
    processed, dead = 0, 0
    progress: list[tuple[float, int]] = []  # (seconds since healthy, messages processed), every 10 s
    stalls: list[float] = []  # seconds a GET /status waited in vain: the worker's event loop was busy
    while time.monotonic() < deadline:
        asked = time.monotonic()
        try:
            processed, dead = worker.processed()
        except (TimeoutError, urllib.error.URLError, OSError):
            stalls.append(round(time.monotonic() - asked, 1))
            continue
        if not progress or time.time() - healthy - progress[-1][0] >= 10:
            progress.append((round(time.time() - healthy, 1), processed))
        if processed >= workload.events:
            break
        time.sleep(0.2)
    progress.append((round(time.time() - healthy, 1), processed))
    capped = processed < workload.events
    ended = time.time()
    if sampler is not None:
        sampler.stop()
    if not capped:
        ended = _wait_signals_visible(worker, db, workload)
    cpu = worker.cpu_seconds() - cpu_start
    first = _first_ingested(worker, db)
    done = workload.events if not capped else processed
    return {
        "events": done,
        # messages the agents processed when the last one was: above "events" when some were redelivered
        "messages_processed": processed,
        "capped": capped,
        "dead_lettered": dead,
        "worker_start_seconds": round(healthy - spawned, 2),
        "wait_for_first_batch_seconds": round(first - healthy, 2),
        "seconds": round(ended - first, 3),
        "events_per_second": round(done / (ended - first), 1),
        "status_timeouts": len(stalls),
        "rate_by_quarter": _rate_by_quarter(progress),
        "progress": progress,
        "worker_cpu_seconds": round(cpu, 2),
        "worker_cpu_us_per_event": round(cpu / done * 1e6, 1),
        "worker_cores_busy": round(cpu / (ended - healthy), 2),
        "worker_cpu_by_thread_seconds": worker.threads_cpu(),
        "worker_memory_mb": worker.memory_mb(),
        "load_average_after": load_average(),
    }


def _rate_by_quarter(progress: Sequence[tuple[float, int]]) -> list[float]:
    """Events per second in each quarter of the processing (by messages done): does it slow down?"""
    started = next((i for i, (_, n) in enumerate(progress) if n > 0), None)
    if started is None or progress[-1][1] == 0:
        return []
    points = list(progress[max(0, started - 1):])
    rates = []
    total = points[-1][1]
    for q in range(4):
        lo, hi = total * q / 4, total * (q + 1) / 4
        inside = [(t, n) for t, n in points if lo <= n <= hi] or [points[-1]]
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        rates.append(round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else 0.0)
    return rates


def _wait_signals_visible(worker: Worker, db: str, workload: Workload, timeout: float = 300) -> float:
    """When ClickHouse shows one current signal per customer with every event applied (exact)."""
    sql = (f"SELECT count(), sum(version) FROM {db}.signals_current FINAL "
           "WHERE startsWith(customer_id, 'C')")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        customers, applied = worker.query(sql)[0]
        if int(customers) == workload.customers and int(applied) == workload.events:
            return time.time()
        time.sleep(0.1)
    raise RuntimeError(f"ClickHouse shows {customers} customers / {applied} events applied, not "
                       f"{workload.customers} / {workload.events}")


def _first_ingested(worker: Worker, db: str) -> float:
    """When the worker began its first batch: the earliest ingested_at it stamped (its clock, ms)."""
    parts = " UNION ALL ".join(f"SELECT min(ingested_at) AS t FROM {db}.{table}"
                               for table in ("purchases", "calls", "visits"))
    rows = worker.query(f"SELECT toUnixTimestamp64Milli(min(t)) FROM ({parts})")
    return int(rows[0][0]) / 1000


class PySpy:
    """py-spy sampling every thread of a process (GIL holders or not, idle excluded) into a raw
    collapsed-stack file. Far less overhead than cProfile, and it sees the ClickHouse thread."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("py-spy is not installed: .venv/bin/python -m pip install py-spy")
        self.output = output
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                      "--threads", "--nonblocking", "--output", str(output)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summarise_py_spy(path: Path, limit: int = 15) -> dict[str, Any]:
    """Top functions of a raw py-spy file: by self samples and by inclusive samples, with shares."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], [_frame_name(f) for f in frames[1:]]
        total += count
        threads[thread] += count
        if frames:
            own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def top(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(limit)]

    return {"samples": total, "threads_percent": top(threads), "self_percent": top(own),
            "inclusive_percent": top(inclusive)}


def _frame_name(frame: str) -> str:
    # "function (package/module.py:123)" -> "function (package/module.py)": lines would split functions
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# -- freshness and BI latency ------------------------------------------------------------------------


class TimedProducer:
    """A kafka-python producer that notes when each marker customer's first event is sent."""

    def __init__(self, producer: Any, markers: set[bytes]) -> None:
        self.producer = producer
        self.markers = markers
        self.sent_at: dict[bytes, float] = {}
        self.lock = threading.Lock()

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        if key in self.markers and key not in self.sent_at:
            with self.lock:
                self.sent_at[key] = time.time()
        return self.producer.send(topic, value=value, key=key)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def published(self) -> dict[bytes, float]:
        with self.lock:
            return dict(self.sent_at)


class Repeater(threading.Thread):
    """Runs ``step`` until stopped, pausing ``pause`` seconds in between; collects step errors."""

    def __init__(self, step: Callable[[], None], pause: float) -> None:
        super().__init__(daemon=True)
        self.step = step
        self.pause = pause
        self.stopping = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except (OSError, RuntimeError, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stopping.wait(self.pause)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=120)


def choose_markers(messages: Sequence[Outgoing], every: int) -> set[bytes]:
    """Every ``every`` messages, the next first event of a customer not seen before."""
    markers: set[bytes] = set()
    seen: set[bytes] = set()
    next_at = 0
    for i, message in enumerate(messages):
        new = message.key not in seen
        seen.add(message.key)
        if new and i >= next_at:
            markers.add(message.key)
            next_at = i + every
    return markers


def bi_query_ms(worker: Worker) -> float:
    started = time.perf_counter()
    worker.query(TIER_QUERY.format(db=worker.settings.clickhouse_database))
    return (time.perf_counter() - started) * 1000


def measure_freshness_and_bi(worker: Worker, workload: Workload, rate: float, share: float, already: int,
                             bi_customers_expected: int, marker_ms: int, bi_pause: float | None) -> dict[str, Any]:
    """Publish ``workload`` at ``rate``/s; marker latencies into ClickHouse and BI latencies meanwhile."""
    settings = worker.settings
    db = settings.clickhouse_database
    for _ in range(2):
        bi_query_ms(worker)  # warm up: the first FINAL over cold parts is not what a BI user sees
    idle = [bi_query_ms(worker) for _ in range(15)]
    tiers = worker.query(TIER_QUERY.format(db=db))
    bi_customers = sum(int(n) for _, n in tiers)

    markers = choose_markers(workload.messages, max(1, round(rate * marker_ms / 1000)))
    producer = TimedProducer(_producer(settings, linger_ms=5), markers)
    seen_at: dict[bytes, float] = {}

    def poll_markers() -> None:
        pending = [k for k in producer.published() if k not in seen_at]
        if not pending:
            return
        ids = ", ".join(f"'{k.decode()}'" for k in pending)
        rows = worker.query(f"SELECT DISTINCT customer_id FROM {db}.signals_current WHERE customer_id IN ({ids})")
        now = time.time()
        for (cid,) in rows:
            seen_at.setdefault(cid.encode(), now)

    bi_during: list[float] = []
    poller = Repeater(poll_markers, POLL_SECONDS)
    bi_loop = Repeater(lambda: bi_during.append(bi_query_ms(worker)), bi_pause or 0.0)
    poller.start()
    if bi_pause is not None:  # None: freshness alone, to see what the BI queries cost it
        bi_loop.start()
    try:
        report = send_outgoing(producer, workload.messages, Topics(settings.topic_prefix), rate)
        sent_done = time.time()
        processed_when_sent, _ = worker.processed()
        deadline = time.monotonic() + 60
        while len(seen_at) < len(markers) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if bi_loop.is_alive():
            bi_loop.stop()
        poller.stop()
        producer.producer.close(timeout=10)
    drained = _wait_processed(worker, already + workload.events)
    sent_at = producer.published()
    latencies = [seen_at[k] - sent_at[k] for k in sent_at if k in seen_at]
    return {
        "share_of_p": share,
        "offered_rate": round(rate, 1),
        "achieved_rate": round(report.per_second, 1),
        "events": workload.events,
        "customers": workload.customers,
        "seconds": round(report.elapsed_seconds, 1),
        "markers": len(markers),
        "markers_seen": len(latencies),
        "poll_interval_s": POLL_SECONDS,
        "freshness_p50_s": _round(percentile(latencies, 50), 3),
        "freshness_p99_s": _round(percentile(latencies, 99), 3),
        "freshness_max_s": _round(max(latencies, default=None), 3),
        "backlog_when_sent": already + workload.events - processed_when_sent,
        # the worker kept up if, when the last event was sent, at most ~1 s of events was pending
        "kept_up": already + workload.events - processed_when_sent <= rate,
        "drained_after_send_s": round(drained - sent_done, 2),
        "poll_errors": poller.errors[:3],
        "bi": {
            "query": TIER_QUERY.format(db=db),
            "pause_between_queries_s": bi_pause,
            "customers": bi_customers,
            "customers_expected": bi_customers_expected,
            "during_ingest_n": len(bi_during),
            "during_ingest_p50_ms": _round(percentile(bi_during, 50), 1),
            "during_ingest_p99_ms": _round(percentile(bi_during, 99), 1),
            "idle_n": len(idle),
            "idle_p50_ms": _round(percentile(idle, 50), 1),
            "idle_p99_ms": _round(percentile(idle, 99), 1),
            "errors": bi_loop.errors[:3],
        },
        "worker_memory_mb": worker.memory_mb(),
        "load_average_after": load_average(),
    }


def _wait_processed(worker: Worker, total: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if worker.processed()[0] >= total:
                return time.time()
        except (TimeoutError, urllib.error.URLError, OSError):
            continue  # the event loop was busy for the whole request timeout; ask again
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not process {total:,} messages within {timeout:.0f}s")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- one size ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    label: str
    customers: int
    events_per_customer: float
    preload_customers: int  # extra customers' signals for BI; 0: none
    freshness: bool


def run_size(spec: SizeSpec, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = BENCH_DIR / spec.label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}",
                        data_dir=run_dir / "data", web_port=free_port(), partitions=args.partitions)
    result: dict[str, Any] = {"label": spec.label, "app_id": settings.app_id, "topic_prefix": settings.topic_prefix}

    log(f"[{spec.label}] generating {spec.customers:,} customers x ~{spec.events_per_customer:g} events")
    workload = build_workload(spec.customers, spec.events_per_customer, args.seed)
    result["workload"] = {"events": workload.events, "customers": workload.customers, "kinds": workload.kinds,
                          "history_days": workload.history_days,
                          "generate_seconds": round(workload.generate_seconds, 1)}
    log(f"[{spec.label}] {workload.events:,} events ({workload.kinds}) in {workload.generate_seconds:.0f}s; publishing")
    create_topics(settings)
    result["publish_events_per_second"] = round(publish_all(settings, workload.messages), 1)

    log(f"[{spec.label}] baseline B (before P)")
    b_before = baseline(settings, workload.events)
    log(f"[{spec.label}] B before: {b_before['events_per_second']:,.0f} events/s")
    if spec.preload_customers:
        log(f"[{spec.label}] pre-loading {spec.preload_customers:,} customers' signals into chDB")
        result["preload"] = {"customers": spec.preload_customers,
                             "seconds": round(run_preload(settings, spec.preload_customers), 1)}

    profile = run_dir / "worker.prof" if args.profile else None
    worker = Worker(settings, run_dir / "worker.log", profile)
    try:
        log(f"[{spec.label}] pipeline P: worker on the backlog of {workload.events:,} events")
        spy_path = run_dir / "worker.py-spy.txt" if args.py_spy else None
        p = measure_pipeline(worker, workload, args.p_timeout, spy_path)
        result["pipeline"] = p
        if spy_path is not None and spy_path.exists():
            result["py_spy"] = {"path": str(spy_path.relative_to(REPO)), **summarise_py_spy(spy_path)}
        log(f"[{spec.label}] P: {p['events_per_second']:,.0f} events/s{' (capped)' if p['capped'] else ''}")
        if p["capped"]:
            # it would go on working through the backlog and take the CPU from the baseline
            result["worker_memory_mb_end"] = worker.memory_mb()
            worker.stop()
        log(f"[{spec.label}] baseline B (after P)")
        b_after = baseline(settings, workload.events)
        b = (b_before["events_per_second"] + b_after["events_per_second"]) / 2
        result["baseline"] = {"before": b_before, "after": b_after, "events_per_second": round(b, 1)}
        result["p_over_b"] = round(p["events_per_second"] / b, 4)
        if spec.freshness and not p["capped"]:
            rate = args.freshness_share * p["events_per_second"]
            events = max(1_000, round(rate * args.freshness_seconds))
            fresh = build_workload(max(100, round(events / spec.events_per_customer)), spec.events_per_customer,
                                   args.seed + 1, prefix="F")
            log(f"[{spec.label}] freshness + BI: {fresh.events:,} events at {rate:,.0f}/s")
            result["freshness"] = measure_freshness_and_bi(
                worker, fresh, rate, args.freshness_share, workload.events,
                spec.preload_customers + workload.customers, args.marker_ms,
                None if args.no_bi_load else args.bi_pause)
        if not p["capped"]:
            result["worker_memory_mb_end"] = worker.memory_mb()
    finally:
        result["worker_exit_code"] = worker.stop()
    if profile is not None:
        result["profile"] = {"path": str(profile.relative_to(REPO)), "top_cumulative": profile_top(profile)}
    if not args.keep_data:
        shutil.rmtree(settings.data_dir, ignore_errors=True)
    return result


def profile_top(path: Path, limit: int = 15) -> str:
    if not path.exists():
        return f"(no profile written at {path})"
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


# -- report ------------------------------------------------------------------------------------------


def goals(main: dict[str, Any], scale: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    fresh = main.get("freshness") or {}
    bi = fresh.get("bi") or {}
    out: dict[str, dict[str, Any]] = {}
    out["P >= 0.45 B"] = _goal(main.get("p_over_b"), lambda v: v >= GOALS["p_over_b"], "{:.3f}")
    at_goal_load = fresh.get("share_of_p") == FRESHNESS_SHARE  # another --freshness-share does not count
    p99 = fresh.get("freshness_p99_s") if at_goal_load else None
    missed = fresh.get("markers", 0) - fresh.get("markers_seen", 0)
    out["freshness p99 <= 1 s at 80% of max rate"] = _goal(
        p99, lambda v: v <= GOALS["freshness_p99_s"] and missed == 0, "{:.3f} s")
    out["BI p50 <= 25 ms during ingest"] = _goal(bi.get("during_ingest_p50_ms"),
                                                   lambda v: v <= GOALS["bi_p50_ms"], "{:.1f} ms")
    change = None
    if scale is not None and "p_over_b" in scale and main.get("p_over_b"):
        change = scale["p_over_b"] / main["p_over_b"] - 1
    name = "throughput falls < 20% from {} to {} customers".format(
        f"{main['workload']['customers']:,}", f"{scale['workload']['customers']:,}" if scale else "?")
    out[name] = _goal(change, lambda v: v > -GOALS["scaling_drop"], "P/B {:+.1%}")
    return out


def _goal(value: float | None, check: Callable[[float], bool], fmt: str) -> dict[str, Any]:
    if value is None:
        return {"value": None, "shown": "not measured", "met": None}
    return {"value": value, "shown": fmt.format(value), "met": bool(check(value))}


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    print(f"Machine: {m['usable_cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB, Python {m['python']}; "
          f"load average at start {m['load_average_at_start']}, at end {m.get('load_average_at_end')}")
    src = report["source"]
    print(f"Source: commit {src['commit']}" + (f", source changed since: {', '.join(src['src_changed_since_commit'])}"
                                               if src["src_changed_since_commit"] else ", source unchanged"))
    header = (f"{'run':8} {'events':>10} {'customers':>10} {'B ev/s':>9} {'P ev/s':>8} {'P/B':>7} "
              f"{'CPU us/ev':>9} {'cores':>6} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for run in report["runs"]:
        p, w = run.get("pipeline", {}), run["workload"]
        print(f"{run['label']:8} {w['events']:>10,} {w['customers']:>10,} "
              f"{run.get('baseline', {}).get('events_per_second', 0):>9,.0f} "
              f"{p.get('events_per_second', 0):>8,.0f}{'*' if p.get('capped') else ' '}"
              f"{run.get('p_over_b', 0):>6.3f} {p.get('worker_cpu_us_per_event', 0):>9,.0f} "
              f"{p.get('worker_cores_busy', 0):>6.2f} {p.get('worker_memory_mb', {}).get('VmHWM', 0):>8,.0f}")
        b = run.get("baseline", {})
        if b:
            print(f"{'':8} B before/after P: {b['before']['events_per_second']:,.0f} / "
                  f"{b['after']['events_per_second']:,.0f} ev/s; worker CPU by thread: "
                  f"{p.get('worker_cpu_by_thread_seconds')}")
    print("(* capped by --p-timeout: rate over the events processed so far)")
    main = report["runs"][0]
    fresh = main.get("freshness")
    if fresh:
        bi = fresh["bi"]
        print(f"Freshness at {fresh['share_of_p']:.0%} of P ({fresh['offered_rate']:,.0f}/s offered, "
              f"{fresh['achieved_rate']:,.0f}/s achieved, {fresh['seconds']:.0f} s): p50 {fresh['freshness_p50_s']} s, p99 "
              f"{fresh['freshness_p99_s']} s, max {fresh['freshness_max_s']} s "
              f"({fresh['markers_seen']}/{fresh['markers']} markers, polled every {fresh['poll_interval_s']} s); "
              f"drained {fresh['drained_after_send_s']} s after the last send; " + _kept_up(fresh))
        print(f"BI tier query over {bi['customers']:,} customers (FINAL): during ingest p50 "
              f"{bi['during_ingest_p50_ms']} ms, p99 {bi['during_ingest_p99_ms']} ms (n={bi['during_ingest_n']}); "
              f"idle p50 {bi['idle_p50_ms']} ms, p99 {bi['idle_p99_ms']} ms (n={bi['idle_n']})")
        print(f"Worker peak memory (VmHWM) at the end of the main run: "
              f"{main.get('worker_memory_mb_end', {}).get('VmHWM')} MB")
    scaling = report.get("scaling")
    if scaling:
        print(f"Scaling {scaling['from_customers']:,} -> {scaling['to_customers']:,} customers: "
              f"P {scaling['p_change']:+.1%}, B {scaling['b_change']:+.1%}, P/B {scaling['p_over_b_change']:+.1%}, "
              f"worker CPU per event {scaling['cpu_per_event_change']:+.1%}; "
              f"peak memory {scaling['memory_mb'][0]:,.0f} -> {scaling['memory_mb'][1]:,.0f} MB")
    print("Goals:")
    for name, goal in report["goals"].items():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[goal["met"]]
        print(f"  {name:55} {goal['shown']:>20}  {verdict}")
    for run in report["runs"]:
        if "py_spy" in run:
            spy = run["py_spy"]
            print(f"\npy-spy of the {run['label']} worker during P ({spy['samples']:,} samples, {spy['path']}):")
            for title, key in (("threads", "threads_percent"), ("self", "self_percent"),
                               ("inclusive", "inclusive_percent")):
                print(f"  {title}:")
                for name, share in spy[key]:
                    print(f"    {share:5.1f}%  {name}")
        if "profile" in run:
            print(f"\nProfile of the {run['label']} worker ({run['profile']['path']}):")
            print(run["profile"]["top_cumulative"])


def _kept_up(fresh: dict[str, Any]) -> str:
    if fresh["kept_up"]:
        return "the worker kept up"
    return f"the worker FELL BEHIND: {fresh['backlog_when_sent']:,} events pending at the last send"


def scaling_summary(main: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    p0, p1 = main["pipeline"]["events_per_second"], scale["pipeline"]["events_per_second"]
    b0, b1 = main["baseline"]["events_per_second"], scale["baseline"]["events_per_second"]
    return {
        "from_customers": main["workload"]["customers"], "to_customers": scale["workload"]["customers"],
        "p_change": p1 / p0 - 1, "b_change": b1 / b0 - 1,
        "p_over_b_change": scale["p_over_b"] / main["p_over_b"] - 1,
        # CPU the worker spends per event hardly depends on what else runs: a steadier view
        "cpu_per_event_change": scale["pipeline"]["worker_cpu_us_per_event"] / main["pipeline"]["worker_cpu_us_per_event"] - 1,
        "scale_run_capped": scale["pipeline"]["capped"],
        "memory_mb": [main["pipeline"]["worker_memory_mb"]["VmHWM"], scale["pipeline"]["worker_memory_mb"]["VmHWM"]],
    }


# -- command -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end pipeline benchmark against a consume-and-decode "
                                     "baseline (see the module docstring).")
    parser.add_argument("--quick", action="store_true",
                        help="30,000 events / 10,000 customers, scaling to 100,000 customers, 20 s of freshness")
    parser.add_argument("--events", type=int, help="events in the main run (default 300,000)")
    parser.add_argument("--customers", type=int, help="customers in the main run (default 100,000)")
    parser.add_argument("--scale-customers", type=int,
                        help="customers in the scaling run, same events per customer (default 1,000,000; 0: skip)")
    parser.add_argument("--bi-customers", type=int, default=1_000_000,
                        help="customers whose signals the BI query reads (pre-loaded up to this many)")
    parser.add_argument("--freshness-seconds", type=float, help="length of the steady-rate load (default 60)")
    parser.add_argument("--freshness-share", type=float, default=FRESHNESS_SHARE,
                        help="steady load as a share of P (the goal is stated at 0.8)")
    parser.add_argument("--bi-pause", type=float, default=BI_PAUSE_SECONDS,
                        help="pause between BI queries during the freshness load, seconds")
    parser.add_argument("--no-bi-load", action="store_true",
                        help="no BI queries during the freshness load (shows what they cost freshness)")
    parser.add_argument("--marker-ms", type=int, default=50, help="a freshness marker every this many ms")
    parser.add_argument("--p-timeout", type=float, default=1800.0,
                        help="cap on one P measurement, seconds; a capped P is the rate so far")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--profile", action="store_true",
                        help="run the worker under cProfile (var/bench/<size>/worker.prof); distorts P")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample the worker with py-spy during P (var/bench/<size>/worker.py-spy.txt)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scaling run")
    parser.add_argument("--keep-data", action="store_true", help="keep broker, RocksDB and chDB data in var/bench")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench-pipeline.json")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (30_000 if quick else 300_000)
    args.customers = args.customers or (10_000 if quick else 100_000)
    if args.scale_customers is None:
        args.scale_customers = 100_000 if quick else 1_000_000
    if args.no_scale:
        args.scale_customers = 0
    args.freshness_seconds = args.freshness_seconds or (20.0 if quick else 60.0)
    return args


def start_broker() -> Settings:
    broker_settings = Settings(data_dir=BENCH_DIR / "broker", local_kafka_port=free_port_pair())
    shutil.rmtree(broker_settings.kafka_dir, ignore_errors=True)
    log(f"starting a Kafka broker on {broker_settings.bootstrap} (data in {broker_settings.kafka_dir})")
    broker.start(broker_settings)
    return broker_settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    epc = args.events / args.customers
    report: dict[str, Any] = {"machine": machine(), "source": source_version(), "goals_definition": GOALS,
                              "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": []}
    broker_settings = start_broker()
    try:
        specs = [SizeSpec("main", args.customers, epc, max(0, args.bi_customers - args.customers), True)]
        if args.scale_customers:
            specs.append(SizeSpec("scale", args.scale_customers, epc, 0, False))
        for spec in specs:
            report["runs"].append(run_size(spec, broker_settings.bootstrap, args))
            _write(report, args.json)  # a long scaling run must not lose the main run's figures
    finally:
        log("stopping the Kafka broker")
        broker.stop(broker_settings)
        if not args.keep_data:
            shutil.rmtree(broker_settings.kafka_dir, ignore_errors=True)
    main_run = report["runs"][0]
    scale_run = report["runs"][1] if len(report["runs"]) > 1 else None
    if scale_run is not None:
        report["scaling"] = scaling_summary(main_run, scale_run)
    report["goals"] = goals(main_run, scale_run)
    report["machine"]["load_average_at_end"] = load_average()
    report["profiled"] = args.profile
    _write(report, args.json)
    print_report(report)
    print(f"\nfigures written to {args.json}")
    return 0


def _write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
