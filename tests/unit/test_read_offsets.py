"""The state worker's record of the next offset to fold per partition (streams/offsets.py): which
batches skip records, what a batch folded moves, and a seek back that finds no record there.

The consumer's Kafka side (its seeks) runs against the broker in tests/faults/test_zombie.py."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from faust.types import TP
from intervaltree import IntervalTree

from streams.offsets import SAME_START_TIMES, CommittedSeekingConsumer, offset_spans, partition_offsets

PURCHASES_0 = TP("purchases", 0)
CALLS_0 = TP("calls", 0)
VISITS_1 = TP("visits", 1)


def ledger(next_offsets: dict[TP, int]) -> CommittedSeekingConsumer:
    """The consumer's bookkeeping alone, without a Faust app behind it (its seeks do nothing)."""
    reads = object.__new__(CommittedSeekingConsumer)
    reads.next_offsets = dict(next_offsets)
    reads.reread_from = {}
    reads.rereads = 0
    reads.moved_at = {}
    reads.tail_sought = {}
    reads._read_offset = {}
    reads._gap = defaultdict(IntervalTree)
    reads._committed_offset = defaultdict(lambda: None)
    reads._acked = defaultdict(list)
    reads._acked_index = defaultdict(set)

    async def no_seek(positions):
        reads.sought = dict(positions)
        return dict(positions)

    reads._seek_in_thread = no_seek
    reads.assignment = lambda: set(next_offsets)
    return reads


def span(low: int, high: int) -> list[int]:
    """The offsets of a batch's records in one partition, ``low`` to ``high`` without a hole."""
    return list(range(low, high + 1))


class Msg:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.offset = tp, offset


def test_offset_spans_are_lowest_and_highest_per_partition():
    messages = [Msg(PURCHASES_0, 12), Msg(CALLS_0, 3), Msg(PURCHASES_0, 10), Msg(PURCHASES_0, 11)]
    assert offset_spans(messages) == {PURCHASES_0: (10, 12), CALLS_0: (3, 3)}


def test_a_batch_starting_past_the_next_offset_has_a_hole():
    reads = ledger({PURCHASES_0: 127, CALLS_0: 46})
    # purchases[0] starts at 128: record 127 never reached the stream; calls[0] starts where expected.
    assert reads.check({PURCHASES_0: span(128, 184), CALLS_0: span(46, 71)}) == {PURCHASES_0: (127, 128)}


def test_a_hole_inside_a_batch_is_a_hole():
    # Faust dropped record 15 (cut off by a suspension of its flow) and delivered 16 next.
    reads = ledger({PURCHASES_0: 10, CALLS_0: 46})
    assert reads.check({PURCHASES_0: [10, 11, 12, 13, 14, 16, 17], CALLS_0: span(46, 71)}) == {PURCHASES_0: (15, 16)}
    # In the order delivered or not, repeats of records folded before included.
    assert reads.check({PURCHASES_0: [16, 8, 9, 10, 11, 12, 13, 14, 9]}) == {PURCHASES_0: (15, 16)}


def test_partition_offsets_are_listed_as_delivered():
    messages = [Msg(PURCHASES_0, 12), Msg(CALLS_0, 3), Msg(PURCHASES_0, 10)]
    assert partition_offsets(messages) == {PURCHASES_0: [12, 10], CALLS_0: [3]}


def test_the_records_before_a_hole_inside_a_batch_are_folded_and_it_is_sought_back_to():
    reads = ledger({PURCHASES_0: 10})
    assert asyncio.run(reads.read_again({PURCHASES_0: (15, 16)})) == {PURCHASES_0: 15}
    reads.folded({PURCHASES_0: (10, 14)})
    assert reads.next_offsets == {PURCHASES_0: 15}
    assert reads.reread_from == {PURCHASES_0: (15, 16, 1)}  # not folded past the hole yet
    assert reads.check({PURCHASES_0: span(15, 20)}) == {}
    reads.folded({PURCHASES_0: (15, 20)})
    assert reads.reread_from == {}


def test_an_empty_offset_inside_batches_is_taken_as_it_is_after_three_seeks():
    reads = ledger({PURCHASES_0: 10})
    for _ in range(SAME_START_TIMES):
        assert reads.check({PURCHASES_0: [10, 11, 13, 14]}) == {PURCHASES_0: (12, 13)}
        asyncio.run(reads.read_again({PURCHASES_0: (12, 13)}))
        reads.folded({PURCHASES_0: (10, 11)})
    assert reads.check({PURCHASES_0: [13, 14]}) == {}
    assert gaps(reads, PURCHASES_0) == [(12, 12)]


