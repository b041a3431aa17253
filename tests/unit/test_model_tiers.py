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


# ---------------------------------------------------------------------------------------------
# captive: volume and regularity at full price, with a poor relationship. Each threshold from both
# sides; the base case, without the rule, would be loyal (score 60 >= 55, price independence 85).

POOR = {"recency": 100.0, "frequency": 60.0, "monetary": 50.0, "breadth": 30.0,
        "relationship_quality": 30.0, "price_independence": 85.0, "recognition": 20.0}
CAPTIVE = TierInputs(
    purchases=12, days_since_first_purchase=300.0, days_since_last_purchase=5.0, gap_days=9.0,
    p_alive=0.95, cancel_requests_90d=0, complaints_90d=0, unresolved_calls_90d=0, score=60.0,
    components=POOR, calls_365d=10, gap_variation=0.3,
)


def poor(**changes: float) -> dict[str, float]:
    return {**POOR, **changes}


@pytest.mark.parametrize("case, inputs, tier", [
    ("regular full-price buyer with a poor relationship", CAPTIVE, "captive"),
    # volume: at least 6 purchases, a usual gap of at most 30 days
    ("6 purchases", replace(CAPTIVE, purchases=6), "captive"),
    ("5 purchases", replace(CAPTIVE, purchases=5), "loyal"),
    ("a 30-day gap", replace(CAPTIVE, gap_days=30.0), "captive"),
    ("a 30.01-day gap", replace(CAPTIVE, gap_days=30.01), "loyal"),
    # regularity: gap variation at most 0.6, and a rhythm to measure
    ("gap variation 0.6", replace(CAPTIVE, gap_variation=0.6), "captive"),
    ("gap variation 0.61", replace(CAPTIVE, gap_variation=0.61), "loyal"),
    ("no gap to measure", replace(CAPTIVE, gap_variation=None), "loyal"),
    # not here for the discounts: price independence at least 40
    ("price independence 40", replace(CAPTIVE, components=poor(price_independence=40.0)), "captive"),
    ("price independence 39.99", replace(CAPTIVE, components=poor(price_independence=39.99)), "transactional"),
    # a poor relationship: quality below 40 over at least 3 calls
    ("quality 39.99", replace(CAPTIVE, components=poor(relationship_quality=39.99)), "captive"),
    ("quality 40", replace(CAPTIVE, components=poor(relationship_quality=40.0)), "loyal"),
    ("3 calls", replace(CAPTIVE, calls_365d=3), "captive"),
    ("2 calls are too few to judge", replace(CAPTIVE, calls_365d=2), "loyal"),
    ("no calls: neutral quality is no evidence", replace(CAPTIVE, calls_365d=0, components=poor(
        relationship_quality=50.0)), "loyal"),
    # leaving comes first: overdue after max(14, 2 x 9) = 18 days, P(alive), a cancel request
    ("17 days since the last purchase", replace(CAPTIVE, days_since_last_purchase=17.0), "captive"),
    ("18 days: overdue", replace(CAPTIVE, days_since_last_purchase=18.0), "at_risk"),
    ("P(alive) 0.49", replace(CAPTIVE, p_alive=0.49), "at_risk"),
    ("a cancel request", replace(CAPTIVE, cancel_requests_90d=1), "at_risk"),
    ("lapsed", replace(CAPTIVE, days_since_last_purchase=90.0), "lapsed"),
    ("new", replace(CAPTIVE, days_since_first_purchase=59.0), "new"),
    # an unresolved complaint: captive when they buy like one, at_risk when they do not
    ("complaint with an unresolved call", replace(CAPTIVE, complaints_90d=1, unresolved_calls_90d=1), "captive"),
    ("the same with 5 purchases", replace(CAPTIVE, purchases=5, complaints_90d=1, unresolved_calls_90d=1),
     "at_risk"),
    # never together with fiercely_loyal (which needs quality >= 50)
    ("strong all round", replace(BASE, calls_365d=10, gap_variation=0.1), "fiercely_loyal"),
])
def test_captive_rule(case: str, inputs: TierInputs, tier: str) -> None:
    got, reason = assign_tier(inputs)
    assert got == tier, f"{case}: {reason}"


def test_the_captive_reason_names_the_facts() -> None:
    assert assign_tier(CAPTIVE)[1] == ("buys every 9 days (12 purchases, gap variation 0.30, price independence 85) "
                                       "but relationship quality 30 over 10 calls")
    assert assign_tier(replace(CAPTIVE, complaints_90d=2, unresolved_calls_90d=1))[1] == (
        "buys every 9 days (12 purchases, gap variation 0.30, price independence 85) but relationship quality 30 "
        "over 10 calls (2 complaints, 1 unresolved call in 90 days)")


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


def test_a_full_price_regular_with_calls_gone_wrong_is_captive() -> None:
    """Every 6 days at full price for a year, in one channel; four calls in the last 365 days:

    call   days before   reason             resolved  sentiment  effort
    1      200           billing            no        -0.6       6
    2      150           complaint          no        -0.8       7
    3      100           technical_support  yes       -0.2       5
    4       20           complaint          no        -0.4       6

    relationship quality = 35 x 1/4 resolved + 25 x (-0.5 + 1) / 2 + 20 x (7 - 6) / 6 + 20 x 2/4
    without complaints = 8.75 + 6.25 + 3.33 + 10 = 28.33; the gaps are all 6 days (variation 0), and
    the usual gap is floored at 7 days (components.MIN_GAP_DAYS).
    Without the captive rule the unresolved complaint 20 days ago would make this customer at_risk;
    without the calls it is loyal (test_volume_alone_never_makes_a_customer_fiercely_loyal).
    """
    state = heavy_buyer(True, False)
    as_of = T0 + (59 * 6 + 2) * DAY_MS
    calls = [(200, "billing", False, -0.6, 6), (150, "complaint", False, -0.8, 7),
             (100, "technical_support", True, -0.2, 5), (20, "complaint", False, -0.4, 6)]
    for i, (days, reason, resolved, sentiment, effort) in enumerate(calls):
        apply_event(state, CallEvent(f"k{i}", "c1", as_of - days * DAY_MS, "inbound", reason, 30, 300, resolved, "a1",
                                     sentiment=sentiment, effort_score=effort), 10_000 * DAY_MS)
    signal = score_customer(state, as_of, DEFAULT_PARAMS)
    assert signal.components["relationship_quality"] == 28.33
    assert (signal.tier, signal.tier_reason) == ("captive", (
        "buys every 7 days (60 purchases, gap variation 0.00, price independence 100) but relationship quality 28 "
        "over 4 calls (1 complaint, 1 unresolved call in 90 days)"))
