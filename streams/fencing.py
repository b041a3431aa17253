"""One transactional producer per input partition a state worker owns: Kafka fences a zombie.

A state worker frozen longer than the session timeout (a long pause, a suspended VM) loses its
partitions to another worker, and when it wakes up its batch in flight goes on as if nothing had
happened. Checking ownership before writing leaves a window between the check and the write;
Kafka's transactions close it. Each input partition ``p`` has the transactional id
``<app id>-state-<p>``; the worker that is assigned ``p`` starts a producer with that id before it
sends anything for ``p``, which bumps the id's epoch: the broker aborts the previous owner's open
transaction and refuses every later write of its producer (``ProducerFenced``). A batch's records
for ``p`` (signals, alerts, dead letters, forwards, changelog) go in one transaction of that
producer, so a zombie's late records never reach the log after the new owner's.

Records that the previous owner sent before it was fenced (an aborted transaction) stay readable
to consumers that read uncommitted records, as every consumer here does; they precede anything
the new owner writes, and the new owner reads their batch again from the committed offsets, so
its own records come last and the repeats count once (remembered event ids).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from config.settings import Settings
from streams.sink import aiokafka_config

logger = logging.getLogger(__name__)


class Fenced(Exception):
    """This worker may no longer write for a partition: it was revoked, or another worker's producer
    took over its transactional id. The batch's records of that partition are to be dropped."""

    def __init__(self, partition: int, reason: str) -> None:
        super().__init__(f"partition {partition} is no longer this worker's: {reason}")
        self.partition = partition


class PartitionProducers:
    """The transactional producers of the input partitions this worker owns, started on assignment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producers: dict[int, asyncio.Task[AIOKafkaProducer]] = {}

    def transactional_id(self, partition: int) -> str:
        return f"{self.settings.app_id}-state-{partition}"

    def assign(self, partitions: Iterable[int]) -> None:
        """Own exactly ``partitions`` from now on: start the missing producers (each start fences the
        partition's previous owner), stop those of partitions no longer assigned."""
        wanted = set(partitions)
        for partition in sorted(set(self._producers) - wanted):
            self.discard(partition)
        for partition in sorted(wanted - set(self._producers)):
            self._producers[partition] = asyncio.ensure_future(self._start(partition))

    async def _start(self, partition: int) -> AIOKafkaProducer:
        settings = self.settings
        producer = AIOKafkaProducer(**aiokafka_config(settings), transactional_id=self.transactional_id(partition),
                                    client_id=f"{settings.app_id}-state-{partition}",
                                    linger_ms=int(settings.producer_linger_seconds * 1000),
                                    max_request_size=settings.max_message_bytes)
        await producer.start()  # InitProducerId: from here on, the previous owner's producer is fenced
        logger.info("transactional producer of partition %d started", partition)
        return producer

    async def producer(self, partition: int) -> AIOKafkaProducer:
        """The producer for ``partition`` (waiting for its start); :class:`Fenced` when not owned."""
        task = self._producers.get(partition)
        if task is None:
            raise Fenced(partition, "not assigned")
        return await asyncio.shield(task)

    def discard(self, partition: int) -> None:
        """Forget the producer of ``partition`` (fenced or revoked) and stop it in the background."""
        task = self._producers.pop(partition, None)
        if task is not None:
            asyncio.ensure_future(_stop(task))

    async def stop(self) -> None:
        tasks = list(self._producers.values())
        self._producers.clear()
        await asyncio.gather(*(_stop(task) for task in tasks))


async def _stop(task: asyncio.Task[AIOKafkaProducer]) -> None:
    try:
        producer = await task
        await producer.stop()
    except (asyncio.CancelledError, KafkaError, AssertionError) as exc:
        # A fenced producer may fail to stop cleanly (aiokafka asserts on its state): it is gone
        # either way, and its transaction is aborted by the partition's new owner.
        logger.info("a transactional producer stopped with %s: %s", type(exc).__name__, exc)
