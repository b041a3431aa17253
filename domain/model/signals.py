"""The loyalty signal of one customer: score, tier, churn risk and know-me profile. Pure.

:func:`score_customer` is the whole model: components (:mod:`.components`), churn risk from
the learned model over BG/NBD (:mod:`.churn_learned`, :mod:`.churn`), tier rules (:mod:`.tiers`)
and the know-me profile (:mod:`.knowme`).
:func:`signal_to_dict` gives the datum of ``schemas/loyalty_signal.avsc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.model import churn
from domain.model.churn import BgNbdParams
from domain.model.churn_learned import ChurnRisk, LearnedChurnModel, churn_risk
from domain.model.components import (
    LOOKBACK_DAYS,
    Rhythm,
    compute_components,
    days_since_last_purchase,
    gap_variation,
    loyalty_score,
    rhythm_gap,
)
from domain.model.knowme import know_me, know_me_values
from domain.model.suggest import CoPurchaseTable, Suggestion, suggestions_to_dicts
from domain.model.tiers import TierInputs, assign_tier
from domain.relationship import DAY_MS, RelationshipState, window

MODEL_VERSION = "loyalty-model-1.1.0"
"""Recorded in every signal; bump it when weights, rules or the churn model change."""
DEFAULT_HORIZON_DAYS = 90
SERVICE_WINDOW_DAYS = 90


@dataclass(unsafe_hash=True)
class LoyaltySignal:
    """Everything the model says about one customer as of ``as_of`` (epoch ms, UTC)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    customer_id: str
    as_of: int
    model_version: str
    loyalty_score: float
    tier: str
    tier_reason: str
    components: dict[str, float]
    churn_risk: float
    horizon_days: int
    p_alive: float | None
    expected_purchases: float
    expected_next_purchase_at: int | None
    days_since_last_purchase: float | None
    purchase_gap_days: float
    purchase_gap_source: str
    purchases: int
    last_purchase_at: int | None
    last_purchase_categories: list[str] = field(default_factory=list)
    last_purchase_skus: list[str] = field(default_factory=list)
    last_purchase_channel: str | None = None
    last_purchase_location_id: str | None = None
    favourite_category: str | None = None
    preferred_channel: str | None = None
    open_issues: int = 0
    greeting_hint: str = ""
    params_source: str = "default"
    churn_model: str = "bgnbd"
    churn_drivers: list[dict[str, object]] = field(default_factory=list)
    suggested_categories: list[Suggestion] = field(default_factory=list)

    def __init__(self, customer_id: str, as_of: int, model_version: str, loyalty_score: float, tier: str, tier_reason: str,
                 components: dict[str, float], churn_risk: float, horizon_days: int, p_alive: float | None,
                 expected_purchases: float, expected_next_purchase_at: int | None, days_since_last_purchase: float | None,
                 purchase_gap_days: float, purchase_gap_source: str, purchases: int, last_purchase_at: int | None,
                 last_purchase_categories: list[str] | None = None, last_purchase_skus: list[str] | None = None,
                 last_purchase_channel: str | None = None, last_purchase_location_id: str | None = None,
                 favourite_category: str | None = None, preferred_channel: str | None = None, open_issues: int = 0,
                 greeting_hint: str = "", params_source: str = "default", churn_model: str = "bgnbd",
                 churn_drivers: list[dict[str, object]] | None = None,
                 suggested_categories: list[Suggestion] | None = None) -> None:
        self.customer_id = customer_id
        self.as_of = as_of
        self.model_version = model_version
        self.loyalty_score = loyalty_score
        self.tier = tier
        self.tier_reason = tier_reason
        self.components = components
        self.churn_risk = churn_risk
        self.horizon_days = horizon_days
        self.p_alive = p_alive
        self.expected_purchases = expected_purchases
        self.expected_next_purchase_at = expected_next_purchase_at
        self.days_since_last_purchase = days_since_last_purchase
        self.purchase_gap_days = purchase_gap_days
        self.purchase_gap_source = purchase_gap_source
        self.purchases = purchases
        self.last_purchase_at = last_purchase_at
        self.last_purchase_categories = [] if last_purchase_categories is None else last_purchase_categories
        self.last_purchase_skus = [] if last_purchase_skus is None else last_purchase_skus
        self.last_purchase_channel = last_purchase_channel
        self.last_purchase_location_id = last_purchase_location_id
        self.favourite_category = favourite_category
        self.preferred_channel = preferred_channel
        self.open_issues = open_issues
        self.greeting_hint = greeting_hint
        self.params_source = params_source
        self.churn_model = churn_model
        self.churn_drivers = [] if churn_drivers is None else churn_drivers
        self.suggested_categories = [] if suggested_categories is None else suggested_categories


