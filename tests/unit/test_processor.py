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
