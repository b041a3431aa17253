"""score_customer end to end on hand-built states: edge cases, know-me profile, Avro datum."""

from __future__ import annotations

import itertools
import json

import pytest

from domain.model import (
    DEFAULT_PARAMS,
    KNOW_ME_FIELDS,
    MODEL_VERSION,
    TIERS,
    WEIGHTS,
    know_me,
    know_me_values,
    score_customer,
    signal_to_dict,
)
from domain.model.churn import BgNbdParams
from domain.model.signals import SIGNAL_FIELDS
from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import DAY_MS, RelationshipState, apply_event, facts
from schemas import Codec, load_schema

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
P = BgNbdParams(r=2.0, alpha=10.0, a=1.0, b=3.0, population_gap_days=30.0)


def buy(eid: str, at: int, channel: str = "store", location: str | None = "S01",
        categories: tuple[str, ...] = ("shoes",), amount: int = 5_000, is_return: bool = False) -> PurchaseEvent:
    items = tuple(PurchaseItem(f"sku-{c}", c, 1, amount) for c in categories)
    return PurchaseEvent(eid, "c1", at, channel, f"o-{eid}", amount, "EUR", items=items, is_return=is_return,
                         location_id=location)


def call(eid: str, at: int, resolved: bool = True, reason: str = "other") -> CallEvent:
    return CallEvent(eid, "c1", at, "inbound", reason, 10, 100, resolved, "a1")


def visit(eid: str, at: int, recognized: bool = True) -> VisitEvent:
    return VisitEvent(eid, "c1", at, "store", "S01", 300, recognized)


def state_of(*events: object) -> RelationshipState:
    state = RelationshipState("c1")
    for event in events:
        apply_event(state, event, 100_000 * DAY_MS)  # type: ignore[arg-type]
    return state


def test_a_regular_customer_field_by_field() -> None:
    state = state_of(buy("p1", T0), buy("p2", T0 + 10 * DAY_MS), buy("p3", T0 + 30 * DAY_MS, categories=("shoes", "bags")))
    as_of = T0 + 42 * DAY_MS
    s = score_customer(state, as_of, P, horizon_days=30)
    assert (s.customer_id, s.as_of, s.model_version, s.horizon_days) == ("c1", as_of, MODEL_VERSION, 30)
    assert (s.purchase_gap_days, s.purchase_gap_source) == (15.0, "own")  # gaps 10 and 20
    assert s.expected_next_purchase_at == T0 + 45 * DAY_MS
    assert s.days_since_last_purchase == 12.0
    # x=2, t_x=30, T=42: P(alive) = 1/(1 + 1/4 * (52/40)^4)
    alive = 1 / (1 + 0.25 * (52 / 40) ** 4)
    assert s.p_alive == round(alive, 6)
    assert s.churn_risk == round(1 - alive * (1 - (52 / 82) ** 4), 6)
    assert s.tier == "new"  # first purchase 42 days ago
    assert (s.last_purchase_at, s.last_purchase_categories, s.last_purchase_skus) == (
        T0 + 30 * DAY_MS, ["bags", "shoes"], ["sku-shoes", "sku-bags"])
    assert (s.last_purchase_channel, s.last_purchase_location_id) == ("store", "S01")
    assert (s.favourite_category, s.preferred_channel, s.open_issues) == ("shoes", "store", 0)
    assert s.greeting_hint == "Welcome back! Last time (12 days ago) you bought bags and shoes in store S01."
    assert s.loyalty_score == round(sum(WEIGHTS[k] * v for k, v in s.components.items()), 2)


