"""Fences for state workers: a worker frozen past the session timeout (a "zombie") must not write
for partitions another worker has taken meanwhile.

Each input partition ``p`` has one transactional id, ``<app id>-fence-<p>``. The worker assigned
``p`` starts a producer with that id; its first transaction waits for the broker's
``InitProducerId``, which bumps the id's epoch and fences every earlier producer of that id, the
previous owner's included: the transaction coordinator first aborts the transaction that
producer has open, writing the abort marker, with the new epoch, to each partition in it. Before
a batch produces anything, the worker sends one tiny record on the fence topic for each partition
the batch read, inside that partition's open transaction, and awaits its acknowledgement
(:meth:`Fences.confirm`, all partitions concurrently). A zombie's record is refused
(``ProducerFenced`` or ``InvalidProducerEpoch``) once the new owner's producer is up: by the
fence partition's leader, which the abort marker told the new epoch, or, when the zombie's
transaction was committed meanwhile, by the coordinator as the record's partition joins the next
one. The zombie learns it lost the partition before it sends a single record for it.

A transaction stays open across batches and is committed by a timer (:meth:`Fences.run`), batches
or not, once :data:`FENCE_TRANSACTION_SECONDS` old: well before the broker would abort it (the
producer's ``transaction_timeout_ms``, an abort that would read as a fence). A batch's fence is
then one produce round trip, against three for a transaction
of its own (``AddPartitionsToTxn``, the record, ``EndTxn``, and the coordinator's markers and log
writes besides): the broker and the worker pay the transaction's machinery every few seconds
instead of every batch (``bench/fence.py``). The changelogs, outputs and inputs stay outside
transactions (their readers, Faust's table recovery among them, never meet a transaction marker);
only the fence topic carries them, and nothing reads it.

A fence is checked once per batch, before its writes. A worker frozen after that, before its
changelog step, notices it when it resumes (:class:`StallWatch`) and drops the rest of the batch.
What neither closes: a worker frozen while the batch's records are in flight (handed to the
producer, not yet acknowledged) writes those late (see docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from config.settings import Settings
from streams.sink import aiokafka_config

logger = logging.getLogger(__name__)

# What the broker answers a producer whose transactional id another producer has taken over.
FENCED_ERRORS = (ProducerFenced, InvalidProducerEpoch)
#: Seconds a fence transaction stays open before the timer commits it; far below the producer's
#: transaction timeout (60 s).
FENCE_TRANSACTION_SECONDS = 5.0
#: Seconds between two looks for fence transactions to commit.
FENCE_CHECK_SECONDS = 1.0


@dataclass(eq=False)
class _Fence:
    """The producer of one partition's transactional id, while this worker owns the partition."""

    partition: int
    producer: AIOKafkaProducer
    started: asyncio.Task[None]
    # Held during a confirm, a commit and the stop: one of them at a time on the producer.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    discarded: bool = False
    began: float | None = None  # when its open transaction began (monotonic); None: none open
    error: BaseException | None = None  # a commit's error other than a fence, raised by the next confirm


