"""Where the state worker's consumer starts reading a partition after a rebalance.

After every assignment Faust seeks each partition to its committed offset before its streams
resume, and the records between the committed offset and the consumer's fetch position are read
again. The seek goes through aiokafka's ``seek_to_committed``, which moves a partition only when
its committed offset is above 0: a partition committed at 0, or never committed, keeps whatever
position the consumer reached. And the consumer can move past records that no stream ever sees:
Faust drops fetched records of a partition it paused in the meantime (it pauses every assigned
partition while its tables recover), and the fetch position has moved on all the same.

That is how records were lost when a worker took over the partitions of another that had not
committed them yet (a worker frozen, or killed, before its first commit): the new owner started
where its fetches had got to, tens of records into the partition, and since Faust counts offsets
from the first record it delivers, its commits moved past the records it skipped.

:class:`CommittedSeekingConsumer` seeks those partitions too: to offset 0 when 0 is committed, to
the earliest offset when nothing is (the ``earliest`` reset policy, the application's). It
remembers the next offset to fold of each partition, and a batch whose records of a partition
skip an offset from there on, at its start or inside it (Faust dropped a single record in the
middle of a partition's records right after a rebalance), folds only the records before the hole:
the partition is sought back to it (:meth:`CommittedSeekingConsumer.check`). A partition whose
last records on the broker never arrive, so that no later record shows the hole, is sought back
to its next offset to fold once it has stood still for a while
(:meth:`CommittedSeekingConsumer.stranded`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, ClassVar

import faust
from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP

from streams.delivery import EagerDelivery

logger = logging.getLogger(__name__)

#: Seeks back to the same offset, each answered by records starting at the same later offset,
#: after which the offsets in between are taken to hold no record.
SAME_START_TIMES = 3
#: Past any offset: where a partition's gaps are cut off from.
GAP_END = 2**63
#: Seconds a partition's next offset to fold may stand still below its high watermark, while the
#: worker keeps up with its stream, before the records from there on are read again
#: (:meth:`CommittedSeekingConsumer.stranded`). Records on the broker reach a stream that keeps up
#: within a fetch wait (0.5 s) and a batch window; a transaction of the worker's own producer
#: stays open about a commit interval (1 s).
STRANDED_SECONDS = 5.0


class CommittedSeekingConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, whose seek to the committed offsets moves every stream partition,
    and which remembers the next offset the agent must fold in each of them (:meth:`check`)."""

    #: The topics whose partitions are sought whatever their committed offset (the agent's inputs;
    #: changelogs are positioned by table recovery, not here). Set by :func:`install`.
    stream_topics: ClassVar[frozenset[str]] = frozenset()
    #: Each awaited with the revoked partitions before Faust revokes them (its tables close their
    #: partitions' stores, its consumer forgets their acknowledgements). Set by :func:`install`.
    before_revoke: ClassVar[tuple[Callable[[set[TP]], Awaitable[None]], ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The next offset to fold of each stream partition this worker owns.
        self.next_offsets: dict[TP, int] = {}
        #: Partitions sought back by :meth:`read_again` and not folded past since: the offset
        #: sought, the first offset after the hole the batch that found it held, and how many
        #: times in a row.
        self.reread_from: dict[TP, tuple[int, int, int]] = {}
        self.rereads = 0
        #: When the next offset to fold of each stream partition last moved (or was first seen).
        self.moved_at: dict[TP, float] = {}
        #: Partitions whose tail :meth:`read_tails_again` sought back: the next offset to fold and
        #: the high watermark it did so at.
        self.tail_sought: dict[TP, tuple[int, int]] = {}

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        streams = {tp: offset for tp, offset in committed.items() if tp.topic in self.stream_topics}
        unmoved = [tp for tp, offset in streams.items() if not offset]
        positions: dict[TP, int] = {}
        if unmoved:
            never = [tp for tp in unmoved if streams[tp] is None]
            earliest = await self.earliest_offsets(*never) if never else {}
            positions = {tp: earliest.get(tp, 0) for tp in unmoved}
            await self._seek_in_thread(positions)
            logger.debug("sought to their start: %s", _spans(positions))
        self.next_offsets = {tp: positions.get(tp, offset or 0) for tp, offset in streams.items()}
        self.reread_from = {}
        self.moved_at = {}
        self.tail_sought = {}
        return committed

    def _new_offset(self, tp: TP) -> int | None:
        """The offset Faust may commit for ``tp``: its first run of acknowledged offsets, gaps
        included, as Faust reckons it, with two changes for the stream partitions.

        * Only the gaps below the next offset to fold count. A gap Faust noted over records this
          worker has not folded (records dropped or delivered out of turn around a rebalance or
          a seek back) would let a commit pass them; it counts once the worker has folded past it.
        * Each offset counts once. Faust fills gaps into its list of acknowledged offsets without
          its index, so an offset acknowledged and also inside a gap was listed twice; its runs
          then broke at every offset and its commits moved one offset per commit interval, which
          looked like a worker that stopped committing after a rebalance."""
        acked = self._acked[tp]
        limit = self.next_offsets.get(tp)
        if acked and limit is not None:
            gaps = self._gap.get(tp)
            if gaps:
                filled = {offset for interval in gaps.overlap(0, limit)
                          for offset in range(interval.begin, min(interval.end, limit))}
                gaps.chop(0, limit)
                acked.extend(filled)
            acked[:] = sorted(set(acked))
        return super()._new_offset(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust notes a jump between two records it delivers as a gap, whose offsets its commits
        count as acknowledged (transaction markers or compaction leave such jumps). Not while a
        partition is read again (:meth:`read_again`): records fetched before the seek back still
        arrive after it, and the jump from the sought offset to one of them spans records that
        are about to be read, not missing. A gap found empty after the seeks is noted by
        :meth:`check`."""
        if tp in self.reread_from:
            logger.debug("%s[%d]: offsets %d to %d not taken as a gap while the partition is read again",
                         tp.topic, tp.partition, offset_from, offset_to)
            return
        await super()._add_gap(tp, offset_from, offset_to)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:  # type: ignore[override]
        for hook in self.before_revoke:
            await hook(revoked)
        await super().on_partitions_revoked(revoked)

    def check(self, offsets: Mapping[TP, Collection[int]]) -> dict[TP, tuple[int, int]]:
        """The partitions of a batch (the offsets of its records in each) whose records skip an
        offset from the next offset to fold on: records that never reached the stream. For each,
        the first offset missing and the first offset present after it. The batch's records
        before the hole may be folded, none from it on.

        A hole may open at the batch's start or inside it. Faust delivers a partition's records
        in order, but a record it fetched and never handed to the stream (it drops records
        fetched while their partition was paused, and records stamped with an earlier consumer
        generation) leaves a jump between two records it delivers; a jump of one record inside
        a batch was seen right after a rebalance.

        Offsets below the next offset to fold are records read again (folded before: their
        events' ids count them once). Missing offsets sought back to :data:`SAME_START_TIMES`
        times in a row, each time answered by the same later offset, are taken to hold no record
        (transaction markers of a transactional producer, or compaction): records fetched before
        a seek can still be delivered after it, so one seek back is not enough to tell."""
        holes: dict[TP, tuple[int, int]] = {}
        for tp, present in offsets.items():
            expected = self.next_offsets.get(tp)
            if expected is None:
                continue
            for offset in sorted({o for o in present if o >= expected}):
                if offset > expected:
                    if self.reread_from.get(tp) != (expected, offset, SAME_START_TIMES):
                        holes[tp] = (expected, offset)
                        break
                    logger.warning("%s[%d]: no record at offsets %d to %d after %d seeks there; going on from %d",
                                   tp.topic, tp.partition, expected, offset - 1, SAME_START_TIMES, offset)
                    # Faust's commits may pass the empty offsets (its gaps count as acknowledged);
                    # the gaps it saw while the partition was read again were not kept (_add_gap).
                    self._gap[tp].addi(expected, offset)
                expected = offset + 1
        return holes

    def folded(self, offsets: Mapping[TP, tuple[int, int]]) -> None:
        """Note the records of a batch folded (lowest and highest offset of each partition)."""
        for tp, (_, high) in offsets.items():
            if tp in self.next_offsets and high >= self.next_offsets[tp]:
                self.next_offsets[tp] = high + 1
                self.moved_at.pop(tp, None)  # stands still from the next look on (stranded)
                # Folded past where it was sought back to: a hole from here on is a new one.
                if high >= self.reread_from.get(tp, (GAP_END,))[0]:
                    del self.reread_from[tp]

    async def read_again(self, holes: Mapping[TP, tuple[int, int]]) -> dict[TP, int]:
        """Seek the partitions of ``holes`` (:meth:`check`: the first offset missing and the first
        offset present after it) back to their first offset missing, so that the records skipped
        are fetched and delivered again; returns the positions."""
        positions = await self._seek_back({tp: missing for tp, (missing, _) in holes.items() if tp in self.next_offsets})
        for tp, offset in positions.items():
            sought, after, times = self.reread_from.get(tp, (-1, -1, 0))
            same = (sought, after) == holes[tp]
            self.reread_from[tp] = (offset, holes[tp][1], times + 1 if same else 1)
        self.rereads += len(positions)
        return positions

    async def rewind(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Seek ``partitions`` back to their next offset to fold: the worker dropped records of
        theirs that reached the stream (a batch taken while a rebalance was still under way, or
        records read before it), and the consumer has moved past them. A later record of the
        partition would show the hole (:meth:`check`), but none may come: without the seek the
        partition would stand still, its records neither folded nor committed. Partitions this
        worker does not hold (any more) are left to the next rebalance's seek; returns the
        positions."""
        assigned = self.assignment()
        return await self._seek_back({tp: self.next_offsets[tp] for tp in partitions
                                      if tp in self.next_offsets and tp in assigned})

    def caught_up(self, topics: Collection[str], delivered: Mapping[TP, int]) -> bool:
        """Whether every partition of ``topics`` this worker holds has had its records up to the
        broker's high watermark (as of the last fetch) delivered: ``delivered`` holds the last offset
        delivered of each partition, and the next offset to fold counts where it is further.

        A partition not fetched since it was assigned (its high watermark unknown) is not caught
        up: its records may be on the broker. Were it counted as caught up, a batch taken right
        after an assignment could hold one topic's records of a customer without the other
        topics' (the three input topics have no order between them), and the events left out
        would arrive in a later batch as late events. Its first fetch, or the batch's window,
        ends that wait. A consumer not started cannot tell: not caught up either."""
        next_offsets = self.next_offsets
        try:
            assigned = self.assignment()
        except ConsumerNotStarted:
            return False
        for tp in assigned:
            if tp.topic not in topics:
                continue
            high = self.highwater(tp)
            if high is None:
                return False
            last = delivered.get(tp)
            reached = next_offsets.get(tp, 0)
            if last is not None and last >= reached:
                reached = last + 1
            if reached < high:
                return False
        return True

    def stranded(self, now: float, quiet: float = STRANDED_SECONDS) -> dict[TP, int]:
        """The partitions this worker holds whose next offset to fold is below their high
        watermark (records are on the broker from there on) and has not moved for ``quiet``
        seconds, each with that offset: the end of a partition that Faust fetched and never
        delivered. :meth:`check` finds a hole when a later record of the partition arrives, but
        none may come (the traffic stopped), and the partition would stand still with its last
        records neither folded nor committed. Only meaningful while the worker keeps up with its
        stream: in a backlog a partition's records may wait their turn for longer.

        A partition is named once per next offset and high watermark: a tail that holds no record
        (transaction markers) or a transaction still open reads nothing, and is not sought again
        until either moves. ``now``: a monotonic clock's reading."""
        found: dict[TP, int] = {}
        assigned = self.assignment()
        for tp, expected in self.next_offsets.items():
            high = self.highwater(tp) if tp in assigned else None
            if high is None or high <= expected:
                self.moved_at.pop(tp, None)
                continue
            since = self.moved_at.setdefault(tp, now)
            if now - since >= quiet and self.tail_sought.get(tp) != (expected, high):
                found[tp] = expected
        return found

    async def read_tails_again(self, now: float, quiet: float = STRANDED_SECONDS) -> dict[TP, int]:
        """Seek the :meth:`stranded` partitions back to their next offset to fold; returns the
        positions sought."""
        stranded = self.stranded(now, quiet)
        highs = {tp: self.highwater(tp) for tp in stranded}
        sought = await self._seek_back(stranded)
        for tp, offset in sought.items():
            self.tail_sought[tp] = (offset, highs[tp])
            self.moved_at[tp] = now
        return sought

    async def _seek_back(self, positions: Mapping[TP, int]) -> dict[TP, int]:
        """Seek to ``positions`` (each partition's offset to read from again); returns those sought."""
        sought = await self._seek_in_thread(positions)
        for tp, offset in sought.items():
            # Faust delivers a partition's records from this offset on (it drops lower ones as read).
            self._read_offset[tp] = offset or None
            # And it forgets any gap it noted from there on: Faust counts the offsets of a gap (a
            # jump between two records it delivered) as acknowledged, and the jump over the
            # records skipped is one. Its commits would pass them before they are folded.
            gaps = self._gap.get(tp)
            if gaps:
                gaps.chop(offset, GAP_END)
        return sought

    async def _seek_in_thread(self, positions: Mapping[TP, int]) -> dict[TP, int]:
        """Seek each partition to its offset; returns the positions of the partitions sought (a
        partition the consumer no longer holds, in a rebalance begun meanwhile, is not)."""
        # In the consumer's own thread, as every other call into it: aiokafka's seek drops the
        # partition's fetched records, which its fetcher may be reading at that moment.
        thread = self._thread
        sought: dict[TP, int] = {}

        async def seek_all() -> None:
            for tp, offset in positions.items():
                try:
                    thread.seek(tp, offset)
                except IllegalStateError:
                    logger.info("%s[%d] not sought to %d: no longer assigned", tp.topic, tp.partition, offset)
                    continue
                sought[tp] = offset

        if positions:
            await thread.call_thread(seek_all)
        return sought


def _spans(positions: Mapping[TP, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(positions.items()))


def partition_offsets(messages: Iterable[Any]) -> dict[TP, list[int]]:
    """The offsets of Faust ``messages`` in each partition, in the order delivered."""
    offsets: dict[TP, list[int]] = {}
    for message in messages:
        offsets.setdefault(message.tp, []).append(message.offset)
    return offsets


def offset_spans(messages: Iterable[Any]) -> dict[TP, tuple[int, int]]:
    """The lowest and highest offset of each partition among Faust ``messages``."""
    spans: dict[TP, tuple[int, int]] = {}
    for message in messages:
        tp, offset = message.tp, message.offset
        low, high = spans.get(tp, (offset, offset))
        spans[tp] = (min(low, offset), max(high, offset))
    return spans


def install(app: faust.App, stream_topics: Iterable[str],
            before_revoke: Callable[[set[TP]], Awaitable[None]] | None = None, eager: bool = False) -> None:
    """Make ``app`` (not started yet) build its consumer as a :class:`CommittedSeekingConsumer` for
    ``stream_topics``, awaiting ``before_revoke`` at the start of every revocation; ``eager``: one
    that hands the records of ``stream_topics`` to their stream in place (:mod:`streams.delivery`),
    and every other record (the tables' changelogs) Faust's way."""
    if app.conf.consumer_auto_offset_reset != "earliest":
        raise ValueError("the state worker reads a partition nobody committed from its earliest offset; "
                         f"consumer_auto_offset_reset={app.conf.consumer_auto_offset_reset!r} is not supported")
    bases = (EagerDelivery, CommittedSeekingConsumer) if eager else (CommittedSeekingConsumer,)
    topics = frozenset(stream_topics)
    consumer_class: Any = type("CommittedSeekingConsumer", bases,
                               {"stream_topics": topics, "eager_topics": topics, "__module__": __name__,
                                "before_revoke": () if before_revoke is None else (before_revoke,)})
    transport: Any = app.transport
    transport.Consumer = consumer_class
