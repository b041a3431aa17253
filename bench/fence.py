"""What the zombie fence costs a batch: one fence record per input partition, all concurrently.

    PYTHONPATH=. .venv/bin/python bench/fence.py --bootstrap 127.0.0.1:19192 [--partitions 4] [--batches 200]
        [--pause-ms 20]

Against a running broker, on a fence topic of its own (deleted afterwards): :class:`streams.fencing.Fences`
is assigned every partition and then confirms them all ``--batches`` times, ``--pause-ms`` apart,
as a state worker owning them does once per batch, with its timer committing the open
transactions as they age (``FENCE_TRANSACTION_SECONDS``). The baseline, measured in the same run:
one plain record per partition sent and acknowledged (what any produce round trip costs). Printed:
the median and 90th percentile per batch, this process's CPU per batch, the transactions
committed, and the wall time per event at ``--events`` events a batch (the worker's
``LOYALTY_BATCH_MAX_EVENTS``, 10,000 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from aiokafka import AIOKafkaProducer

from config.settings import Settings
from streams.fencing import Fences
from streams.sink import aiokafka_config


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(settings: Settings, topic: str, partitions: int, batches: int,
                  pause: float) -> tuple[list[float], list[float], float, float, int]:
    every = set(range(partitions))
    fences = Fences(settings, topic)
    fences.assign(every)
    assert await fences.confirm(every) == every, "the fences did not hold on an idle topic"  # first start, not timed
    timer = asyncio.ensure_future(fences.run())
    fenced = []
    cpu = time.process_time()
    for _ in range(batches):
        start = time.perf_counter()
        owned = await fences.confirm(every)
        fenced.append((time.perf_counter() - start) * 1000)
        assert owned == every
        await asyncio.sleep(pause)
    fenced_cpu = time.process_time() - cpu
    timer.cancel()
    commits = fences.committed
    await fences.stop()

    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True)
    await producer.start()
    plain = []
    cpu = time.process_time()
    try:
        for _ in range(batches):
            start = time.perf_counter()
            sent = [await producer.send(topic, b"x", str(p).encode()) for p in every]
            await asyncio.gather(*sent)
            plain.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(pause)
    finally:
        plain_cpu = time.process_time() - cpu
        await producer.stop()
    return fenced, plain, fenced_cpu, plain_cpu, commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--pause-ms", type=float, default=20.0, help="between two batches, as the worker's processing")
    parser.add_argument("--events", type=int, default=Settings.model_fields["batch_max_events"].default)
    args = parser.parse_args()
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=args.bootstrap, app_id=f"bench-fence-{tag}")
    topic = f"bench-fence-{tag}.state-fences"
    admin = KafkaAdminClient(**settings.kafka_python_config(), client_id="bench-fence")
    admin.create_topics([NewTopic(topic, args.partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    try:
        fenced, plain, fenced_cpu, plain_cpu, commits = asyncio.run(
            measure(settings, topic, args.partitions, args.batches, args.pause_ms / 1000))
    finally:
        admin.delete_topics([topic])
        admin.close()
    print(f"{args.batches} batches of {args.partitions} partitions, {args.pause_ms:g} ms apart "
          f"({args.events} events a batch); {commits} fence transactions committed meanwhile:")
    for name, values, cpu in (("fence (a record per partition, in its open transaction)", fenced, fenced_cpu),
                              ("baseline (one plain record per partition)", plain, plain_cpu)):
        median = statistics.median(values)
        print(f"  {name}: median {median:.1f} ms, p90 {percentile(values, 0.9):.1f} ms per batch, "
              f"{cpu * 1000 / args.batches:.2f} ms of CPU per batch; {median * 1000 / args.events:.1f} us per event")


if __name__ == "__main__":
    main()
