"""Throughput of the state worker's batch processor alone: decode, fold, score, alerts, signals.

No Kafka, no Faust and no ClickHouse (the sink process writes it): the same CustomerProcessor the
state agent calls, with a dict for each table. It shows the per-event cost of the state worker's
own work, which bounds its throughput whatever Kafka does.

    PYTHONPATH=. .venv/bin/python bench/processor.py [--customers 10000] [--batch 2000] [--kind purchase] [--profile]
        [--copurchase]

``--copurchase`` gives the worker a co-purchase table counted over the generated orders, so every
signal carries its suggested categories; without it there are none (as before the sink's first count).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time

from config.settings import Settings
from config.topics import Topics
from domain.model.suggest import order_sets, table_from_sets
from ops.simulate import encode_event, generate
from streams.alerting import Alerting
from streams.app import tune_garbage_collector
from streams.decoding import EventDecoder
from streams.messages import Message
from streams.processor import CustomerProcessor, ModelParams
from streams.state import customer_cache


class DictStore(dict):
    def get(self, key, message):  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key, value, message):
        self[key] = value


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
    parser.add_argument("--copurchase", action="store_true", help="suggest next-best categories from a co-purchase table")
    parser.add_argument("--profile", action="store_true", help="print the top 30 functions (see --sort)")
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"], help="profile order")
    args = parser.parse_args()

    settings = Settings(kafka_bootstrap="127.0.0.1:1")  # nothing connects
    topics = Topics(settings.topic_prefix)
    end = int(time.time() * 1000) - 60_000
    generated = generate(args.customers, 1, 3, end, args.history_days)
    model = ModelParams(copurchase=table_from_sets(order_sets(generated)) if args.copurchase else None)
    processor = CustomerProcessor(settings, customer_cache(DictStore(), args.cache),
                                  EventDecoder(settings, b"bench"), topics.alert_due,
                                  model=model, alerting=Alerting(DictStore()))
    events = [e for e in generated if e.kind == args.kind]
    events = events[: args.max_events]
    topic = topics.for_kind(args.kind)
    messages = [Message(topic, 0, i, e.customer_id.encode(), encode_event(e), e.occurred_at)
                for i, e in enumerate(events)]

    async def run() -> float:
        start = time.perf_counter()
        for i in range(0, len(messages), args.batch):
            await processor.process(messages[i:i + args.batch], int(time.time() * 1000))
        return time.perf_counter() - start

    if args.gc == "worker":
        tune_garbage_collector()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    elapsed = asyncio.run(run())
    if profiler:
        profiler.disable()
    customers = len({e.customer_id for e in events})
    print(f"{len(events):,} {args.kind} events of {customers:,} customers in batches of {args.batch}: "
          f"{elapsed:.2f} s, {len(events) / elapsed:,.0f} events/s, {1e6 * elapsed / len(events):,.0f} us/event "
          f"(machine: {os.cpu_count()} cores; outcomes {dict(processor.totals)})")
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(30)


if __name__ == "__main__":
    main()
