"""Evaluating the alert rules for one customer. Pure: time is the signal's ``as_of``.

:func:`evaluate` takes the customer's new :class:`LoyaltySignal`, the :class:`AlertFacts` read
from their relationship state as of the same time, and their :class:`AlertState`; it returns the
new state, the alerts to raise and the gone-quiet due time to (re)schedule. The input state is
not changed, so a caller that fails before storing the new state can simply retry.

The same function serves both paths of the worker:

* per changed customer, with the signal scored as of their newest event;
* from the gone-quiet timer, with the signal scored as of the due time (or the newest event, if
  later). The gone-quiet rule fires when the signal's time has reached the due time computed from
  the customer's newest purchase: a purchase since scheduling moves the due time, so a timer that
  pops for a customer who has bought since finds nothing due. The episode ends with the next
  purchase (a newer ``last_purchase_at`` than the one remembered in the state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.alerts.record import Alert, AlertContext, alert_id, top_changes
from domain.alerts.rules import DEFAULT_RULES, AlertRules, severity, tier_rank
from domain.alerts.state import AlertState
from domain.model.knowme import know_me_values
from domain.model.signals import LoyaltySignal
from domain.relationship import DAY_MS, RelationshipState, window


@dataclass(slots=True, unsafe_hash=True)
class AlertFacts:
    """The relationship facts the strain and price-flight rules read (windows end at ``as_of``)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    complaints: int  # in the strain window
    unresolved_calls: int
    cancel_requests: int
    sentiment_calls: int
    avg_sentiment: float | None
    recent_purchases: int  # in the price-flight recent window
    recent_spend_minor: int
    recent_discounted_spend_minor: int
    baseline_spend_minor: int  # the baseline window minus the recent one
    baseline_discounted_spend_minor: int

    def __init__(self, complaints: int, unresolved_calls: int, cancel_requests: int, sentiment_calls: int,
                 avg_sentiment: float | None, recent_purchases: int, recent_spend_minor: int,
                 recent_discounted_spend_minor: int, baseline_spend_minor: int, baseline_discounted_spend_minor: int) -> None:
        self.complaints = complaints
        self.unresolved_calls = unresolved_calls
        self.cancel_requests = cancel_requests
        self.sentiment_calls = sentiment_calls
        self.avg_sentiment = avg_sentiment
        self.recent_purchases = recent_purchases
        self.recent_spend_minor = recent_spend_minor
        self.recent_discounted_spend_minor = recent_discounted_spend_minor
        self.baseline_spend_minor = baseline_spend_minor
        self.baseline_discounted_spend_minor = baseline_discounted_spend_minor

    @property
    def recent_discounted_share(self) -> float | None:
        return _share(self.recent_discounted_spend_minor, self.recent_spend_minor)

    @property
    def baseline_discounted_share(self) -> float | None:
        return _share(self.baseline_discounted_spend_minor, self.baseline_spend_minor)


def _share(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, 6)


def alert_facts(state: RelationshipState, as_of: int, rules: AlertRules = DEFAULT_RULES) -> AlertFacts:
    """Read the facts from the state's day windows as of ``as_of`` (use the signal's ``as_of``)."""
    strain = window(state, rules.strain_window_days, as_of)
    recent = window(state, rules.price_flight_recent_days, as_of)
    whole = window(state, rules.price_flight_baseline_days, as_of)
    return AlertFacts(
        complaints=strain.complaints,
        unresolved_calls=strain.unresolved_calls,
        cancel_requests=strain.cancel_requests,
        sentiment_calls=strain.sentiment_n,
        avg_sentiment=(None if strain.sentiment_n == 0
                       else round(strain.sentiment_milli_sum / strain.sentiment_n / 1000, 6)),
        recent_purchases=recent.purchases,
        recent_spend_minor=recent.spend_minor,
        recent_discounted_spend_minor=recent.discounted_spend_minor,
        baseline_spend_minor=whole.spend_minor - recent.spend_minor,
        baseline_discounted_spend_minor=whole.discounted_spend_minor - recent.discounted_spend_minor,
    )


@dataclass(unsafe_hash=True)
class Evaluation:
    """What :func:`evaluate` decided.

    ``due_at``: the gone-quiet due time to schedule for this customer (epoch ms, event time), or
    None to cancel any schedule. It is also in ``state.quiet_due_at``.
    """

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    state: AlertState
    alerts: list[Alert] = field(default_factory=list)
    due_at: int | None = None

    def __init__(self, state: AlertState, alerts: list[Alert] | None = None, due_at: int | None = None) -> None:
        self.state = state
        self.alerts = [] if alerts is None else alerts
        self.due_at = due_at