def test_no_purchases_yet() -> None:
    state = state_of(visit("v1", T0), visit("v2", T0 + DAY_MS, recognized=False))
    as_of = T0 + 40 * DAY_MS
    s = score_customer(state, as_of, P)
    assert (s.tier, s.p_alive, s.expected_next_purchase_at, s.days_since_last_purchase) == ("prospect", None, None, None)
    assert s.churn_risk == round((50 / 140) ** 2, 6)  # ((alpha+T)/(alpha+T+H))^r, T = 40 days known
    assert s.expected_purchases == round(2 * 90 / 50, 6)
    assert s.components["recency"] == 0.0 and s.components["recognition"] == 50.0
    assert (s.purchase_gap_days, s.purchase_gap_source) == (30.0, "population")
    assert s.greeting_hint == "Welcome! Good to see you."


def test_only_returns() -> None:
    state = state_of(buy("r1", T0, is_return=True, amount=8_000))
    s = score_customer(state, T0 + DAY_MS, P)
    assert (s.tier, s.purchases, s.last_purchase_at) == ("prospect", 0, None)
    assert s.components["monetary"] == 0.0  # refunds never go below zero
    assert s.components["price_independence"] == 50.0


def test_only_calls() -> None:
    state = state_of(call("k1", T0, resolved=False, reason="complaint"), call("k2", T0 + DAY_MS))
    s = score_customer(state, T0 + 2 * DAY_MS, P)
    assert s.tier == "prospect"
    assert s.open_issues == 1
    assert s.components["relationship_quality"] == round(100 * (0.35 * 0.5 + 0.125 + 0.10 + 0.20 * 0.5), 2)
    assert s.preferred_channel == "phone"
    assert s.greeting_hint == "Welcome! Good to see you. Open issue: 1 unresolved call in the last 90 days."


def test_one_purchase_long_ago() -> None:
    state = state_of(buy("p1", T0))
    as_of = T0 + 400 * DAY_MS
    s = score_customer(state, as_of, P)
    assert (s.tier, s.p_alive) == ("lapsed", 1.0)
    assert s.churn_risk == round((410 / 500) ** 2, 6)
    assert s.expected_next_purchase_at == T0 + 30 * DAY_MS  # population gap: long overdue
    assert s.components["recency"] == 0.0 and s.components["frequency"] == 0.0
    assert s.greeting_hint == "Welcome back! Last time (400 days ago) you bought shoes in store S01."


def test_events_far_in_the_past_do_not_count_as_recent() -> None:
    old = 978_307_200_000  # 2001-01-01
    state = state_of(buy("p1", old), buy("p2", old + 30 * DAY_MS), call("k1", old, resolved=False), visit("v1", old))
    s = score_customer(state, T0, P)
    assert s.tier == "lapsed"
    assert s.open_issues == 0
    assert {k: s.components[k] for k in ("frequency", "monetary", "relationship_quality", "recognition")} == {
        "frequency": 0.0, "monetary": 0.0, "relationship_quality": 50.0, "recognition": 50.0}
    assert s.churn_risk > 0.99


def test_churn_risk_grows_as_the_customer_stays_away() -> None:
    state = state_of(*(buy(f"p{i}", T0 + 20 * i * DAY_MS) for i in range(6)))
    risks = [score_customer(state, T0 + (100 + d) * DAY_MS, DEFAULT_PARAMS).churn_risk for d in (1, 20, 60, 120, 300)]
    assert all(a < b for a, b in itertools.pairwise(risks)), risks


