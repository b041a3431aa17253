"""The learned churn risk: the logistic fit, the features, the fallback, the drivers, and one risk
for one history whichever way it is computed (worker, replay, backtest)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from domain.model import churn, score_customer
from domain.model.backtest import compare_churn
from domain.model.churn import BgNbdParams
from domain.model.churn_learned import (
    FEATURES,
    MIN_TRAIN_BUYERS,
    MIN_TRAIN_CLASS,
    LearnedChurnModel,
    churn_risk,
    contributions,
    features,
    fit_logistic,
    fit_model,
    fitted_features,
)
from domain.model.churn_training import train_churn_model
from domain.model.replay import run_replay
from domain.records import CallEvent, Event, PurchaseEvent, VisitEvent
from domain.relationship import DAY_MS, RelationshipState, apply_event, purchase_days
from ops.simulate.replay import write_replay_file

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
P = BgNbdParams(r=2.0, alpha=10.0, a=1.0, b=3.0, population_gap_days=30.0)


def buy(eid: str, at: int, amount: int, discount: int = 0, customer: str = "c1", is_return: bool = False) -> PurchaseEvent:
    return PurchaseEvent(eid, customer, at, "store", f"o-{eid}", amount, "EUR", discount_minor=discount,
                         is_return=is_return)


def state_of(*events: Event) -> RelationshipState:
    state = RelationshipState(events[0].customer_id)
    for event in events:
        apply_event(state, event, 100_000 * DAY_MS)
    return state


# ---------------------------------------------------------------------------------------------
# The fit.


def test_fit_logistic_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    X = rng.normal(size=(n, 3))
    true_coef, true_intercept = np.array([1.0, -2.0, 0.5]), -0.5
    p = 1.0 / (1.0 + np.exp(-(true_intercept + X @ true_coef)))
    y = (rng.random(n) < p).astype(float)
    coef, intercept = fit_logistic(X, y, l2=1.0)
    # Standard error of a coefficient ~ 1 / sqrt(n * Var(x) * E[p(1-p)]); with E[p(1-p)] ~ 0.13 here,
    # 1 / sqrt(20000 * 0.13) = 0.020, so 0.08 is four standard errors. The ridge bias, ~ l2 * beta /
    # (n * 0.13), is below 0.001.
    assert coef == pytest.approx(true_coef, abs=0.08)
    assert intercept == pytest.approx(true_intercept, abs=0.08)
    # the optimum: the penalised score (gradient) is zero there
    A = np.hstack([np.ones((n, 1)), X])
    beta = np.concatenate([[intercept], coef])
    fitted = 1.0 / (1.0 + np.exp(-(A @ beta)))
    gradient = A.T @ (y - fitted) - np.concatenate([[0.0], 1.0 * coef])
    assert np.max(np.abs(gradient)) < 1e-6


def test_fit_model_standardises_and_refuses_too_little_history() -> None:
    rng = np.random.default_rng(5)
    rows = [[float(v) for v in rng.normal(size=len(FEATURES))] for _ in range(MIN_TRAIN_BUYERS)]
    for i, row in enumerate(rows):
        row[FEATURES.index("tenure")] = math.log1p(i)  # up to 199 days: spans the 90-day horizon
    labels = [i % 3 == 0 for i in range(MIN_TRAIN_BUYERS)]
    model = fit_model(rows, labels, 90, trained_cutoff=T0)
    assert model is not None and model.buyers == MIN_TRAIN_BUYERS and model.horizon_days == 90
    assert model.base_rate == round(67 / 200, 6)  # i % 3 == 0 for 67 of 0..199
    assert model.means == pytest.approx(tuple(np.mean(rows, axis=0)), abs=1e-9)
    assert LearnedChurnModel.from_dict(json.loads(json.dumps(model.as_dict()))) == model
    assert fit_model(rows[:-1], labels[:-1], 90) is None  # one buyer too few
    few_churned = [i < MIN_TRAIN_CLASS - 1 for i in range(MIN_TRAIN_BUYERS)]
    assert fit_model(rows, few_churned, 90) is None  # 19 churned: one class too small


def test_tenure_is_left_out_when_the_training_tenures_do_not_span_one_horizon() -> None:
    """Every buyer is one horizon older when the model scores than when it was trained: a tenure
    slope learned on tenures shorter than that would be applied beyond them all."""
    rng = np.random.default_rng(7)
    rows = [[float(v) for v in rng.normal(size=len(FEATURES))] for _ in range(MIN_TRAIN_BUYERS)]
    labels = [i % 2 == 0 for i in range(MIN_TRAIN_BUYERS)]
    tenure = FEATURES.index("tenure")
    for i, row in enumerate(rows):
        row[tenure] = math.log1p(i % 90)  # tenures 0..89 days: the oldest is one day short of 90
    without = tuple(name for name in FEATURES if name != "tenure")
    assert fitted_features(np.asarray(rows), 90) == without
    assert fitted_features(np.asarray(rows), 89) == FEATURES  # 89 days span an 89-day horizon
    short = fit_model(rows, labels, 90)
    assert short is not None and short.features == without and len(short.coefficients) == len(FEATURES) - 1
    rows[0][tenure] = math.log1p(90)  # one buyer 90 days old: the tenures now span the horizon
    kept = fit_model(rows, labels, 90)
    assert kept is not None and kept.features == FEATURES
    assert LearnedChurnModel.from_dict(json.loads(json.dumps(short.as_dict()))) == short


# ---------------------------------------------------------------------------------------------
# Features.


def test_purchase_days_counts_distinct_days_not_purchases() -> None:
    state = state_of(buy("a", T0 + 9 * HOUR, 100), buy("b", T0 + 15 * HOUR, 100), buy("c", T0 + 20 * HOUR, 100),
                     buy("d", T0 + 5 * DAY_MS, 100), buy("r", T0 + 7 * DAY_MS, 100, is_return=True))
    assert state.lifetime.purchases == 4
    assert purchase_days(state) == 2  # day 0 (three purchases) and day 5; a return is no purchase
    assert churn.summarise(state, T0 + 10 * DAY_MS) == churn.Summary(x=1, t_x=5 - 9 / 24, T=10 - 9 / 24)
    # a purchase 400 days later prunes the old day buckets: the 64 recent purchase times still tell
    late = state_of(buy("a", T0 + 9 * HOUR, 100), buy("b", T0 + 15 * HOUR, 100), buy("d", T0 + 5 * DAY_MS, 100),
                    buy("e", T0 + 400 * DAY_MS, 100))
    assert min(late.days) > T0 // DAY_MS + 5
    assert purchase_days(late) == 3


def test_features_of_a_hand_made_history() -> None:
    state = state_of(
        buy("p1", T0, 2_000),
        buy("p2", T0 + HOUR, 1_000),  # same day as p1
        buy("p3", T0 + 10 * DAY_MS, 3_000, discount=500),
        buy("p4", T0 + 30 * DAY_MS, 4_000),
        CallEvent("k1", "c1", T0 + 35 * DAY_MS, "inbound", "complaint", 10, 100, False, "a1", sentiment=-0.5),
        VisitEvent("v1", "c1", T0 + 38 * DAY_MS, "store", "S01", 300, True),
    )
    x = dict(zip(FEATURES, features(state, T0 + 40 * DAY_MS, 0.25, 30.0), strict=True))
    # gaps between purchase times: 1/24, 10 - 1/24 and 20 days: mean 10, population variance
    # ((1/24 - 10)^2 + (10 - 1/24 - 10)^2 + (20 - 10)^2) / 3
    std = math.sqrt(((1 / 24 - 10) ** 2 + (1 / 24) ** 2 + 10**2) / 3)
    expected = {
        "bgnbd_logit": math.log(0.25 / 0.75),
        "recency_gaps": math.log(2.0),  # 10 days since the last purchase / own gap of 10 days
        "purchase_days": math.log(4.0),  # 3 distinct days
        "tenure": math.log(41.0),
        "purchases_90d": math.log(5.0),  # 4 purchases
        "spend_365d": math.log(101.0),  # 100.00
        "spend_trend": math.log(101.0) - math.log(1.0),  # all of it in the last 90 days
        "last_amount": math.log(41.0),
        "gap_regularity": round(std, 6) / 10.0,  # the rhythm keeps its stddev to 6 decimals
        "single_purchase_day": 0.0,
        "discount_share": 0.3,  # 30.00 of 100.00 bought with a discount
        "return_share": 0.0,
        "complaints_90d": math.log(2.0),
        "unresolved_90d": math.log(2.0),
        "sentiment_90d": -0.5,
        "visits_30d": math.log(2.0),
        "visits_90d": math.log(2.0),
        "channels": 1.0,  # store (bought and visited); the phone is not a channel chosen
    }
    assert x == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Scoring: drivers and fallback.

HAND_MODEL = LearnedChurnModel(
    horizon_days=90, features=("bgnbd_logit", "recency_gaps", "discount_share"),
    means=(0.0, 1.0, 0.1), scales=(2.0, 0.5, 0.2), coefficients=(0.8, 1.5, -0.4), intercept=0.3,
    buyers=1_000, base_rate=0.25, trained_cutoff=T0,
)


def test_contributions_sum_to_the_logit_minus_the_intercept() -> None:
    x = [0.0] * len(FEATURES)
    x[FEATURES.index("bgnbd_logit")] = 1.0
    x[FEATURES.index("recency_gaps")] = 0.5
    x[FEATURES.index("discount_share")] = 0.5
    logit, terms = contributions(HAND_MODEL, x)
    # 0.8 * (1 - 0) / 2 = 0.4; 1.5 * (0.5 - 1) / 0.5 = -1.5; -0.4 * (0.5 - 0.1) / 0.2 = -0.8
    assert terms == pytest.approx({"bgnbd_logit": 0.4, "recency_gaps": -1.5, "discount_share": -0.8}, abs=1e-12)
    assert logit == pytest.approx(0.3 + 0.4 - 1.5 - 0.8, abs=1e-12)
    assert logit - HAND_MODEL.intercept == pytest.approx(sum(terms.values()), abs=1e-12)


def test_churn_risk_uses_the_model_and_names_its_drivers() -> None:
    state = state_of(buy("p1", T0, 2_000), buy("p2", T0 + 10 * DAY_MS, 3_000, discount=100))
    as_of = T0 + 30 * DAY_MS
    bgnbd = churn.churn_probability(P, churn.summarise(state, as_of), 90)  # type: ignore[arg-type]
    x = features(state, as_of, bgnbd, P.population_gap_days)
    logit, terms = contributions(HAND_MODEL, x)
    risk = churn_risk(state, as_of, P, 90, HAND_MODEL, drivers_kept=2)
    assert risk.model == "learned"
    assert risk.risk == pytest.approx(1.0 / (1.0 + math.exp(-logit)), abs=1e-15)
    # recency: 20 days since the last purchase over a 10-day gap: ln 3; (ln 3 - 1) / 0.5 * 1.5
    assert terms["recency_gaps"] == pytest.approx(1.5 * (math.log(3.0) - 1.0) / 0.5, abs=1e-12)
    # discount share 30.00 of 50.00 = 0.6: -0.4 * (0.6 - 0.1) / 0.2 = -1.0
    assert terms["discount_share"] == pytest.approx(-1.0, abs=1e-12)
    ranked = sorted(terms, key=lambda k: -abs(terms[k]))[:2]
    assert [name for name, _ in risk.drivers] == ranked
    assert [value for _, value in risk.drivers] == [round(terms[name], 6) for name in ranked]

    signal = score_customer(state, as_of, P, 90, HAND_MODEL)
    assert signal.churn_model == "learned"
    assert signal.churn_risk == round(churn_risk(state, as_of, P, 90, HAND_MODEL).risk, 6)
    assert [d["feature"] for d in signal.churn_drivers] == sorted(terms, key=lambda k: -abs(terms[k]))[:3]


def test_the_fallback_is_bgnbd() -> None:
    state = state_of(buy("p1", T0, 2_000), buy("p2", T0 + 10 * DAY_MS, 3_000))
    as_of = T0 + 30 * DAY_MS
    bgnbd = churn.churn_probability(P, churn.summarise(state, as_of), 90)  # type: ignore[arg-type]
    assert churn_risk(state, as_of, P, 90, None) == churn_risk(state, as_of, P, 90, None)
    assert churn_risk(state, as_of, P, 90, None).risk == bgnbd and churn_risk(state, as_of, P, 90, None).model == "bgnbd"
    other_horizon = churn_risk(state, as_of, P, 180, HAND_MODEL)  # the model was fitted for 90 days
    assert (other_horizon.model, other_horizon.drivers) == ("bgnbd", ())
    assert other_horizon.risk == churn.churn_probability(P, churn.summarise(state, as_of), 180)  # type: ignore[arg-type]
    visitor = state_of(VisitEvent("v1", "c1", T0, "store", "S01", 300, True))
    prospect = churn_risk(visitor, T0 + 20 * DAY_MS, P, 90, HAND_MODEL)
    assert prospect.model == "bgnbd"
    assert prospect.risk == ((10.0 + 20.0) / (10.0 + 20.0 + 90.0)) ** 2.0  # ((alpha + T) / (alpha + T + H)) ** r
    signal = score_customer(state, as_of, P, 90)
    assert (signal.churn_model, signal.churn_drivers, signal.churn_risk) == ("bgnbd", [], round(bgnbd, 6))


# ---------------------------------------------------------------------------------------------
# One risk for one history: the worker's path, loyalty replay and loyalty backtest.

CUTOFF = T0 + 300 * DAY_MS


def history(customers: int, seed: int) -> list[Event]:
    """Buyers with their own rates and dropout, purchases at noon (never at the midnight cut-off)."""
    rng = random.Random(seed)
    events: list[Event] = []
    for c in range(customers):
        rate = rng.choice([1 / 7, 1 / 20, 1 / 45, 1 / 90])
        stop = rng.uniform(30, 500)
        day = rng.randrange(0, 60)
        n = 0
        while day < min(stop, 480):
            at = T0 + day * DAY_MS + 12 * HOUR
            events.append(PurchaseEvent(f"e{c}-{n}", f"c{c:04d}", at, "web", f"o{c}-{n}", rng.randrange(500, 9_000),
                                        "EUR", discount_minor=rng.choice([0, 0, 200])))
            n += 1
            day += max(1, round(rng.expovariate(rate)))
    return events


def test_worker_replay_and_backtest_give_the_same_risk(tmp_path: Path) -> None:
    events = history(600, seed=8)
    model = train_churn_model(events, CUTOFF, 90)
    assert model is not None and model.trained_cutoff == CUTOFF - 90 * DAY_MS
    report = compare_churn(events, CUTOFF, 90)  # trains the same model, scores at the cut-off
    assert report.model == model

    path = tmp_path / "events.jsonl"
    write_replay_file(path, events)
    out = tmp_path / "signals.jsonl"
    run_replay(path, CUTOFF, out, horizon_days=90, params=report.params, learned=model)
    replayed = {s["customer_id"]: s for s in map(json.loads, out.read_text().splitlines())}

    # the worker folds each customer's events as they arrive (any order) and scores with the
    # published parameters and model, as streams/processor.py calls score_customer
    by_customer: dict[str, list[Event]] = {}
    for event in events:
        if event.occurred_at < CUTOFF:
            by_customer.setdefault(event.customer_id, []).append(event)
    checked = 0
    for customer_id, own in sorted(by_customer.items()):
        random.Random(customer_id).shuffle(own)
        state = RelationshipState(customer_id)
        for i, event in enumerate(own):
            apply_event(state, event, 365 * DAY_MS, received_at=CUTOFF - len(own) + i)
        worker = score_customer(state, CUTOFF, report.params, 90, model)
        assert worker.churn_model == "learned"
        assert worker.churn_risk == report.risks[customer_id] == replayed[customer_id]["churn_risk"]
        assert worker.churn_drivers == replayed[customer_id]["churn_drivers"]
        checked += 1
    assert checked == report.customers == len(report.risks) > 500


def test_a_young_history_trains_without_tenure_and_scores_alike_everywhere() -> None:
    # history(): first purchases on days 0..59. A 90-day horizon before day 300 trains at day 210
    # (tenures up to 210 days: kept); a 250-day horizon trains at day 50 (tenures up to 50 days,
    # far short of 250: left out).
    events = history(600, seed=8)
    long_model = train_churn_model(events, CUTOFF, 90)
    young = train_churn_model(events, CUTOFF, 250)
    assert long_model is not None and "tenure" in long_model.features
    assert young is not None and young.features == tuple(n for n in FEATURES if n != "tenure")
    report = compare_churn(events, CUTOFF, 250)
    assert report.model == young
    state = RelationshipState("c0001")
    for event in events:
        if event.customer_id == "c0001" and event.occurred_at < CUTOFF:
            apply_event(state, event, 365 * DAY_MS)
    signal = score_customer(state, CUTOFF, report.params, 250, young)
    assert signal.churn_model == "learned" and signal.churn_risk == report.risks["c0001"]
    assert "tenure" not in {d["feature"] for d in signal.churn_drivers}


def test_the_sink_reads_rows_back_as_events_and_publishes_the_model_as_json() -> None:
    from streams.churn_params import churn_from_bytes, churn_to_bytes, event_from_row

    purchase = event_from_row("purchase", ("e1", "c1", T0, "web", "o1", 1_500, "EUR", 200, None, False, "S1"))
    assert purchase == PurchaseEvent("e1", "c1", T0, "web", "o1", 1_500, "EUR", discount_minor=200, location_id="S1")
    call = event_from_row("call", ("k1", "c1", T0, "inbound", "complaint", 5, 60, 0, -0.5, 3, None, "a1"))
    assert call == CallEvent("k1", "c1", T0, "inbound", "complaint", 5, 60, False, "a1", sentiment=-0.5, effort_score=3)
    visit = event_from_row("visit", ("v1", "c1", T0, "store", "S01", 300, 1))
    assert visit == VisitEvent("v1", "c1", T0, "store", "S01", 300, True)
    assert churn_from_bytes(churn_to_bytes(HAND_MODEL)) == HAND_MODEL
    with pytest.raises(ValueError, match="unknown features: shoe_size"):
        churn_from_bytes(churn_to_bytes(HAND_MODEL).replace(b"discount_share", b"shoe_size"))
