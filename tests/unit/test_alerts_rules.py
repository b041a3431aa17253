"""The alert rules on scripted scenarios: each fires once, controls stay silent, episodes and
cooldowns hold, severities follow the documented rule; the record matches alert.avsc."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from domain.alerts import (
    DEFAULT_RULES,
    Alert,
    AlertContext,
    AlertFacts,
    AlertRules,
    AlertState,
    ComponentChange,
    alert_from_dict,
    alert_id,
    alert_state_from_dict,
    alert_state_to_dict,
    alert_to_dict,
    evaluate,
    quiet_due_at,
)
from domain.model import KNOW_ME_FIELDS, MODEL_VERSION, LoyaltySignal
from domain.relationship import DAY_MS
from schemas import Codec, load_schema

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
BASE = {"recency": 100.0, "frequency": 60.0, "monetary": 50.0, "breadth": 50.0,
        "relationship_quality": 50.0, "price_independence": 100.0, "recognition": 50.0}
CALM = AlertFacts(complaints=0, unresolved_calls=0, cancel_requests=0, sentiment_calls=0, avg_sentiment=None,
                  recent_purchases=5, recent_spend_minor=10_000, recent_discounted_spend_minor=0,
                  baseline_spend_minor=20_000, baseline_discounted_spend_minor=0)


def t(day: float) -> int:
    return T0 + round(day * DAY_MS)


def sig(day: float, score: float = 70.0, tier: str = "loyal", customer: str = "c1",
        components: dict[str, float] | None = None, bought_day: float | None = None,
        gap: float = 20.0) -> LoyaltySignal:
    """A hand-made signal; ``bought_day`` defaults to ``day`` (a purchase that day)."""
    at = t(day)
    last = t(day if bought_day is None else bought_day)
    return LoyaltySignal(
        customer_id=customer, as_of=at, model_version=MODEL_VERSION, loyalty_score=score, tier=tier,
        tier_reason=f"because {tier}", components=dict(components or BASE), churn_risk=0.25, horizon_days=90,
        p_alive=0.9, expected_purchases=3.0, expected_next_purchase_at=last + round(gap * DAY_MS),
        days_since_last_purchase=(at - last) / DAY_MS, purchase_gap_days=gap, purchase_gap_source="own",
        purchases=5, last_purchase_at=last, last_purchase_categories=["bags", "shoes"],
        last_purchase_skus=["sku-1"], last_purchase_channel="store", last_purchase_location_id="S01",
        favourite_category="shoes", preferred_channel="store", open_issues=1,
        greeting_hint="Welcome back! Last time you bought bags and shoes in store S01.",
    )


def run(steps: list[tuple[LoyaltySignal, AlertFacts]], rules: AlertRules = DEFAULT_RULES,
        state: AlertState | None = None) -> tuple[list[Alert], AlertState]:
    alerts: list[Alert] = []
    for signal, facts in steps:
        result = evaluate(signal, facts, state, rules)
        alerts += result.alerts
        state = result.state
    assert state is not None
    return alerts, state


def kinds_at(alerts: list[Alert]) -> list[tuple[str, int]]:
    return [(a.kind, a.raised_at) for a in alerts]


def test_defaults_are_the_documented_ones() -> None:
    r = AlertRules()
    assert (r.score_drop_points, r.score_peak_days, r.critical_drop_points) == (15.0, 30, 30.0)
    assert (r.downgrade_from_at_least, r.downgrade_to_at_most, r.critical_tier_steps) == ("loyal", "transactional", 2)
    assert (r.quiet_tolerance_min_days, r.quiet_tolerance_gap_share) == (3.0, 0.5)
    assert (r.strain_window_days, r.strain_min_complaints, r.strain_min_unresolved) == (30, 2, 2)
    assert (r.strain_sentiment_at_most, r.strain_min_sentiment_calls) == (-0.4, 2)
    assert (r.price_flight_recent_days, r.price_flight_baseline_days, r.price_flight_share_shift) == (90, 365, 0.4)
    assert (r.price_flight_min_recent_purchases, r.price_flight_warning_shift, r.cooldown_days) == (3, 0.6, 14.0)
    assert r.cooldown_ms == 14 * DAY_MS


@pytest.mark.parametrize("bad", [
    {"downgrade_from_at_least": "new"}, {"downgrade_to_at_most": "loyal"},
    {"price_flight_recent_days": 365}, {"strain_window_days": 400}, {"score_drop_points": 0},
])
def test_rules_refuse_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        AlertRules(**bad)


# ---------------------------------------------------------------------------------------------
# score_drop


def test_score_drop_fires_once_with_explanation_and_context() -> None:
    at_peak = {**BASE, "recency": 100.0}
    dropped = {**BASE, "recency": 40.0, "price_independence": 80.0, "recognition": 45.0, "breadth": 49.0}
    scores = [(0, 70.0, BASE), (5, 72.0, at_peak), (10, 60.0, BASE), (12, 56.0, dropped), (13, 50.0, dropped),
              (14, 71.0, BASE)]
    alerts, state = run([(sig(d, s, components=c), CALM) for d, s, c in scores])
    control, _ = run([(sig(d, s, customer="c2"), CALM) for d, s in [(0, 70.0), (5, 72.0), (10, 65.0), (12, 60.0),
                                                                       (13, 62.0), (14, 58.0)]])
    assert control == []
    assert len(alerts) == 1
    a = alerts[0]
    assert alert_to_dict(a) == {
        "alert_id": str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty-stream:alert"),
                                   f"c1|score_drop|{t(12)}")),
        "customer_id": "c1", "kind": "score_drop", "severity": "warning", "raised_at": t(12),
        "model_version": MODEL_VERSION,
        "summary": "loyalty score 56.00 is 16.00 points below its 30-day peak of 72.00",
        "before_score": 72.0, "after_score": 56.0, "before_tier": "loyal", "after_tier": "loyal",
        "tier_reason": "because loyal", "measure": "loyalty_score", "measure_before": 72.0, "measure_after": 56.0,
        "threshold": 15.0,
        "explanation": [
            {"component": "recency", "before": 100.0, "after": 40.0, "change": -60.0},
            {"component": "price_independence", "before": 100.0, "after": 80.0, "change": -20.0},
            {"component": "recognition", "before": 50.0, "after": 45.0, "change": -5.0},
        ],
        "context": {
            "last_purchase_at": t(12), "last_purchase_categories": ["bags", "shoes"],
            "last_purchase_channel": "store", "last_purchase_location_id": "S01", "favourite_category": "shoes",
            "preferred_channel": "store", "open_issues": 1,
            "greeting_hint": "Welcome back! Last time you bought bags and shoes in store S01.",
            "expected_next_purchase_at": t(32), "churn_risk": 0.25,
        },
        # the rules have no clock: the worker stamps these when it publishes (domain.alerts.stamp)
        "processed_at": None, "historical": False,
    }
    assert not state.episodes["score_drop"].active  # recovered at day 14


@pytest.mark.parametrize("peak_day, peak, later_day, later, fires", [
    (0, 80.0, 29.9, 60.0, True),  # the peak is still inside the trailing 30 days
    (0, 80.0, 30.0, 60.0, False),  # exactly 30 days later it has left the window
    (0, 80.0, 10, 65.0, True),  # a drop of exactly 15 points counts
    (0, 80.0, 10, 65.01, False),  # 14.99 does not
])
def test_score_drop_window_and_threshold(peak_day: float, peak: float, later_day: float, later: float,
                                         fires: bool) -> None:
    alerts, _ = run([(sig(peak_day, peak), CALM), (sig(later_day, later), CALM)])
    assert kinds_at(alerts) == ([("score_drop", t(later_day))] if fires else [])


@pytest.mark.parametrize("after, expected", [(50.0, "critical"), (50.01, "warning"), (65.0, "warning")])
def test_score_drop_severity(after: float, expected: str) -> None:
    alerts, _ = run([(sig(0, 80.0), CALM), (sig(1, after), CALM)])
    assert [a.severity for a in alerts] == [expected]


def test_score_drop_episode_and_cooldown() -> None:
    scores = [(0, 80.0), (1, 60.0), (2, 58.0), (3, 79.0), (5, 60.0), (6, 79.0), (15, 60.0)]
    alerts, _ = run([(sig(d, s), CALM) for d, s in scores])
    # day 1 fires; day 2 is the same episode; day 5 is a new episode only 4 days after the last
    # alert (cooldown 14 days): silent; day 15 is 14 days after it: fires
    assert kinds_at(alerts) == [("score_drop", t(1)), ("score_drop", t(15))]


def test_score_peaks_stay_compact() -> None:
    state = None
    for i in range(400):  # falling scores, four a day, for 100 days
        state = evaluate(sig(i / 4, 90.0 - i * 0.1, bought_day=i / 4), CALM, state).state
    assert state is not None
    # newest at day 99.75: the window is (69.75, 99.75], one entry (the day's first, highest
    # score) for each of days 70..99
    assert [p.at for p in state.peaks] == [t(d) for d in range(70, 100)]
    assert state.peaks[0].score == pytest.approx(62.0)  # 90 - 280 x 0.1


# ---------------------------------------------------------------------------------------------
# tier_downgrade


@pytest.mark.parametrize("before, after, expected", [
    ("loyal", "transactional", "warning"),
    ("loyal", "at_risk", "critical"),
    ("loyal", "lapsed", "critical"),
    ("fiercely_loyal", "transactional", "critical"),
    ("fiercely_loyal", "loyal", None),
    ("transactional", "lapsed", None),
    ("new", "at_risk", None),
    ("prospect", "lapsed", None),
    ("loyal", "loyal", None),
    # captive ranks with transactional (rules.SHARED_RANKS): one place below loyal
    ("loyal", "captive", "warning"),
    ("fiercely_loyal", "captive", "critical"),
    ("captive", "at_risk", None),
    ("transactional", "captive", None),
])
def test_tier_downgrade(before: str, after: str, expected: str | None) -> None:
    alerts, _ = run([(sig(0, tier=before), CALM), (sig(1, tier=after), CALM)])
    assert [a.severity for a in alerts] == ([expected] if expected else [])


def test_tier_downgrade_record() -> None:
    alerts, _ = run([(sig(0, tier="loyal"), CALM), (sig(1, tier="at_risk"), CALM)])
    (a,) = alerts
    assert (a.kind, a.before_tier, a.after_tier, a.measure, a.measure_before, a.measure_after, a.threshold) == (
        "tier_downgrade", "loyal", "at_risk", "tier_rank", 3.0, 1.0, 2.0)
    assert a.summary == "tier fell from loyal to at_risk (because at_risk)"


def test_a_captive_tier_has_the_rank_of_transactional() -> None:
    alerts, _ = run([(sig(0, tier="fiercely_loyal"), CALM), (sig(1, tier="captive"), CALM)])
    (a,) = alerts
    assert (a.before_tier, a.after_tier, a.measure_before, a.measure_after, a.threshold, a.severity) == (
        "fiercely_loyal", "captive", 4.0, 2.0, 2.0, "critical")


def test_a_first_signal_raises_no_downgrade() -> None:
    alerts, _ = run([(sig(0, tier="at_risk"), CALM)])
    assert alerts == []


def test_tier_downgrade_episode_and_cooldown() -> None:
    tiers = [(0, "loyal"), (1, "at_risk"), (2, "transactional"), (3, "loyal"), (5, "at_risk"),
             (6, "transactional"), (7, "loyal"), (15, "at_risk")]
    alerts, _ = run([(sig(d, tier=tier), CALM) for d, tier in tiers])
    assert kinds_at(alerts) == [("tier_downgrade", t(1)), ("tier_downgrade", t(15))]


# ---------------------------------------------------------------------------------------------
# gone_quiet


def test_gone_quiet_fires_at_due_time_only_without_a_purchase() -> None:
    # bought on day 0, usual gap 20 days: expected day 20, tolerance max(3, 10) = 10: due day 30
    first = evaluate(sig(0, gap=20.0), CALM, None)
    assert first.due_at == t(30) and first.alerts == []
    early = evaluate(sig(29.99, bought_day=0), CALM, first.state)
    assert early.alerts == [] and early.due_at == t(30)
    due = evaluate(sig(30, bought_day=0), CALM, early.state)
    (a,) = due.alerts
    assert (a.kind, a.severity, a.raised_at, a.measure, a.measure_before, a.measure_after, a.threshold) == (
        "gone_quiet", "warning", t(30), "days_since_last_purchase", 20.0, 30.0, 30.0)
    assert a.summary == "no purchase for 30.0 days; usually every 20.0 days (alert after 30.0)"
    assert due.due_at is None  # nothing scheduled until the next purchase
    later = evaluate(sig(35, bought_day=0), CALM, due.state)  # e.g. a call: still quiet, same episode
    assert later.alerts == [] and later.due_at is None
    back = evaluate(sig(40), CALM, later.state)  # a purchase ends the episode and schedules anew
    assert back.alerts == [] and back.due_at == t(70) and not back.state.episodes["gone_quiet"].active
    again = evaluate(sig(70, bought_day=40), CALM, back.state)
    assert kinds_at(again.alerts) == [("gone_quiet", t(70))]


def test_gone_quiet_stays_silent_for_a_customer_who_bought_since() -> None:
    state = evaluate(sig(0, customer="c2"), CALM, None).state
    bought = evaluate(sig(25, customer="c2", gap=25.0), CALM, state)
    assert bought.due_at == t(25 + 25 + 12.5)
    stale = evaluate(sig(30, customer="c2", bought_day=25, gap=25.0), CALM, bought.state)  # the old due time
    assert stale.alerts == [] and stale.due_at == t(62.5)


@pytest.mark.parametrize("tier, expected", [("fiercely_loyal", "warning"), ("loyal", "warning"),
                                            ("transactional", "info"), ("new", "info")])
def test_gone_quiet_severity_and_first_sight_of_an_overdue_customer(tier: str, expected: str) -> None:
    result = evaluate(sig(40, tier=tier, bought_day=0), CALM, None)
    assert [(a.kind, a.severity) for a in result.alerts] == [("gone_quiet", expected)]


def test_quiet_tolerance() -> None:
    assert quiet_due_at(sig(0, gap=7.0)) == t(7 + 3.5)  # half the gap beats 3 days
    assert quiet_due_at(sig(0, gap=7.0), AlertRules(quiet_tolerance_min_days=5.0)) == t(12)
    assert quiet_due_at(replace(sig(0), expected_next_purchase_at=None)) is None


# ---------------------------------------------------------------------------------------------
# relationship_strain


def calls(complaints: int = 0, unresolved: int = 0, cancels: int = 0, sentiment_calls: int = 0,
          sentiment: float | None = None) -> AlertFacts:
    return replace(CALM, complaints=complaints, unresolved_calls=unresolved, cancel_requests=cancels,
                   sentiment_calls=sentiment_calls, avg_sentiment=sentiment)


@pytest.mark.parametrize("facts, expected", [
    (calls(complaints=2), ("complaints", 2.0, 2.0, "warning", "2 complaints")),
    (calls(complaints=1, unresolved=1, sentiment_calls=2, sentiment=-0.3), None),
    (calls(unresolved=2), ("unresolved_calls", 2.0, 2.0, "warning", "2 unresolved calls")),
    (calls(sentiment_calls=2, sentiment=-0.4), ("avg_sentiment", -0.4, -0.4, "warning",
                                                "mean sentiment -0.40 over 2 calls")),
    (calls(sentiment_calls=1, sentiment=-0.9), None),
    (calls(sentiment_calls=3, sentiment=-0.39), None),
    (calls(cancels=1), ("cancel_requests", 1.0, 1.0, "critical", "1 cancel request(s)")),
    (calls(2, 2, 1, 2, -0.5), ("cancel_requests", 1.0, 1.0, "critical", "1 cancel request(s), 2 complaints, "
                               "2 unresolved calls, mean sentiment -0.50 over 2 calls")),
])
def test_relationship_strain(facts: AlertFacts, expected: tuple | None) -> None:
    alerts, _ = run([(sig(0), CALM), (sig(1), facts)])
    if expected is None:
        assert alerts == []
        return
    (a,) = alerts
    measure, value, threshold, severity, why = expected
    assert (a.kind, a.measure, a.measure_before, a.measure_after, a.threshold, a.severity) == (
        "relationship_strain", measure, None, value, threshold, severity)
    assert a.summary == f"relationship strain in the last 30 days: {why}"


def test_relationship_strain_is_one_alert_per_episode() -> None:
    steps = [(0, CALM), (5, calls(complaints=1)), (10, calls(complaints=2)), (12, calls(complaints=3)),
             (45, CALM), (50, calls(complaints=2))]
    alerts, _ = run([(sig(d), f) for d, f in steps])
    control, _ = run([(sig(d, customer="c2"), calls(complaints=1, unresolved=1)) for d in (0, 5, 10, 12, 45, 50)])
    assert kinds_at(alerts) == [("relationship_strain", t(10)), ("relationship_strain", t(50))]
    assert control == []


# ---------------------------------------------------------------------------------------------
# price_flight


def spend(recent_n: int, recent: int, recent_disc: int, base: int, base_disc: int) -> AlertFacts:
    return replace(CALM, recent_purchases=recent_n, recent_spend_minor=recent,
                   recent_discounted_spend_minor=recent_disc, baseline_spend_minor=base,
                   baseline_discounted_spend_minor=base_disc)


@pytest.mark.parametrize("facts, expected", [
    (spend(3, 10_000, 5_000, 20_000, 2_000), ("info", 0.1, 0.5)),  # shift exactly 0.4
    (spend(3, 10_000, 7_000, 20_000, 0), ("warning", 0.0, 0.7)),
    (spend(3, 10_000, 4_900, 20_000, 2_000), None),  # shift 0.39
    (spend(2, 10_000, 9_000, 20_000, 0), None),  # too few recent purchases
    (spend(5, 10_000, 9_000, 0, 0), None),  # no history before: nothing to shift from
])
def test_price_flight(facts: AlertFacts, expected: tuple | None) -> None:
    alerts, _ = run([(sig(0), CALM), (sig(1), facts)])
    if expected is None:
        assert alerts == []
        return
    (a,) = alerts
    sev, before, after = expected
    assert (a.kind, a.severity, a.measure, a.measure_before, a.measure_after, a.threshold) == (
        "price_flight", sev, "discounted_share_of_spend", before, after, 0.4)


def test_price_flight_is_one_alert_per_episode() -> None:
    fled = spend(3, 10_000, 6_000, 20_000, 0)
    steps = [(0, CALM), (10, fled), (20, fled), (30, CALM), (40, fled)]
    alerts, _ = run([(sig(d), f) for d, f in steps])
    assert kinds_at(alerts) == [("price_flight", t(10)), ("price_flight", t(40))]


# ---------------------------------------------------------------------------------------------
# ids, state and the record


def test_alert_id_is_deterministic() -> None:
    # pinned: an id must never change, or receivers would see replays as new alerts
    assert alert_id("c1", "score_drop", 1_704_067_200_000) == "424e087b-e443-54d2-b279-ae4a585b1c67"
    assert alert_id("c1", "score_drop", 1) != alert_id("c1", "tier_downgrade", 1) != alert_id("c2", "score_drop", 1)
    first, _ = run([(sig(0, 80.0), CALM), (sig(1, 60.0), CALM)])
    replayed, _ = run([(sig(0, 80.0), CALM), (sig(1, 60.0), CALM)])
    assert [a.alert_id for a in first] == [a.alert_id for a in replayed] == [alert_id("c1", "score_drop", t(1))]


def test_evaluate_does_not_change_its_input_state() -> None:
    state = evaluate(sig(0, 80.0), CALM, None).state
    before = alert_state_to_dict(state)
    evaluate(sig(1, 60.0, tier="at_risk"), calls(cancels=1), state)
    assert alert_state_to_dict(state) == before


def test_evaluate_in_place_becomes_what_the_copy_would_be() -> None:
    steps = [(sig(0, 80.0), CALM), (sig(1, 60.0, tier="at_risk"), calls(cancels=1)), (sig(40, 75.0), CALM),
             (sig(41, 50.0), spend(3, 9000, 8000, 20000, 1000))]
    copied: AlertState | None = None
    in_place: AlertState | None = None
    raised = 0
    for signal, facts in steps:
        expected = evaluate(signal, facts, copied)
        got = evaluate(signal, facts, in_place, in_place=True)
        if in_place is not None:
            assert got.state is in_place  # the very object, changed
        assert alert_state_to_dict(got.state) == alert_state_to_dict(expected.state)
        assert got.alerts == expected.alerts and got.due_at == expected.due_at
        copied, in_place = expected.state, got.state
        raised += len(got.alerts)
    assert raised >= 2  # the steps raise alerts: what is compared is not only the quiet path


def test_evaluate_refuses_another_customers_state() -> None:
    state = evaluate(sig(0), CALM, None).state
    with pytest.raises(ValueError):
        evaluate(sig(1, customer="c2"), CALM, state)


def test_alert_state_round_trips_through_json() -> None:
    _, state = run([(sig(0, 80.0), CALM), (sig(1, 60.0, tier="at_risk"), calls(cancels=1)), (sig(2, 61.0), CALM)])
    data = alert_state_to_dict(state)
    again = alert_state_from_dict(json.loads(json.dumps(data)))
    assert again == state
    assert sorted(data["episodes"]) == ["gone_quiet", "price_flight", "relationship_strain", "score_drop",
                                        "tier_downgrade"]
    assert data["quiet_due_at"] == t(2 + 30) and data["quiet_anchor"] == t(2)


def _full_alert() -> Alert:
    alerts, _ = run([(sig(0, 80.0), CALM), (sig(1, 60.0, components={**BASE, "recency": 10.0}), CALM)])
    return alerts[0]


def test_alert_datum_matches_the_schema_field_for_field() -> None:
    schema = load_schema("alert")
    datum = alert_to_dict(_full_alert())
    assert list(datum) == [f["name"] for f in schema["fields"]]
    context = next(f for f in schema["fields"] if f["name"] == "context")["type"][1]
    assert list(datum["context"]) == [f["name"] for f in context["fields"]]  # type: ignore[call-overload]
    change = next(f for f in schema["fields"] if f["name"] == "explanation")["type"]["items"]
    assert [f["name"] for f in change["fields"]] == list(ComponentChange.__dataclass_fields__)
    assert schema["namespace"] == "loyalty_stream.pipeline"

    def all_fields(record: dict) -> list[dict]:
        out = list(record["fields"])
        for f in record["fields"]:
            for part in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                if isinstance(part, dict) and part.get("type") == "array" and isinstance(part["items"], dict):
                    out += all_fields(part["items"])
                elif isinstance(part, dict) and part.get("type") == "record":
                    out += all_fields(part)
        return out

    assert all(f.get("doc") for f in all_fields(schema))


@pytest.mark.parametrize("with_context", [True, False])
def test_alert_encodes_and_decodes(with_context: bool) -> None:
    alert = _full_alert()
    if not with_context:
        alert = replace(alert, context=None, explanation=[])
    datum = alert_to_dict(alert)
    codec = Codec("alert")
    decoded = codec.decode(codec.encode(datum))
    assert decoded == datum
    assert alert_from_dict(decoded) == alert
    assert json.loads(json.dumps(datum)) == datum


def test_alert_context_fields_mirror_the_signal() -> None:
    # the know-me profile but the SKUs and the suggestions, then when the next purchase was due
    # and the churn risk
    know_me_but_skus = set(KNOW_ME_FIELDS) - {"last_purchase_skus", "suggested_categories"}
    assert set(AlertContext.__dataclass_fields__) == know_me_but_skus | {"expected_next_purchase_at", "churn_risk"}


def test_gone_quiet_after_a_late_purchase_counts_from_that_purchase() -> None:
    first = evaluate(sig(0), CALM, None)  # due day 30
    # a purchase of day 10 arrives late, seen with the newest event of day 50: still quiet since
    # day 10 + 20 + 10 = day 40, so it fires at once
    late = evaluate(sig(50, bought_day=10), CALM, first.state)
    assert kinds_at(late.alerts) == [("gone_quiet", t(50))] and late.due_at is None
    # while the episode lasts, an older purchase arriving late ends it (a purchase since it
    # fired) and schedules from it; the next evaluation is already past that due time
    older = evaluate(sig(51, bought_day=12), CALM, late.state)
    assert older.alerts == [] and older.due_at == t(42)
    held = evaluate(sig(52, bought_day=12), CALM, older.state)
    assert held.alerts == [] and held.due_at is None  # 2 days after the last alert: cooldown
    assert held.state.episodes["gone_quiet"].active
