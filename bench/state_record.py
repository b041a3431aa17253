"""The stored customer record: bytes and µs to encode and decode, the compact layout against the
Avro one of earlier releases (still read), and the signal's encoding with its facts union branch
named against chosen by fastavro.

Customers are folded through the state worker's own processor from generated events, so the
records hold what the worker stores (day buckets, channels, categories, remembered ids, the alert
rules' memory).

    PYTHONPATH=. .venv/bin/python bench/state_record.py [--customers 2000] [--history-days 365]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.processor import DictStore
from config.settings import Settings
from config.topics import Topics
from ops.simulate import encode_event, generate
from schemas import codec
from streams.alerting import Alerting
from streams.decoding import EventDecoder
from streams.messages import Message
from streams.processor import RELATIONSHIP_FACTS, CustomerProcessor, ModelParams
from streams.state import customer_cache, decode_record, encode_record, encode_record_avro


def per_item_us(work: Callable[[Any], object], items: list[Any], rounds: int = 3) -> float:
    """The best of ``rounds`` runs over ``items``, in µs per item."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            work(item)
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--history-days", type=float, default=365)
    args = parser.parse_args()

    settings = Settings(kafka_bootstrap="127.0.0.1:1")  # nothing connects
    topics = Topics(settings.topic_prefix)
    events = generate(args.customers, 1, 3, int(time.time() * 1000) - 60_000, args.history_days)
    store = DictStore()
    processor = CustomerProcessor(settings, customer_cache(store), EventDecoder(settings, b"bench"), topics.alert_due,
                                  model=ModelParams(), alerting=Alerting(DictStore()))
    messages = [Message(topics.for_kind(e.kind), 0, i, e.customer_id.encode(), encode_event(e), e.occurred_at)
                for i, e in enumerate(events)]
    signals: list[bytes] = []

    async def fold() -> None:
        for i in range(0, len(messages), 5000):
            effects = await processor.process(messages[i:i + 5000], int(time.time() * 1000))
            signals.extend(value for _, value in effects.signals)

    asyncio.run(fold())
    records = [decode_record(value) for value in store.values()]
    compact = [encode_record(r) for r in records]
    avro = [encode_record_avro(r) for r in records]
    days = statistics.mean(len(r.state.days) for r in records)
    print(f"{len(records):,} customers, {len(events):,} events over {args.history_days:g} days "
          f"(mean {days:.0f} day buckets each)")
    rows = [
        ("Avro RelationshipState (earlier)", avro),
        ("compact (orjson, deflated past 2 KB)", compact),
    ]
    print(f"{'stored record':<38} {'bytes':>7} {'encode us':>10} {'decode us':>10}")
    figures = {}
    for name, stored in rows:
        encode = encode_record_avro if stored is avro else encode_record
        figures[name] = (statistics.mean(map(len, stored)), per_item_us(encode, records),
                         per_item_us(decode_record, stored))
        print(f"{name:<38} {figures[name][0]:>7,.0f} {figures[name][1]:>10.1f} {figures[name][2]:>10.1f}")
    (b0, e0, d0), (b1, e1, d1) = figures.values()
    print(f"{'compact / Avro':<38} {b1 / b0:>7.2f} {e1 / e0:>10.2f} {d1 / d0:>10.2f}")

    signal_codec = codec("loyalty_signal")
    datums = [signal_codec.decode(s) for s in signals[-2000:]]
    named = [{**d, "relationship": (RELATIONSHIP_FACTS, d["relationship"])} for d in datums]
    chosen = per_item_us(signal_codec.encode, datums)
    given = per_item_us(signal_codec.encode, named)
    same = all(signal_codec.encode(a) == signal_codec.encode(b) for a, b in zip(datums[:100], named[:100]))
    print(f"signal encode: facts branch chosen by fastavro {chosen:.1f} us, named {given:.1f} us "
          f"({given / chosen:.2f}x, same bytes: {same})")


if __name__ == "__main__":
    main()
