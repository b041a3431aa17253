"""Throughput of the batch processor alone: decode, fold, score, alerts, rows, chDB writes.

No Kafka and no Faust: the same BatchProcessor the agents call, with a dict for the table and a
real chDB in a temporary directory. It shows the per-event cost of the pipeline's own work, which
bounds the worker's throughput whatever Kafka does.

    .venv/bin/python bench/processor.py [--customers 10000] [--batch 2000] [--kind purchase] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from config.settings import Settings
from ops.simulate import encode_event, generate
from sinks.clickhouse import AsyncSinkRunner, ClickHouseSink
from streams.alerting import Alerting
from streams.app import tune_garbage_collector
from streams.processing import BatchProcessor, Message, ModelParams, customer_cache


class DictStore(dict):
    def get(self, key, message):  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key, value, message):
        self[key] = value


async def _discard(*args: object) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--history-days", type=float, default=30)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--kind", default="purchase", choices=["purchase", "call", "visit"])
    parser.add_argument("--max-events", type=int, default=20_000)
    parser.add_argument("--cache", type=int, default=100_000, help="decoded states kept (0: decode every time)")
    parser.add_argument("--gc", default="worker", choices=["worker", "default"],
                        help="the worker's collector settings (default) or Python's defaults")
    parser.add_argument("--profile", action="store_true", help="print the top 30 functions (see --sort)")
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"], help="profile order")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-processor-"))
    settings = Settings(data_dir=tmp, clickhouse_dsn=f"chdb://{tmp / 'clickhouse'}")
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    sink.migrate()
    runner = AsyncSinkRunner(sink)
    processor = BatchProcessor(settings, args.kind, customer_cache(DictStore(), args.cache),
                               runner, _discard, pseudonymisation_key=b"bench",
                               model=ModelParams(), publish_signals=_discard,
                               alerting=Alerting(DictStore()),
                               publish_alert=_discard)
    end = int(time.time() * 1000) - 60_000
    events = [e for e in generate(args.customers, 1, 3, end, args.history_days) if e.kind == args.kind]
    events = events[: args.max_events]
    messages = [Message("bench", 0, i, e.customer_id.encode(), encode_event(e), e.occurred_at)
                for i, e in enumerate(events)]

    async def run() -> float:
        start = time.perf_counter()
        for i in range(0, len(messages), args.batch):
            await processor.process(messages[i:i + args.batch])
        return time.perf_counter() - start

    if args.gc == "worker":
        tune_garbage_collector()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    elapsed = asyncio.run(run())
    if profiler:
        profiler.disable()
    runner.shutdown()
    customers = len({e.customer_id for e in events})
    print(f"{len(events):,} {args.kind} events of {customers:,} customers in batches of {args.batch}: "
          f"{elapsed:.2f} s, {len(events) / elapsed:,.0f} events/s, {1e6 * elapsed / len(events):,.0f} us/event "
          f"(machine: {os.cpu_count()} cores)")
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(30)


if __name__ == "__main__":
    main()