@pytest.mark.parametrize("channel, location, categories, days, open_calls, hint", [
    ("store", "S01", ("shoes",), 12, 0, "Welcome back! Last time (12 days ago) you bought shoes in store S01."),
    ("store", None, ("shoes",), 0, 0, "Welcome back! Last time (today) you bought shoes in store."),
    ("web", None, ("bags", "hats", "shoes"), 1, 0, "Welcome back! Last time (yesterday) you bought bags, hats and more online."),
    ("app", None, (), 3, 0, "Welcome back! Last time (3 days ago) you bought something in the app."),
    ("phone", None, ("hats",), 5, 2,
     "Welcome back! Last time (5 days ago) you bought hats by phone. Open issue: 2 unresolved calls in the last 90 days."),
    ("unknown", None, ("hats",), 5, 0, "Welcome back! Last time (5 days ago) you bought hats."),
])
def test_greeting_hint(channel: str, location: str | None, categories: tuple[str, ...], days: int,
                       open_calls: int, hint: str) -> None:
    as_of = T0 + 100 * DAY_MS + 3_600_000
    events: list[object] = [buy("p1", as_of - days * DAY_MS, channel=channel, location=location, categories=categories)]
    events += [call(f"k{i}", as_of - DAY_MS, resolved=False) for i in range(open_calls)]
    events.append(call("old", as_of - 91 * DAY_MS, resolved=False))  # outside the open-issue window
    assert score_customer(state_of(*events), as_of, P).greeting_hint == hint


# ---------------------------------------------------------------------------------------------
# The datum and its schema.


def sample_signals() -> list:
    rich = state_of(buy("p1", T0), buy("p2", T0 + 10 * DAY_MS), visit("v1", T0), call("k1", T0, resolved=False))
    return [
        score_customer(rich, T0 + 20 * DAY_MS, P),
        score_customer(state_of(visit("v1", T0)), T0, DEFAULT_PARAMS),
        score_customer(RelationshipState("nobody"), T0, DEFAULT_PARAMS),
    ]


def test_signal_to_dict_matches_the_avro_schema_field_for_field() -> None:
    schema = load_schema("loyalty_signal")
    assert (schema["name"], schema["namespace"]) == ("LoyaltySignal", "loyalty_stream.pipeline")
    # the signal's own fields, then what the worker attaches: the relationship facts
    # (relationship.facts) and the ends of earlier event days (model.days)
    assert [f["name"] for f in schema["fields"]] == [*SIGNAL_FIELDS, "relationship", "day_ends"]
    assert all(f.get("doc") for f in schema["fields"])
    facts_record = next(f for f in schema["fields"] if f["name"] == "relationship")["type"][1]
    rich = state_of(buy("p1", T0), visit("v1", T0))
    assert [f["name"] for f in facts_record["fields"]] == [k for k in facts(rich) if k != "customer_id"]
    tier = next(f for f in schema["fields"] if f["name"] == "tier")
    assert tier["type"]["symbols"] == list(TIERS)
    for signal in sample_signals():
        assert list(signal_to_dict(signal)) == list(SIGNAL_FIELDS)


def test_the_signal_carries_the_know_me_profile_field_for_field() -> None:
    assert KNOW_ME_FIELDS == (
        "greeting_hint", "last_purchase_at", "last_purchase_categories", "last_purchase_skus", "last_purchase_channel",
        "last_purchase_location_id", "favourite_category", "preferred_channel", "open_issues", "suggested_categories")
    assert set(KNOW_ME_FIELDS) <= set(SIGNAL_FIELDS)
    rich = state_of(buy("p1", T0), buy("p2", T0 + 10 * DAY_MS, categories=("bags", "shoes")), call("k1", T0, resolved=False))
    as_of = T0 + 20 * DAY_MS
    profile = know_me_values(know_me(rich, as_of))
    assert list(profile) == list(KNOW_ME_FIELDS)
    assert know_me_values(score_customer(rich, as_of, P)) == profile
    assert profile["last_purchase_categories"] == ["bags", "shoes"] and profile["open_issues"] == 1


def test_every_signal_encodes_decodes_and_is_json() -> None:
    codec = Codec("loyalty_signal")
    for signal in sample_signals():
        datum = signal_to_dict(signal)
        assert codec.decode(codec.encode(datum)) == {**datum, "relationship": None, "day_ends": []}
        assert json.loads(json.dumps(datum)) == datum
        assert list(datum["components"]) == list(WEIGHTS)  # type: ignore[call-overload]


def test_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError):
        score_customer(RelationshipState("c1"), T0, P, horizon_days=0)
