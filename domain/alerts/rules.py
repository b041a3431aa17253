"""Alert thresholds, the tier order and the severity rule, in one place. Pure.

Every threshold is a field of :class:`AlertRules` (frozen) with a documented default; the worker
builds one from its settings and passes it to :func:`domain.alerts.evaluate`.

The five kinds of alert, and when each starts an *episode*:

* ``score_drop``: the loyalty score is at least ``score_drop_points`` (15) below its trailing
  ``score_peak_days`` (30) day peak.
* ``tier_downgrade``: the tier moves from ``downgrade_from_at_least`` (loyal) or better to
  ``downgrade_to_at_most`` (transactional, with which captive ranks) or worse, in :data:`TIER_ORDER`.
* ``gone_quiet``: no purchase by the customer's own expected next purchase plus a tolerance of
  ``max(quiet_tolerance_min_days, quiet_tolerance_gap_share x usual gap)`` (3 days, 50 %).
* ``relationship_strain``: in the last ``strain_window_days`` (30): at least
  ``strain_min_complaints`` (2) complaints, or at least ``strain_min_unresolved`` (2) unresolved
  calls, or a mean sentiment of at most ``strain_sentiment_at_most`` (-0.4) over at least
  ``strain_min_sentiment_calls`` (2) calls, or any cancel request.
* ``price_flight``: the discounted share of spend in the last ``price_flight_recent_days`` (90)
  minus that share in the rest of the last ``price_flight_baseline_days`` (365) is at least
  ``price_flight_share_shift`` (0.4), with at least ``price_flight_min_recent_purchases`` (3)
  purchases in the recent window and some spend in the baseline (a customer with no history
  before cannot shift away from it).

An episode raises one alert when it starts, and none while it lasts. It ends when its condition
no longer holds (for ``tier_downgrade``: the tier is back at ``downgrade_from_at_least`` or better;
for ``gone_quiet``: a purchase). A new episode of the same kind within ``cooldown_days`` (14) of
the last alert of that kind raises nothing and counts as the old one carrying on.

Severity (:func:`severity`), the documented rule:

=====================  ================================================  =====================
kind                   critical                                          otherwise
=====================  ================================================  =====================
score_drop             drop >= ``critical_drop_points`` (30)             warning
tier_downgrade         falls >= ``critical_tier_steps`` (2) places       warning
gone_quiet             never                                             warning if the tier
                                                                         before was loyal or
                                                                         fiercely_loyal, else
                                                                         info
relationship_strain    a cancel request in the window                    warning
price_flight           never                                             warning if the shift
                                                                         >= ``price_flight_
                                                                         warning_shift`` (0.6),
                                                                         else info
=====================  ================================================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.relationship import DAY_MS, LONGEST_WINDOW_DAYS

ALERT_KINDS = ("score_drop", "tier_downgrade", "gone_quiet", "relationship_strain", "price_flight")
"""Every kind of alert, in the order :func:`domain.alerts.evaluate` checks them."""
SEVERITIES = ("info", "warning", "critical")

TIER_ORDER = ("lapsed", "at_risk", "transactional", "loyal", "fiercely_loyal")
"""Tiers that can be ranked, worst first. ``prospect`` and ``new`` are not ranked: a customer
cannot be downgraded from or to them (nothing is known yet about their loyalty)."""

SHARED_RANKS = {"captive": "transactional"}
"""Tiers ranked with another one. ``captive`` ranks with ``transactional``: both buy without
being loyal (the "big audience, not a loyal base" side), so loyal -> captive is a one-place
downgrade (a warning) and fiercely_loyal -> captive a two-place one (critical), and the ranks
stored with earlier alerts keep their meaning."""

VALUED_TIERS = ("loyal", "fiercely_loyal")
"""Tiers whose customers have the most to lose: a gone-quiet alert for them is a warning."""


def tier_rank(tier: str | None) -> int | None:
    """Position in :data:`TIER_ORDER` (0 = lapsed; see :data:`SHARED_RANKS`), or None for an unranked tier."""
    tier = SHARED_RANKS.get(tier, tier) if tier is not None else None
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else None


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Alert thresholds; the defaults are the documented ones (see the module docstring)."""

    score_drop_points: float = 15.0
    score_peak_days: int = 30
    critical_drop_points: float = 30.0
    downgrade_from_at_least: str = "loyal"
    downgrade_to_at_most: str = "transactional"
    critical_tier_steps: int = 2
    quiet_tolerance_min_days: float = 3.0
    quiet_tolerance_gap_share: float = 0.5
    strain_window_days: int = 30
    strain_min_complaints: int = 2
    strain_min_unresolved: int = 2
    strain_sentiment_at_most: float = -0.4
    strain_min_sentiment_calls: int = 2
    price_flight_recent_days: int = 90
    price_flight_baseline_days: int = 365
    price_flight_share_shift: float = 0.4
    price_flight_warning_shift: float = 0.6
    price_flight_min_recent_purchases: int = 3
    cooldown_days: float = 14.0

    def __post_init__(self) -> None:
        for name in ("downgrade_from_at_least", "downgrade_to_at_most"):
            if getattr(self, name) not in TIER_ORDER:
                raise ValueError(f"{name} must be one of {TIER_ORDER}, not {getattr(self, name)!r}")
        if tier_rank(self.downgrade_to_at_most) >= tier_rank(self.downgrade_from_at_least):  # type: ignore[operator]
            raise ValueError("downgrade_to_at_most must rank below downgrade_from_at_least")
        if not 0 < self.price_flight_recent_days < self.price_flight_baseline_days <= LONGEST_WINDOW_DAYS:
            raise ValueError(f"need 0 < price_flight_recent_days < price_flight_baseline_days <= {LONGEST_WINDOW_DAYS}")
        if not 0 < self.strain_window_days <= LONGEST_WINDOW_DAYS:
            raise ValueError(f"strain_window_days must be within 1..{LONGEST_WINDOW_DAYS}")
        if self.score_drop_points <= 0 or self.score_peak_days <= 0 or self.cooldown_days < 0:
            raise ValueError("score_drop_points and score_peak_days must be positive, cooldown_days not negative")

    @property
    def cooldown_ms(self) -> int:
        return round(self.cooldown_days * DAY_MS)

    @property
    def score_peak_ms(self) -> int:
        return self.score_peak_days * DAY_MS

    def quiet_tolerance_days(self, gap_days: float) -> float:
        """Slack after the expected next purchase before the customer counts as gone quiet."""
        return max(self.quiet_tolerance_min_days, self.quiet_tolerance_gap_share * gap_days)

    def is_downgrade(self, before: str | None, after: str) -> bool:
        """From ``downgrade_from_at_least`` or better to ``downgrade_to_at_most`` or worse."""
        b, a = tier_rank(before), tier_rank(after)
        return (b is not None and a is not None and b >= tier_rank(self.downgrade_from_at_least)  # type: ignore[operator]
                and a <= tier_rank(self.downgrade_to_at_most))  # type: ignore[operator]

    def is_upgraded_back(self, tier: str) -> bool:
        """The tier is back at ``downgrade_from_at_least`` or better: a downgrade episode ends."""
        rank = tier_rank(tier)
        return rank is not None and rank >= tier_rank(self.downgrade_from_at_least)  # type: ignore[operator]


DEFAULT_RULES = AlertRules()


def severity(kind: str, rules: AlertRules, *, drop: float = 0.0, tier_steps: int = 0, tier_before: str | None = None,
             cancel_requests: int = 0, share_shift: float = 0.0) -> str:
    """The documented severity rule (see the module docstring); only the argument of ``kind`` counts."""
    if kind == "score_drop":
        return "critical" if drop >= rules.critical_drop_points else "warning"
    if kind == "tier_downgrade":
        return "critical" if tier_steps >= rules.critical_tier_steps else "warning"
    if kind == "gone_quiet":
        return "warning" if tier_before in VALUED_TIERS else "info"
    if kind == "relationship_strain":
        return "critical" if cancel_requests > 0 else "warning"
    if kind == "price_flight":
        return "warning" if share_shift >= rules.price_flight_warning_shift else "info"
    raise ValueError(f"unknown alert kind {kind!r}")