def quiet_due_at(signal: LoyaltySignal, rules: AlertRules = DEFAULT_RULES) -> int | None:
    """Expected next purchase plus the tolerance; None when the customer never bought."""
    if signal.expected_next_purchase_at is None:
        return None
    return signal.expected_next_purchase_at + round(rules.quiet_tolerance_days(signal.purchase_gap_days) * DAY_MS)


def evaluate(
    signal: LoyaltySignal, facts: AlertFacts, state: AlertState | None, rules: AlertRules = DEFAULT_RULES,
    in_place: bool = False,
) -> Evaluation:
    """Apply every rule to the customer's new signal; see the module docstring.

    ``state`` is left as it was and the new state is a copy, unless ``in_place``: then ``state``
    itself becomes the new state (for a caller that replaces it anyway: the copy was a tenth of
    the state worker's alerting cost)."""
    if state is not None and state.customer_id != signal.customer_id:
        raise ValueError(f"alert state of {state.customer_id} given for {signal.customer_id}")
    st = AlertState(signal.customer_id) if state is None else state if in_place else state.copy()
    at = signal.as_of
    alerts: list[Alert] = []
    before_score, before_tier, before_components = st.score, st.tier, dict(st.components)

    def raise_alert(kind: str, sev: str, summary: str, measure: str, m_before: float | None, m_after: float,
                    threshold: float, score_before: float | None = before_score,
                    components_before: dict[str, float] = before_components) -> None:
        alerts.append(Alert(
            alert_id=alert_id(signal.customer_id, kind, at), customer_id=signal.customer_id, kind=kind,
            severity=sev, raised_at=at, model_version=signal.model_version, summary=summary,
            before_score=score_before, after_score=signal.loyalty_score, before_tier=before_tier,
            after_tier=signal.tier, tier_reason=signal.tier_reason, measure=measure, measure_before=m_before,
            measure_after=m_after, threshold=threshold,
            explanation=top_changes(components_before, signal.components), context=_context(signal),
        ))

    cooldown = rules.cooldown_ms

    # score_drop: against the trailing peak (which includes this score)
    peak = st.record_score(at, signal.loyalty_score, signal.components, rules.score_peak_ms)
    drop = round(peak.score - signal.loyalty_score, 2)
    dropped = drop >= rules.score_drop_points
    if st.episode("score_drop").step(dropped, not dropped, at, cooldown):
        raise_alert("score_drop", severity("score_drop", rules, drop=drop),
                    f"loyalty score {signal.loyalty_score:.2f} is {drop:.2f} points below its "
                    f"{rules.score_peak_days}-day peak of {peak.score:.2f}",
                    "loyalty_score", peak.score, signal.loyalty_score, rules.score_drop_points,
                    score_before=peak.score, components_before=peak.components)

    # tier_downgrade: a transition from a valued tier to a low one
    downgraded = rules.is_downgrade(before_tier, signal.tier)
    if st.episode("tier_downgrade").step(downgraded, rules.is_upgraded_back(signal.tier), at, cooldown):
        steps = tier_rank(before_tier) - tier_rank(signal.tier)  # type: ignore[operator]
        raise_alert("tier_downgrade", severity("tier_downgrade", rules, tier_steps=steps),
                    f"tier fell from {before_tier} to {signal.tier} ({signal.tier_reason})",
                    "tier_rank", float(tier_rank(before_tier)), float(tier_rank(signal.tier)),  # type: ignore[arg-type]
                    float(tier_rank(rules.downgrade_to_at_most)))  # type: ignore[arg-type]

    _gone_quiet(signal, st, rules, raise_alert)

    # relationship_strain
    strain = _strain(facts, rules)
    if st.episode("relationship_strain").step(strain is not None, strain is None, at, cooldown):
        assert strain is not None
        measure, value, threshold, why = strain
        sev = severity("relationship_strain", rules, cancel_requests=facts.cancel_requests)
        raise_alert("relationship_strain", sev,
                    f"relationship strain in the last {rules.strain_window_days} days: {why}",
                    measure, None, value, threshold)

    # price_flight
    shift = _price_shift(facts, rules)
    fled = shift is not None and shift >= rules.price_flight_share_shift
    if st.episode("price_flight").step(fled, not fled, at, cooldown):
        assert shift is not None and facts.baseline_discounted_share is not None
        recent_share = facts.recent_discounted_share or 0.0
        raise_alert("price_flight", severity("price_flight", rules, share_shift=shift),
                    f"discounted share of spend rose from {facts.baseline_discounted_share:.0%} to "
                    f"{recent_share:.0%} in the last {rules.price_flight_recent_days} days",
                    "discounted_share_of_spend", facts.baseline_discounted_share, recent_share,
                    rules.price_flight_share_shift)

    st.as_of = at if st.as_of is None else max(st.as_of, at)
    st.score, st.tier, st.components = signal.loyalty_score, signal.tier, dict(signal.components)
    return Evaluation(st, alerts, st.quiet_due_at)


