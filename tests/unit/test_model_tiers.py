"""Every tier rule, its boundaries and its order, plus "volume alone is not fierce loyalty"."""

from __future__ import annotations

from dataclasses import replace

import pytest

from domain.model import DEFAULT_PARAMS, score_customer
from domain.model.tiers import TIERS, TierInputs, assign_tier
from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import DAY_MS, RelationshipState, apply_event

STRONG = {"recency": 100.0, "frequency": 100.0, "monetary": 100.0, "breadth": 60.0,
          "relationship_quality": 90.0, "price_independence": 95.0, "recognition": 85.0}

BASE = TierInputs(
    purchases=10, days_since_first_purchase=300.0, days_since_last_purchase=10.0, gap_days=30.0,
    p_alive=0.9, cancel_requests_90d=0, complaints_90d=0, unresolved_calls_90d=0, score=85.0,
    components=STRONG,
)


def with_components(**changes: float) -> dict[str, float]:
    return {**STRONG, **changes}


@pytest.mark.parametrize("case, inputs, tier", [
    ("strong all round", BASE, "fiercely_loyal"),
    ("never bought", replace(BASE, purchases=0, days_since_first_purchase=None, days_since_last_purchase=None),
     "prospect"),
    # lapsed after max(90, 3 x gap)
    ("lapsed at 90 days with a 30-day gap", replace(BASE, days_since_last_purchase=90.0), "lapsed"),
    ("89 days is overdue, not lapsed", replace(BASE, days_since_last_purchase=89.0), "at_risk"),
    ("slow rhythm: 150 days with a 60-day gap is not lapsed", replace(BASE, gap_days=60.0,
     days_since_last_purchase=150.0), "at_risk"),
    ("slow rhythm: 180 days with a 60-day gap is lapsed", replace(BASE, gap_days=60.0,
     days_since_last_purchase=180.0), "lapsed"),
    # new below 60 days since the first purchase (after lapsed, before at_risk)
    ("first purchase 59 days ago", replace(BASE, days_since_first_purchase=59.0), "new"),
    ("first purchase 60 days ago", replace(BASE, days_since_first_purchase=60.0), "fiercely_loyal"),
    ("new customer with a cancel request is still new",
     replace(BASE, days_since_first_purchase=10.0, cancel_requests_90d=1), "new"),
    # at_risk: overdue after max(14, 2 x gap)
    ("60 days with a 30-day gap is overdue", replace(BASE, days_since_last_purchase=60.0), "at_risk"),
    ("59 days with a 30-day gap is not", replace(BASE, days_since_last_purchase=59.0), "fiercely_loyal"),
    ("twice-weekly buyer: 13 days is not yet overdue", replace(BASE, gap_days=3.5, days_since_last_purchase=13.0),
     "fiercely_loyal"),
    ("twice-weekly buyer: 14 days is overdue", replace(BASE, gap_days=3.5, days_since_last_purchase=14.0),
     "at_risk"),
    ("P(alive) below 0.5", replace(BASE, p_alive=0.49), "at_risk"),
    ("P(alive) at 0.5", replace(BASE, p_alive=0.5), "fiercely_loyal"),
    ("cancel request", replace(BASE, cancel_requests_90d=1), "at_risk"),
    ("complaint with an unresolved call", replace(BASE, complaints_90d=1, unresolved_calls_90d=1), "at_risk"),
    ("complaint that was resolved", replace(BASE, complaints_90d=1), "fiercely_loyal"),
    # fiercely_loyal needs more than volume
    ("score 74.99", replace(BASE, score=74.99), "loyal"),
    ("only two purchases", replace(BASE, purchases=2), "loyal"),
    ("price independence 89.99", replace(BASE, components=with_components(price_independence=89.99)), "loyal"),
    ("bad service record", replace(BASE, components=with_components(relationship_quality=49.0)), "loyal"),
    ("only breadth as evidence", replace(BASE, components=with_components(recognition=50.0,
     relationship_quality=50.0)), "loyal"),
    ("recognition 79.99 and quality 84.99 are not strong", replace(BASE, components=with_components(
        recognition=79.99, relationship_quality=84.99)), "loyal"),
    ("recognition and quality, narrow breadth", replace(BASE, components=with_components(breadth=20.0)),
     "fiercely_loyal"),
    # loyal and transactional
    ("score 55, price independence 40", replace(BASE, score=55.0, components=with_components(
        price_independence=40.0)), "loyal"),
    ("score 54.99", replace(BASE, score=54.99), "transactional"),
    ("high score, bought on discount", replace(BASE, score=80.0, components=with_components(
        price_independence=39.99)), "transactional"),
])
def test_tier_rules(case: str, inputs: TierInputs, tier: str) -> None:
    got, reason = assign_tier(inputs)
    assert got == tier, f"{case}: {reason}"
    assert got in TIERS and reason


def test_reasons_name_the_evidence() -> None:
    assert assign_tier(BASE)[1] == "score 85, buys at full price, strong breadth and recognition and relationship_quality"
    assert assign_tier(replace(BASE, days_since_last_purchase=120.0))[1] == "no purchase for 120 days (lapsed after 90)"
    assert assign_tier(replace(BASE, score=60.0, components=with_components(price_independence=10.0)))[1] == \
        "mostly buys on discount (price independence 10)"


# ---------------------------------------------------------------------------------------------
# The same through score_customer: a big discount-driven buyer is not fiercely loyal.

T0 = 1_704_067_200_000


def heavy_buyer(full_price: bool, engaged: bool) -> RelationshipState:
    state = RelationshipState("c1")
    channels = ("store", "web", "app") if engaged else ("web",)
    for i in range(60):  # every 6 days for a year, 300.00 each
        apply_event(state, PurchaseEvent(
            f"p{i}", "c1", T0 + i * 6 * DAY_MS, channels[i % len(channels)], f"o{i}", 30_000, "EUR",
            discount_minor=0 if full_price else 6_000,
            items=(PurchaseItem(f"s{i}", ("shoes", "bags", "hats", "socks")[i % 4], 1, 30_000),),
            location_id="S01"), 10_000 * DAY_MS)
    if engaged:
        for i in range(5):
            apply_event(state, VisitEvent(f"v{i}", "c1", T0 + (i * 60 + 3) * DAY_MS, "store", "S01", 600, True),
                        10_000 * DAY_MS)
    return state


@pytest.mark.parametrize("full_price, engaged, tier", [
    (False, False, "transactional"),   # volume and money, all on discount
    (True, False, "loyal"),            # full price, but one channel: breadth is the only evidence
    (False, True, "transactional"),
    (True, True, "fiercely_loyal"),
])
def test_volume_alone_never_makes_a_customer_fiercely_loyal(full_price: bool, engaged: bool, tier: str) -> None:
    as_of = T0 + (59 * 6 + 2) * DAY_MS
    signal = score_customer(heavy_buyer(full_price, engaged), as_of, DEFAULT_PARAMS)
    assert signal.components["frequency"] == 100.0 and signal.components["monetary"] == 100.0
    assert signal.tier == tier, signal.tier_reason


def test_a_complaint_left_unresolved_puts_a_loyal_customer_at_risk() -> None:
    state = heavy_buyer(True, True)
    as_of = T0 + (59 * 6 + 2) * DAY_MS
    apply_event(state, CallEvent("k1", "c1", as_of - DAY_MS, "inbound", "complaint", 30, 300, False, "a1"),
                10_000 * DAY_MS)
    signal = score_customer(state, as_of, DEFAULT_PARAMS)
    assert (signal.tier, signal.tier_reason) == ("at_risk", "complained and has an unresolved call in the last 90 days")