def test_records_at_or_before_the_next_offset_are_no_hole():
    # Records read again after a seek back (folded before: the events' ids count them once).
    reads = ledger({PURCHASES_0: 127})
    assert reads.check({PURCHASES_0: span(127, 130)}) == {}
    assert reads.check({PURCHASES_0: span(100, 140)}) == {}


def test_partitions_without_a_known_next_offset_are_not_judged():
    reads = ledger({PURCHASES_0: 0})
    assert reads.check({VISITS_1: span(500, 600)}) == {}


def test_folding_moves_the_next_offset_past_the_batch_and_never_back():
    reads = ledger({PURCHASES_0: 10, CALLS_0: 50})
    reads.folded({PURCHASES_0: (10, 19), CALLS_0: (30, 40)})
    assert reads.next_offsets == {PURCHASES_0: 20, CALLS_0: 50}
    assert reads.check({PURCHASES_0: span(21, 25)}) == {PURCHASES_0: (20, 21)}
    assert reads.check({PURCHASES_0: span(20, 25)}) == {}


def test_a_seek_back_goes_to_the_next_offset_and_faust_delivers_from_there():
    reads = ledger({PURCHASES_0: 127, CALLS_0: 46})
    assert asyncio.run(reads.read_again({PURCHASES_0: (127, 128)})) == {PURCHASES_0: 127}
    assert reads.sought == {PURCHASES_0: 127}
    assert reads._read_offset == {PURCHASES_0: 127}
    assert reads.rereads == 1


def test_records_fetched_before_the_seek_and_delivered_after_it_are_a_hole_again():
    # Sought back to 147; records fetched before the seek (231 on) still arrive first.
    reads = ledger({VISITS_1: 147})
    asyncio.run(reads.read_again({VISITS_1: (147, 231)}))
    assert reads.check({VISITS_1: span(250, 300)}) == {VISITS_1: (147, 250)}
    asyncio.run(reads.read_again({VISITS_1: (147, 250)}))
    assert reads.check({VISITS_1: span(147, 300)}) == {}


def test_the_same_later_start_after_three_seeks_back_is_taken_as_it_is(caplog):
    # 127 to 129 hold transaction markers, or were compacted away: every seek back to 127 brings
    # 130 first. After three, the worker goes on instead of seeking back forever.
    reads = ledger({PURCHASES_0: 127})
    for _ in range(SAME_START_TIMES):
        assert reads.check({PURCHASES_0: span(130, 140)}) == {PURCHASES_0: (127, 130)}
        asyncio.run(reads.read_again({PURCHASES_0: (127, 130)}))
    with caplog.at_level(logging.WARNING, logger="streams.offsets"):
        assert reads.check({PURCHASES_0: span(130, 140)}) == {}
    assert "no record at offsets 127 to 129" in caplog.text
    reads.folded({PURCHASES_0: (130, 140)})
    assert reads.reread_from == {}
    # Once a batch was folded there, a hole is a hole again.
    assert reads.check({PURCHASES_0: span(143, 150)}) == {PURCHASES_0: (141, 143)}


def gaps(reads: CommittedSeekingConsumer, tp: TP) -> list[tuple[int, int]]:
    """The offsets Faust counts as acknowledged without a record (first, last)."""
    return sorted((i.begin, i.end - 1) for i in reads._gap[tp])


def test_a_seek_back_forgets_the_gap_faust_noted_over_the_skipped_records():
    # Faust dropped 128 to 230 (fetched while the partition was paused) and delivered 231 next:
    # a jump it notes as a gap, whose offsets its commits would count as acknowledged.
    reads = ledger({PURCHASES_0: 128})
    asyncio.run(reads._add_gap(PURCHASES_0, 128, 230))
    asyncio.run(reads._add_gap(PURCHASES_0, 40, 41))  # before the next offset to fold: kept
    assert gaps(reads, PURCHASES_0) == [(40, 41), (128, 230)]
    assert reads.check({PURCHASES_0: span(231, 260)}) == {PURCHASES_0: (128, 231)}
    asyncio.run(reads.read_again({PURCHASES_0: (128, 231)}))
    assert gaps(reads, PURCHASES_0) == [(40, 41)]


