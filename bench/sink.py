"""CPU of the ClickHouse sink's own work per event: row building and the inserts, without Kafka.

The records are the real ones: :func:`ops.simulate.generate` gives the events (their Avro
encoding is what the input topics carry), and the state worker's :class:`CustomerProcessor`
turns them into signals and alerts (as ``bench/processor.py`` does), in batches of
``--worker-batch`` events. The sink's records are those, interleaved as the sink would fetch
them (each worker batch's input records, then its signals and alerts), cut into batches of
``--batch`` records (default: ``sink_batch_max_records``) and given to the sink's own code:
:meth:`ClickHouseSinkService.rows` then :meth:`ClickHouseSink.write` into a temporary chDB
directory, with every migration applied.

    PYTHONPATH=. .venv/bin/python bench/sink.py [--customers 10000] [--events 30000] [--batch 50000]
        [--paths python,avro] [--profile] [--sort tottime]

Each path of ``--paths`` copies every batch into a database of its own, one after the other:
``python`` decodes the signals and builds their rows here (the baseline), ``avro`` sends them
to ClickHouse in one Avro container per batch (migration 0012). The signals' partitions and the
others are built and written apart (they fill different tables), so the signals' own cost shows.

Printed, per path, per input event (the pipeline benchmark's unit; about one signal per event
here): the process CPU of building the signals' rows or container and of their inserts (also
per signal), of the other topics' rows and inserts, of each table's insert (a materialized
view's work counts in the insert that feeds it), and of what chDB still does in the background
in the ``--settle`` seconds after the last insert (merges); then the second path against the
first. CPU is the whole process's, every thread: chDB runs inside it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pickle
import pstats
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from config.settings import Settings
from config.topics import Topics
from ops.simulate import encode_event, generate
from schemas import codec
from sinks.avro import SIGNALS_TABLE
from sinks.clickhouse import ClickHouseSink
from streams.alerting import Alerting
from streams.app import tune_garbage_collector
from streams.decoding import EventDecoder
from streams.messages import Message
from streams.processor import CustomerProcessor, ModelParams
from streams.sink import ClickHouseSinkService
from streams.state import customer_cache

PARTITIONS = 4


@dataclass
class Record:
    """The attributes of aiokafka's ConsumerRecord that the sink reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class DictStore(dict):
    def get(self, key, message):  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key, value, message):
        self[key] = value


class Partitions:
    """Stands in for the consumer: the sink asks it for a topic's partitions (misplaced records)."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))


def records(settings: Settings, customers: int, max_events: int, worker_batch: int, history_days: float,
            now: int) -> tuple[list[Record], int, Counter[str]]:
    """The sink's input, in fetch order; the input event count; records per topic."""
    topics = Topics(settings.topic_prefix)
    events = generate(customers, 1, 3, now - 60_000, history_days)[:max_events]
    processor = CustomerProcessor(settings, customer_cache(DictStore(), 100_000), EventDecoder(settings, b"bench"),
                                  topics.alert_due, model=ModelParams(), alerting=Alerting(DictStore()))
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    offsets: Counter[tuple[str, int]] = Counter()
    out: list[Record] = []

    def add(topic: str, key: bytes, value: bytes, timestamp: int) -> Record:
        partition = partitioner(key, parts, parts)
        record = Record(topic, partition, offsets[(topic, partition)], timestamp, key, value)
        offsets[(topic, partition)] += 1
        out.append(record)
        return record

    alert_codec = codec("alert")
    for start in range(0, len(events), worker_batch):
        messages = []
        for event in events[start:start + worker_batch]:
            record = add(topics.for_kind(event.kind), event.customer_id.encode(), encode_event(event), event.occurred_at)
            messages.append(Message(record.topic, record.partition, record.offset, record.key, record.value or b"",
                                    record.timestamp))
        effects = asyncio.run(processor.process(messages, now))
        for key, value in effects.signals:
            add(topics.signals, key, value, now)
        for key, alert in effects.alerts:
            add(topics.alerts, key, alert_codec.encode(alert), now)
    per_topic = Counter(r.topic.rsplit(".", 1)[-1] for r in out)
    return out, len(events), per_topic


