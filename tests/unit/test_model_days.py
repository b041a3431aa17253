"""fold_batch: a batch of one customer's events over several event days closes each earlier day
at its last event, in event time; the final state is always the arrival-order fold's.

The tiers below follow the rules in domain/model/tiers.py with a population gap of 30 days:
prospect (never bought), new (first purchase < 60 days ago), at_risk (no purchase for
max(14, 2 x 30) = 60 days), lapsed (no purchase for max(90, 3 x 30) = 90 days).
"""

from __future__ import annotations

import random

from domain.model import score_customer
from domain.model.churn import BgNbdParams
from domain.model.days import DayEnd, day_end_to_dict, fold_batch
from domain.records import Event, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import DAY_MS, Outcome, RelationshipState, apply_event, copy_state, state_to_dict

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY0 = T0 // DAY_MS  # 19723
HOUR = 3_600_000
P = BgNbdParams(r=2.0, alpha=10.0, a=1.0, b=3.0, population_gap_days=30.0)
HORIZON = 90
DEDUP = 400 * DAY_MS


def buy(eid: str, at: int, amount: int = 5_000, categories: tuple[str, ...] = ("shoes",)) -> PurchaseEvent:
    items = tuple(PurchaseItem(f"sku-{c}", c, 1, amount) for c in categories)
    return PurchaseEvent(eid, "c1", at, "store", f"o-{eid}", amount, "EUR", items=items, location_id="S01")


def visit(eid: str, at: int, categories: tuple[str, ...] = ()) -> VisitEvent:
    return VisitEvent(eid, "c1", at, "store", "S01", 300, True, categories)


# A year's corner of one customer, in event time:
#   day 0  10:00 visit                     -> prospect                 (version 1, spend 0)
#   day 1  08:00 visit, 09:00 buy 50.00    -> prospect, then new       (version 3, spend 5,000)
#   day 71 12:00 visit                     -> at_risk (70.1 days since the purchase; not new: 70.1 >= 60)
#   day 97 12:00 visit                     -> lapsed (96.1 days since the purchase)
HISTORY: list[Event] = [
    visit("v0", T0 + 10 * HOUR),
    visit("v1", T0 + DAY_MS + 8 * HOUR),
    buy("p1", T0 + DAY_MS + 9 * HOUR),
    visit("v71", T0 + 71 * DAY_MS + 12 * HOUR),
    visit("v97", T0 + 97 * DAY_MS + 12 * HOUR),
]


def arrivals(events: list[Event], received: int = T0 + 200 * DAY_MS) -> list[tuple[Event, int | None]]:
    return [(e, received + i) for i, e in enumerate(events)]


def plain_fold(state: RelationshipState, items: list[tuple[Event, int | None]]) -> list[Outcome]:
    return [apply_event(state, e, DEDUP, r) for e, r in items]


def independent_end(events: list[Event], as_of: int) -> tuple[str, float, float]:
    """Tier, score and churn risk from a fresh state holding exactly ``events``."""
    state = RelationshipState("c1")
    for e in events:
        apply_event(state, e, DEDUP)
    s = score_customer(state, as_of, P, HORIZON)
    return s.tier, s.loyalty_score, s.churn_risk


def expected_history_ends() -> list[DayEnd]:
    ends = []
    for day, upto, version, spend in ((0, 1, 1, 0), (1, 3, 3, 5_000), (71, 4, 4, 5_000)):
        as_of = HISTORY[upto - 1].occurred_at
        tier, score, churn = independent_end(HISTORY[:upto], as_of)
        ends.append(DayEnd(DAY0 + day, as_of, version, tier, score, churn, spend))
    return ends


def test_a_batch_within_one_day_closes_nothing():
    state = RelationshipState("c1")
    outcomes, ends = fold_batch(state, arrivals(HISTORY[1:3]), DEDUP, P, HORIZON)
    assert (outcomes, ends) == ([Outcome.APPLIED, Outcome.APPLIED], [])
    assert state.version == 2


def test_a_backfill_in_time_order_closes_every_earlier_day():
    state = RelationshipState("c1")
    outcomes, ends = fold_batch(state, arrivals(HISTORY), DEDUP, P, HORIZON)
    assert outcomes == [Outcome.APPLIED] * 5
    assert [(e.day - DAY0, e.tier, e.version, e.spend_365d_minor) for e in ends] == [
        (0, "prospect", 1, 0), (1, "new", 3, 5_000), (71, "at_risk", 4, 5_000)]  # day 1: new, not prospect
    assert ends == expected_history_ends()
    # The newest day (97) is the signal's, scored after the batch: lapsed.
    assert score_customer(state, state.last_seen_at or 0, P, HORIZON).tier == "lapsed"


def test_out_of_day_order_after_a_score_closes_the_days_on_an_independent_copy():
    """A scored state memoises its rhythm (a frozen value, which ``copy.deepcopy`` cannot rebuild in
    the compiled build: ``loyalty compile``); the days are closed on a copy that leaves it behind."""
    state, reference = RelationshipState("c1"), RelationshipState("c1")
    fold_batch(state, arrivals(HISTORY[:3]), DEDUP, P, HORIZON)
    plain_fold(reference, arrivals(HISTORY[:3]))
    score_customer(state, state.last_seen_at or 0, P, HORIZON)
    late = arrivals([HISTORY[4], HISTORY[3]], T0 + 201 * DAY_MS)
    outcomes, ends = fold_batch(state, late, DEDUP, P, HORIZON)
    assert outcomes == plain_fold(reference, late)
    assert ends == expected_history_ends()[2:]
    assert state_to_dict(state) == state_to_dict(reference)