def test_no_gap_is_noted_while_a_partition_is_read_again_and_again_once_folded():
    reads = ledger({VISITS_1: 147})
    asyncio.run(reads.read_again({VISITS_1: (147, 231)}))
    # A record fetched before the seek, delivered after it: 148 to 249 are to be read, not missing.
    asyncio.run(reads._add_gap(VISITS_1, 148, 249))
    assert gaps(reads, VISITS_1) == []
    reads.folded({VISITS_1: (147, 300)})
    asyncio.run(reads._add_gap(VISITS_1, 301, 303))  # transaction markers between two records
    assert gaps(reads, VISITS_1) == [(301, 303)]


def test_offsets_found_empty_after_the_seeks_back_become_a_gap():
    reads = ledger({PURCHASES_0: 127})
    for _ in range(SAME_START_TIMES):
        assert reads.check({PURCHASES_0: span(130, 140)}) == {PURCHASES_0: (127, 130)}
        asyncio.run(reads.read_again({PURCHASES_0: (127, 130)}))
    assert reads.check({PURCHASES_0: span(130, 140)}) == {}
    assert gaps(reads, PURCHASES_0) == [(127, 129)]


def acknowledged(reads: CommittedSeekingConsumer, tp: TP, offsets: list[int]) -> None:
    """As Faust's ``Consumer.ack`` notes acknowledged offsets."""
    for offset in offsets:
        reads._acked_index[tp].add(offset)
        reads._acked[tp].append(offset)


def test_an_offset_acknowledged_and_inside_a_gap_counts_once():
    # A rebalance test's stall: Faust had noted 209 to 357 as a gap and the worker then folded and
    # acknowledged them; filled in, each offset was listed twice and every commit moved by one.
    reads = ledger({VISITS_1: 358})
    reads._committed_offset[VISITS_1] = 209
    acknowledged(reads, VISITS_1, list(range(208, 358)))
    reads._gap[VISITS_1].addi(209, 358)
    assert reads._new_offset(VISITS_1) == 358


def test_a_gap_over_records_not_folded_counts_only_once_they_are():
    reads = ledger({PURCHASES_0: 15})
    reads._committed_offset[PURCHASES_0] = 10
    acknowledged(reads, PURCHASES_0, [10, 11])
    reads._gap[PURCHASES_0].addi(12, 40)  # 15 to 39 not folded yet
    assert reads._new_offset(PURCHASES_0) == 15
    assert gaps(reads, PURCHASES_0) == [(15, 39)]
    reads._committed_offset[PURCHASES_0] = 15  # committed
    reads.folded({PURCHASES_0: (40, 44)})
    acknowledged(reads, PURCHASES_0, [40, 41, 42, 43, 44])
    assert reads._new_offset(PURCHASES_0) == 45


def test_other_partitions_are_committed_as_faust_does():
    changelog = TP("relationships-changelog", 0)
    reads = ledger({})
    acknowledged(reads, changelog, [1, 2, 3, 7])
    reads._gap[changelog].addi(3, 7)  # overlapping 3: listed twice, as Faust lists it
    assert reads._new_offset(changelog) == 4


def test_partitions_whose_records_were_dropped_are_rewound_to_the_next_offset_to_fold():
    # A batch taken while a rebalance was still under way is dropped unfolded; no later record
    # may come to show the hole, so the partitions still held are sought back at once.
    reads = ledger({PURCHASES_0: 40, CALLS_0: 10})
    reads.assignment = lambda: {PURCHASES_0}  # calls[0] went to another worker meanwhile
    asyncio.run(reads._add_gap(PURCHASES_0, 41, 60))  # Faust's jump over records about to be read
    assert asyncio.run(reads.rewind({PURCHASES_0, CALLS_0, VISITS_1})) == {PURCHASES_0: 40}
    assert reads.sought == {PURCHASES_0: 40}
    assert reads._read_offset == {PURCHASES_0: 40}
    assert gaps(reads, PURCHASES_0) == []
    assert reads.reread_from == {} and reads.rereads == 0  # not a hole seen: nothing counted toward taking one as empty


def stranded_ledger(next_offsets: dict[TP, int], highwaters: dict[TP, int | None]) -> CommittedSeekingConsumer:
    reads = ledger(next_offsets)
    reads.highwater = lambda tp: highwaters.get(tp)
    return reads


