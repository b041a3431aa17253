"""End to end against the real broker and chDB: what the simulator sent is exactly what landed."""

from __future__ import annotations

import time

import pytest

from loyalty_stream.schemas import codec
from loyalty_stream.simulate import expected_by_customer, generate, publish, to_outgoing
from tests.harness import changelog_states, direct_query, read_topic, wait_until

pytestmark = pytest.mark.kafka

DAY_MS = 86_400_000


def _landed(worker, db: str) -> int:
    return int(worker.scalar(
        f"SELECT (SELECT count() FROM {db}.purchases FINAL) + (SELECT count() FROM {db}.calls FINAL)"
        f" + (SELECT count() FROM {db}.visits FINAL)"
    ))


def test_events_in_equal_events_stored_and_state_equals_the_ledger(settings, worker):
    end_ms = int(time.time() * 1000) - 60_000
    events = generate(customers=300, days=1, seed=11, end_ms=end_ms, history_days=20)
    outgoing = to_outgoing(events, seed=11, duplicate_rate=0.02, malformed_rate=0.01)
    expected = expected_by_customer(events)
    bad = [o for o in outgoing if not o.valid]
    resent = [o for o in outgoing if o.note == "duplicate"]
    assert bad and resent and {e.kind for e in events} == {"purchase", "call", "visit"}

    worker.start()
    report = publish(settings, outgoing)
    assert report.sent == len(outgoing)

    db = settings.clickhouse_database
    wait_until(lambda: _landed(worker, db) >= len(events), timeout=180, what="all events in ClickHouse")
    wait_until(lambda: int(worker.scalar(f"SELECT count() FROM {db}.dead_letters FINAL")) >= len(bad),
               timeout=60, what="dead letters in ClickHouse")
    wait_until(lambda: int(worker.scalar(f"SELECT sum(events) FROM {db}.relationships FINAL")) >= len(events),
               timeout=60, what="relationship rows up to date")
    worker.stop()

    # Events in = events stored: every unique event once, nothing else.
    assert _count(settings, "purchases") + _count(settings, "calls") + _count(settings, "visits") == len(events)
    stored_ids = {r[0] for t in ("purchases", "calls", "visits")
                  for r in direct_query(settings, f"SELECT event_id FROM {db}.{t} FINAL")}
    assert stored_ids == {e.event_id for e in events}

    # ClickHouse relationship rows equal the ledger's expectation, customer by customer.
    rows = direct_query(settings, f"""
        SELECT customer_id, events, purchases_lifetime, spend_lifetime_minor, discounted_purchases_lifetime,
               discounted_spend_lifetime_minor, returns_lifetime, refund_lifetime_minor, calls_lifetime,
               complaints_lifetime, unresolved_calls_lifetime, visits_lifetime, recognized_visits_lifetime,
               toUnixTimestamp64Milli(first_seen_at), toUnixTimestamp64Milli(last_seen_at)
        FROM {db}.relationships FINAL""")
    got = {r[0]: tuple(r[1:]) for r in rows}
    want = {
        cid: (x.events, x.purchases, x.spend_minor, x.discounted_purchases, x.discounted_spend_minor, x.returns,
              x.refund_minor, x.calls, x.complaints, x.unresolved_calls, x.visits, x.recognized_visits,
              x.first_seen_at, x.last_seen_at)
        for cid, x in expected.items()
    }
    assert len(got) == len(want) == 300
    assert got == want

    # The Faust table, read from its changelog topic, holds the same state.
    states = changelog_states(settings)
    assert {cid: (s["events_applied"], s["lifetime"]["purchases"], s["lifetime"]["spend_minor"],
                  s["lifetime"]["calls"], s["lifetime"]["visits"]) for cid, s in states.items()} == {
        cid: (x.events, x.purchases, x.spend_minor, x.calls, x.visits) for cid, x in expected.items()}

    # Every malformed message is dead-lettered, on the topic and in ClickHouse, with a reason.
    letters = [codec("dead_letter").decode(v) for _, v in read_topic(settings, settings.topic_prefix + "dead-letters")]
    assert sorted(l["payload"] for l in letters) == sorted(o.value for o in bad)
    assert all(l["stage"] == "decode" and l["reason"] for l in letters)
    assert _count(settings, "dead_letters") == len(bad)


def _count(settings, table: str) -> int:
    return int(direct_query(settings, f"SELECT count() FROM {settings.clickhouse_database}.{table} FINAL")[0][0])
