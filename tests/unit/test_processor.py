"""The state worker's batch processor without Faust: a dict store, messages built by hand."""

from __future__ import annotations

import asyncio
import time

from config.settings import Settings
from config.topics import Topics
from ops.simulate import encode_event, expected_by_customer, generate
from schemas import codec
from streams.decoding import EventDecoder
from streams.messages import Message
from streams.processor import CustomerProcessor
from streams.state import customer_cache


class DictStore:
    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.writes = 0

    def get(self, key: bytes, message: Message) -> bytes | None:
        return self.values.get(key)

    def put(self, key: bytes, value: bytes, message: Message) -> None:
        self.values[key] = value
        self.writes += 1


def _setup(customers: int = 120):
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    topics = Topics(settings.topic_prefix)
    now = int(time.time() * 1000)
    events = generate(customers=customers, days=1, seed=3, end_ms=now - 60_000, history_days=10)
    messages = [Message(topics.for_kind(e.kind), 0, n, e.customer_id.encode(), encode_event(e), now)
                for n, e in enumerate(events)]
    store = DictStore()
    processor = CustomerProcessor(settings, customer_cache(store, 0), EventDecoder(settings, b"k"), topics.alert_due)
    return processor, store, events, messages, now


def test_one_write_and_one_signal_per_customer_whatever_the_events_per_customer():
    processor, store, events, messages, now = _setup()
    effects = asyncio.run(processor.process(messages, now))
    expected = expected_by_customer(events)
    assert store.writes == len(expected) == effects.customers == len(effects.signals)
    signal_codec = codec("loyalty_signal")
    versions = {key.decode(): signal_codec.decode(value)["relationship"]["version"] for key, value in effects.signals}
    assert versions == {cid: x.events for cid, x in expected.items()}


def test_a_batch_stops_part_way_once_it_may_no_longer_be_written():
    """``current`` is asked at each yield to the event loop (every 50 customers): the first "no"
    stops the batch there, every partition it read is still named (its whole share is dropped),
    and no customer after that point was read or written."""
    from streams.processor import YIELD_EVERY_CUSTOMERS

    processor, store, events, messages, now = _setup(customers=300)
    answers = iter([True, False])
    effects = asyncio.run(processor.process(messages, now, current=lambda: next(answers)))
    assert effects.abandoned and processor.totals["batches_abandoned"] == 1
    assert len(effects.signals) == store.writes == 2 * YIELD_EVERY_CUSTOMERS - 1
    assert effects.customers == len(expected_by_customer(events)) > 2 * YIELD_EVERY_CUSTOMERS
    assert effects.partitions == {0}

    processor, store, events, messages, now = _setup(customers=300)
    effects = asyncio.run(processor.process(messages, now, current=lambda: True))
    assert not effects.abandoned and len(effects.signals) == store.writes == effects.customers


def test_a_backfill_batch_carries_the_earlier_day_ends_and_stores_the_arrival_order_state():
    """One customer's three event days in one batch: one signal (the newest day) carrying the two
    earlier days' ends; the stored state is the one apply_event gives event by event."""
    from domain.records import PurchaseEvent, PurchaseItem, VisitEvent
    from domain.relationship import DAY_MS, RelationshipState, apply_event, state_to_dict
    from streams.state import decode_record

    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    topics = Topics(settings.topic_prefix)
    t0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    events = [
        VisitEvent("v0", "c1", t0 + 3_600_000, "store", "S01", 300, True),  # day 0: prospect
        PurchaseEvent("p2", "c1", t0 + 2 * DAY_MS, "store", "o2", 5_000, "EUR",
                      items=(PurchaseItem("s", "shoes", 1, 5_000),)),  # day 2: new
        VisitEvent("v1", "c1", t0 + DAY_MS, "store", "S01", 300, True),  # day 1, arriving late: prospect
        VisitEvent("v3", "c1", t0 + 3 * DAY_MS, "store", "S01", 300, True),  # day 3: new (the signal)
    ]
    now = t0 + 10 * DAY_MS
    messages = [Message(topics.for_kind(e.kind), 0, n, b"c1", encode_event(e), now + n) for n, e in enumerate(events)]
    store = DictStore()
    processor = CustomerProcessor(settings, customer_cache(store, 0), EventDecoder(settings, b"k"), topics.alert_due)
    effects = asyncio.run(processor.process(messages, now))
    ((key, value),) = effects.signals
    signal = codec("loyalty_signal").decode(value)
    assert (key, signal["as_of"], signal["tier"]) == (b"c1", t0 + 3 * DAY_MS, "new")
    day0 = t0 // DAY_MS
    # days 0, 1 and 2 closed in event time: 1, 2 and 3 events applied by their ends
    assert [(d["day"] - day0, d["as_of"] - t0, d["version"], d["tier"], d["spend_365d_minor"])
            for d in signal["day_ends"]] == [(0, 3_600_000, 1, "prospect", 0), (1, DAY_MS, 2, "prospect", 0),
                                              (2, 2 * DAY_MS, 3, "new", 5_000)]
    assert effects.outcomes["days_closed"] == 3
    reference = RelationshipState("c1")
    for n, e in enumerate(events):
        apply_event(reference, e, settings.dedup_horizon_ms, now + n)
    assert state_to_dict(decode_record(store.values[b"c1"]).state) == state_to_dict(reference)
