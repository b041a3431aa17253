"""The stored customer record: the compact layout, and the Avro layout of earlier releases."""

from __future__ import annotations

import zlib

import orjson
import pytest

from domain.alerts.state import AlertState, Episode, Peak, alert_state_to_dict
from domain.relationship import DAY_MS, RelationshipState, state_to_dict, state_to_list
from schemas import DecodeError
from streams.state import (
    COMPACT_MARKER,
    COMPRESS_ABOVE,
    DEFLATED_MARKER,
    CustomerRecord,
    decode_record,
    encode_record,
    encode_record_avro,
)
from tests.unit.test_relationship import T0, _mixed_history, fold


def _record() -> CustomerRecord:
    state = fold(_mixed_history(5))
    alerts = AlertState("C1", as_of=T0, score=61.5, tier="loyal", components={"recency": 80.0},
                        peaks=[Peak(T0 - DAY_MS, 70.25, {"recency": 90.0})],
                        episodes={"score_drop": Episode(True, T0 - DAY_MS, T0)}, quiet_due_at=T0 + 9 * DAY_MS,
                        quiet_anchor=T0 - 2 * DAY_MS)
    return CustomerRecord(state, alerts)


def test_a_rich_record_round_trips_through_the_compact_layout():
    record = _record()
    # every part of the state is populated, so a field dropped by the layout shows
    state = record.state
    assert len(state.days) >= 3 and len(state.channels) == 4 and state.categories_bought
    assert state.categories_viewed and state.recent_purchase_at and state.last_purchase and state.seen_events
    data = encode_record(record)
    assert data.startswith(DEFLATED_MARKER)  # 38 days of buckets: longer than COMPRESS_ABOVE
    assert decode_record(data) == record


def test_a_short_record_is_stored_as_it_is_and_a_long_one_deflated():
    short = CustomerRecord(fold(_mixed_history(5)[:3]))
    long = _record()
    short_body = orjson.dumps([state_to_list(short.state), None])
    long_body = orjson.dumps([state_to_list(long.state), alert_state_to_dict(long.alerts)])
    assert len(short_body) <= COMPRESS_ABOVE < len(long_body)
    assert encode_record(short) == COMPACT_MARKER + short_body
    assert zlib.decompress(encode_record(long)[len(DEFLATED_MARKER):]) == long_body
    assert len(encode_record(long)) < len(long_body) // 2


def test_an_empty_state_round_trips():
    record = CustomerRecord(RelationshipState("C7"))
    assert decode_record(encode_record(record)) == record


def test_a_record_stored_by_an_earlier_release_reads_as_the_same_record():
    record = _record()
    avro = encode_record_avro(record)
    assert avro[:2] == b"\xc3\x01"
    assert decode_record(avro) == record


def test_equal_states_give_equal_bytes_whatever_order_their_maps_were_filled_in():
    a, b = RelationshipState("C1"), RelationshipState("C1")
    a.categories_bought.update({"shoes": 2, "bags": 1})
    b.categories_bought.update({"bags": 1, "shoes": 2})
    assert encode_record(CustomerRecord(a)) == encode_record(CustomerRecord(b))


def test_a_corrupt_compact_body_is_a_decode_error_with_a_reason():
    good = encode_record(CustomerRecord(RelationshipState("C7")))
    with pytest.raises(DecodeError, match="corrupt compact body"):
        decode_record(good[:-3])
    with pytest.raises(DecodeError, match="corrupt compact body"):
        decode_record(DEFLATED_MARKER + b"not deflated")
    with pytest.raises(DecodeError, match="corrupt compact body"):
        decode_record(COMPACT_MARKER + orjson.dumps([["C7", 1], None]))  # a list of the wrong length


def test_the_compact_layout_is_the_state_values_in_order():
    # Positional: [customer, events, first seen, last seen, first purchase, last received,
    # lifetime tally, day numbers, day counters, channels, bought, viewed, recent purchases,
    # last purchase, seen ids, their arrival times], then the alert state.
    state = fold(_mixed_history(5)[:2])
    values, alerts = orjson.loads(encode_record(CustomerRecord(state))[len(COMPACT_MARKER):])
    assert alerts is None
    assert values[0] == "C1" and values[1] == 2 == state.events_applied
    assert values[7] == sorted(state.days) and len(values[8]) == 20 * len(state.days)
    assert values[14] == list(state.seen_events) and values[15] == list(state.seen_events.values())
    assert state_to_dict(decode_record(encode_record(CustomerRecord(state))).state) == state_to_dict(state)
