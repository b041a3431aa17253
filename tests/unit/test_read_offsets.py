"""The state worker's record of the next offset to fold per partition (streams/offsets.py): which
batches skip records, what a batch folded moves, and a seek back that finds no record there.

The consumer's Kafka side (its seeks) runs against the broker in tests/faults/test_zombie.py."""

from __future__ import annotations

import logging

from faust.types import TP

from streams.offsets import CommittedSeekingConsumer, offset_spans

PURCHASES_0 = TP("purchases", 0)
CALLS_0 = TP("calls", 0)
VISITS_1 = TP("visits", 1)


def ledger(next_offsets: dict[TP, int], read_again_from: dict[TP, int] | None = None) -> CommittedSeekingConsumer:
    """The consumer's bookkeeping alone, without a Faust app behind it."""
    reads = object.__new__(CommittedSeekingConsumer)
    reads.next_offsets = dict(next_offsets)
    reads.reread_from = dict(read_again_from or {})
    reads.rereads = 0
    return reads


class Msg:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.offset = tp, offset


def test_offset_spans_are_lowest_and_highest_per_partition():
    messages = [Msg(PURCHASES_0, 12), Msg(CALLS_0, 3), Msg(PURCHASES_0, 10), Msg(PURCHASES_0, 11)]
    assert offset_spans(messages) == {PURCHASES_0: (10, 12), CALLS_0: (3, 3)}


def test_a_batch_starting_past_the_next_offset_has_a_hole():
    reads = ledger({PURCHASES_0: 127, CALLS_0: 46})
    # purchases[0] starts at 128: record 127 never reached the stream; calls[0] starts where expected.
    assert reads.check({PURCHASES_0: (128, 184), CALLS_0: (46, 71)}) == {PURCHASES_0}


def test_records_at_or_before_the_next_offset_are_no_hole():
    # Records read again after a seek back (folded before: the events' ids count them once).
    reads = ledger({PURCHASES_0: 127})
    assert reads.check({PURCHASES_0: (127, 130)}) == set()
    assert reads.check({PURCHASES_0: (100, 140)}) == set()


def test_partitions_without_a_known_next_offset_are_not_judged():
    reads = ledger({PURCHASES_0: 0})
    assert reads.check({VISITS_1: (500, 600)}) == set()


def test_folding_moves_the_next_offset_past_the_batch_and_never_back():
    reads = ledger({PURCHASES_0: 10, CALLS_0: 50})
    reads.folded({PURCHASES_0: (10, 19), CALLS_0: (30, 40)})
    assert reads.next_offsets == {PURCHASES_0: 20, CALLS_0: 50}
    assert reads.check({PURCHASES_0: (21, 25)}) == {PURCHASES_0}
    assert reads.check({PURCHASES_0: (20, 25)}) == set()


def test_after_a_seek_back_a_later_first_record_is_taken_as_it_is(caplog):
    # Sought back to 127 and the broker's first record there is 130 (127 to 129 hold transaction
    # markers, or were compacted away): going on, not seeking back forever.
    reads = ledger({PURCHASES_0: 127}, read_again_from={PURCHASES_0: 127})
    with caplog.at_level(logging.WARNING, logger="streams.offsets"):
        assert reads.check({PURCHASES_0: (130, 140)}) == set()
    assert "no record at offsets 127 to 129" in caplog.text
    reads.folded({PURCHASES_0: (130, 140)})
    assert reads.reread_from == {}
    # Once a batch was folded there, a hole is a hole again.
    assert reads.check({PURCHASES_0: (143, 150)}) == {PURCHASES_0}
