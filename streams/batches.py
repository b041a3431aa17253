"""Records for Kafka handed to the producer a partition batch at a time.

A state worker's batch writes a few records per changed customer: its signal, maybe alerts, and
its table records (the changelogs). Through ``producer.send`` each record pays Faust's and
aiokafka's path on its own: the topic's metadata awaited, the partitioner, the accumulator's
lookup of the partition's open batch, a future per record, and then one more callback per record
when the batch's acknowledgement resolves them all (``asyncio.gather`` over thousands of
futures). aiokafka's public batch API (``create_batch``, ``BatchBuilder.append``,
``send_batch``) builds a partition's records into one batch and gives one future per batch; a
record's offset is the batch's base offset plus its place in the batch. ``bench/producer.py``
measures both ways: 5.0 against 10.1 us of CPU per record.

The state worker sends them on a producer of its own (:func:`output_producer`), configured as
Faust's (acknowledged by every in-sync replica, the same linger, batch size and request timeout):
Faust's producer offers no batch API.

The bytes on the wire are the same record batches, so nothing changes for a reader; the records
of one partition keep the order they were added in, and a partition's batches go one after the
other (``send_batch`` waits for the partition's previous batch to leave).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from config.settings import Settings
from streams.sink import aiokafka_config


def output_producer(settings: Settings, request_timeout_seconds: float) -> AIOKafkaProducer:
    """A producer for a state worker's outputs and table records (not started)."""
    return AIOKafkaProducer(
        **aiokafka_config(settings), client_id=f"{settings.app_id}-outputs", acks="all",
        linger_ms=round(settings.producer_linger_seconds * 1000),
        max_batch_size=min(settings.producer_batch_bytes, settings.max_message_bytes),
        max_request_size=settings.max_message_bytes, request_timeout_ms=round(request_timeout_seconds * 1000))


class Written(NamedTuple):
    """Where an acknowledged record was written."""

    topic: str
    partition: int
    offset: int


class KeyPartitions:
    """The default partitioner's choice for a key (murmur2 of the key over a topic's partition
    count), remembered: a customer's key comes back batch after batch, its records and its outputs
    all ask, and murmur2 in Python costs about 4 us. At most ``max_keys`` keys per partition
    count, all forgotten at once when full. A record without a key gets a random partition, as
    the producer would give it."""

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be positive, not {max_keys}")
        self.max_keys = max_keys
        self.partitioner = DefaultPartitioner()
        self._homes: dict[int, dict[bytes, int]] = {}

    def __call__(self, key: bytes | None, count: int) -> int:
        if key is None:
            partitions = list(range(count))
            return int(self.partitioner(None, partitions, partitions))
        homes = self._homes.get(count)
        if homes is None:
            homes = self._homes[count] = {}
        home = homes.get(key)
        if home is None:
            if len(homes) >= self.max_keys:
                homes.clear()
            partitions = list(range(count))
            home = homes[key] = int(self.partitioner(key, partitions, partitions))
        return home


class PartitionBatches:
    """Records added in order, sent per topic partition in as few batches as the batch size allows.

    ``partition=None`` gives a record its key's partition, as the producer's default partitioner
    (murmur2 of the key over the topic's partitions) would."""

    def __init__(self, producer: AIOKafkaProducer, homes: KeyPartitions | None = None) -> None:
        self.producer = producer
        self.homes = homes or KeyPartitions()
        self._records: dict[tuple[str, int | None], list[tuple[int, bytes | None, bytes | None]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> int:
        """Add a record; returns its index among the records added (the order :meth:`send` answers in)."""
        index = self._count
        self._records.setdefault((topic, partition), []).append((index, key, value))
        self._count += 1
        return index

    async def send(self) -> list[Written]:
        """Hand every record added to the producer and await the acknowledgements; return where
        each was written, in the order added. Raises the producer's error if a batch fails (the
        other batches may have been written)."""
        records, self._records, count = self._records, {}, self._count
        self._count = 0
        by_partition: dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None]]] = {}
        for (topic, partition), added in records.items():
            if partition is not None:
                by_partition.setdefault((topic, partition), []).extend(added)
                continue
            partitions = len(await self.producer.partitions_for(topic))  # numbered 0 to partitions - 1
            for record in added:
                by_partition.setdefault((topic, self.homes(record[1], partitions)), []).append(record)
        sent = await asyncio.gather(*(self._send_partition(topic, partition, sorted(added))
                                      for (topic, partition), added in by_partition.items()))
        written: list[Written | None] = [None] * count
        for (topic, partition), batches in zip(by_partition, sent):
            for indexes, future in batches:
                base = (await future).offset
                for place, index in enumerate(indexes):
                    written[index] = Written(topic, partition, base + place)
        return written  # type: ignore[return-value]  # every index was filled

    async def _send_partition(self, topic: str, partition: int, added: Sequence[tuple[int, bytes | None, bytes | None]]
                              ) -> list[tuple[list[int], Any]]:
        """Submit one partition's records in batches of the producer's batch size; the batches'
        record indexes and their futures. A record larger than a whole batch goes on its own
        through ``send`` (up to the producer's request size), in its place."""
        out: list[tuple[list[int], Any]] = []
        builder, indexes = self.producer.create_batch(), list[int]()
        for index, key, value in added:
            if builder.append(key=key, value=value, timestamp=None) is not None:
                indexes.append(index)
                continue
            # the batch is full, or the record larger than a batch: the batch so far goes first
            if indexes:
                out.append((indexes, await self.producer.send_batch(builder, topic, partition=partition)))
            builder, indexes = self.producer.create_batch(), []
            if builder.append(key=key, value=value, timestamp=None) is not None:
                indexes.append(index)
                continue
            out.append(([index], await self.producer.send(topic, value, key=key, partition=partition)))
            builder = self.producer.create_batch()  # the refused append closed the one before
        if indexes:
            out.append((indexes, await self.producer.send_batch(builder, topic, partition=partition)))
        return out