@dataclass(slots=True, unsafe_hash=True)
class Assessment:
    """The model's judgement of a customer as of a time, without the know-me profile and the
    expected purchases: all that the end of a past day needs (:mod:`.days`)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    rhythm: Rhythm
    components: dict[str, float]
    score: float
    since_last: float | None
    summary: churn.Summary | None
    p_alive: float | None
    risk: ChurnRisk
    tier: str
    reason: str

    def __init__(self, rhythm: Rhythm, components: dict[str, float], score: float, since_last: float | None,
                 summary: churn.Summary | None, p_alive: float | None, risk: ChurnRisk, tier: str, reason: str) -> None:
        self.rhythm = rhythm
        self.components = components
        self.score = score
        self.since_last = since_last
        self.summary = summary
        self.p_alive = p_alive
        self.risk = risk
        self.tier = tier
        self.reason = reason

    @property
    def churn_risk(self) -> float:
        """The churn risk as the signal carries it: within [0, 1], six decimals."""
        return round(min(1.0, max(0.0, self.risk.risk)), 6)


def assess(state: RelationshipState, as_of: int, params: BgNbdParams, horizon_days: int = DEFAULT_HORIZON_DAYS,
           learned: LearnedChurnModel | None = None) -> Assessment:
    """Score, churn risk and tier of one customer as of ``as_of`` (see :func:`score_customer`)."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, not {horizon_days}")
    rhythm = rhythm_gap(state, params.population_gap_days)
    components = compute_components(state, as_of, rhythm)
    score = loyalty_score(components)
    since_last = days_since_last_purchase(state, as_of)
    summary = churn.summarise(state, as_of)
    p_alive = None if summary is None else churn.p_alive(params, summary)
    risk = churn_risk(state, as_of, params, horizon_days, learned)

    service = window(state, SERVICE_WINDOW_DAYS, as_of)
    first = state.first_purchase_at
    tier, reason = assign_tier(TierInputs(
        purchases=state.lifetime.purchases,
        days_since_first_purchase=None if first is None else max(0, as_of - first) / DAY_MS,
        days_since_last_purchase=since_last,
        gap_days=rhythm.gap_days,
        p_alive=p_alive,
        cancel_requests_90d=service.cancel_requests,
        complaints_90d=service.complaints,
        unresolved_calls_90d=service.unresolved_calls,
        score=score,
        components=components,
        calls_365d=window(state, LOOKBACK_DAYS, as_of).calls,  # memoised: the components' window
        gap_variation=gap_variation(state),
    ))
    return Assessment(rhythm, components, score, since_last, summary, p_alive, risk, tier, reason)


def score_customer(
    state: RelationshipState, as_of: int, params: BgNbdParams, horizon_days: int = DEFAULT_HORIZON_DAYS,
    learned: LearnedChurnModel | None = None, copurchase: CoPurchaseTable | None = None,
) -> LoyaltySignal:
    """Score one customer as of ``as_of`` (epoch ms); ``state`` must hold events up to then only.

    ``learned`` is the churn model fitted on the business's history; without it (or for a
    never-buyer, or a model of another horizon) the churn risk is BG/NBD's. ``copurchase`` is the
    population's co-purchase table the suggestions come from (none without it).
    """
    judged = assess(state, as_of, params, horizon_days, learned)
    if judged.summary is None:
        known_since = state.first_seen_at if state.first_seen_at is not None else as_of
        days_known = max(0, as_of - known_since) / DAY_MS
        expected = churn.prospect_expected_purchases(params, days_known, horizon_days)
    else:
        expected = churn.expected_purchases(params, judged.summary, horizon_days)
    profile = know_me(state, as_of, copurchase)
    last_at = profile.last_purchase_at
    rhythm, since_last, p_alive = judged.rhythm, judged.since_last, judged.p_alive
    return LoyaltySignal(
        customer_id=state.customer_id,
        as_of=as_of,
        model_version=MODEL_VERSION,
        loyalty_score=judged.score,
        tier=judged.tier,
        tier_reason=judged.reason,
        components=judged.components,
        churn_risk=judged.churn_risk,
        horizon_days=horizon_days,
        p_alive=None if p_alive is None else round(p_alive, 6),
        expected_purchases=round(expected, 6),
        expected_next_purchase_at=None if last_at is None else last_at + round(rhythm.gap_days * DAY_MS),
        days_since_last_purchase=None if since_last is None else round(since_last, 6),
        purchase_gap_days=round(rhythm.gap_days, 6),
        purchase_gap_source=rhythm.source,
        purchases=state.lifetime.purchases,
        **know_me_values(profile),
        params_source=params.source,
        churn_model=judged.risk.model,
        churn_drivers=[{"feature": name, "contribution": value} for name, value in judged.risk.drivers],
    )


SIGNAL_FIELDS = tuple(LoyaltySignal.__dataclass_fields__)


def signal_to_dict(signal: LoyaltySignal) -> dict[str, object]:
    """The JSON-able datum of ``schemas/loyalty_signal.avsc`` (same field names and order)."""
    data: dict[str, object] = {name: getattr(signal, name) for name in SIGNAL_FIELDS}
    data["components"] = dict(signal.components)
    data["last_purchase_categories"] = list(signal.last_purchase_categories)
    data["last_purchase_skus"] = list(signal.last_purchase_skus)
    data["churn_drivers"] = [dict(d) for d in signal.churn_drivers]
    data["suggested_categories"] = suggestions_to_dicts(signal.suggested_categories)
    return data
