"""The loyalty score's named components, each 0-100, and their weights. Pure.

Every component reads the customer's :class:`RelationshipState` as of a time ``as_of``; money and
counts come from the last 365 days (:func:`relationship.window`) unless said otherwise. A
component with no evidence either way (no calls, no visits, no spend) is :data:`NEUTRAL`, so
silence neither helps nor hurts.

Each component is rounded to 2 decimals and the score is the weighted sum of those rounded
values, rounded to 2 decimals: a BI user can redo the sum from what is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from domain.relationship import DAY_MS, RelationshipState, Tally, purchase_rhythm, window

WEIGHTS: dict[str, float] = {
    "recency": 0.25,  # in rhythm or overdue, against the customer's own gap between purchases
    "frequency": 0.15,  # purchases in the last 365 days
    "monetary": 0.10,  # net spend in the last 365 days
    "breadth": 0.10,  # channels and categories used
    "relationship_quality": 0.15,  # calls: resolved, sentiment, effort, complaints
    "price_independence": 0.15,  # share of spend bought without discount or promo
    "recognition": 0.10,  # share of visits where the customer was recognised
}
"""Weight of each component in the loyalty score; they sum to 1. Recency leads because a
customer who stopped buying is not loyal whatever else they did; price independence and
relationship quality together outweigh volume (frequency plus monetary), so the score rewards
preference over promotions."""

NEUTRAL = 50.0
"""Value of a component that has no evidence (no calls, no visits, no spend)."""
LOOKBACK_DAYS = 365
RECENCY_ZERO_AT_GAPS = 3.0
"""Recency is 100 up to one usual gap since the last purchase, then falls linearly to 0 at three."""
MIN_GAP_DAYS = 7.0
"""Floor on a rhythm: two purchases on one day do not make a customer overdue the day after."""
FREQUENCY_FULL_AT = 52
"""Purchases in 365 days that earn full frequency (one a week). The scale is logarithmic,
ln(1 + n) / ln(1 + 52), because the tenth purchase a year says less than the second."""
MONETARY_FULL_AT_MINOR = 500_000
"""Net spend in 365 days, in minor units, that earns full monetary value (5,000.00). The scale is
the square root of the share, so 1,250.00 earns 50: diminishing returns, like frequency."""
BREADTH_FULL_CHANNELS = 3
BREADTH_FULL_CATEGORIES = 4
QUALITY_PARTS: dict[str, float] = {"resolved": 0.35, "sentiment": 0.25, "effort": 0.20, "no_complaints": 0.20}
"""How relationship quality is made: share of calls resolved, mean sentiment mapped from -1..1
to 0..1, mean effort mapped from 7..1 (hard..easy) to 0..1, share of calls that were neither a
complaint nor a cancel request. A part with no measurement (no sentiment, no effort) is 0.5."""


@dataclass(slots=True, unsafe_hash=True)
class Rhythm:
    """The gap between purchases the customer is measured against."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    gap_days: float
    source: str  # "own": their mean gap (floored); "population": they have fewer than 2 purchases

    def __init__(self, gap_days: float, source: str) -> None:
        self.gap_days = gap_days
        self.source = source


def rhythm_gap(state: RelationshipState, population_gap_days: float) -> Rhythm:
    """The customer's own mean gap (at least :data:`MIN_GAP_DAYS`), else the population's."""
    mean_gap = purchase_rhythm(state).mean_gap_days
    if mean_gap is None:
        return Rhythm(max(MIN_GAP_DAYS, population_gap_days), "population")
    return Rhythm(max(MIN_GAP_DAYS, mean_gap), "own")


def gap_variation(state: RelationshipState) -> float | None:
    """How regular the customer buys: standard deviation over mean of the gaps between their
    recent purchases (0 is clockwork; a lognormal rhythm with sigma 1 gives about 1.3). None
    without a gap, or when every recent purchase fell at one instant."""
    rhythm = purchase_rhythm(state)
    if rhythm.mean_gap_days is None or rhythm.gap_stddev_days is None or rhythm.mean_gap_days <= 0:
        return None
    return rhythm.gap_stddev_days / rhythm.mean_gap_days


