"""Tier rules: which kind of customer this is, and why. Pure.

The rules are tried in this order; the first that holds decides (:func:`assign_tier`):

1. ``prospect``: never bought (only visits, calls or returns).
2. ``lapsed``: no purchase for at least ``max(90 days, 3 x their usual gap)``.
3. ``new``: first purchase less than 60 days ago (too early to judge loyalty).
4. ``at_risk``, leaving: overdue (no purchase for ``max(14 days, 2 x their usual gap)``), or
   BG/NBD P(alive) below 0.5, or a cancel request in the last 90 days. Behaviour that says the
   customer is going comes first: an overdue or cancelling customer is at_risk, never captive.
5. ``captive``: buys often and regularly, at full price, while the relationship is poor: at
   least 6 purchases, a usual gap of at most 30 days, a gap variation (standard deviation over
   mean of the recent gaps) of at most 0.6, price independence >= 40 (not here for the
   discounts) AND relationship quality below 40 over at least 3 calls in the last 365 days. Below
   40 means worse than half the calls unresolved, half of them complaints, sentiment -0.4 and
   effort 5.5 of 7 together; 50 is what no calls give, so silence never makes a customer
   captive, and the 3 calls keep one bad call from doing so. These customers stay because they
   have no real alternative: they count as a loyal base and leave when a competitor appears.
6. ``at_risk``, unhappy: a complaint together with an unresolved call in the last 90 days (a
   customer who does not buy like a captive one).
7. ``fiercely_loyal``: loyalty score >= 75 AND at least 3 purchases AND price independence >= 90
   (almost never needs a discount) AND relationship quality >= 50 (no bad service record) AND
   at least two of: breadth >= 50, recognition >= 80, relationship quality >= 85. Volume alone
   cannot get here: a neutral (no visits, no calls) recognition or quality is no evidence.
8. ``loyal``: loyalty score >= 55 AND price independence >= 40.
9. ``transactional``: everyone else who buys: mostly on discount, or with little relationship.
"""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("prospect", "lapsed", "new", "at_risk", "fiercely_loyal", "loyal", "transactional", "captive")
"""Every tier, in the order the tiers were introduced: the symbols of the signal schema's ``tier``
enum and the tier codes of the BI tables (``customer_week_tiers``) follow it, so a new tier is
only ever appended. The order the rules are tried in is the module docstring's."""

LAPSED_MIN_DAYS = 90.0
LAPSED_GAPS = 3.0
NEW_DAYS = 60.0
AT_RISK_MIN_DAYS = 14.0
AT_RISK_GAPS = 2.0
AT_RISK_P_ALIVE = 0.5
FIERCE_SCORE = 75.0
FIERCE_MIN_PURCHASES = 3
FIERCE_PRICE_INDEPENDENCE = 90.0
FIERCE_MIN_QUALITY = 50.0
FIERCE_BREADTH = 50.0
FIERCE_RECOGNITION = 80.0
FIERCE_QUALITY = 85.0
FIERCE_EVIDENCE_NEEDED = 2
CAPTIVE_MIN_PURCHASES = 6
CAPTIVE_MAX_GAP_DAYS = 30.0
CAPTIVE_MAX_GAP_VARIATION = 0.6
CAPTIVE_PRICE_INDEPENDENCE = 40.0
CAPTIVE_QUALITY_BELOW = 40.0
CAPTIVE_MIN_CALLS = 3
LOYAL_SCORE = 55.0
LOYAL_PRICE_INDEPENDENCE = 40.0


