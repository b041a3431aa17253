"""The tier a customer ended each event day in. Pure.

The state worker folds a customer's new events batch by batch and scores once per batch, as of
the newest event. When a batch holds several event days of one customer (a backfill, a replay, a
catch-up after an outage), that one score would stand for all of them. :func:`fold_batch` folds
the batch and also *closes* every earlier event day of it: it scores the customer as of that
day's last event, with the events up to that day's end folded in, and nothing later.

Rules (docs/topics-and-tables.md, ``tier_days``):

* A day is closed as of its last event (not midnight), so the newest day's figures are exactly
  the signal's, which the worker computes anyway: a batch within one day costs nothing extra.
* Only days from the customer's newest event before the batch onwards are closed. An event for
  an older day arrives late: the state cannot be rewound to that day, so it counts from the
  next closed day on (and in the signal), and the day's earlier row stays as it was.
* A day is closed only when one of its events was applied (duplicates close nothing).

Exactness: the final state is the one that folding the batch in arrival order gives, always
(:func:`~domain.relationship.apply_event` one by one), whether or not days are closed. The fold
is order-independent except where bounded memories keep the first comers (the category cap, the
duplicate-id memory's expiry order), so the day ends are taken in event-time order on a copy when
the batch's events are not already in day order; when they are (a backfill publishes history in
time order), the one fold in arrival order closes each day as it passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domain.model.churn import BgNbdParams
from domain.model.churn_learned import LearnedChurnModel
from domain.model.signals import Assessment, assess
from domain.records import Event
from domain.relationship import DAY_MS, Outcome, RelationshipState, apply_event, copy_state, window

# A batch's events of one customer, in arrival order: (event, arrival time or None).
Arrival = tuple[Event, int | None]


@dataclass(slots=True, unsafe_hash=True)
class DayEnd:
    """A customer's tier and figures at the end of one event day (the ``tier_days`` row)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    day: int
    """UTC day number (days since 1970-01-01)."""
    as_of: int
    """The day's last event (epoch ms): the time the figures are scored as of."""
    version: int
    """Events applied by then: the row version, so a later write of the same day wins."""
    tier: str
    loyalty_score: float
    churn_risk: float
    spend_365d_minor: int

    def __init__(self, day: int, as_of: int, version: int, tier: str, loyalty_score: float, churn_risk: float,
                 spend_365d_minor: int) -> None:
        self.day = day
        self.as_of = as_of
        self.version = version
        self.tier = tier
        self.loyalty_score = loyalty_score
        self.churn_risk = churn_risk
        self.spend_365d_minor = spend_365d_minor


def day_end(state: RelationshipState, as_of: int, judged: Assessment) -> DayEnd:
    """The day end of ``state`` as of the day's last event ``as_of``, as ``judged`` then (the
    figures a signal scored then would carry; :func:`~domain.model.signals.assess` gives them
    without the know-me profile a day end does not keep)."""
    return DayEnd(day=as_of // DAY_MS, as_of=as_of, version=state.version, tier=judged.tier,
                  loyalty_score=judged.score, churn_risk=judged.churn_risk,
                  spend_365d_minor=window(state, 365, as_of).spend_minor)


def day_end_to_dict(end: DayEnd) -> dict[str, object]:
    """The ``DayEnd`` datum of ``schemas/loyalty_signal.avsc`` (field ``day_ends``)."""
    return {"day": end.day, "as_of": end.as_of, "version": end.version, "tier": end.tier,
            "loyalty_score": end.loyalty_score, "churn_risk": end.churn_risk,
            "spend_365d_minor": end.spend_365d_minor}


def fold_batch(state: RelationshipState, arrivals: Sequence[Arrival], dedup_horizon_ms: int,
               params: BgNbdParams, horizon_days: int,
               learned: LearnedChurnModel | None = None) -> tuple[list[Outcome], list[DayEnd]]:
    """Fold ``arrivals`` into ``state`` (in place, in arrival order) and close the batch's
    earlier event days; return the outcome of each event and the closed days, oldest first.

    The batch's newest event day is not closed here: the signal scored after the batch is its
    end. One day in the batch (live processing): a plain fold, nothing scored.
    """
    days = [event.occurred_at // DAY_MS for event, _ in arrivals]
    if not days or min(days) == max(days):
        return [apply_event(state, e, dedup_horizon_ms, r) for e, r in arrivals], []
    first_open = None if state.last_seen_at is None else state.last_seen_at // DAY_MS
    last_day = max(days)
    if days == sorted(days):
        return _fold_closing(state, arrivals, days, dedup_horizon_ms, params, horizon_days, learned, first_open,
                             last_day)
    # Out of day order: close the days on a copy folded in event-day order (stable, so arrival
    # order within a day), then fold the state itself in arrival order.
    order = sorted(range(len(arrivals)), key=days.__getitem__)
    _, ends = _fold_closing(copy_state(state), [arrivals[i] for i in order], [days[i] for i in order],
                            dedup_horizon_ms, params, horizon_days, learned, first_open, last_day)
    return [apply_event(state, e, dedup_horizon_ms, r) for e, r in arrivals], ends


def _fold_closing(state: RelationshipState, arrivals: Sequence[Arrival], days: list[int], dedup_horizon_ms: int,
                  params: BgNbdParams, horizon_days: int, learned: LearnedChurnModel | None, first_open: int | None,
                  last_day: int) -> tuple[list[Outcome], list[DayEnd]]:
    """Fold events sorted by day, closing each day before ``last_day`` when its last event passes."""
    outcomes: list[Outcome] = []
    ends: list[DayEnd] = []
    applied_today = False
    for i, (event, received) in enumerate(arrivals):
        outcome = apply_event(state, event, dedup_horizon_ms, received)
        outcomes.append(outcome)
        applied_today = applied_today or outcome is Outcome.APPLIED
        day = days[i]
        if day == last_day or (i + 1 < len(days) and days[i + 1] == day):
            continue
        # the last event of `day` has been folded
        if applied_today and (first_open is None or day >= first_open):
            assert state.last_seen_at is not None  # an event was applied
            as_of = state.last_seen_at
            ends.append(day_end(state, as_of, assess(state, as_of, params, horizon_days, learned)))
        applied_today = False
    return outcomes, ends