def days_since_last_purchase(state: RelationshipState, as_of: int) -> float | None:
    if state.last_purchase is None:
        return None
    return max(0, as_of - state.last_purchase.occurred_at) / DAY_MS


def recency(days_since_last: float | None, gap_days: float) -> float:
    """100 within one usual gap, linear to 0 at :data:`RECENCY_ZERO_AT_GAPS` gaps; 0 if never bought."""
    if days_since_last is None:
        return 0.0
    overdue = days_since_last / gap_days
    share = (RECENCY_ZERO_AT_GAPS - overdue) / (RECENCY_ZERO_AT_GAPS - 1.0)
    return 100.0 * _clamp(share)


def frequency(purchases: int) -> float:
    return 100.0 * _clamp(math.log1p(purchases) / math.log1p(FREQUENCY_FULL_AT))


def monetary(spend_minor: int, refund_minor: int) -> float:
    """Net of refunds, so a buy-and-return habit does not count as value."""
    return 100.0 * math.sqrt(_clamp((spend_minor - refund_minor) / MONETARY_FULL_AT_MINOR))


def breadth(channels: int, categories: int) -> float:
    """Half channels (full at 3), half categories bought (full at 4)."""
    return 50.0 * _clamp(channels / BREADTH_FULL_CHANNELS) + 50.0 * _clamp(categories / BREADTH_FULL_CATEGORIES)


def relationship_quality(t: Tally) -> float:
    """From the calls in the tally; :data:`NEUTRAL` when there were none."""
    if t.calls == 0:
        return NEUTRAL
    parts = {
        "resolved": 1.0 - t.unresolved_calls / t.calls,
        "sentiment": 0.5 if t.sentiment_n == 0 else (t.sentiment_milli_sum / t.sentiment_n / 1000.0 + 1.0) / 2.0,
        "effort": 0.5 if t.effort_n == 0 else (7.0 - t.effort_sum / t.effort_n) / 6.0,
        "no_complaints": 1.0 - (t.complaints + t.cancel_requests) / t.calls,
    }
    return 100.0 * sum(QUALITY_PARTS[name] * _clamp(value) for name, value in parts.items())


def price_independence(recent: Tally, lifetime: Tally) -> float:
    """Share of spend at full price: last 365 days, else lifetime; by count if spend is 0."""
    for t in (recent, lifetime):
        if t.spend_minor > 0:
            return 100.0 * (1.0 - t.discounted_spend_minor / t.spend_minor)
        if t.purchases > 0:
            return 100.0 * (1.0 - t.discounted_purchases / t.purchases)
    return NEUTRAL


def recognition(t: Tally) -> float:
    """Share of visits where the customer was recognised; :data:`NEUTRAL` without visits."""
    if t.visits == 0:
        return NEUTRAL
    return 100.0 * t.recognized_visits / t.visits


def channels_used(state: RelationshipState) -> int:
    """Channels the customer bought or visited in (calls are service, not a choice of channel)."""
    return sum(1 for name, c in state.channels.items() if name != "unknown" and (c.purchases or c.visits))


def compute_components(state: RelationshipState, as_of: int, rhythm: Rhythm) -> dict[str, float]:
    """Every component, rounded to 2 decimals, in :data:`WEIGHTS` order."""
    recent = window(state, LOOKBACK_DAYS, as_of)
    values = {
        "recency": recency(days_since_last_purchase(state, as_of), rhythm.gap_days),
        "frequency": frequency(recent.purchases),
        "monetary": monetary(recent.spend_minor, recent.refund_minor),
        "breadth": breadth(channels_used(state), len(state.categories_bought)),
        "relationship_quality": relationship_quality(recent),
        "price_independence": price_independence(recent, state.lifetime),
        "recognition": recognition(recent),
    }
    return {name: round(values[name], 2) for name in WEIGHTS}


def loyalty_score(components: dict[str, float]) -> float:
    """Weighted sum of the components (0-100), rounded to 2 decimals."""
    return round(sum(WEIGHTS[name] * components[name] for name in WEIGHTS), 2)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
