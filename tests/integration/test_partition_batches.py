"""streams.batches against the real broker: every record lands where PartitionBatches says, in the
order added, on the partition the producer's own partitioner would have chosen."""

from __future__ import annotations

import asyncio
import os

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from config.settings import Settings
from config.topics import Topics
from ops.admin import create_topics
from streams.batches import PartitionBatches, Written
from streams.sink import aiokafka_config


async def read_back(settings: Settings, where: list[Written]) -> dict[tuple[str, int, int], tuple[bytes, bytes]]:
    """(topic, partition, offset) -> (key, value) of every record up to the highest offset written."""
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = sorted({TopicPartition(w.topic, w.partition) for w in where})
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        wanted = {(w.topic, w.partition, w.offset) for w in where}
        found: dict[tuple[str, int, int], tuple[bytes, bytes]] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while not wanted <= found.keys() and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    found[(tp.topic, tp.partition, record.offset)] = (record.key, record.value)
        return found
    finally:
        await consumer.stop()


async def send_all(settings: Settings, max_batch_size: int, count: int, large_every: int = 0) -> None:
    """``large_every``: every so many records is larger than a whole batch."""
    topics = Topics(settings.topic_prefix)
    producer = AIOKafkaProducer(**aiokafka_config(settings), max_batch_size=max_batch_size, linger_ms=5)
    await producer.start()
    try:
        out = PartitionBatches(producer)
        assert await out.send() == []  # nothing added: nothing sent
        added = []
        for i in range(count):
            size = 3 * max_batch_size if large_every and i % large_every == 0 else 300
            key, value = f"C{i:05d}".encode(), os.urandom(size) + str(i).encode()
            if i % 3:
                added.append((topics.signals, key, value, None))
                assert out.add(topics.signals, key, value) == len(added) - 1
            else:
                added.append((topics.alerts, key, value, i % settings.partitions))
                assert out.add(topics.alerts, key, value, i % settings.partitions) == len(added) - 1
        assert len(out) == count
        written = await out.send()
        assert len(out) == 0
        assert len(written) == count
        # the partition the producer's partitioner gives a key, asked of the producer itself
        probe = {key: (await (await producer.send(topics.signals, b"probe", key=key))).partition
                 for topic, key, _, partition in added[:30] if partition is None}
    finally:
        await producer.stop()
    found = await read_back(settings, written)
    for (topic, key, value, partition), where in zip(added, written):
        assert where.topic == topic
        if partition is not None:
            assert where.partition == partition
        elif key in probe:
            assert where.partition == probe[key]
        assert found[(where.topic, where.partition, where.offset)] == (key, value)
    # each partition's records in the order added, at consecutive offsets
    by_partition: dict[tuple[str, int], list[int]] = {}
    for where in written:
        by_partition.setdefault((where.topic, where.partition), []).append(where.offset)
    for offsets in by_partition.values():
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


def test_records_land_where_they_are_said_to(settings: Settings) -> None:
    create_topics(settings)
    asyncio.run(send_all(settings, max_batch_size=256 * 1024, count=600))


def test_a_partition_in_several_batches_keeps_its_order(settings: Settings) -> None:
    create_topics(settings)
    asyncio.run(send_all(settings, max_batch_size=2048, count=300))  # about six records per batch


def test_a_record_larger_than_a_batch_goes_in_its_place(settings: Settings) -> None:
    create_topics(settings)
    asyncio.run(send_all(settings, max_batch_size=1024, count=120, large_every=7))
