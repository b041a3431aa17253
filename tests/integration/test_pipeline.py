"""End to end against the real broker and chDB: what the simulator sent is exactly what landed."""

from __future__ import annotations

import time

import pytest

from domain.pseudonymise import scrub_bytes
from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from schemas import codec
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
    # undecodable bytes are kept with anything shaped like a contact detail masked
    assert sorted(letter["payload"] for letter in letters) == sorted(scrub_bytes(o.value) for o in bad)
    assert all(letter["stage"] == "decode" and letter["reason"] for letter in letters)
    assert _count(settings, "dead_letters") == len(bad)


def _count(settings, table: str) -> int:
    return int(direct_query(settings, f"SELECT count() FROM {settings.clickhouse_database}.{table} FINAL")[0][0])


def test_know_me_profile_over_http(settings, worker):

    end_ms = int(time.time() * 1000) - 60_000
    events = generate(customers=20, days=1, seed=3, end_ms=end_ms, history_days=60)
    worker.start()
    publish(settings, to_outgoing(events, seed=3))
    db = settings.clickhouse_database
    wait_until(lambda: int(worker.scalar(f"SELECT sum(events) FROM {db}.relationships FINAL")) >= len(events),
               timeout=120, what="all events folded")
    expected = expected_by_customer(events)
    buyer = next(cid for cid, x in sorted(expected.items()) if x.purchases > 0)
    profile = worker.get(f"/customers/{buyer}")
    assert profile["customer_id"] == buyer
    assert profile["facts"]["purchases_lifetime"] == expected[buyer].purchases
    assert profile["know_me"]["last_purchase_at"] == expected[buyer].last_purchase_at
    assert profile["know_me"]["greeting_hint"]
    assert 0 <= profile["signal"]["loyalty_score"] <= 100
    with pytest.raises(RuntimeError, match="404"):
        worker.get("/customers/C9999999")


def test_stream_equals_replay(settings, worker, tmp_path):
    import json

    from domain.model import DEFAULT_PARAMS
    from domain.model.replay import run_replay
    from ops.simulate import write_replay_file

    end_ms = int(time.time() * 1000) - 60_000
    events = generate(customers=150, days=1, seed=21, end_ms=end_ms, history_days=120)
    history = tmp_path / "history.jsonl"
    write_replay_file(history, events)

    worker.start()
    publish(settings, to_outgoing(events, seed=21))
    db = settings.clickhouse_database
    wait_until(lambda: int(worker.scalar(f"SELECT sum(version) FROM {db}.signals_current FINAL")) >= len(events),
               timeout=180, what="signals for every event")
    columns = ["customer_id", "version", "loyalty_score", "tier", "churn_risk", "expected_purchases",
               "toUnixTimestamp64Milli(expected_next_purchase_at)", "component_recency", "component_frequency",
               "component_monetary", "component_breadth", "component_relationship_quality",
               "component_price_independence", "component_recognition", "greeting_hint", "open_issues"]
    streamed = {r[0]: r for r in worker.query(f"SELECT {', '.join(columns)} FROM {db}.signals_current FINAL")}
    worker.stop()

    out = tmp_path / "signals.jsonl"
    summary = run_replay(history, None, out, params=DEFAULT_PARAMS)
    assert summary.invalid_count == 0 and summary.customers == 150
    replayed = {}
    for line in out.read_text().splitlines():
        s = json.loads(line)
        replayed[s["customer_id"]] = [
            s["customer_id"], None, s["loyalty_score"], s["tier"], s["churn_risk"], s["expected_purchases"],
            s["expected_next_purchase_at"], *(s["components"][c] for c in (
                "recency", "frequency", "monetary", "breadth", "relationship_quality", "price_independence",
                "recognition")), s["greeting_hint"], s["open_issues"]]
    assert set(streamed) == set(replayed)
    for cid, row in streamed.items():
        assert row[1] == expected_by_customer(e for e in events if e.customer_id == cid)[cid].events
        assert [row[0], *row[2:]] == [replayed[cid][0], *replayed[cid][2:]], cid

    # The signals topic's last record per customer is the newest signal (what a consumer of a
    # compacted topic acts on), and versions only grow along the topic.
    latest: dict[str, dict] = {}
    for key, value in read_topic(settings, settings.topic_prefix + "signals"):
        signal = codec("loyalty_signal").decode(value)
        previous = latest.get(key.decode())
        assert previous is None or signal["relationship"]["version"] > previous["relationship"]["version"], key
        latest[key.decode()] = signal
    assert {cid: (s["relationship"]["version"], s["tier"], s["loyalty_score"]) for cid, s in latest.items()} == {
        cid: (r[1], r[3], r[2]) for cid, r in streamed.items()}
