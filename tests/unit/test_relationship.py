"""Relationship state: folding, windows, order independence, deduplication, lateness."""

from __future__ import annotations

import io
import json
import random

import fastavro
import pytest

from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import (
    DAY_MS,
    RECENT_PURCHASES_KEPT,
    TALLY_FIELDS,
    Outcome,
    RelationshipState,
    Tally,
    apply_event,
    apply_events,
    facts,
    favourite,
    preferred_channel,
    purchase_rhythm,
    state_from_dict,
    state_to_dict,
    window,
)
from schemas import MAGIC, codec, history_paths, schema_fingerprint

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WEEK = 7 * DAY_MS


def purchase(n: int, at: int, amount: int = 1000, discount: int = 0, promo: str | None = None,
             channel: str = "store", category: str = "shoes", is_return: bool = False,
             customer: str = "C1") -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"p{n}", customer_id=customer, occurred_at=at, channel=channel, order_id=f"o{n}",
        amount_minor=amount, currency="EUR", discount_minor=discount, promo_code=promo,
        items=(PurchaseItem(f"sku{n}", category, 1, amount + discount),), is_return=is_return,
        location_id="S1" if channel == "store" else None,
    )


def call(n: int, at: int, reason: str = "billing", resolved: bool = True, sentiment: float | None = None,
         effort: int | None = None) -> CallEvent:
    return CallEvent(f"c{n}", "C1", at, "inbound", reason, 30, 300, resolved, "A1", sentiment, effort, None)


def visit(n: int, at: int, recognized: bool = True, channel: str = "store") -> VisitEvent:
    return VisitEvent(f"v{n}", "C1", at, channel, "S1", 600, recognized, ("shoes", "bags"))


def fold(events, lateness: int = WEEK) -> RelationshipState:
    state = RelationshipState("C1")
    for event in events:
        apply_event(state, event, lateness)
    return state


def test_purchase_tallies_split_full_price_discount_and_returns():
    state = fold([
        purchase(1, T0, amount=1000),
        purchase(2, T0 + 1000, amount=800, discount=200),
        purchase(3, T0 + 2000, amount=500, promo="SPRING"),
        purchase(4, T0 + 3000, amount=300, is_return=True),
    ])
    life = state.lifetime
    assert (life.purchases, life.spend_minor) == (3, 2300)
    assert (life.discounted_purchases, life.discounted_spend_minor, life.discount_minor) == (2, 1300, 200)
    assert (life.returns, life.refund_minor) == (1, 300)
    assert state.events_applied == 4
    assert state.first_purchase_at == T0
    assert state.last_purchase.event_id == "p3"  # a return is not a purchase


def test_call_tallies_sentiment_in_thousandths_and_effort():
    state = fold([
        call(1, T0, reason="complaint", resolved=False, sentiment=-0.5, effort=6),
        call(2, T0 + 1, reason="cancel_request", resolved=True, sentiment=0.25),
        call(3, T0 + 2),
    ])
    life = state.lifetime
    assert (life.calls, life.complaints, life.cancel_requests, life.unresolved_calls) == (3, 1, 1, 1)
    assert (life.sentiment_milli_sum, life.sentiment_n) == (-250, 2)
    assert (life.effort_sum, life.effort_n) == (6, 1)
    assert life.wait_seconds == 90
    assert state.channels["phone"].calls == 3


def test_visits_count_recognition_and_viewed_categories():
    state = fold([visit(1, T0, True), visit(2, T0 + 1, False, channel="web"), visit(3, T0 + 2, True)])
    assert (state.lifetime.visits, state.lifetime.recognized_visits) == (3, 2)
    assert state.categories_viewed == {"bags": 3, "shoes": 3}
    assert state.channels["store"].visits == 2 and state.channels["web"].visits == 1


@pytest.mark.parametrize(
    "days, expected_purchases",
    [(7, 1), (30, 2), (90, 3), (365, 4)],
)
def test_windows_count_back_from_as_of(days, expected_purchases):
    as_of = T0 + 400 * DAY_MS
    ats = [as_of - 1 * DAY_MS, as_of - 20 * DAY_MS, as_of - 60 * DAY_MS, as_of - 300 * DAY_MS]
    state = fold([purchase(n, at) for n, at in enumerate(sorted(ats))])
    assert window(state, days, as_of).purchases == expected_purchases
    assert state.lifetime.purchases == 4