class Fences:
    """The fence producers of the input partitions this worker owns; started on assignment."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.value = settings.web_url.encode()  # who holds the fence, for someone reading the topic
        self._fences: dict[int, _Fence] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.confirmed = 0
        self.fenced = 0
        self.committed = 0  # fence transactions committed

    def transactional_id(self, partition: int) -> str:
        return f"{self.settings.app_id}-fence-{partition}"

    def assign(self, partitions: Iterable[int]) -> None:
        """A new assignment (full set): start a fresh producer for each partition, fencing whoever
        held it before, this worker's own earlier producer included, since another worker may have
        owned the partition in between without this one seeing it."""
        wanted = set(partitions)
        self.revoke(list(self._fences))
        for partition in sorted(wanted):
            producer = AIOKafkaProducer(**aiokafka_config(self.settings),
                                        transactional_id=self.transactional_id(partition),
                                        client_id=f"{self.settings.app_id}-fence-{partition}")
            self._fences[partition] = _Fence(partition, producer, asyncio.ensure_future(producer.start()))
        if wanted:
            logger.info("fences of partitions %s starting", sorted(wanted))

    def revoke(self, partitions: Iterable[int]) -> None:
        """Give up ``partitions``: their producers are stopped in the background (after any
        transaction in flight), and a confirm in flight reports them lost."""
        for partition in partitions:
            fence = self._fences.pop(partition, None)
            if fence is not None:
                fence.discarded = True
                task = asyncio.ensure_future(_stop(fence))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    async def confirm(self, partitions: Iterable[int]) -> set[int]:
        """Commit one fence transaction per partition, concurrently; return the partitions this
        worker still owns. A partition not assigned, revoked meanwhile, or whose transaction the
        broker refused as fenced, is lost (a fenced producer is discarded: only a new assignment
        starts another). Other Kafka errors are raised."""
        wanted = list(partitions)
        held = await asyncio.gather(*(self._confirm(p) for p in wanted))
        owned = {p for p, ok in zip(wanted, held, strict=True) if ok}
        self.confirmed += len(owned)
        self.fenced += len(wanted) - len(owned)
        return owned

    async def _confirm(self, partition: int) -> bool:
        fence = self._fences.get(partition)
        if fence is None:
            return False
        async with fence.lock:
            if fence.discarded:
                return False
            if fence.error is not None:
                raise fence.error  # the timer's commit failed: the producer cannot go on
            try:
                await asyncio.shield(fence.started)
                if fence.began is None:
                    await fence.producer.begin_transaction()
                    fence.began = time.monotonic()
                await (await fence.producer.send(self.topic, self.value, str(partition).encode()))
            except FENCED_ERRORS as exc:
                self._fenced(fence, exc)
                return False
        # Revoked while the record was on its way: the partition may be another worker's.
        return not fence.discarded

    def _fenced(self, fence: _Fence, exc: BaseException) -> None:
        logger.warning("partition %d is fenced: another worker's producer took over %s (%s)",
                       fence.partition, self.transactional_id(fence.partition), type(exc).__name__)
        if self._fences.get(fence.partition) is fence:
            self.revoke([fence.partition])

    async def commit_old_transactions(self, older_than: float | None = None) -> int:
        """Commit every open fence transaction that began ``older_than`` seconds ago or earlier
        (default :data:`FENCE_TRANSACTION_SECONDS`); return how many were committed. A fenced
        producer is discarded (its partition is lost, as at a confirm); another error is kept and
        raised by the partition's next confirm."""
        now = time.monotonic()
        if older_than is None:
            older_than = FENCE_TRANSACTION_SECONDS
        committed = 0
        for fence in list(self._fences.values()):
            if fence.began is None or now - fence.began < older_than or fence.lock.locked():
                continue
            async with fence.lock:
                if fence.discarded or fence.began is None or fence.error is not None:
                    continue
                try:
                    await fence.producer.commit_transaction()
                    committed += 1
                    self.committed += 1
                except FENCED_ERRORS as exc:
                    self._fenced(fence, exc)
                except KafkaError as exc:
                    logger.error("the fence transaction of partition %d could not be committed: %s",
                                 fence.partition, exc)
                    fence.error = exc
                finally:
                    fence.began = None
        return committed

    async def run(self) -> None:
        """Commit the open transactions as they age (:data:`FENCE_TRANSACTION_SECONDS`), batches
        or not: the broker aborts one left open past the producer's transaction timeout, and its
        producer would then read as fenced."""
        while True:
            await asyncio.sleep(FENCE_CHECK_SECONDS)
            try:
                await self.commit_old_transactions()
            except Exception:  # noqa: BLE001 - the timer goes on; the partition's next confirm raises
                logger.exception("committing the fence transactions failed")

    async def stop(self) -> None:
        """Stop every producer (the worker is stopping)."""
        self.revoke(list(self._fences))
        if self._stopping:
            await asyncio.gather(*self._stopping)

    def status(self) -> dict[str, object]:
        return {"partitions": sorted(self._fences), "confirmed": self.confirmed, "fenced": self.fenced,
                "transactions_committed": self.committed}


async def _stop(fence: _Fence) -> None:
    async with fence.lock:
        try:
            await fence.started
            if fence.began is not None and fence.error is None:
                # Nothing waits on it; a next owner's producer would abort it all the same.
                fence.began = None
                try:
                    await asyncio.wait_for(fence.producer.abort_transaction(), FENCE_TRANSACTION_SECONDS)
                except (KafkaError, AssertionError, TimeoutError) as exc:
                    logger.info("the fence transaction of partition %d was left to the next owner: %s: %s",
                                fence.partition, type(exc).__name__, exc)
            await fence.producer.stop()
        except (KafkaError, AssertionError, TimeoutError) as exc:
            # A fenced producer may not stop cleanly (aiokafka asserts on its state): it is gone
            # either way, and the partition's new owner aborted whatever it had open.
            logger.info("fence producer of partition %d stopped with %s: %s", fence.partition,
                        type(exc).__name__, exc)


class StallWatch:
    """Notices that this process stood still for longer than ``limit`` seconds: stopped (SIGSTOP),
    suspended with its machine, or its event loop blocked. Its consumer group may have moved its
    partitions meanwhile (a session timeout's silence is enough), and its fences were confirmed
    before: a batch that began before a stall must not write what it has not written yet.

    :meth:`run` ticks on the event loop; :meth:`epoch` counts the stalls seen so far, the one going
    on included (a resumed process may reach a batch's check before the next tick)."""

    def __init__(self, limit: float, tick: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < tick < limit:
            raise ValueError(f"the tick ({tick} s) must be positive and shorter than the limit ({limit} s)")
        self.limit = limit
        self.tick = tick
        self.clock = clock
        self.stalls = 0
        self._last: float | None = None  # when the loop last ran a tick or a check; None before run()

    def epoch(self) -> int:
        now = self.clock()
        if self._last is not None and now - self._last > self.limit:
            self.stalls += 1
            logger.warning("this process stood still for %.1f s (more than %.1f s): batches begun before "
                           "write nothing more", now - self._last, self.limit)
        self._last = now
        return self.stalls

    async def run(self) -> None:
        self._last = self.clock()
        while True:
            await asyncio.sleep(self.tick)
            self.epoch()