@dataclass(slots=True, unsafe_hash=True)
class TierInputs:
    """The facts the rules look at."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    purchases: int  # lifetime, returns excluded
    days_since_first_purchase: float | None
    days_since_last_purchase: float | None
    gap_days: float  # the usual gap the customer is measured against
    p_alive: float | None
    cancel_requests_90d: int
    complaints_90d: int
    unresolved_calls_90d: int
    score: float
    components: dict[str, float]
    calls_365d: int = 0  # the calls relationship_quality is measured on
    gap_variation: float | None = None  # std dev / mean of the recent gaps; None below 2 gaps

    def __init__(self, purchases: int, days_since_first_purchase: float | None, days_since_last_purchase: float | None,
                 gap_days: float, p_alive: float | None, cancel_requests_90d: int, complaints_90d: int,
                 unresolved_calls_90d: int, score: float, components: dict[str, float], calls_365d: int = 0,
                 gap_variation: float | None = None) -> None:
        self.purchases = purchases
        self.days_since_first_purchase = days_since_first_purchase
        self.days_since_last_purchase = days_since_last_purchase
        self.gap_days = gap_days
        self.p_alive = p_alive
        self.cancel_requests_90d = cancel_requests_90d
        self.complaints_90d = complaints_90d
        self.unresolved_calls_90d = unresolved_calls_90d
        self.score = score
        self.components = components
        self.calls_365d = calls_365d
        self.gap_variation = gap_variation


def assign_tier(f: TierInputs) -> tuple[str, str]:
    """The tier and a one-line reason a BI user can read."""
    if f.purchases == 0 or f.days_since_last_purchase is None or f.days_since_first_purchase is None:
        return "prospect", "no purchase yet"
    since = f.days_since_last_purchase
    lapsed_after = max(LAPSED_MIN_DAYS, LAPSED_GAPS * f.gap_days)
    if since >= lapsed_after:
        return "lapsed", f"no purchase for {since:.0f} days (lapsed after {lapsed_after:.0f})"
    if f.days_since_first_purchase < NEW_DAYS:
        return "new", f"first purchase {f.days_since_first_purchase:.0f} days ago"
    leaving = _leaving_reason(f)
    if leaving:
        return "at_risk", leaving
    captive = _captive_reason(f)
    if captive:
        return "captive", captive
    if f.complaints_90d > 0 and f.unresolved_calls_90d > 0:
        return "at_risk", "complained and has an unresolved call in the last 90 days"
    c = f.components
    fierce_evidence = [
        name for name, ok in (
            ("breadth", c["breadth"] >= FIERCE_BREADTH),
            ("recognition", c["recognition"] >= FIERCE_RECOGNITION),
            ("relationship_quality", c["relationship_quality"] >= FIERCE_QUALITY),
        ) if ok
    ]
    if (
        f.score >= FIERCE_SCORE
        and f.purchases >= FIERCE_MIN_PURCHASES
        and c["price_independence"] >= FIERCE_PRICE_INDEPENDENCE
        and c["relationship_quality"] >= FIERCE_MIN_QUALITY
        and len(fierce_evidence) >= FIERCE_EVIDENCE_NEEDED
    ):
        return "fiercely_loyal", f"score {f.score:.0f}, buys at full price, strong {' and '.join(fierce_evidence)}"
    if f.score >= LOYAL_SCORE and c["price_independence"] >= LOYAL_PRICE_INDEPENDENCE:
        return "loyal", f"score {f.score:.0f}, mostly buys at full price"
    if c["price_independence"] < LOYAL_PRICE_INDEPENDENCE:
        return "transactional", f"mostly buys on discount (price independence {c['price_independence']:.0f})"
    return "transactional", f"buys, but little relationship (score {f.score:.0f})"


def _leaving_reason(f: TierInputs) -> str:
    assert f.days_since_last_purchase is not None
    overdue_after = max(AT_RISK_MIN_DAYS, AT_RISK_GAPS * f.gap_days)
    if f.days_since_last_purchase >= overdue_after:
        return f"overdue: no purchase for {f.days_since_last_purchase:.0f} days (usual gap {f.gap_days:.0f})"
    if f.p_alive is not None and f.p_alive < AT_RISK_P_ALIVE:
        return f"P(alive) {f.p_alive:.2f} below {AT_RISK_P_ALIVE}"
    if f.cancel_requests_90d > 0:
        return "asked to cancel in the last 90 days"
    return ""


def _captive_reason(f: TierInputs) -> str:
    """Why the customer is captive (rule 5), or "" when they are not."""
    c = f.components
    if not (
        f.purchases >= CAPTIVE_MIN_PURCHASES
        and f.gap_days <= CAPTIVE_MAX_GAP_DAYS
        and f.gap_variation is not None
        and f.gap_variation <= CAPTIVE_MAX_GAP_VARIATION
        and c["price_independence"] >= CAPTIVE_PRICE_INDEPENDENCE
        and f.calls_365d >= CAPTIVE_MIN_CALLS
        and c["relationship_quality"] < CAPTIVE_QUALITY_BELOW
    ):
        return ""
    recent = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in (
        (f.complaints_90d, "complaint"), (f.unresolved_calls_90d, "unresolved call")) if n]
    return (f"buys every {f.gap_days:.0f} days ({f.purchases} purchases, gap variation {f.gap_variation:.2f}, "
            f"price independence {c['price_independence']:.0f}) but relationship quality "
            f"{c['relationship_quality']:.0f} over {f.calls_365d} calls"
            + (f" ({', '.join(recent)} in 90 days)" if recent else ""))
