"""What the state worker's producer costs per record, by producer batch size and way of sending.

    PYTHONPATH=. .venv/bin/python bench/producer.py [--bootstrap HOST:PORT] [--batches 10] [--events 2000]

A state worker's batch hands the producer one signal (about 490 bytes) per changed customer,
awaits their acknowledgements, then one changelog record (about 1,400 bytes) per customer to the
customer's partition, and awaits those (:meth:`streams.app.Pipeline.produce`). This script does
the same on topics of its own three ways, alternating: through Faust's producer one record at a
time (``app.producer.send``) with Kafka's default batch of 16 KB per partition, the same with
``LOYALTY_PRODUCER_BATCH_BYTES``, and a batch per partition with that size through aiokafka's
batch API (:class:`streams.batches.PartitionBatches`, as the worker sends). It prints the CPU and
wall time per record of each, with the ratio to the first measured in the same run. Without
``--bootstrap`` it starts a broker of its own in a temporary directory (stopped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import faust

from config.settings import Settings
from streams.batches import PartitionBatches, output_producer

KAFKA_DEFAULT_BATCH_BYTES = 16_384
SIGNAL_BYTES = 490
CHANGELOG_BYTES = 1_400


async def one_batch(way: faust.App | PartitionBatches, signals: str, changelog: str, events: int,
                    partitions: int) -> None:
    """One worker batch's records, through a Faust app's producer or partition batches."""
    keys = [f"C{uuid.uuid4().hex[:10]}".encode() for _ in range(events)]
    signal, record = os.urandom(SIGNAL_BYTES), os.urandom(CHANGELOG_BYTES)
    if isinstance(way, PartitionBatches):
        out = way
        for key in keys:
            out.add(signals, key, signal)
        await out.send()
        for i, key in enumerate(keys):
            out.add(changelog, key, record, i % partitions)
        await out.send()
        return
    producer = way.producer
    sent = [await producer.send(signals, key, signal, None, None, None) for key in keys]
    await asyncio.gather(*sent)
    sent = [await producer.send(changelog, key, record, i % partitions, None, None) for i, key in enumerate(keys)]
    await asyncio.gather(*sent)


BATCHED = "partition batches"


async def measure(settings: Settings, batch_bytes: dict[str, int], batches: int, events: int,
                  partitions: int) -> dict[str, list[tuple[float, float]]]:
    tag = uuid.uuid4().hex[:8]
    apps = {name: faust.App(f"bench-producer-{tag}-{name}", broker=f"kafka://{settings.bootstrap}",
                            producer_max_request_size=settings.max_message_bytes,
                            producer_linger=settings.producer_linger_seconds,
                            producer_max_batch_size=size, topic_partitions=partitions)
            for name, size in batch_bytes.items() if name != BATCHED}
    signals, changelog = f"bench-producer-{tag}.signals", f"bench-producer-{tag}.changelog"
    for app in apps.values():
        await app.producer.start()
    first = next(iter(apps.values()))
    sender = output_producer(settings.model_copy(update={"producer_batch_bytes": batch_bytes[BATCHED]}),
                             float(first.conf.producer_request_timeout))
    await sender.start()
    ways: dict[str, faust.App | PartitionBatches] = {**apps, BATCHED: PartitionBatches(sender)}
    for topic in (signals, changelog):
        await first.producer.create_topic(topic, partitions, 1)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in batch_bytes}
    try:
        for way in ways.values():  # warm-up: connections, metadata
            await one_batch(way, signals, changelog, 200, partitions)
        for _ in range(batches):
            for name in batch_bytes:
                cpu, wall = time.process_time(), time.perf_counter()
                await one_batch(ways[name], signals, changelog, events, partitions)
                records = 2 * events
                figures[name].append(((time.process_time() - cpu) / records * 1e6,
                                      (time.perf_counter() - wall) / records * 1e6))
    finally:
        for app in apps.values():
            await app.producer.stop()
        await sender.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="a running broker (default: start one in a temporary directory)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10, help="worker batches per batch size, alternating")
    parser.add_argument("--events", type=int, default=2000, help="changed customers per worker batch")
    args = parser.parse_args()
    configured = Settings().producer_batch_bytes
    sizes = {"Kafka's default": KAFKA_DEFAULT_BATCH_BYTES, "LOYALTY_PRODUCER_BATCH_BYTES": configured,
             BATCHED: configured}
    if args.bootstrap:
        figures = asyncio.run(measure(Settings(kafka_bootstrap=args.bootstrap), sizes, args.batches, args.events,
                                      args.partitions))
    else:
        from ops import broker
        with tempfile.TemporaryDirectory(prefix="bench-producer-") as root:
            local = Settings(data_dir=Path(root), local_kafka_port=29392)
            print(f"starting a broker on {local.bootstrap} ...", flush=True)
            broker.start(local)
            try:
                figures = asyncio.run(measure(local, sizes, args.batches, args.events, args.partitions))
            finally:
                broker.stop(local)
    print(f"{args.batches} worker batches of {args.events} signals ({SIGNAL_BYTES} B) and {args.events} changelog "
          f"records ({CHANGELOG_BYTES} B) per way; median per record:")
    baseline = statistics.median(cpu for cpu, _ in figures["Kafka's default"])
    for (name, values), size in zip(figures.items(), sizes.values()):
        cpu = statistics.median(c for c, _ in values)
        wall = statistics.median(w for _, w in values)
        print(f"  {name} ({size:,} B): {cpu:6.1f} us CPU, {wall:6.1f} us wall per record; "
              f"CPU {cpu / baseline:.2f} x the default")


if __name__ == "__main__":
    main()
