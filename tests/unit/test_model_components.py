"""Each loyalty component and the weighted score, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from domain.model import components as c
from domain.records import CallEvent, Event, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import DAY_MS, RelationshipState, Tally, apply_event

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
LATENESS = 10_000 * DAY_MS


def purchase(eid: str, day: float, amount: int = 10_000, channel: str = "store", discount: int = 0,
             categories: tuple[str, ...] = ("shoes",), is_return: bool = False) -> PurchaseEvent:
    items = tuple(PurchaseItem(f"sku-{cat}", cat, 1, amount) for cat in categories)
    return PurchaseEvent(eid, "c1", T0 + round(day * DAY_MS), channel, f"o-{eid}", amount, "EUR",
                         discount_minor=discount, items=items, is_return=is_return, location_id="S01")


def state_of(*events: object) -> RelationshipState:
    state = RelationshipState("c1")
    for event in events:
        apply_event(state, event, LATENESS)  # type: ignore[arg-type]
    return state


def test_weights_sum_to_one_and_name_every_component() -> None:
    assert sum(c.WEIGHTS.values()) == pytest.approx(1.0, abs=1e-12)
    state = state_of(purchase("p1", 0))
    assert list(c.compute_components(state, T0, c.Rhythm(30.0, "own"))) == list(c.WEIGHTS)


@pytest.mark.parametrize("days_since, gap, expected", [
    (None, 30.0, 0.0),     # never bought
    (0.0, 30.0, 100.0),
    (30.0, 30.0, 100.0),   # exactly one usual gap: still in rhythm
    (45.0, 30.0, 75.0),    # 1.5 gaps: a quarter of the way to zero
    (60.0, 30.0, 50.0),
    (90.0, 30.0, 0.0),     # three gaps: nothing left
    (400.0, 30.0, 0.0),
    (10.5, 7.0, 75.0),     # same ratio, different rhythm, same value
])
def test_recency_is_measured_against_the_customers_own_gap(days_since: float | None, gap: float,
                                                            expected: float) -> None:
    assert c.recency(days_since, gap) == pytest.approx(expected)


LN53 = math.log(53)


@pytest.mark.parametrize("purchases, expected", [
    (0, 0.0),
    (1, 100 * math.log(2) / LN53),
    (12, 100 * math.log(13) / LN53),   # monthly: about 65
    (52, 100.0),                       # weekly
    (80, 100.0),
])
def test_frequency_is_logarithmic_up_to_weekly(purchases: int, expected: float) -> None:
    assert c.frequency(purchases) == pytest.approx(expected)


@pytest.mark.parametrize("spend, refund, expected", [
    (0, 0, 0.0),
    (20_000, 0, 20.0),          # sqrt(200 / 5000)
    (125_000, 0, 50.0),         # a quarter of the full amount earns half
    (500_000, 0, 100.0),
    (2_000_000, 0, 100.0),
    (145_000, 20_000, 50.0),    # net of refunds
    (10_000, 80_000, 0.0),      # refunds above spend never go negative
])
def test_monetary(spend: int, refund: int, expected: float) -> None:
    assert c.monetary(spend, refund) == pytest.approx(expected)


@pytest.mark.parametrize("channels, categories, expected", [
    (0, 0, 0.0),
    (1, 1, 50 / 3 + 12.5),
    (2, 2, 100 / 3 + 25.0),
    (3, 4, 100.0),
    (5, 9, 100.0),
])
def test_breadth(channels: int, categories: int, expected: float) -> None:
    assert c.breadth(channels, categories) == pytest.approx(expected)


@pytest.mark.parametrize("tally, expected", [
    (Tally(), 50.0),  # no calls: neutral
    # one resolved call, nothing measured: 0.35*1 + 0.25*0.5 + 0.20*0.5 + 0.20*1
    (Tally(calls=1), 77.5),
    # two calls, one unresolved, mean sentiment 0.5 -> 0.75, mean effort 3 -> 4/6, one complaint
    (Tally(calls=2, unresolved_calls=1, sentiment_milli_sum=1000, sentiment_n=2, effort_sum=6, effort_n=2,
           complaints=1), 100 * (0.35 * 0.5 + 0.25 * 0.75 + 0.20 * 4 / 6 + 0.20 * 0.5)),
    # the worst call there is
    (Tally(calls=1, unresolved_calls=1, sentiment_milli_sum=-1000, sentiment_n=1, effort_sum=7, effort_n=1,
           complaints=1), 0.0),
    # a cancel request weighs like a complaint
    (Tally(calls=2, cancel_requests=1), 100 * (0.35 + 0.125 + 0.10 + 0.20 * 0.5)),
])
def test_relationship_quality(tally: Tally, expected: float) -> None:
    assert c.relationship_quality(tally) == pytest.approx(expected)


@pytest.mark.parametrize("recent, lifetime, expected", [
    (Tally(purchases=2, spend_minor=10_000, discounted_spend_minor=2_500), Tally(), 75.0),
    # nothing in the last year: the lifetime decides
    (Tally(), Tally(purchases=3, spend_minor=10_000, discounted_spend_minor=10_000), 0.0),
    # free purchases: by count
    (Tally(purchases=4, discounted_purchases=1), Tally(), 75.0),
    (Tally(), Tally(), 50.0),  # never bought: neutral
])
def test_price_independence(recent: Tally, lifetime: Tally, expected: float) -> None:
    assert c.price_independence(recent, lifetime) == pytest.approx(expected)


@pytest.mark.parametrize("tally, expected", [
    (Tally(), 50.0), (Tally(visits=4, recognized_visits=3), 75.0), (Tally(visits=2), 0.0),
])
def test_recognition(tally: Tally, expected: float) -> None:
    assert c.recognition(tally) == pytest.approx(expected)


@pytest.mark.parametrize("purchase_days, expected_gap, source", [
    ((), 30.0, "population"),
    ((0,), 30.0, "population"),
    ((0, 10, 30), 15.0, "own"),            # gaps 10 and 20
    ((0, 0.1), 7.0, "own"),               # two purchases on one day: floored at a week
])
def test_rhythm_gap(purchase_days: tuple[float, ...], expected_gap: float, source: str) -> None:
    state = state_of(*(purchase(f"p{i}", d) for i, d in enumerate(purchase_days)))
    assert c.rhythm_gap(state, population_gap_days=30.0) == c.Rhythm(expected_gap, source)


def test_channels_used_counts_purchase_and_visit_channels_not_calls_or_unknown() -> None:
    state = state_of(
        purchase("p1", 0, channel="store"),
        purchase("p2", 1, channel="unknown"),
        VisitEvent("v1", "c1", T0 + DAY_MS, "web", "site", 10, False),
        CallEvent("k1", "c1", T0 + DAY_MS, "inbound", "other", 0, 60, True, "a1"),
    )
    assert c.channels_used(state) == 2


def test_components_of_a_state_by_hand() -> None:
    # Four full-price store purchases 30 days apart (two categories), one web purchase with a
    # discount, four store visits (three recognised), one resolved call; scored 20 days after the last.
    events: list[Event] = [purchase(f"p{i}", 30 * i, amount=20_000, categories=("shoes", "bags")) for i in range(4)]
    events.append(purchase("p4", 120, amount=20_000, channel="web", discount=1_000))
    events += [VisitEvent("v1", "c1", T0 + 50 * DAY_MS, "store", "S01", 60, True),
               VisitEvent("v2", "c1", T0 + 51 * DAY_MS, "store", "S01", 60, False),
               VisitEvent("v3", "c1", T0 + 52 * DAY_MS, "store", "S01", 60, True),
               VisitEvent("v4", "c1", T0 + 53 * DAY_MS, "store", "S01", 60, True),
               CallEvent("k1", "c1", T0 + 60 * DAY_MS, "inbound", "billing", 0, 60, True, "a1")]
    state = state_of(*events)
    as_of = T0 + 140 * DAY_MS
    rhythm = c.rhythm_gap(state, 30.0)
    assert rhythm == c.Rhythm(30.0, "own")
    got = c.compute_components(state, as_of, rhythm)
    assert got == {
        "recency": 100.0,                   # 20 days since, usual gap 30
        "frequency": 45.13,                 # 100 ln 6 / ln 53
        "monetary": 44.72,                  # 5 x 200.00 = 1000.00: 100 sqrt(1000 / 5000)
        "breadth": round(50 * 2 / 3 + 50 * 2 / 4, 2),  # store+web, shoes+bags: 58.33
        "relationship_quality": 77.5,       # one resolved call, nothing measured
        "price_independence": 80.0,         # 800.00 of 1000.00 at full price
        "recognition": 75.0,
    }
    expected_score = round(0.25 * 100 + 0.15 * 45.13 + 0.10 * 44.72 + 0.10 * 58.33 + 0.15 * 77.5
                           + 0.15 * 80 + 0.10 * 75, 2)
    assert c.loyalty_score(got) == expected_score == 73.2


def test_only_the_last_365_days_count_for_frequency_and_money() -> None:
    state = state_of(purchase("old", 0, amount=90_000), purchase("new", 400, amount=10_000))
    got = c.compute_components(state, T0 + 401 * DAY_MS, c.Rhythm(400.0, "own"))
    assert got["frequency"] == 17.46  # one purchase: 100 ln 2 / ln 53
    assert got["monetary"] == 14.14  # 100.00: 100 sqrt(100 / 5000)