def test_a_copied_state_equals_its_original_and_shares_nothing_with_it():
    state = RelationshipState("c1")
    plain_fold(state, arrivals(HISTORY))
    before = state_to_dict(state)
    copied = copy_state(state)
    assert state_to_dict(copied) == before
    assert copied.last_purchase is not None
    copied.last_purchase.categories.append("bags")
    copied.lifetime.visits += 1
    copied.days[DAY0].visits += 1
    copied.channels["store"].visits += 1
    copied.recent_purchase_at.append(0)
    copied.categories_bought["bags"] = 1
    apply_event(copied, buy("p2", T0 + 98 * DAY_MS, categories=("bags",)), DEDUP)
    assert state_to_dict(state) == before
    assert state_to_dict(copy_state(copied)) == state_to_dict(copied)


def test_out_of_day_order_closes_the_same_days_and_keeps_the_arrival_order_state():
    shuffled = [HISTORY[i] for i in (4, 2, 0, 3, 1)]
    state, reference = RelationshipState("c1"), RelationshipState("c1")
    outcomes, ends = fold_batch(state, arrivals(shuffled), DEDUP, P, HORIZON)
    assert outcomes == plain_fold(reference, arrivals(shuffled))
    assert ends == expected_history_ends()
    assert state_to_dict(state) == state_to_dict(reference)


def test_the_final_state_is_the_arrival_order_fold_where_order_matters():
    """Two bounded memories keep first comers: the 200-category cap and the expiry order of
    remembered event ids. Folding in event-time order would change both; fold_batch must not."""
    rng = random.Random(7)
    events: list[Event] = [visit(f"v{i}", T0 + (i % 9) * DAY_MS + i, categories=(f"cat{i:03d}",)) for i in range(260)]
    rng.shuffle(events)
    items = [(e, T0 + 300 * DAY_MS + rng.randrange(0, 5 * DAY_MS)) for e in events]
    for horizon in (DEDUP, 2 * DAY_MS):  # long memory, and one that expires ids within the batch
        state, reference = RelationshipState("c1"), RelationshipState("c1")
        outcomes, ends = fold_batch(state, items, horizon, P, HORIZON)
        assert outcomes == [apply_event(reference, e, horizon, r) for e, r in items]
        assert state_to_dict(state) == state_to_dict(reference)
        assert len(state.categories_viewed) == 200
        assert [e.day - DAY0 for e in ends] == list(range(8))  # days 0..7 closed, day 8 is the signal's


def test_only_days_from_the_newest_event_before_the_batch_are_closed():
    # Before the batch: the customer's history up to day 1 (newest event day 1 09:00).
    state = RelationshipState("c1")
    plain_fold(state, arrivals(HISTORY[:3]))
    late = visit("late0", T0 + 2 * HOUR)  # day 0: older than the newest event before the batch
    same_day = visit("v1b", T0 + DAY_MS + 20 * HOUR)  # day 1, after the newest event
    batch = [late, same_day, HISTORY[3], HISTORY[4]]
    outcomes, ends = fold_batch(state, arrivals(batch), DEDUP, P, HORIZON)
    assert outcomes == [Outcome.APPLIED] * 4
    # day 0 is not closed (late); day 1 is closed at 20:00 with 5 events (3 before + late + v1b);
    # day 71 with 6; day 97 is the signal's.
    assert [(e.day - DAY0, e.as_of, e.version, e.tier) for e in ends] == [
        (1, same_day.occurred_at, 5, "new"), (71, HISTORY[3].occurred_at, 6, "at_risk")]
    upto_day1 = [*HISTORY[:3], late, same_day]
    assert (ends[0].tier, ends[0].loyalty_score, ends[0].churn_risk) == independent_end(upto_day1, same_day.occurred_at)


def test_a_replayed_batch_closes_nothing_and_a_day_of_duplicates_is_not_closed():
    state = RelationshipState("c1")
    fold_batch(state, arrivals(HISTORY), DEDUP, P, HORIZON)
    before = state_to_dict(state)
    outcomes, ends = fold_batch(state, arrivals(HISTORY, T0 + 201 * DAY_MS), DEDUP, P, HORIZON)
    assert (outcomes, ends) == ([Outcome.DUPLICATE] * 5, [])
    assert state_to_dict(state) == before

    # A batch replaying day 0 and 1 and bringing a new day 2 and 3: days 0 and 1 are duplicates
    # (and older than the newest event); day 2 is closed, day 3 is the signal's.
    fresh = RelationshipState("c1")
    plain_fold(fresh, arrivals(HISTORY[:3]))
    day2, day3 = visit("v2", T0 + 2 * DAY_MS + HOUR), visit("v3", T0 + 3 * DAY_MS)
    outcomes, ends = fold_batch(fresh, arrivals([*HISTORY[:3], day2, day3]), DEDUP, P, HORIZON)
    assert outcomes == [Outcome.DUPLICATE] * 3 + [Outcome.APPLIED] * 2
    assert [(e.day - DAY0, e.version) for e in ends] == [(2, 4)]


def test_day_end_datum():
    end = DayEnd(DAY0, T0 + 1, 3, "new", 12.5, 0.25, 5_000)
    assert day_end_to_dict(end) == {"day": 19723, "as_of": T0 + 1, "version": 3, "tier": "new",
                                    "loyalty_score": 12.5, "churn_risk": 0.25, "spend_365d_minor": 5_000}