def test_days_older_than_the_longest_window_are_pruned_but_lifetime_keeps_them():
    state = fold([purchase(1, T0), purchase(2, T0 + 400 * DAY_MS)])
    assert list(state.days) == [(T0 + 400 * DAY_MS) // DAY_MS]
    assert state.lifetime.purchases == 2
    assert window(state, 365, T0 + 400 * DAY_MS).purchases == 1


def test_window_longer_than_kept_is_refused():
    with pytest.raises(ValueError, match="at most 365"):
        window(RelationshipState("C1"), 400, T0)


def test_duplicate_event_id_counts_once():
    state = RelationshipState("C1")
    assert apply_event(state, purchase(1, T0), WEEK) is Outcome.APPLIED
    assert apply_event(state, purchase(1, T0), WEEK) is Outcome.DUPLICATE
    assert state.lifetime.purchases == 1 and state.events_applied == 1


def test_a_very_late_event_still_counts_once():
    state = fold([purchase(1, T0 + 100 * DAY_MS)])
    assert apply_event(state, purchase(2, T0 + 2 * DAY_MS), WEEK) is Outcome.APPLIED
    assert state.lifetime.purchases == 2
    assert window(state, 365, T0 + 100 * DAY_MS).purchases == 2
    assert state.first_seen_at == T0 + 2 * DAY_MS


def test_event_older_than_the_longest_window_counts_in_lifetime_only():
    state = fold([purchase(1, T0 + 500 * DAY_MS)])
    apply_event(state, purchase(2, T0), WEEK)
    assert state.lifetime.purchases == 2
    assert window(state, 365, T0 + 500 * DAY_MS).purchases == 1


def test_resend_within_the_dedup_horizon_of_arrival_counts_once_however_old_the_event():
    state = RelationshipState("C1")
    old = purchase(1, T0)
    assert apply_event(state, old, WEEK, received_at=T0 + 300 * DAY_MS) is Outcome.APPLIED
    assert apply_event(state, old, WEEK, received_at=T0 + 306 * DAY_MS) is Outcome.DUPLICATE
    # Once the horizon has passed in arrival time, the id is forgotten (documented limit).
    apply_event(state, purchase(2, T0 + 1), WEEK, received_at=T0 + 310 * DAY_MS)
    assert "p1" not in state.seen_events


def test_event_for_another_customer_is_a_programming_error():
    with pytest.raises(ValueError, match="not C1"):
        apply_event(RelationshipState("C1"), purchase(1, T0, customer="C2"), WEEK)


def test_forgotten_ids_are_only_those_beyond_the_horizon():
    state = fold([purchase(1, T0), purchase(2, T0 + 3 * DAY_MS), purchase(3, T0 + 9 * DAY_MS)])
    assert list(state.seen_events) == ["p2", "p3"]


def _mixed_history(seed: int, n: int = 300):
    rng = random.Random(seed)
    events = []
    for i in range(n):
        at = T0 + i * 3 * 3_600_000 + rng.randrange(3_600_000)
        kind = rng.choice("pcv")
        if kind == "p":
            events.append(purchase(i, at, amount=rng.randrange(100, 10_000), discount=rng.choice([0, 0, 150]),
                                   channel=rng.choice(["store", "web", "app"]),
                                   category=rng.choice(["shoes", "bags", "coats"]),
                                   is_return=rng.random() < 0.05))
        elif kind == "c":
            events.append(call(i, at, reason=rng.choice(["billing", "complaint"]), resolved=rng.random() < 0.7,
                               sentiment=rng.choice([None, -0.333, 0.1, 0.9]), effort=rng.choice([None, 2, 6])))
        else:
            events.append(visit(i, at, recognized=rng.random() < 0.5))
    return events


ARRIVAL_ONLY = ("seen_event_ids", "seen_received_at", "last_received_at")  # carry arrival times


def _without_arrival(state: RelationshipState) -> dict:
    return {k: v for k, v in state_to_dict(state).items() if k not in ARRIVAL_ONLY}


@pytest.mark.parametrize("spread_days", [2, 30, 400])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_out_of_order_gives_the_same_state_as_sorted(seed, spread_days):
    events = _mixed_history(seed)
    rng = random.Random(seed)
    shuffled = sorted(events, key=lambda e: e.occurred_at + rng.randrange(spread_days * DAY_MS))
    assert shuffled != events
    in_order = RelationshipState("C1")
    out_of_order = RelationshipState("C1")
    for arrival, event in enumerate(events):
        apply_event(in_order, event, WEEK, received_at=T0 + arrival)
    for arrival, event in enumerate(shuffled):
        apply_event(out_of_order, event, WEEK, received_at=T0 + arrival)
    assert _without_arrival(out_of_order) == _without_arrival(in_order)
    assert facts(out_of_order) == facts(in_order)


def test_replayed_history_after_a_crash_changes_nothing():
    events = _mixed_history(4)
    state = fold(events[:200])
    outcomes = apply_events(state, events[150:], WEEK)  # 50 replayed, 100 new
    assert outcomes[Outcome.DUPLICATE] == 50 and outcomes[Outcome.APPLIED] == 100
    assert state_to_dict(state) == state_to_dict(fold(events))


def test_rhythm_from_regular_purchases():
    state = fold([purchase(n, T0 + n * 10 * DAY_MS) for n in range(5)], lateness=365 * DAY_MS)
    rhythm = purchase_rhythm(state)
    assert (rhythm.purchases_seen, rhythm.mean_gap_days, rhythm.gap_stddev_days) == (5, 10.0, 0.0)


def test_rhythm_mean_and_spread():
    gaps = [2, 4, 6]
    at, events = T0, [purchase(0, T0)]
    for n, gap in enumerate(gaps, start=1):
        at += gap * DAY_MS
        events.append(purchase(n, at))
    rhythm = purchase_rhythm(fold(events))
    assert rhythm.mean_gap_days == 4.0
    assert rhythm.gap_stddev_days == pytest.approx((8 / 3) ** 0.5, abs=1e-6)


def test_rhythm_needs_two_purchases():
    assert purchase_rhythm(fold([purchase(1, T0)])).mean_gap_days is None
    assert purchase_rhythm(RelationshipState("C1")).purchases_seen == 0


def test_recent_purchase_times_are_capped_at_the_newest():
    n = RECENT_PURCHASES_KEPT + 10
    state = fold([purchase(i, T0 + i * 3_600_000) for i in range(n)])
    assert len(state.recent_purchase_at) == RECENT_PURCHASES_KEPT
    assert state.recent_purchase_at[0] == T0 + 10 * 3_600_000


def test_favourite_and_preferred_channel_break_ties_alphabetically():
    assert favourite({"shoes": 2, "bags": 2, "coats": 1}) == "bags"
    assert favourite({}) is None
    state = fold([purchase(1, T0, channel="web"), purchase(2, T0 + 1, channel="app"), visit(3, T0 + 2, channel="web")])
    assert preferred_channel(state) == "web"


def test_facts_as_of_newest_event():
    state = fold([purchase(1, T0, amount=1000, discount=100), visit(2, T0 + DAY_MS, True),
                  call(3, T0 + 2 * DAY_MS, reason="complaint", resolved=False, sentiment=-1.0, effort=7)])
    row = facts(state)
    assert row["customer_id"] == "C1" and row["version"] == 3
    assert (row["purchases_7d"], row["spend_7d_minor"], row["discounted_spend_7d_minor"]) == (1, 1000, 1000)
    assert (row["calls_30d"], row["complaints_30d"], row["unresolved_calls_30d"]) == (1, 1, 1)
    assert (row["avg_sentiment_30d"], row["avg_effort_30d"], row["recognized_share_30d"]) == (-1.0, 7.0, 1.0)
    assert row["last_purchase_at"] == T0 and row["last_purchase_location_id"] == "S1"
    assert row["channels"] == ["phone", "store"]
    assert row["favourite_category"] == "shoes"


def test_empty_state_facts():
    row = facts(RelationshipState("C9"))
    assert row["purchases_lifetime"] == 0 and row["purchases_7d"] == 0
    assert row["last_purchase_at"] is None and row["preferred_channel"] is None


def test_state_survives_the_avro_round_trip():
    state = fold(_mixed_history(5))
    state_codec = codec("relationship_state")
    restored = state_from_dict(state_codec.decode(state_codec.encode(state_to_dict(state))))
    assert restored == state


def test_a_state_written_with_schema_version_1_reads_as_the_same_state():
    # Version 1 kept one record per day and per remembered id; a changelog written then must
    # still restore every counter after an upgrade.
    state = fold(_mixed_history(5))
    datum = state_to_dict(state)
    v1 = dict(datum)
    width = len(TALLY_FIELDS)
    v1["days"] = [{"day": day, "tally": dict(zip(TALLY_FIELDS, datum["day_counters"][i * width:(i + 1) * width]))}
                  for i, day in enumerate(datum["day_numbers"])]
    v1["seen_events"] = [{"event_id": e, "received_at": t}
                         for e, t in zip(datum["seen_event_ids"], datum["seen_received_at"])]
    for name in ("day_numbers", "day_counters", "seen_event_ids", "seen_received_at"):
        del v1[name]
    (path,) = history_paths("relationship_state")
    old_schema = json.loads(path.read_text())
    buf = io.BytesIO()
    buf.write(MAGIC + schema_fingerprint(old_schema))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old_schema), v1)
    written = buf.getvalue()
    assert len(state.days) >= 3 and len(state.seen_events) >= 3

    assert state_from_dict(codec("relationship_state").decode(written)) == state


def test_day_counters_follow_the_tally_record_field_order():
    schema = codec("relationship_state").schema
    lifetime = next(f for f in schema["fields"] if f["name"] == "lifetime")
    assert tuple(f["name"] for f in lifetime["type"]["fields"]) == TALLY_FIELDS
    state = RelationshipState("C1", days={20_000: Tally(purchases=2, recognized_visits=7)})
    datum = state_to_dict(state)
    assert datum["day_numbers"] == [20_000]
    assert datum["day_counters"] == [2] + [0] * 18 + [7]