def cached_records(settings: Settings, args: argparse.Namespace, now: int) -> tuple[list[Record], int, Counter[str]]:
    """:func:`records`, kept in the system's temporary directory between runs of the same arguments
    and schemas (generating them is most of a run's time)."""
    fingerprints = "-".join(codec(name).fingerprint.hex() for name in ("loyalty_signal", "alert", "purchase"))
    name = f"bench-sink-{args.customers}-{args.events}-{args.history_days}-{args.worker_batch}-{fingerprints}.pickle"
    path = os.path.join(tempfile.gettempdir(), name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)  # type: ignore[no-any-return]
    made = records(settings, args.customers, args.events, args.worker_batch, args.history_days, now)
    with open(path, "wb") as f:
        pickle.dump(made, f)
    return made


def fetched_batches(stream: list[Record], size: int) -> list[dict[TopicPartition, list[Record]]]:
    """The stream cut into sink batches, each grouped by partition as ``getmany`` returns them."""
    batches = []
    for start in range(0, len(stream), size):
        fetched: dict[TopicPartition, list[Record]] = {}
        for record in stream[start:start + size]:
            fetched.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        batches.append(fetched)
    return batches


def timed_inserts(sink: ClickHouseSink, cpu: Counter[str], calls: Counter[str]) -> None:
    """Charge each insert's process CPU to its table (the client's own methods, wrapped here only)."""
    client = sink.client

    def timing(insert: Callable[..., Any]) -> Callable[..., Any]:
        def timed(table: str, *args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return insert(table, *args, **kwargs)
            finally:
                name = table.rsplit(".", 1)[-1]
                cpu[name] += time.process_time() - start
                calls[name] += 1
        return timed

    client.insert = timing(client.insert)  # type: ignore[method-assign]
    client.raw_insert = timing(client.raw_insert)  # type: ignore[method-assign]


@dataclass
class Copy:
    """One path's copy of every batch: CPU in seconds, the inserts, the rows stored."""

    path: str
    signals_rows: float = 0.0  # the copying thread, building the signals' rows or container
    other_rows: float = 0.0  # the copying thread, every other topic's rows
    signals_write: float = 0.0  # the process, the signals' inserts (and their views)
    other_write: float = 0.0
    wall: float = 0.0
    total: float = 0.0  # the process, from the first batch to --settle seconds after the last
    insert_cpu: Counter[str] = field(default_factory=Counter)
    insert_calls: Counter[str] = field(default_factory=Counter)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def signals(self) -> float:
        return self.signals_rows + self.signals_write


def copy(path: str, service: ClickHouseSinkService, batches: list[dict[TopicPartition, list[Record]]],
         signals_topic: str, now: int, settle: float, profiler: cProfile.Profile | None) -> Copy:
    """Copy every batch with ``service``: the signals' partitions and the others built and written
    apart (they fill different tables, so the inserts are the same ones), each timed."""
    sink = service.sink
    result = Copy(path)
    timed_inserts(sink, result.insert_cpu, result.insert_calls)
    wall = time.perf_counter()
    total = time.process_time()
    if profiler:
        profiler.enable()
    for fetched in batches:
        signals = {tp: records for tp, records in fetched.items() if tp.topic == signals_topic}
        others = {tp: records for tp, records in fetched.items() if tp.topic != signals_topic}
        start = time.thread_time()  # this thread only: chDB merging meanwhile is not row building
        batch = service.rows(signals, now)
        result.signals_rows += time.thread_time() - start
        start = time.process_time()
        sink.write(batch)
        result.signals_write += time.process_time() - start
        start = time.thread_time()
        batch = service.rows(others, now)
        result.other_rows += time.thread_time() - start
        start = time.process_time()
        sink.write(batch)
        result.other_write += time.process_time() - start
    if profiler:
        profiler.disable()
    result.wall = time.perf_counter() - wall
    time.sleep(settle)
    result.total = time.process_time() - total
    db = sink.database
    # FINAL: the rows each table keeps (unmerged duplicates depend on when chDB merged)
    result.counts = {t: sink.query(f"SELECT count() FROM {db}.{t} FINAL")[1][0][0]
                     for t in sorted((set(result.insert_calls) - {SIGNALS_TABLE})
                                     | {"signals_current", "signals_history", "tier_days", "relationships"})}
    return result


def report(run: Copy, events: int, signals: int) -> None:
    def us(seconds: float) -> str:
        return f"{1e6 * seconds / events:7.1f} us/event"

    print(f"{run.path}: {run.wall:.2f} s wall; CPU per input event:")
    print(f"  signals: rows      {us(run.signals_rows)}  (the copying thread)")
    print(f"  signals: inserts   {us(run.signals_write)}")
    print(f"  signals: together  {us(run.signals)}  = {1e6 * run.signals / signals:.1f} us per signal")
    print(f"  others: rows       {us(run.other_rows)}")
    print(f"  others: inserts    {us(run.other_write)}")
    for table, seconds in run.insert_cpu.most_common():
        print(f"    {table:<17}{us(seconds)}  ({run.insert_calls[table]} inserts)")
    print(f"  chDB meanwhile     {us(run.total - run.signals - run.other_rows - run.other_write)}  (merges, while "
          "rows were built, and in the settle time after)")
    print(f"  total              {us(run.total)}")
    print("  rows (FINAL): " + ", ".join(f"{t} {n:,}" for t, n in run.counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=30_000, help="input events at most")
    parser.add_argument("--history-days", type=float, default=20, help="history before the live day (events per customer)")
    parser.add_argument("--worker-batch", type=int, default=2000, help="events per state-worker batch")
    parser.add_argument("--batch", type=int, default=None, help="records per sink batch (default: sink_batch_max_records)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of background work counted after the last insert")
    parser.add_argument("--paths", default="python,avro",
                        help="the signal paths to run, in this order, each into a database of its own: python "
                             "(decoded here, the baseline), avro (a container decoded by ClickHouse)")
    parser.add_argument("--profile", action="store_true", help="print the top 30 functions of the copy (see --sort)")
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"], help="profile order")
    args = parser.parse_args()
    paths = args.paths.split(",")
    if not set(paths) <= {"python", "avro"}:
        parser.error("--paths: python, avro or both")

    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        settings = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp, clickhouse_dsn=f"chdb://{tmp}/clickhouse")
        batch_size = args.batch or settings.sink_batch_max_records
        now = int(time.time() * 1000)
        started = time.perf_counter()
        stream, events, per_topic = cached_records(settings, args, now)
        batches = fetched_batches(stream, batch_size)
        signals_topic = Topics(settings.topic_prefix).signals
        signals = sum(r.topic == signals_topic for r in stream)
        print(f"{events:,} input events, {len(stream):,} records ({dict(per_topic)}) generated in "
              f"{time.perf_counter() - started:.1f} s; {len(batches)} sink batches of up to {batch_size:,} records")
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")

        tune_garbage_collector()
        runs: list[Copy] = []
        profiler = cProfile.Profile() if args.profile else None
        for n, path in enumerate(paths):
            sink = ClickHouseSink(settings.clickhouse_url, f"bench_{n}_{path}")
            service = ClickHouseSinkService(settings, b"bench", sink, signals_in_avro=path == "avro")
            service.consumer = Partitions()  # type: ignore[assignment]
            service.prepare()
            runs.append(copy(path, service, batches, signals_topic, now, args.settle, profiler))
            sink.close()

    for run in runs:
        report(run, events, signals)
    if len(runs) == 2 and runs[0].counts != runs[1].counts:
        print(f"ROWS DIFFER: {runs[0].counts} against {runs[1].counts}")
    if len(runs) == 2:
        base, other = runs
        print(f"{other.path} against {base.path}: signal path {1e6 * base.signals / signals:.1f} -> "
              f"{1e6 * other.signals / signals:.1f} us per signal ({other.signals / base.signals:.2f}x), "
              f"{1e6 * base.signals / events:.1f} -> {1e6 * other.signals / events:.1f} us per input event; "
              f"whole copy {1e6 * base.total / events:.1f} -> {1e6 * other.total / events:.1f} us per input event "
              f"({other.total / base.total:.2f}x)")
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(30)


if __name__ == "__main__":
    main()