def _gone_quiet(signal: LoyaltySignal, st: AlertState, rules: AlertRules, raise_alert) -> None:  # type: ignore[no-untyped-def]
    at = signal.as_of
    episode = st.episode("gone_quiet")
    purchased_since = signal.last_purchase_at != st.quiet_anchor
    if purchased_since:
        st.quiet_anchor = signal.last_purchase_at
    # The due time is computed from the newest purchase, so "time has reached it" already means
    # "no purchase since it was scheduled": a purchase would have moved it. (A customer first
    # seen when already overdue, e.g. right after deployment, counts at once.)
    due = quiet_due_at(signal, rules)
    quiet = due is not None and at >= due
    if episode.step(quiet, purchased_since, at, rules.cooldown_ms):
        assert due is not None and signal.days_since_last_purchase is not None
        tolerance = rules.quiet_tolerance_days(signal.purchase_gap_days)
        raise_alert("gone_quiet", severity("gone_quiet", rules, tier_before=st.tier or signal.tier),
                    f"no purchase for {signal.days_since_last_purchase:.1f} days; usually every "
                    f"{signal.purchase_gap_days:.1f} days (alert after {signal.purchase_gap_days + tolerance:.1f})",
                    "days_since_last_purchase", signal.purchase_gap_days, signal.days_since_last_purchase,
                    round(signal.purchase_gap_days + tolerance, 6))
    # while an episode lasts (fired or held back by the cooldown) nothing is scheduled: the next
    # schedule starts from the next purchase
    st.quiet_due_at = None if episode.active else due


def _strain(f: AlertFacts, rules: AlertRules) -> tuple[str, float, float, str] | None:
    """(measure, value, threshold, reason) of the strongest strain signal, or None."""
    reasons = []
    if f.cancel_requests > 0:
        reasons.append(("cancel_requests", float(f.cancel_requests), 1.0, f"{f.cancel_requests} cancel request(s)"))
    if f.complaints >= rules.strain_min_complaints:
        reasons.append(("complaints", float(f.complaints), float(rules.strain_min_complaints),
                        f"{f.complaints} complaints"))
    if f.unresolved_calls >= rules.strain_min_unresolved:
        reasons.append(("unresolved_calls", float(f.unresolved_calls), float(rules.strain_min_unresolved),
                        f"{f.unresolved_calls} unresolved calls"))
    if (f.avg_sentiment is not None and f.sentiment_calls >= rules.strain_min_sentiment_calls
            and f.avg_sentiment <= rules.strain_sentiment_at_most):
        reasons.append(("avg_sentiment", f.avg_sentiment, rules.strain_sentiment_at_most,
                        f"mean sentiment {f.avg_sentiment:.2f} over {f.sentiment_calls} calls"))
    if not reasons:
        return None
    measure, value, threshold, _ = reasons[0]
    return measure, value, threshold, ", ".join(r[3] for r in reasons)


def _price_shift(f: AlertFacts, rules: AlertRules) -> float | None:
    """Recent minus baseline discounted share of spend; None when the rule cannot judge."""
    recent, baseline = f.recent_discounted_share, f.baseline_discounted_share
    if recent is None or baseline is None or f.recent_purchases < rules.price_flight_min_recent_purchases:
        return None
    return round(recent - baseline, 6)


def _context(signal: LoyaltySignal) -> AlertContext:
    shared = know_me_values(signal)
    del shared["last_purchase_skus"]  # an alert names categories, not SKUs (alert.avsc)
    del shared["suggested_categories"]  # a drop in loyalty is no occasion to sell (alert.avsc)
    shared["last_purchase_categories"] = list(signal.last_purchase_categories)
    return AlertContext(
        **shared,
        expected_next_purchase_at=signal.expected_next_purchase_at,
        churn_risk=signal.churn_risk,
    )