def test_a_partition_behind_its_high_watermark_is_stranded_once_it_stood_still_long_enough():
    highwaters = {PURCHASES_0: 130, CALLS_0: 46}
    reads = stranded_ledger({PURCHASES_0: 127, CALLS_0: 46}, highwaters)
    assert reads.stranded(now=100.0, quiet=5.0) == {}  # first seen behind: the clock starts
    assert reads.stranded(now=104.9, quiet=5.0) == {}
    # calls[0] has folded everything on the broker; purchases[0] has 127..129 waiting for 5 s
    assert reads.stranded(now=105.0, quiet=5.0) == {PURCHASES_0: 127}


def test_folding_restarts_the_clock():
    reads = stranded_ledger({PURCHASES_0: 127}, {PURCHASES_0: 140})
    reads.stranded(now=100.0, quiet=5.0)
    reads.folded({PURCHASES_0: (127, 135)})  # the worker is reading the partition: not stranded
    assert reads.stranded(now=106.0, quiet=5.0) == {}
    assert reads.stranded(now=111.0, quiet=5.0) == {PURCHASES_0: 136}


def test_a_stranded_tail_is_sought_back_once_per_offset_and_high_watermark():
    highwaters = {PURCHASES_0: 130}
    reads = stranded_ledger({PURCHASES_0: 127}, highwaters)
    reads.stranded(now=100.0, quiet=5.0)
    assert asyncio.run(reads.read_tails_again(now=105.0, quiet=5.0)) == {PURCHASES_0: 127}
    assert reads.sought == {PURCHASES_0: 127}
    assert reads._read_offset[PURCHASES_0] == 127  # Faust delivers from there on
    # Nothing came (offsets 127..129 hold transaction markers): not sought again, however long...
    assert asyncio.run(reads.read_tails_again(now=200.0, quiet=5.0)) == {}
    # ...until a record is produced there (the high watermark moves) and does not arrive either.
    highwaters[PURCHASES_0] = 131
    assert asyncio.run(reads.read_tails_again(now=205.0, quiet=5.0)) == {PURCHASES_0: 127}


def test_partitions_not_held_or_without_a_known_high_watermark_are_not_stranded():
    reads = stranded_ledger({PURCHASES_0: 127, CALLS_0: 46}, {PURCHASES_0: 130, CALLS_0: None})
    reads.assignment = lambda: {CALLS_0}
    reads.stranded(now=100.0, quiet=5.0)
    assert reads.stranded(now=200.0, quiet=5.0) == {}


INPUTS = frozenset({"purchases", "calls", "visits"})


def test_caught_up_once_every_held_input_partition_was_delivered_to_its_high_watermark():
    highwaters = {PURCHASES_0: 130, CALLS_0: 46}
    reads = stranded_ledger({PURCHASES_0: 120, CALLS_0: 46}, highwaters)
    assert not reads.caught_up(INPUTS, {})  # purchases[0] has 120..129 on the broker
    assert not reads.caught_up(INPUTS, {PURCHASES_0: 128})
    assert reads.caught_up(INPUTS, {PURCHASES_0: 129})
    highwaters[CALLS_0] = 47  # a call arrived since
    assert not reads.caught_up(INPUTS, {PURCHASES_0: 129})
    assert reads.caught_up(INPUTS, {PURCHASES_0: 129, CALLS_0: 46})


def test_the_next_offset_to_fold_counts_where_it_is_past_the_last_delivered():
    # delivered 125 in an earlier batch, then sought back and folded to 130 since: caught up
    reads = stranded_ledger({PURCHASES_0: 130}, {PURCHASES_0: 130})
    assert reads.caught_up(INPUTS, {PURCHASES_0: 125})


def test_other_topics_and_unheld_partitions_do_not_hold_a_batch_back():
    due = TP("alert-due", 0)
    reads = stranded_ledger({PURCHASES_0: 10, CALLS_0: 0, due: 0}, {PURCHASES_0: 130, CALLS_0: 0, due: 9})
    reads.assignment = lambda: {CALLS_0, due}  # purchases[0] moved to another worker
    assert reads.caught_up(INPUTS, {})


def test_a_held_partition_not_fetched_yet_holds_a_batch_back():
    # Just assigned: visits were fetched and delivered, the purchases partition not yet. A batch
    # taken now could fold a customer's visits without the purchase made before them.
    highwaters: dict[TP, int | None] = {PURCHASES_0: None, CALLS_0: 4}
    reads = stranded_ledger({PURCHASES_0: 0, CALLS_0: 0}, highwaters)
    assert not reads.caught_up(INPUTS, {CALLS_0: 3})
    highwaters[PURCHASES_0] = 0  # fetched: nothing on the broker
    assert reads.caught_up(INPUTS, {CALLS_0: 3})
