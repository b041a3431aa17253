"""End-to-end pipeline benchmark: the framework's ceiling, a baseline, one and two state workers,
freshness, BI latency and scaling, in one run over the same generated topics.

Usage (from the repository root, with the root on ``sys.path``; Java 17+ and Maven as for the tests)::

    PYTHONPATH=. .venv/bin/python bench/pipeline.py          # 300,000 events / 100,000 customers, then 1,000,000 customers
    PYTHONPATH=. .venv/bin/python bench/pipeline.py --quick  # 30,000 events / 10,000 customers, then 100,000 customers
    PYTHONPATH=. .venv/bin/python bench/pipeline.py --quick --no-scale --py-spy   # sample the state worker during P1

Options: ``--events``, ``--customers``, ``--scale-customers`` (0: no scaling run), ``--no-scale``,
``--no-p2``, ``--bi-customers``, ``--freshness-seconds``, ``--freshness-share``, ``--bi-pause``,
``--no-bi-load``, ``--marker-ms``, ``--p-timeout`` (cap on one P, default 1800 s; a capped P is the
rate so far), ``--partitions``, ``--seed``, ``--json``, ``--keep-data``, ``--profile`` (cProfile
of the state worker), ``--py-spy`` (sampling, needs ``.venv/bin/python -m pip install py-spy``);
``--help`` lists them all. A full run takes one to two hours on two cores (most of it the
3,000,000-event scaling run), ``--quick`` ten to twenty minutes.

Everything runs in one invocation, on one machine, so each figure can be read against the
others taken minutes apart (other work on the machine moves them all). The bench starts its own
Kafka broker (:mod:`ops.broker`, free port, data under ``var/bench/broker``) and stops it at the
end. Every process of a deployment gets the same app id, topic prefix and pseudonymisation key
(``LOYALTY_PSEUDONYMISATION_KEY``, random per size) and its own data directory and web port.

Main size (``--events`` over ``--customers``):

1. **Data.** :func:`ops.simulate.generate` for the customers, with ``history_days`` calibrated
   so there are about ``events / customers`` events each (all three kinds), encoded with the
   project's codec and published to fresh topics *before* anything consumes them.
2. **B, the baseline**: a plain aiokafka consumer reads every input partition from the start in
   batches (``getmany``) and Avro-decodes each record, nothing else. Passes repeat until 5 s are
   measured and the median counts; taken before and after P1, B is the mean of the two.
3. **F, Faust's ceiling** (``bench/faust_ceiling.py``, a child process): a bare Faust agent,
   raw serializers, in-memory store, no web server, a consumer group of its own starting at the
   earliest offsets, reads the same three topics with ``take_events(2000, within=0.25)`` and an
   empty loop body. F = records after the first batch / time from the first batch to the moment
   it has read every event; its CPU per record over the same span (every thread, /proc). Taken
   before and after P1, F is the mean of the two.
4. **Pre-load**: rows for ``--bi-customers`` minus ``--customers`` other customers are inserted
   into ``loyalty.signals_current`` of the sink's chDB directory (migrations first, through
   :class:`~sinks.clickhouse.ClickHouseSink`, in a child process that exits before the sink opens
   the directory), so BI queries see 1,000,000 customers. P2's sink gets the same pre-load.
5. **P1, the pipeline**: one ``loyalty worker --role sink`` and, as soon as it answers, one
   ``--role state``, separate processes. The bench polls the state worker's ``GET /status``
   every 50 ms until it has processed a first batch: that moment starts P1 (the records
   processed by then are left out of the count, as F leaves out its first batch). P1 ends when ClickHouse (the sink's
   ``POST /clickhouse/query``) shows every customer's newest signal: ``count()`` and
   ``sum(version)`` of ``loyalty.signals_current FINAL`` equal to the customers and events sent.
   P1 = events after the first batch / that time. The earliest ``ingested_at`` no longer marks
   the start: the sink stamps it, and it reads the input topics on its own, from its start (how
   many records it had copied when the state worker's first batch was seen is reported).

   For each process, over P1's span: CPU seconds, cores busy, CPU by thread; peak memory (VmHWM);
   the broker's CPU too, and the machine's (/proc/stat). ``state_cpu_us_per_event``: the state
   worker's CPU over the span / the events in it; ``sink_cpu_us_per_event``: the sink's CPU from
   its health (migrations done) to the end / every event (it copies the events and their signals).
   Then the sink's CPU over 5 s with nothing to copy (``sink_idle_cores``: the tier mix's refresh
   over every customer, its timers, the last merges), and its CPU per event without that rate
   over the same span (``sink_cpu_us_per_event_net_of_idle``, an estimate), and its CPU per event
   by the work of its threads (``sink_cpu_us_per_event_by_work``: its own Python, the inserts'
   and reads' threads, the embedded engine's own threads). Each process's main thread's wall time
   is split (``main_thread_shares``, from ``/proc/<pid>/task/<pid>/schedstat``) into running,
   waiting for a CPU (ready, while the machine's other work runs) and off a CPU (waiting for the
   broker, for records, for a timer); the same over the freshness load.
   Also the rate in each quarter and how often ``GET /status`` got no answer within 15 s.
6. **Changelog** (right after P1): the ``<app_id>-relationships-changelog`` and ``-due_times-``
   topics read from the start with kafka-python: bytes of every key + value / events
   (``changelog_bytes_per_event``), and the latest value's size per key, averaged
   (``state_bytes_per_customer``).
7. **Freshness**, against P1's deployment: new customers' events published at 80% of P1 with a
   rate-limited kafka-python producer; every ``--marker-ms`` the next event of a customer not yet
   seen is a marker, and its latency is from ``producer.send`` to the first poll (every 100 ms,
   through the sink's query endpoint) whose answer shows that customer in ``signals_current``: an
   upper bound, at most one poll interval plus one query late. "Kept up": when the last event was
   sent, at most one second of events was pending in the state worker (``/status``) and at most
   one second's worth of records in the sink's consumer group (committed offsets on the input
   and signals topics); if not, the latencies grow with the length of the load and are queueing.
8. **BI latency**: the dashboard's tier query, ``v_tiers_now`` (the tier mix ClickHouse
   recomputes every 5 s by default from ``signals_current FINAL``, migration 0013), through the sink's
   query endpoint, back to back with 0.2 s pauses while the freshness load runs, with the age of
   each answer (its refresh); and the exact query, ``SELECT tier, count() FROM
   loyalty.signals_current FINAL GROUP BY tier``, every 2 s meanwhile (an analyst's ad-hoc
   query). Both also with the pipeline idle, for reference.
9. **P2**: as P1 with two state workers (one app id, two data directories and web ports) and one
   sink, on a copy of the topics (the same messages published again under another prefix: the
   output topics follow the prefix, so P2 shares neither topics, group, state nor chDB with P1).
   P2 starts when *both* state workers have processed a batch: the one that joins the group
   first works alone until the other joins and the group rebalances, a start-up cost left out
   as P1's start-up is (how long that took, and the records processed by then, are reported).
   Also each process's CPU over P2's span, to show which one saturated, and how the events split.

Scaling size (``--scale-customers``, same events per customer; no pre-load): steps 1, 2 and 5
again; ``P1_scale_ratio`` = P1 there / P1 at the main size.

Prints the figures against the goals and writes them to ``--json`` (``var/bench-pipeline.json``):
the headline figures at the top level, the details under ``runs``; logs and profiles stay in
``var/bench/<size>/`` until the next run replaces them. Bulky data (broker log, RocksDB, chDB) is
deleted at the end unless ``--keep-data``. This is a measurement, not a test: nothing fails when
a goal is missed.
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
import secrets
import shutil
import signal
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

from pydantic import SecretStr

from config.settings import Settings
from config.topics import KIND_BY_SUFFIX, Topics
from domain import stale_modules
from domain.model import TIERS
from domain.records import Event
from ops import broker, ports
from ops.admin import changelog_topics, create_topics
from ops.simulate import Outgoing, encode_event, generate, send_outgoing
from ops.workers import WorkerProcess
from schemas import codec

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "var" / "bench"
# The dashboard's tier mix (refreshed by ClickHouse), with each answer's age; and the exact one.
TIER_QUERY = ("SELECT tier, customers, toUInt64(greatest(0, dateDiff('millisecond', refreshed_at, now64(3, 'UTC')))) "
              "FROM {db}.v_tiers_now ORDER BY tier")
EXACT_TIER_QUERY = "SELECT tier, count() FROM {db}.signals_current FINAL GROUP BY tier ORDER BY tier"
EXACT_PAUSE_SECONDS = 2.0
GOALS = {
    "p1_over_f": 0.25,  # P1 >= 0.25 F
    "p1_over_f_aim": 0.5,  # what to aim for
    "state_cpu_us_per_event": 400.0,
    "sink_cpu_us_per_event": 50.0,
    "freshness_p99_s": 1.0,  # at 80% of P1, and kept up
    "bi_p50_ms": 25.0,  # during ingest
    "p1_scale_ratio": 0.8,  # P1 with ten times the customers >= 0.8 P1
    "p2_over_p1": 1.3,  # two state workers >= 1.3 P1
}
FRESHNESS_SHARE = 0.8  # the goal's load: 80% of the measured maximum rate P1
POLL_SECONDS = 0.1
FIRST_BATCH_POLL_SECONDS = 0.05
# Kafka's default, as a production broker has it (the project's own broker sets 0 for its tests):
# a new group waits 3 s for more members before its first assignment, so P2's two state workers,
# started together, form their group together instead of one taking the backlog alone and the
# other joining it seconds later. No P starts its clock before a first batch, so none pays the wait.
BROKER_PROPERTIES = {"group.initial.rebalance.delay.ms": "3000"}
ALL_WORKERS_WAIT_SECONDS = 120.0  # how long P waits for every state worker's first batch
BI_PAUSE_SECONDS = 0.2


# -- small helpers ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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
    compiled, stale = stale_modules()  # what `loyalty compile` built, and whether the workers run it
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "src_changed_since_commit": changed,
            "compiled_modules": 0 if stale else len(compiled)}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- /proc readings -------------------------------------------------------------------------------


def _stat_cpu(path: Path) -> float:
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread) so far."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def process_threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name; chDB and RocksDB name their threads, Python threads are all
    "python", so the event loop's thread (the main one) is told apart as "python-main"."""
    by_name: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip().rstrip("0123456789")
            if name == "python":
                name = "python-main" if task.name == str(pid) else "python-other"
            by_name[name] = by_name.get(name, 0.0) + _stat_cpu(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return by_name


def main_thread_schedstat(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread (a state worker's event loop) has run on a CPU and has
    waited in a run queue for one, so far (/proc/<pid>/task/<pid>/schedstat; zeros where the
    kernel keeps no such figures)."""
    try:
        run_ns, wait_ns = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


#: The sink's threads by the work they do (sinks/threads.py names them); every other thread is the
#: embedded engine's own (chDB's pools: merges, background schedules).
SINK_THREAD_WORK = {"python-main": "python", "python-other": "python", "sink-rows": "python",
                    "ch-write": "inserts", "ch-read": "reads"}


def sink_cpu_by_work(threads: dict[str, float]) -> dict[str, float]:
    """A sink's CPU seconds by thread name, summed by work: ``python`` (the sink's own work: the
    event loop's fetches, commits and HTTP API, and the rows built from the records), ``inserts``
    (the thread that calls the client's inserts: the client's encoding, and what of the embedded
    engine's work runs on the calling thread), ``reads`` (the thread that runs queries: BI, the
    benchmark's polls), ``engine`` (the embedded engine's own threads: the inserts' pipelines and
    views, merges, the tier mix's refresh). With a ClickHouse server, the engine's share is the
    server's, not the sink's."""
    by_work: dict[str, float] = {}
    for name, seconds in threads.items():
        work = SINK_THREAD_WORK.get(name, "engine")
        by_work[work] = by_work.get(work, 0.0) + seconds
    return by_work


def process_memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory, MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent neither idle nor waiting for I/O since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _top(by_name: dict[str, float], limit: int = 8) -> dict[str, float]:
    busiest = sorted(by_name.items(), key=lambda item: -item[1])[:limit]
    return {name: round(seconds, 2) for name, seconds in busiest}


# -- the worker processes -------------------------------------------------------------------------


class Service(WorkerProcess):
    """``loyalty worker --role <role>`` as a child process (optionally under cProfile), with the
    readings the benchmark takes of it."""

    def __init__(self, name: str, role: str, settings: Settings, log_path: Path,
                 profile_path: Path | None = None) -> None:
        super().__init__(settings, log_path, role=role, name=name, profile_path=profile_path, cwd=REPO)
        self.healthy_at = 0.0
        self.cpu_at_health = 0.0
        self.threads_at_health: dict[str, float] = {}

    def wait_healthy(self, timeout: float = 180.0) -> None:
        super().wait_healthy(timeout)
        self.healthy_at = time.time()
        self.cpu_at_health = self.cpu_seconds()
        self.threads_at_health = process_threads_cpu(self.pid)

    def get(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        return super().get(path, body, timeout)

    def processed(self) -> tuple[int, int]:
        """A state worker's (messages processed, messages dead-lettered), from GET /status."""
        counts = self.get("/status", timeout=15)["processed"]
        return int(counts.get("messages", 0)), int(counts.get("dead_lettered", 0))

    def copied(self) -> int:
        """Records the sink has copied into ClickHouse (and committed), from GET /status."""
        return int(self.get("/status", timeout=15)["sink"]["copied"].get("records", 0))

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def memory_mb(self) -> dict[str, float]:
        return process_memory_mb(self.pid)

    def stop(self, timeout: float = 120.0) -> int | None:
        return super().stop(timeout)


class Deployment:
    """One sink and ``states`` state workers of one app id over one topic prefix."""

    def __init__(self, root: Path, bootstrap: str, prefix: str, app_id: str, partitions: int, key: str,
                 states: int = 1, profile: bool = False) -> None:
        self.root = root

        def settings(name: str) -> Settings:
            return Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, app_id=app_id, partitions=partitions,
                            data_dir=root / name, web_port=ports.free_ports(1), pseudonymisation_key=SecretStr(key))

        self.sink = Service("sink", "sink", settings("sink"), root / "sink.log")
        self.states = [
            Service(f"state-{i}", "state", settings(f"state-{i}"), root / f"state-{i}.log",
                    root / f"state-{i}.prof" if profile and i == 1 else None)
            for i in range(1, states + 1)
        ]

    @property
    def services(self) -> list[Service]:
        return [*self.states, self.sink]

    @property
    def database(self) -> str:
        return self.sink.settings.clickhouse_database

    def start(self) -> None:
        """Start the sink, then, once it answers, every state worker at once (so they join the
        group together): a sink already up, as in a deployment whose state workers restart."""
        self.sink.spawn()
        self.sink.wait_healthy()
        for service in self.states:
            service.spawn()
        for service in self.states:
            service.wait_healthy()

    def processed(self) -> tuple[list[int], int]:
        """Messages processed by each state worker, and dead letters over all."""
        counts = [s.processed() for s in self.states]
        return [n for n, _ in counts], sum(d for _, d in counts)

    def stop(self) -> dict[str, int | None]:
        return {s.name: s.stop() for s in self.services}

    def remove_data(self) -> None:
        """Delete the bulky data (RocksDB, chDB); logs and profiles stay."""
        for service in self.services:
            shutil.rmtree(service.settings.data_dir, ignore_errors=True)

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


# -- F: Faust's ceiling -----------------------------------------------------------------------------


def faust_ceiling(settings: Settings, expected: int, run_dir: Path, label: str, timeout: float = 900.0,
                  eager: bool = False) -> dict[str, Any]:
    """Run bench/faust_ceiling.py over the input topics until it has read ``expected`` records
    (``eager``: with the eager delivery of records to the stream, streams.delivery, as the state
    worker reads its input topics)."""
    result_path = run_dir / f"faust-ceiling-{label}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "bench" / "faust_ceiling.py"), "--bootstrap", settings.bootstrap,
               "--group", f"bench-faust-ceiling-{uuid.uuid4().hex[:8]}", "--expected", str(expected),
               "--result", str(result_path), "--partitions", str(settings.partitions),
               # the state worker's batches
               "--batch", str(settings.batch_max_events), "--within", str(settings.batch_max_seconds),
               *(["--eager"] if eager else []), *Topics(settings.topic_prefix).inputs]
    started = time.time()
    with open(run_dir / f"faust-ceiling-{label}.log", "ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not result_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"bench/faust_ceiling.py exited with {proc.returncode}; see {out.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Faust ceiling did not read {expected:,} records within {timeout:.0f}s")
            time.sleep(0.2)
        found = json.loads(result_path.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    counted = found["records"] - found["first_batch"]  # the first batch's records arrived before the clock started
    seconds = found["last_at"] - found["first_at"]
    return {
        "records": found["records"],
        "first_batch": found["first_batch"],
        "start_seconds": round(found["first_at"] - started, 2),
        "seconds": round(seconds, 3),
        "records_per_second": round(counted / seconds, 1),
        "cpu_us_per_record": round((found["last_cpu"] - found["first_cpu"]) / counted * 1e6, 1),
        "peak_memory_mb": found["peak_memory_mb"],
        "load_average_after": load_average(),
    }


# -- BI pre-load ------------------------------------------------------------------------------------


def preload_signals(dsn: str, database: str, customers: int, chunk: int = 1_000_000) -> None:
    """Migrate, then insert ``customers`` current signals (ids B0000001...), 10% twice.

    The first version of each goes in parts of ``chunk`` customers (one part at the default, as
    a live database's merges would have left it); the parts ClickHouse would still merge are
    merged during P1 instead, and charged to the sink: ten parts of 100,000 cost it about 30 us
    per event. The newer versions stay in a part of their own.

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


def snapshot(services: Sequence[Service], broker_pid: int | None, bench: bool = False) -> dict[str, Any]:
    """CPU of each process (and by thread) and of the machine, now; ``bench``: this process too
    (it sends the freshness load and asks the queries)."""
    pids = {s.name: s.pid for s in services}
    if broker_pid is not None:
        pids["broker"] = broker_pid
    if bench:
        pids["bench"] = os.getpid()
    return {"at": time.time(), "machine": machine_busy_seconds(),
            "cpu": {name: process_cpu_seconds(pid) for name, pid in pids.items()},
            "threads": {name: process_threads_cpu(pid) for name, pid in pids.items()},
            "main_thread": {name: main_thread_schedstat(pid) for name, pid in pids.items()}}


def cpu_between(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Per process: CPU seconds, cores busy and the busiest threads between two snapshots."""
    wall = last["at"] - first["at"]
    out: dict[str, Any] = {}
    for name, cpu in last["cpu"].items():
        used = cpu - first["cpu"][name]
        threads = {t: s - first["threads"][name].get(t, 0.0) for t, s in last["threads"][name].items()}
        out[name] = {"cpu_seconds": round(used, 2), "cores_busy": round(used / wall, 2),
                     "cpu_by_thread_seconds": _top(threads)}
        if name in last.get("main_thread", {}) and name in first.get("main_thread", {}):
            (run0, wait0), (run1, wait1) = first["main_thread"][name], last["main_thread"][name]
            ran, waited = run1 - run0, wait1 - wait0
            # the main thread's wall time: on a CPU, ready but waiting for one (the machine's
            # other work), and neither (waiting for the broker, for records, or a timer)
            out[name]["main_thread_shares"] = {"running": round(ran / wall, 3), "waiting_for_cpu": round(waited / wall, 3),
                                               "off_cpu": round(max(0.0, 1 - (ran + waited) / wall), 3)}
    out["machine"] = {"cpu_seconds": round(last["machine"] - first["machine"], 2),
                      "cores_busy": round((last["machine"] - first["machine"]) / wall, 2)}
    return out


def measure_pipeline(dep: Deployment, workload: Workload, timeout: float, broker_pid: int | None,
                     py_spy_output: Path | None = None, sink_idle: bool = False) -> dict[str, Any]:
    """Start the deployment on the pre-published backlog; time it from the state workers' first
    batch until ClickHouse shows every signal (``sink_idle``: then read the sink's CPU with nothing
    to copy, :func:`sink_idle_cores`; P1 reports it)."""
    spawned = time.time()
    dep.start()
    healthy = time.time()
    sampler = PySpy(dep.states[0].pid, py_spy_output) if py_spy_output is not None else None
    deadline = time.monotonic() + timeout
    stalls: list[float] = []  # seconds a GET /status waited in vain: a worker's event loop was busy

    def counts() -> tuple[list[int], int] | None:
        asked = time.monotonic()
        try:
            return dep.processed()
        except (TimeoutError, urllib.error.URLError, OSError):
            stalls.append(round(time.monotonic() - asked, 1))
            return None

    # P starts when every state worker has processed a batch: with two, the one that joined the
    # group first works alone until the other joins and the group rebalances (a start-up cost,
    # left out as the single worker's start-up is).
    first_counts: list[int] = []
    any_first_at: float | None = None
    while time.monotonic() < deadline:
        got = counts()
        first_counts = got[0] if got else []
        if sum(first_counts) and any_first_at is None:
            any_first_at = time.time()
        if first_counts and all(first_counts):
            break
        if any_first_at is not None and (time.time() - any_first_at > ALL_WORKERS_WAIT_SECONDS
                                         or sum(first_counts) >= workload.events):
            break  # one worker got (or finished) everything: measured as it is, and reported
        time.sleep(FIRST_BATCH_POLL_SECONDS)
    if not sum(first_counts):
        raise TimeoutError(f"no state worker processed anything within {timeout:.0f}s; see {dep.root}")
    first = snapshot(dep.services, broker_pid)
    n_first = sum(first_counts)
    sink_before_first = dep.sink.copied()
    per_worker, dead = first_counts, 0
    progress: list[tuple[float, int]] = [(0.0, n_first)]  # (seconds since the first batch, messages)
    while time.monotonic() < deadline:
        got = counts()
        if got is None:
            continue
        per_worker, dead = got
        progress.append((round(time.time() - first["at"], 2), sum(per_worker)))
        if sum(per_worker) >= workload.events:
            break
        time.sleep(0.2)
    processed = sum(per_worker)
    capped = processed < workload.events
    if sampler is not None:
        sampler.stop()
    if not capped:
        _wait_signals_visible(dep, workload)
    last = snapshot(dep.services, broker_pid)
    done = workload.events if not capped else processed
    seconds = last["at"] - first["at"]
    cpu = cpu_between(first, last)
    state_cpu = sum(cpu[s.name]["cpu_seconds"] for s in dep.states)
    sink_cpu = last["cpu"]["sink"] - dep.sink.cpu_at_health
    idle = sink_idle_cores(dep.sink) if sink_idle else None
    out: dict[str, Any] = {
        "events": done,
        # messages the state workers processed when the last one was: above "events" when some
        # were redelivered (a rebalance) or gone-quiet checks came in
        "messages_processed": processed,
        "messages_by_state_worker": per_worker,
        "messages_by_state_worker_at_start": first_counts,
        "capped": capped,
        "dead_lettered": dead,
        "start_seconds": round(healthy - spawned, 2),
        "wait_for_first_batch_seconds": round(first["at"] - healthy, 2),
        "first_batch_messages": n_first,
        "every_state_worker_started": all(first_counts),
        "seconds_before_every_state_worker_started": round(first["at"] - (any_first_at or first["at"]), 2),
        "sink_records_before_first_batch": sink_before_first,
        "seconds": round(seconds, 3),
        "events_per_second": round((done - n_first) / seconds, 1),
        "status_timeouts": len(stalls),
        "rate_by_quarter": _rate_by_quarter(progress),
        "progress": _every(progress, 10.0),
        "state_cpu_us_per_event": round(state_cpu / (done - n_first) * 1e6, 1),
        "sink_cpu_seconds": round(sink_cpu, 2),
        "sink_cpu_us_per_event": round(sink_cpu / done * 1e6, 1),
        # the same span (from its health) by the work of its threads
        "sink_cpu_us_per_event_by_work": {
            work: round(seconds / done * 1e6, 1) for work, seconds in sink_cpu_by_work(
                {name: seconds - dep.sink.threads_at_health.get(name, 0.0)
                 for name, seconds in last["threads"]["sink"].items()}).items()},
        "cpu_during_p": cpu,
        "input_partitions_by_state_worker": {s.name: _input_partitions(s) for s in dep.states},
        # wall seconds in each step of the agent's batches since it started (GET /status)
        "batch_seconds_by_state_worker": {s.name: s.get("/status", timeout=15).get("batch_seconds", {})
                                          for s in dep.states},
        "sink_status": {k: v for k, v in dep.sink.get("/status", timeout=30)["sink"].items()
                        if k in ("batches", "copied", "sink_retries")},
        "memory_mb": {s.name: s.memory_mb() for s in dep.services},
        "load_average_after": load_average(),
    }
    if idle is not None:
        # what the sink spends with no record to copy (the tier mix's refresh, its timers, the
        # last merges), and its CPU per event without that rate over the same span: an estimate
        out["sink_idle_cores"] = round(idle, 3)
        out["sink_cpu_us_per_event_net_of_idle"] = round(
            max(0.0, sink_cpu - idle * (last["at"] - dep.sink.healthy_at)) / done * 1e6, 1)
    return out


SINK_SETTLE_SECONDS = 2.0
SINK_IDLE_SECONDS = 5.0


def sink_idle_cores(sink: Service) -> float:
    """Cores the sink keeps busy with nothing to copy, after the last insert has settled: the
    refresh of the tier mix (``clickhouse_tiers_now_refresh_seconds``, over every customer,
    pre-loaded ones included), its timers and what chDB still merges."""
    time.sleep(SINK_SETTLE_SECONDS)
    before = sink.cpu_seconds()
    time.sleep(SINK_IDLE_SECONDS)
    return (sink.cpu_seconds() - before) / SINK_IDLE_SECONDS


def _every(progress: Sequence[tuple[float, int]], seconds: float) -> list[tuple[float, int]]:
    """The progress points at least ``seconds`` apart, and the last one."""
    kept = [progress[0]]
    for point in progress[1:]:
        if point[0] - kept[-1][0] >= seconds:
            kept.append(point)
    return kept if kept[-1] == progress[-1] else [*kept, progress[-1]]


def _input_partitions(state: Service) -> list[str]:
    """The input topic partitions a state worker is assigned, as topic-suffix[partition]."""
    prefix = state.settings.topic_prefix
    inputs = Topics(prefix).inputs
    assigned = state.get("/status", timeout=30).get("assignment", [])
    return [name[len(prefix):] for name in assigned if name.rsplit("[", 1)[0] in inputs]


def _rate_by_quarter(progress: Sequence[tuple[float, int]]) -> list[float]:
    """Events per second in each quarter of the processing (by messages done): does it slow down?"""
    if len(progress) < 2 or progress[-1][1] <= progress[0][1]:
        return []
    rates = []
    lo_n, total = progress[0][1], progress[-1][1]
    for q in range(4):
        lo, hi = lo_n + (total - lo_n) * q / 4, lo_n + (total - lo_n) * (q + 1) / 4
        inside = [(t, n) for t, n in progress if lo <= n <= hi] or [progress[-1]]
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        rates.append(round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else 0.0)
    return rates


def _wait_signals_visible(dep: Deployment, workload: Workload, timeout: float = 900) -> float:
    """When ClickHouse shows one current signal per customer with every event applied (exact)."""
    sql = (f"SELECT count(), sum(version) FROM {dep.database}.signals_current FINAL "
           "WHERE startsWith(customer_id, 'C')")
    deadline = time.monotonic() + timeout
    customers = applied = None
    while time.monotonic() < deadline:
        customers, applied = dep.sink.query(sql)[0]
        if int(customers) == workload.customers and int(applied or 0) == workload.events:
            return time.time()
        time.sleep(0.1)
    raise RuntimeError(f"ClickHouse shows {customers} customers / {applied} events applied, not "
                       f"{workload.customers} / {workload.events}")


# -- the changelog ------------------------------------------------------------------------------------


def changelog_sizes(settings: Settings, topic: str, timeout: float = 900) -> dict[str, Any]:
    """Every record of a changelog topic from the start: records, bytes (key + value), keys, and
    the size of each key's latest value, averaged (tombstones count as gone)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None, enable_auto_commit=False,
                             client_id="bench-changelog", max_partition_fetch_bytes=8 * 1024 * 1024,
                             fetch_max_bytes=64 * 1024 * 1024)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        begins, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > begins[tp]}
        latest: dict[bytes, int | None] = {}
        records = size = 0
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=1000, max_records=20_000).items():
                for record in batch:
                    records += 1
                    size += len(record.key or b"") + len(record.value or b"")
                    if record.key is not None:
                        latest[record.key] = None if record.value is None else len(record.value)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        live = [n for n in latest.values() if n is not None]
        return {"topic": topic, "records": records, "offsets": sum(ends[tp] - begins[tp] for tp in partitions),
                "bytes": size, "keys": len(live), "complete": not remaining,
                "latest_value_bytes_mean": round(statistics.fmean(live), 1) if live else None}
    finally:
        consumer.close()


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


@dataclasses.dataclass
class PacedReport:
    """What :class:`PacedBatchPublisher` sent, in :func:`send_outgoing`'s report's terms."""

    sent: int
    elapsed_seconds: float

    @property
    def per_second(self) -> float:
        return self.sent / self.elapsed_seconds if self.elapsed_seconds else 0.0


class PacedBatchPublisher:
    """Publishes messages at a steady rate as upstream systems with batching producers do: every
    ``slice_seconds`` the messages due so far, one record batch per topic partition (the state
    worker's :class:`streams.batches.PartitionBatches`: the key's murmur2 partition, acks from
    every in-sync replica), and notes when each marker customer's first event went out (the
    slice's start, before its batches are built: never later than the send).

    About 5 us of this process's CPU per message, where kafka-python's ``send`` of one message at
    a time costs about 135 (0.25-0.33 of a core of the two at the freshness load's rates): the
    load's sender is not the pipeline, and on a machine of two cores it competed with it."""

    def __init__(self, settings: Settings, markers: set[bytes], slice_seconds: float = 0.01) -> None:
        self.settings = settings
        self.markers = markers
        self.slice_seconds = slice_seconds
        self.sent_at: dict[bytes, float] = {}
        self.lock = threading.Lock()

    def published(self) -> dict[bytes, float]:
        with self.lock:
            return dict(self.sent_at)

    def send(self, messages: Sequence[Outgoing], topics: Topics, rate: float) -> PacedReport:
        return asyncio.run(self._send(messages, topics, rate))

    async def _send(self, messages: Sequence[Outgoing], topics: Topics, rate: float) -> PacedReport:
        from streams.batches import PartitionBatches, output_producer

        producer = output_producer(self.settings, request_timeout_seconds=60)
        await producer.start()
        loop = asyncio.get_running_loop()
        try:
            batches = PartitionBatches(producer)
            started = loop.time()
            done = 0
            while done < len(messages):
                due = min(len(messages), int((loop.time() - started) * rate) + 1)
                if due > done:
                    at = time.time()
                    for message in messages[done:due]:
                        batches.add(topics.for_kind(message.topic_kind), message.key, message.value)
                        if message.key in self.markers and message.key not in self.sent_at:
                            with self.lock:
                                self.sent_at[message.key] = at
                    await batches.send()
                    done = due
                await asyncio.sleep(max(0.0, min(self.slice_seconds, started + done / rate - loop.time())))
            return PacedReport(sent=len(messages), elapsed_seconds=loop.time() - started)
        finally:
            await producer.stop()


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


def bi_query_ms(sink: Service, sql: str = TIER_QUERY) -> float:
    return timed_query(sink, sql)[0]


def timed_query(sink: Service, sql: str) -> tuple[float, list[Any]]:
    """(milliseconds, rows) of one query through the sink's endpoint."""
    started = time.perf_counter()
    rows = sink.query(sql.format(db=sink.settings.clickhouse_database))
    return (time.perf_counter() - started) * 1000, rows


def group_lag(settings: Settings, group: str, topics: Sequence[str]) -> int:
    """Records on ``topics`` past the offsets ``group`` committed."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=group, enable_auto_commit=False,
                             client_id="bench-lag")
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close()


def measure_freshness_and_bi(dep: Deployment, workload: Workload, rate: float, share: float,
                             bi_customers_expected: int, marker_ms: int, bi_pause: float | None,
                             broker_pid: int | None = None, publisher: str = "batches") -> dict[str, Any]:
    """Publish ``workload`` at ``rate``/s (``publisher``: "batches", :class:`PacedBatchPublisher`, or
    "one-by-one", kafka-python's ``send`` per message); marker latencies into ClickHouse and BI
    latencies meanwhile."""
    from streams.sink import sink_group_id

    sink, settings, db = dep.sink, dep.sink.settings, dep.database
    topics = Topics(settings.topic_prefix)
    already = sum(dep.processed()[0])
    for _ in range(2):
        bi_query_ms(sink, EXACT_TIER_QUERY)  # warm up: the first FINAL over cold parts is not what a BI user sees
    idle_exact = [bi_query_ms(sink, EXACT_TIER_QUERY) for _ in range(15)]
    bi_customers = sum(int(n) for _, n in sink.query(EXACT_TIER_QUERY.format(db=db)))
    deadline = time.monotonic() + 10  # the view as of a refresh after the pre-load
    while (sum(int(row[1]) for row in sink.query(TIER_QUERY.format(db=db))) != bi_customers
           and time.monotonic() < deadline):
        time.sleep(0.2)
    idle = [bi_query_ms(sink) for _ in range(15)]
    view_customers = sum(int(row[1]) for row in sink.query(TIER_QUERY.format(db=db)))

    markers = choose_markers(workload.messages, max(1, round(rate * marker_ms / 1000)))
    producer: TimedProducer | PacedBatchPublisher = (
        PacedBatchPublisher(settings, markers) if publisher == "batches"
        else TimedProducer(_producer(settings, linger_ms=5), markers))
    seen_at: dict[bytes, float] = {}

    def poll_markers() -> None:
        pending = [k for k in producer.published() if k not in seen_at]
        if not pending:
            return
        ids = ", ".join(f"'{k.decode()}'" for k in pending)
        rows = sink.query(f"SELECT DISTINCT customer_id FROM {db}.signals_current WHERE customer_id IN ({ids})")
        now = time.time()
        for (cid,) in rows:
            seen_at.setdefault(cid.encode(), now)

    bi_during: list[float] = []
    bi_ages: list[float] = []
    exact_during: list[float] = []

    def dashboard() -> None:
        ms, rows = timed_query(sink, TIER_QUERY)
        bi_during.append(ms)
        if rows:
            bi_ages.append(max(int(row[2]) for row in rows) / 1000)

    poller = Repeater(poll_markers, POLL_SECONDS)
    bi_loop = Repeater(dashboard, bi_pause or 0.0)
    exact_loop = Repeater(lambda: exact_during.append(bi_query_ms(sink, EXACT_TIER_QUERY)), EXACT_PAUSE_SECONDS)
    poller.start()
    if bi_pause is not None:  # None: freshness alone, to see what the BI queries cost it
        bi_loop.start()
        exact_loop.start()
    try:
        cpu_at_start = {service.name: service.cpu_seconds() for service in dep.services}
        sending = snapshot(dep.services, broker_pid, bench=True)
        status_before = [state.get("/status", timeout=15) for state in dep.states]
        report = (producer.send(workload.messages, topics, rate) if isinstance(producer, PacedBatchPublisher)
                  else send_outgoing(producer, workload.messages, topics, rate))
        sent_done = time.time()
        while_sending = cpu_between(sending, snapshot(dep.services, broker_pid, bench=True))
        status_after = [state.get("/status", timeout=15) for state in dep.states]
        state_backlog = already + workload.events - sum(dep.processed()[0])
        sink_backlog = group_lag(settings, sink_group_id(settings), (*topics.inputs, topics.signals))
        deadline = time.monotonic() + 60
        while len(seen_at) < len(markers) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for loop in (bi_loop, exact_loop):
            if loop.is_alive():
                loop.stop()
        poller.stop()
        if isinstance(producer, TimedProducer):
            producer.producer.close(timeout=10)
    drained = _wait_processed(dep, already + workload.events)
    # CPU per event of each process over the load and its drain (live batches, not P1's backlog)
    cpu_us = {service.name: round((service.cpu_seconds() - cpu_at_start[service.name]) / workload.events * 1e6, 1)
              for service in dep.services}
    sent_at = producer.published()
    latencies = [seen_at[k] - sent_at[k] for k in sent_at if k in seen_at]
    return {
        "share_of_p": share,
        "publisher": publisher,
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
        "state_backlog_when_sent": state_backlog,
        "sink_backlog_when_sent": sink_backlog,
        # kept up: when the last event was sent, at most ~1 s of records was pending in either
        "kept_up": state_backlog <= rate and sink_backlog <= rate,
        "drained_after_send_s": round(drained - sent_done, 2),
        "cpu_us_per_event": cpu_us,
        # cores each process kept busy while the load was sent (the drain after it left out)
        "cores_busy_while_sending": {name: figures["cores_busy"] for name, figures in while_sending.items()},
        # how each process's main thread spent the load's wall time (a state worker's event loop)
        "main_thread_while_sending": {name: figures["main_thread_shares"] for name, figures in while_sending.items()
                                      if "main_thread_shares" in figures},
        # wall seconds in each step of the state workers' batches meanwhile (GET /status)
        # ("waiting" includes the idle wait before the load's first batch)
        "batch_seconds_while_sending": {
            state.name: {step: round(seconds - before["batch_seconds"].get(step, 0.0), 3)
                         for step, seconds in after["batch_seconds"].items()}
            for state, before, after in zip(dep.states, status_before, status_after)},
        # batches the state workers took meanwhile, and their mean size (records)
        "batches_while_sending": {
            state.name: _batches_between(before["processed"], after["processed"])
            for state, before, after in zip(dep.states, status_before, status_after)},
        "poll_errors": poller.errors[:3],
        "bi": {
            "query": TIER_QUERY.format(db=db),
            "pause_between_queries_s": bi_pause,
            "customers": view_customers,
            "customers_expected": bi_customers_expected,
            **query_latencies(bi_during, idle),
            "answer_age_p50_s": _round(percentile(bi_ages, 50), 3),
            "answer_age_p99_s": _round(percentile(bi_ages, 99), 3),
            "errors": bi_loop.errors[:3],
        },
        "bi_exact": {
            "query": EXACT_TIER_QUERY.format(db=db),
            "pause_between_queries_s": EXACT_PAUSE_SECONDS,
            "customers": bi_customers,
            **query_latencies(exact_during, idle_exact),
            "errors": exact_loop.errors[:3],
        },
        "memory_mb": {s.name: s.memory_mb() for s in dep.services},
        "load_average_after": load_average(),
    }


def _batches_between(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    batches = after.get("batches", 0) - before.get("batches", 0)
    messages = after.get("messages", 0) - before.get("messages", 0)
    return {"batches": batches, "mean_records": round(messages / batches, 1) if batches else 0.0}


def query_latencies(during: Sequence[float], idle: Sequence[float]) -> dict[str, Any]:
    """Count, p50 and p99 in ms of a query's latencies during the load and idle."""
    return {
        "during_ingest_n": len(during),
        "during_ingest_p50_ms": _round(percentile(during, 50), 1),
        "during_ingest_p99_ms": _round(percentile(during, 99), 1),
        "idle_n": len(idle),
        "idle_p50_ms": _round(percentile(idle, 50), 1),
        "idle_p99_ms": _round(percentile(idle, 99), 1),
    }


def _wait_processed(dep: Deployment, total: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(dep.processed()[0]) >= total:
                return time.time()
        except (TimeoutError, urllib.error.URLError, OSError):
            continue  # an event loop was busy for the whole request timeout; ask again
        time.sleep(0.2)
    raise RuntimeError(f"the state workers did not process {total:,} messages within {timeout:.0f}s")


# -- one size ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    label: str
    customers: int
    events_per_customer: float
    preload_customers: int  # extra customers' signals for BI; 0: none
    main: bool  # F, changelog, freshness, BI and P2 too


def run_size(spec: SizeSpec, broker_settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = BENCH_DIR / spec.label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    tag = uuid.uuid4().hex[:8]
    bootstrap = broker_settings.bootstrap
    broker_pid = broker.status(broker_settings).pid
    key = secrets.token_hex(32)  # one pseudonymisation key for every process of this size
    inputs = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}-p1",
                      data_dir=run_dir / "data", partitions=args.partitions)
    result: dict[str, Any] = {"label": spec.label, "topic_prefix": inputs.topic_prefix}

    log(f"[{spec.label}] generating {spec.customers:,} customers x ~{spec.events_per_customer:g} events")
    workload = build_workload(spec.customers, spec.events_per_customer, args.seed)
    result["workload"] = {"events": workload.events, "customers": workload.customers, "kinds": workload.kinds,
                          "history_days": workload.history_days,
                          "generate_seconds": round(workload.generate_seconds, 1)}
    log(f"[{spec.label}] {workload.events:,} events ({workload.kinds}) in {workload.generate_seconds:.0f}s; publishing")
    create_topics(inputs)
    result["publish_events_per_second"] = round(publish_all(inputs, workload.messages), 1)

    log(f"[{spec.label}] baseline B (before P1)")
    b_before = baseline(inputs, workload.events)
    log(f"[{spec.label}] B before: {b_before['events_per_second']:,.0f} events/s")
    f_before = None
    if spec.main:
        log(f"[{spec.label}] Faust ceiling F (before P1)")
        f_before = faust_ceiling(inputs, workload.events, run_dir, "before")
        log(f"[{spec.label}] F before: {f_before['records_per_second']:,.0f} records/s, "
            f"{f_before['cpu_us_per_record']:,.1f} us CPU per record")
        log(f"[{spec.label}] Faust ceiling with eager delivery, streams/delivery.py (F eager)")
        result["faust_ceiling_eager"] = faust_ceiling(inputs, workload.events, run_dir, "eager", eager=True)
        log(f"[{spec.label}] F eager: {result['faust_ceiling_eager']['records_per_second']:,.0f} records/s, "
            f"{result['faust_ceiling_eager']['cpu_us_per_record']:,.1f} us CPU per record")

    dep = Deployment(run_dir / "p1", bootstrap, inputs.topic_prefix, inputs.app_id, args.partitions, key,
                     states=1, profile=args.profile)
    result["p1_app_id"] = dep.sink.settings.app_id
    if spec.preload_customers:
        log(f"[{spec.label}] pre-loading {spec.preload_customers:,} customers' signals into P1's sink")
        result["preload"] = {"customers": spec.preload_customers,
                             "seconds": round(run_preload(dep.sink.settings, spec.preload_customers), 1)}
    try:
        log(f"[{spec.label}] P1: one state worker and one sink on the backlog of {workload.events:,} events")
        spy_path = run_dir / "state-1.py-spy.txt" if args.py_spy else None
        p1 = measure_pipeline(dep, workload, args.p_timeout, broker_pid, spy_path, sink_idle=spec.main)
        result["p1"] = p1
        if spy_path is not None and spy_path.exists():
            result["py_spy"] = {"path": str(spy_path.relative_to(REPO)), **summarise_py_spy(spy_path)}
        log(f"[{spec.label}] P1: {p1['events_per_second']:,.0f} events/s{' (capped)' if p1['capped'] else ''}; "
            f"state {p1['state_cpu_us_per_event']:,.0f} us/event, sink {p1['sink_cpu_us_per_event']:,.0f} us/event")
        if spec.main and not p1["capped"]:
            log(f"[{spec.label}] reading the changelogs")
            result["changelog"] = {table: changelog_sizes(inputs, topic) for table, topic in
                                   zip(("relationships", "due_times"), changelog_topics(dep.sink.settings))}
        if p1["capped"]:
            dep.stop()  # it would go on through the backlog and take the CPU from the baseline
        log(f"[{spec.label}] baseline B (after P1)")
        b_after = baseline(inputs, workload.events)
        b = (b_before["events_per_second"] + b_after["events_per_second"]) / 2
        result["baseline"] = {"before": b_before, "after": b_after, "events_per_second": round(b, 1)}
        result["p1_over_b"] = round(p1["events_per_second"] / b, 4)
        if f_before is not None:
            log(f"[{spec.label}] Faust ceiling F (after P1)")
            f_after = faust_ceiling(inputs, workload.events, run_dir, "after")
            result["faust_ceiling"] = {
                "before": f_before, "after": f_after,
                "records_per_second": round((f_before["records_per_second"] + f_after["records_per_second"]) / 2, 1),
                "cpu_us_per_record": round((f_before["cpu_us_per_record"] + f_after["cpu_us_per_record"]) / 2, 1),
                "peak_memory_mb": max(f_before["peak_memory_mb"], f_after["peak_memory_mb"]),
            }
        if spec.main and not p1["capped"]:
            rate = args.freshness_share * p1["events_per_second"]
            events = max(1_000, round(rate * args.freshness_seconds))
            fresh = build_workload(max(100, round(events / spec.events_per_customer)), spec.events_per_customer,
                                   args.seed + 1, prefix="F")
            log(f"[{spec.label}] freshness + BI: {fresh.events:,} events at {rate:,.0f}/s")
            result["freshness"] = measure_freshness_and_bi(
                dep, fresh, rate, args.freshness_share, spec.preload_customers + workload.customers,
                args.marker_ms, None if args.no_bi_load else args.bi_pause, broker_pid, args.publisher)
    finally:
        result["p1_exit_codes"] = dep.stop()
    for state in dep.states:
        if state.profile_path is not None:
            result["profile"] = {"path": str(state.profile_path.relative_to(REPO)),
                                 "top_cumulative": profile_top(state.profile_path)}
    if not args.keep_data:
        dep.remove_data()

    if spec.main and args.p2:
        result["p2"] = run_p2(spec, workload, broker_settings, tag, key, args, run_dir)
        log(f"[{spec.label}] P2: {result['p2']['events_per_second']:,.0f} events/s")
    return result


def run_p2(spec: SizeSpec, workload: Workload, broker_settings: Settings, tag: str, key: str,
           args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Two state workers and one sink over a copy of the topics (the outputs follow the prefix)."""
    copy = Settings(kafka_bootstrap=broker_settings.bootstrap, topic_prefix=f"bench{tag}p2.",
                    app_id=f"bench-{tag}-p2", data_dir=run_dir / "data", partitions=args.partitions)
    log(f"[{spec.label}] publishing the same {workload.events:,} events again for P2")
    create_topics(copy)
    publish_all(copy, workload.messages)
    dep = Deployment(run_dir / "p2", broker_settings.bootstrap, copy.topic_prefix, copy.app_id, args.partitions,
                     key, states=2)
    if spec.preload_customers:
        log(f"[{spec.label}] pre-loading {spec.preload_customers:,} customers' signals into P2's sink")
        run_preload(dep.sink.settings, spec.preload_customers)
    try:
        log(f"[{spec.label}] P2: two state workers and one sink on the backlog of {workload.events:,} events")
        p2 = measure_pipeline(dep, workload, args.p_timeout, broker.status(broker_settings).pid)
    finally:
        p2_exit = dep.stop()
    if not args.keep_data:
        dep.remove_data()
    return {**p2, "app_id": copy.app_id, "topic_prefix": copy.topic_prefix, "exit_codes": p2_exit}


def profile_top(path: Path, limit: int = 15) -> str:
    if not path.exists():
        return f"(no profile written at {path})"
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


# -- report ------------------------------------------------------------------------------------------


def headline(main: dict[str, Any], scale: dict[str, Any] | None) -> dict[str, Any]:
    """The figures the goals are about, at the top level of the JSON."""
    f = main.get("faust_ceiling") or {}
    f_eager = main.get("faust_ceiling_eager") or {}
    p1, p2 = main["p1"], main.get("p2")
    fresh = main.get("freshness") or {}
    bi = fresh.get("bi") or {}
    changelog = main.get("changelog") or {}
    events = main["workload"]["events"]
    memory = (fresh.get("memory_mb") or p1["memory_mb"])  # VmHWM only grows: the later reading
    peaks = {f"P1 {name}": m.get("VmHWM") for name, m in memory.items()}
    if p2:
        peaks.update({f"P2 {name}": m.get("VmHWM") for name, m in p2["memory_mb"].items()})
    if f:
        peaks["F faust_ceiling"] = f["peak_memory_mb"]
    out: dict[str, Any] = {
        "F": f.get("records_per_second"),
        "F_cpu_us_per_record": f.get("cpu_us_per_record"),
        # the same agent with the eager delivery the state worker uses for its input records (streams.delivery)
        "F_eager": f_eager.get("records_per_second"),
        "F_eager_cpu_us_per_record": f_eager.get("cpu_us_per_record"),
        "B": main["baseline"]["events_per_second"],
        "P1": p1["events_per_second"],
        "P2": p2["events_per_second"] if p2 else None,
        "P1_over_F": round(p1["events_per_second"] / f["records_per_second"], 4) if f else None,
        "P1_over_F_eager": round(p1["events_per_second"] / f_eager["records_per_second"], 4) if f_eager else None,
        "P2_over_P1": round(p2["events_per_second"] / p1["events_per_second"], 4) if p2 else None,
        "state_cpu_us_per_event": p1["state_cpu_us_per_event"],
        "sink_cpu_us_per_event": p1["sink_cpu_us_per_event"],
        "sink_idle_cores": p1.get("sink_idle_cores"),
        "sink_cpu_us_per_event_net_of_idle": p1.get("sink_cpu_us_per_event_net_of_idle"),
        "sink_cpu_us_per_event_by_work": p1.get("sink_cpu_us_per_event_by_work"),
        "changelog_bytes_per_event": (round(sum(c["bytes"] for c in changelog.values()) / events, 1)
                                      if changelog else None),
        "state_bytes_per_customer": (changelog.get("relationships") or {}).get("latest_value_bytes_mean"),
        "freshness_p50_s": fresh.get("freshness_p50_s"),
        "freshness_p99_s": fresh.get("freshness_p99_s"),
        "freshness_kept_up": fresh.get("kept_up"),
        "bi_p50_ms_during_ingest": bi.get("during_ingest_p50_ms"),
        "bi_p99_ms_during_ingest": bi.get("during_ingest_p99_ms"),
        "bi_answer_age_p99_s": bi.get("answer_age_p99_s"),
        "bi_exact_p50_ms_during_ingest": (fresh.get("bi_exact") or {}).get("during_ingest_p50_ms"),
        "P1_scale": scale["p1"]["events_per_second"] if scale else None,
        "P1_scale_ratio": round(scale["p1"]["events_per_second"] / p1["events_per_second"], 4) if scale else None,
        "P1_scale_capped": scale["p1"]["capped"] if scale else None,
        "scale_factor": (round(scale["workload"]["customers"] / main["workload"]["customers"], 1) if scale else None),
        "peak_memory_mb": peaks,
    }
    if p2:
        busy = {name: c["cores_busy"] for name, c in p2["cpu_during_p"].items()}
        out["P2_cores_busy"] = busy
        out["P2_busiest_process"] = max((n for n in busy if n != "machine"), key=busy.__getitem__)
    return out


def goals(figures: dict[str, Any], fresh: dict[str, Any]) -> dict[str, dict[str, Any]]:
    f, p1 = figures["F"], figures["P1"]
    out: dict[str, dict[str, Any]] = {}
    out["P1 >= 0.25 F (aim 0.5 F)"] = _goal(
        figures["P1_over_F"], lambda v: v >= GOALS["p1_over_f"],
        "{:.3f} F" + (f" ({p1:,.0f} / {f:,.0f})" if f else ""))
    out["state worker <= 400 us CPU per event"] = _goal(
        figures["state_cpu_us_per_event"], lambda v: v <= GOALS["state_cpu_us_per_event"], "{:,.0f} us")
    out["sink <= 50 us CPU per event"] = _goal(
        figures["sink_cpu_us_per_event"], lambda v: v <= GOALS["sink_cpu_us_per_event"], "{:,.0f} us")
    at_goal_load = fresh.get("share_of_p") == FRESHNESS_SHARE  # another --freshness-share does not count
    all_seen = fresh.get("markers", 0) == fresh.get("markers_seen", 0)
    kept_up = bool(fresh.get("kept_up"))
    out["freshness p99 <= 1 s at 80% of P1, kept up"] = _goal(
        figures["freshness_p99_s"] if at_goal_load else None,
        lambda v: v <= GOALS["freshness_p99_s"] and all_seen and kept_up,
        "{:.3f} s" + ("" if kept_up else ", fell behind"))
    out["BI p50 <= 25 ms during ingest"] = _goal(
        figures["bi_p50_ms_during_ingest"], lambda v: v <= GOALS["bi_p50_ms"], "{:.1f} ms")
    out[f"P1 with {figures['scale_factor'] or 10:g}x the customers >= 0.8 P1"] = _goal(
        figures["P1_scale_ratio"], lambda v: v >= GOALS["p1_scale_ratio"],
        "{:.3f} P1" + (" (capped)" if figures["P1_scale_capped"] else ""))
    out["P2 >= 1.3 P1"] = _goal(figures["P2_over_P1"], lambda v: v >= GOALS["p2_over_p1"], "{:.3f} P1")
    return out


def _goal(value: float | None, check: Callable[[float], bool], fmt: str) -> dict[str, Any]:
    if value is None:
        return {"value": None, "shown": "not measured", "met": None}
    return {"value": value, "shown": fmt.format(value), "met": bool(check(value))}


def _n(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_report(report: dict[str, Any]) -> None:
    m, figures = report["machine"], report
    print()
    print(f"Machine: {m['usable_cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB, Python {m['python']}; "
          f"load average at start {m['load_average_at_start']}, at end {m.get('load_average_at_end')}")
    src = report["source"]
    print(f"Source: commit {src['commit']}" + (f", source changed since: {', '.join(src['src_changed_since_commit'])}"
                                               if src["src_changed_since_commit"] else ", source unchanged")
          + (f"; the model compiled ({src['compiled_modules']} modules, `loyalty compile`)"
             if src.get("compiled_modules") else "; the model run from its sources"))
    header = (f"{'run':6} {'events':>9} {'customers':>9} {'F rec/s':>8} {'B ev/s':>8} {'P ev/s':>7} "
              f"{'state us/ev':>11} {'sink us/ev':>10} {'peak MB state/sink':>18}")
    print(header)
    print("-" * len(header))
    for run in report["runs"]:
        w = run["workload"]
        f = run.get("faust_ceiling") or {}
        for name, p in (("P1", run.get("p1")), ("P2", run.get("p2"))):
            if not p:
                continue
            states = [v.get("VmHWM", 0) for k, v in p["memory_mb"].items() if k.startswith("state")]
            print(f"{run['label'][:5] + ' ' + name:6} {w['events']:>9,} {w['customers']:>9,} "
                  f"{_n(f.get('records_per_second') if name == 'P1' else None):>8} "
                  f"{_n(run['baseline']['events_per_second'] if name == 'P1' else None):>8} "
                  f"{p['events_per_second']:>6,.0f}{'*' if p['capped'] else ' '} "
                  f"{p['state_cpu_us_per_event']:>11,.0f} {p['sink_cpu_us_per_event']:>10,.0f} "
                  f"{'+'.join(f'{s:,.0f}' for s in states) + ' / ' + _n(p['memory_mb']['sink'].get('VmHWM')):>18}")
        b = run["baseline"]
        print(f"{'':6} B before/after P1: {b['before']['events_per_second']:,.0f} / "
              f"{b['after']['events_per_second']:,.0f} ev/s"
              + (f"; F before/after: {f['before']['records_per_second']:,.0f} / "
                 f"{f['after']['records_per_second']:,.0f} rec/s at {f['cpu_us_per_record']:,.1f} us CPU/record"
                 if f else ""))
        fe = run.get("faust_ceiling_eager")
        if fe:
            share = run["p1"]["events_per_second"] / fe["records_per_second"]
            print(f"{'':6} F eager (streams/delivery.py, as the state worker reads its inputs): "
                  f"{fe['records_per_second']:,.0f} rec/s at "
                  f"{fe['cpu_us_per_record']:,.1f} us CPU/record; P1 = {share:.3f} F eager")
        p1 = run["p1"]
        cpu = p1["cpu_during_p"]
        print(f"{'':6} P1 cores busy: " + ", ".join(f"{k} {v['cores_busy']:.2f}" for k, v in cpu.items())
              + f"; state threads: {cpu['state-1']['cpu_by_thread_seconds']}")
        if "main_thread_shares" in cpu["state-1"]:
            print(f"{'':6} P1 state-1 main thread (share of the wall time): {cpu['state-1']['main_thread_shares']}")
        print(f"{'':6} P1 sink: {p1['sink_status']['batches']:,} batches, copied {p1['sink_status']['copied']}; "
              f"threads: {cpu['sink']['cpu_by_thread_seconds']}")
        if "sink_idle_cores" in p1:
            print(f"{'':6} P1 sink with nothing to copy: {p1['sink_idle_cores']:.3f} cores busy (the tier mix's refresh, "
                  f"timers, merges); {p1['sink_cpu_us_per_event_net_of_idle']:,.0f} us per event without that rate")
        if p1.get("sink_cpu_us_per_event_by_work"):
            print(f"{'':6} P1 sink, us per event by the work of its threads: {p1['sink_cpu_us_per_event_by_work']}")
        steps = p1.get("batch_seconds_by_state_worker", {}).get("state-1")
        if steps:
            print(f"{'':6} P1 state-1 batch steps (wall s): {steps}")
    if any(run[p]["capped"] for run in report["runs"] for p in ("p1", "p2") if p in run):
        print("(* capped by --p-timeout: rate over the events processed so far)")
    main = report["runs"][0]
    p2 = main.get("p2")
    if p2:
        cpu = p2["cpu_during_p"]
        print(f"P2 over {p2['seconds']:.1f} s: cores busy " + ", ".join(f"{k} {v['cores_busy']:.2f}" for k, v in cpu.items())
              + f" (busiest: {figures['P2_busiest_process']}); messages by state worker "
              f"{p2['messages_by_state_worker']}, of which {p2['messages_by_state_worker_at_start']} in the "
              f"{p2['seconds_before_every_state_worker_started']} s before both had started"
              + ("" if p2["every_state_worker_started"] else " (ONE WORKER NEVER STARTED)"))
    changelog = main.get("changelog")
    if changelog:
        print("Changelogs after P1: " + "; ".join(
            f"{t}: {c['records']:,} records, {c['bytes'] / 1e6:,.1f} MB, {c['keys']:,} keys, latest value "
            f"{_n(c['latest_value_bytes_mean'])} B on average" for t, c in changelog.items())
            + f" -> {_n(figures['changelog_bytes_per_event'])} B per event")
    fresh = main.get("freshness")
    if fresh:
        bi = fresh["bi"]
        print(f"Freshness at {fresh['share_of_p']:.0%} of P1 ({fresh['offered_rate']:,.0f}/s offered, "
              f"{fresh['achieved_rate']:,.0f}/s achieved, {fresh['seconds']:.0f} s): p50 {fresh['freshness_p50_s']} s, "
              f"p99 {fresh['freshness_p99_s']} s, max {fresh['freshness_max_s']} s "
              f"({fresh['markers_seen']}/{fresh['markers']} markers, polled every {fresh['poll_interval_s']} s); "
              f"state worker drained {fresh['drained_after_send_s']} s after the last send; " + _kept_up(fresh))
        if fresh.get("cpu_us_per_event"):
            print(f"CPU per event over the freshness load (us): {fresh['cpu_us_per_event']}")
        if fresh.get("cores_busy_while_sending"):
            print(f"Cores busy while the load was sent: {fresh['cores_busy_while_sending']}; state worker batch "
                  f"steps meanwhile (wall s): {fresh.get('batch_seconds_while_sending')}; batches: "
                  f"{fresh.get('batches_while_sending')}")
        if fresh.get("main_thread_while_sending"):
            print("Main threads while the load was sent (share of the wall time): "
                  f"{fresh['main_thread_while_sending']}")
        print(f"BI tier query over {bi['customers']:,} customers (v_tiers_now): during ingest p50 "
              f"{bi['during_ingest_p50_ms']} ms, p99 {bi['during_ingest_p99_ms']} ms (n={bi['during_ingest_n']}), "
              f"answers p50 {bi.get('answer_age_p50_s')} s / p99 {bi.get('answer_age_p99_s')} s old; "
              f"idle p50 {bi['idle_p50_ms']} ms, p99 {bi['idle_p99_ms']} ms (n={bi['idle_n']})")
        exact = fresh.get("bi_exact")
        if exact:
            print(f"Exact tier query (signals_current FINAL, every {exact['pause_between_queries_s']} s): during "
                  f"ingest p50 {exact['during_ingest_p50_ms']} ms, p99 {exact['during_ingest_p99_ms']} ms "
                  f"(n={exact['during_ingest_n']}); idle p50 {exact['idle_p50_ms']} ms, p99 {exact['idle_p99_ms']} ms")
    print(f"Peak memory (VmHWM, MB): {figures['peak_memory_mb']}")
    scaling = report.get("scaling")
    if scaling:
        print(f"Scaling {scaling['from_customers']:,} -> {scaling['to_customers']:,} customers: "
              f"P1 x{scaling['p1_ratio']:.3f}, B x{scaling['b_ratio']:.3f}, state CPU per event "
              f"x{scaling['state_cpu_ratio']:.3f}; state worker peak memory {scaling['state_memory_mb'][0]:,.0f} -> "
              f"{scaling['state_memory_mb'][1]:,.0f} MB")
    print("Goals:")
    for name, goal in report["goals"].items():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[goal["met"]]
        print(f"  {name:45} {goal['shown']:>32}  {verdict}")
    for run in report["runs"]:
        if "py_spy" in run:
            spy = run["py_spy"]
            print(f"\npy-spy of the {run['label']} state worker during P1 ({spy['samples']:,} samples, {spy['path']}):")
            for title, key in (("threads", "threads_percent"), ("self", "self_percent"),
                               ("inclusive", "inclusive_percent")):
                print(f"  {title}:")
                for name, share in spy[key]:
                    print(f"    {share:5.1f}%  {name}")
        if "profile" in run:
            print(f"\nProfile of the {run['label']} state worker ({run['profile']['path']}):")
            print(run["profile"]["top_cumulative"])


def _kept_up(fresh: dict[str, Any]) -> str:
    if fresh["kept_up"]:
        return "the pipeline kept up"
    return (f"the pipeline FELL BEHIND: {fresh['state_backlog_when_sent']:,} events pending in the state worker, "
            f"{fresh['sink_backlog_when_sent']:,} records in the sink's group at the last send")


def scaling_summary(main: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    p0, p1 = main["p1"], scale["p1"]
    return {
        "from_customers": main["workload"]["customers"], "to_customers": scale["workload"]["customers"],
        "p1_ratio": p1["events_per_second"] / p0["events_per_second"],
        "b_ratio": scale["baseline"]["events_per_second"] / main["baseline"]["events_per_second"],
        # CPU the worker spends per event hardly depends on what else runs: a steadier view
        "state_cpu_ratio": p1["state_cpu_us_per_event"] / p0["state_cpu_us_per_event"],
        "sink_cpu_ratio": p1["sink_cpu_us_per_event"] / p0["sink_cpu_us_per_event"],
        "scale_run_capped": p1["capped"],
        "state_memory_mb": [p0["memory_mb"]["state-1"]["VmHWM"], p1["memory_mb"]["state-1"]["VmHWM"]],
    }


# -- command -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end pipeline benchmark against Faust's ceiling and a "
                                     "consume-and-decode baseline (see the module docstring).")
    parser.add_argument("--quick", action="store_true",
                        help="30,000 events / 10,000 customers, scaling to 100,000 customers, 20 s of freshness")
    parser.add_argument("--events", type=int, help="events in the main run (default 300,000)")
    parser.add_argument("--customers", type=int, help="customers in the main run (default 100,000)")
    parser.add_argument("--scale-customers", type=int,
                        help="customers in the scaling run, same events per customer (default 10x; 0: skip)")
    parser.add_argument("--bi-customers", type=int, default=1_000_000,
                        help="customers whose signals the BI query reads (pre-loaded up to this many)")
    parser.add_argument("--freshness-seconds", type=float, help="length of the steady-rate load (default 60)")
    parser.add_argument("--freshness-share", type=float, default=FRESHNESS_SHARE,
                        help="steady load as a share of P1 (the goal is stated at 0.8)")
    parser.add_argument("--bi-pause", type=float, default=BI_PAUSE_SECONDS,
                        help="pause between BI queries during the freshness load, seconds")
    parser.add_argument("--publisher", choices=("batches", "one-by-one"), default="batches",
                        help="how the freshness load is sent: a record batch per partition every 10 ms (aiokafka), "
                        "or kafka-python's send of each message (the benchmark's way before; about 0.3 of a core)")
    parser.add_argument("--no-bi-load", action="store_true",
                        help="no BI queries during the freshness load (shows what they cost freshness)")
    parser.add_argument("--marker-ms", type=int, default=50, help="a freshness marker every this many ms")
    parser.add_argument("--p-timeout", type=float, default=1800.0,
                        help="cap on one P measurement, seconds; a capped P is the rate so far")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--profile", action="store_true",
                        help="run P1's state worker under cProfile (var/bench/<size>/p1/state-1.prof); distorts P1")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample P1's state worker with py-spy (var/bench/<size>/state-1.py-spy.txt)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scaling run")
    parser.add_argument("--no-p2", dest="p2", action="store_false", help="skip P2 (two state workers)")
    parser.add_argument("--keep-data", action="store_true", help="keep broker, RocksDB and chDB data in var/bench")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench-pipeline.json")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (30_000 if quick else 300_000)
    args.customers = args.customers or (10_000 if quick else 100_000)
    if args.scale_customers is None:
        args.scale_customers = 10 * args.customers
    if args.no_scale:
        args.scale_customers = 0
    args.freshness_seconds = args.freshness_seconds or (20.0 if quick else 60.0)
    return args


def start_broker() -> Settings:
    broker_settings = Settings(data_dir=BENCH_DIR / "broker", local_kafka_port=ports.free_ports(2))
    shutil.rmtree(broker_settings.kafka_dir, ignore_errors=True)
    log(f"starting a Kafka broker on {broker_settings.bootstrap} (data in {broker_settings.kafka_dir})")
    broker.start(broker_settings, properties=BROKER_PROPERTIES)
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
            report["runs"].append(run_size(spec, broker_settings, args))
            _write(report, args.json)  # a long scaling run must not lose the main run's figures
    finally:
        log("stopping the Kafka broker")
        broker.stop(broker_settings)
        if not args.keep_data:
            shutil.rmtree(broker_settings.kafka_dir, ignore_errors=True)
    main_run = report["runs"][0]
    scale_run = report["runs"][1] if len(report["runs"]) > 1 else None
    figures = headline(main_run, scale_run)
    report = {**figures, **report}  # the headline figures first
    if scale_run is not None:
        report["scaling"] = scaling_summary(main_run, scale_run)
    report["goals"] = goals(figures, main_run.get("freshness") or {})
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
