"""BG/NBD: closed forms against hand arithmetic, the likelihood against an independent
implementation, the fit against data simulated from known parameters, and calibration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from domain.model import churn
from domain.model.churn import BgNbdParams, Summary
from domain.records import PurchaseEvent, VisitEvent
from domain.relationship import DAY_MS, RelationshipState, apply_event

P = BgNbdParams(r=2.0, alpha=10.0, a=1.0, b=3.0)
TRUE = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=2.5)
T0 = 1_704_067_200_000


def simulate(seed: int, n: int, params: BgNbdParams, horizon: float = 90.0) -> dict[str, np.ndarray]:
    """BG/NBD customers, each first buying at day 0 and watched for T days, then ``horizon`` more.

    Returns x, t_x, T (days), whether they bought in the horizon, and how often.
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    T = rng.uniform(30.0, 720.0, n)
    x = np.zeros(n, dtype=np.int64)
    t_x = np.zeros(n)
    future = np.zeros(n, dtype=np.int64)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > T[i] + horizon:
                break
            if t <= T[i]:
                x[i] += 1
                t_x[i] = t
            else:
                future[i] += 1
            if rng.random() < p[i]:  # dropout right after a repeat purchase
                break
    return {"x": x, "t_x": t_x, "T": T, "future": future}


# ---------------------------------------------------------------------------------------------
# Closed forms.


def test_p_alive_and_churn_by_hand() -> None:
    s = Summary(x=2, t_x=20.0, T=40.0)
    # 1 / (1 + a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)) = 1 / (1 + 1/4 * (50/30)^4)
    alive = 1.0 / (1.0 + 0.25 * (5.0 / 3.0) ** 4)
    assert churn.p_alive(P, s) == pytest.approx(alive, rel=1e-12)
    # P(no purchase in 30 | alive) = (50/80)^4
    assert churn.p_no_purchase_if_alive(P, s, 30.0) == pytest.approx(0.625 ** 4, rel=1e-12)
    assert churn.churn_probability(P, s, 30.0) == pytest.approx(1 - alive * (1 - 0.625 ** 4), rel=1e-12)


@pytest.mark.parametrize("T, horizon, expected", [
    (0.0, 30.0, (10 / 40) ** 2),    # brand-new one-time buyer
    (40.0, 30.0, (50 / 80) ** 2),
    (730.0, 90.0, (740 / 830) ** 2),  # one purchase two years ago: likely gone
])
def test_one_time_buyer_is_alive_but_churn_grows_with_time(T: float, horizon: float, expected: float) -> None:
    s = Summary(x=0, t_x=0.0, T=T)
    assert churn.p_alive(P, s) == 1.0
    assert churn.churn_probability(P, s, horizon) == pytest.approx(expected, rel=1e-12)


def test_prospects_use_the_purchase_rate_part_only() -> None:
    assert churn.prospect_churn_probability(P, 40.0, 30.0) == pytest.approx((50 / 80) ** 2)
    assert churn.prospect_expected_purchases(P, 40.0, 30.0) == pytest.approx(2 * 30 / 50)


def test_churn_is_monotone_in_recency() -> None:
    # Same purchases, same age: the longer ago the last purchase, the higher the risk.
    risks = [churn.churn_probability(churn.DEFAULT_PARAMS, Summary(5, t_x, 400.0), 90.0)
             for t_x in (400.0, 350.0, 300.0, 200.0, 100.0, 50.0)]
    assert all(a < b for a, b in itertools.pairwise(risks)), risks
    # and, seen later with nothing new, risk only grows
    later = [churn.churn_probability(churn.DEFAULT_PARAMS, Summary(5, 300.0, T), 90.0) for T in (300, 330, 400, 600)]
    assert all(a < b for a, b in itertools.pairwise(later)), later


def test_summarise_reads_x_tx_and_T_from_a_state() -> None:
    state = RelationshipState("c1")
    for i, day in enumerate((10, 20, 50)):
        apply_event(state, PurchaseEvent(f"p{i}", "c1", T0 + day * DAY_MS, "web", f"o{i}", 100, "EUR"), 10**12)
    apply_event(state, PurchaseEvent("r", "c1", T0 + 60 * DAY_MS, "web", "o0", 100, "EUR", is_return=True), 10**12)
    assert churn.summarise(state, T0 + 100 * DAY_MS) == Summary(x=2, t_x=40.0, T=90.0)
    visitor = RelationshipState("c2")
    apply_event(visitor, VisitEvent("v", "c2", T0, "store", "S1", 5, False), 10**12)
    assert churn.summarise(visitor, T0) is None


# ---------------------------------------------------------------------------------------------
# Likelihood and expectation against independent computations.


def reference_log_likelihood(p: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """FHL (2005) eq. 6 written out with gamma and beta functions."""
    def log_beta(u: float, v: float) -> float:
        return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)

    common = math.lgamma(p.r + x) - math.lgamma(p.r) + p.r * math.log(p.alpha)
    first = math.exp(log_beta(p.a, p.b + x) - log_beta(p.a, p.b) + common - (p.r + x) * math.log(p.alpha + T))
    second = 0.0
    if x > 0:
        second = math.exp(log_beta(p.a + 1, p.b + x - 1) - log_beta(p.a, p.b) + common
                          - (p.r + x) * math.log(p.alpha + t_x))
    return math.log(first + second)


def test_log_likelihood_matches_the_gamma_function_form() -> None:
    cases = [(0, 0.0, 10.0), (0, 0.0, 300.0), (1, 5.0, 30.0), (4, 100.0, 200.0), (25, 350.0, 365.0)]
    x = np.array([c[0] for c in cases])
    t_x = np.array([c[1] for c in cases])
    T = np.array([c[2] for c in cases])
    for p in (TRUE, churn.DEFAULT_PARAMS, BgNbdParams(3.0, 5.0, 2.0, 7.0)):
        got = churn.log_likelihood((p.r, p.alpha, p.a, p.b), x, t_x, T)
        want = [reference_log_likelihood(p, *c) for c in cases]
        assert got == pytest.approx(want, rel=1e-10)


def posterior_monte_carlo(p: BgNbdParams, s: Summary, horizon: float, n: int, seed: int) -> float:
    """E[purchases in horizon] by simulating the posterior: alive or not, lambda, p, then buying."""
    rng = np.random.default_rng(seed)
    alive = rng.random(n) < churn.p_alive(p, s)
    lam = rng.gamma(p.r + s.x, 1.0 / (p.alpha + s.T), n)
    drop = rng.beta(p.a, p.b + s.x, n)
    t = np.zeros(n)
    count = np.zeros(n)
    active = alive.copy()
    while active.any():
        t[active] += rng.exponential(1.0 / lam[active])
        active &= t <= horizon
        count[active] += 1
        active &= rng.random(n) >= drop
    return float(count.mean())


@pytest.mark.parametrize("params, summary", [
    (TRUE, Summary(0, 0.0, 10.0)),
    (TRUE, Summary(3, 100.0, 200.0)),
    (TRUE, Summary(40, 300.0, 310.0)),
    (BgNbdParams(2.0, 10.0, 3.0, 5.0), Summary(300, 700.0, 720.0)),  # heavy buyer: no overflow
])
def test_expected_purchases_matches_simulation(params: BgNbdParams, summary: Summary) -> None:
    want = posterior_monte_carlo(params, summary, 90.0, 200_000, seed=3)
    assert churn.expected_purchases(params, summary, 90.0) == pytest.approx(want, rel=0.03, abs=0.01)


# ---------------------------------------------------------------------------------------------
# Fitting.


def test_nelder_mead_finds_the_rosenbrock_minimum() -> None:
    def rosenbrock(v: np.ndarray) -> float:
        return float(100 * (v[1] - v[0] ** 2) ** 2 + (1 - v[0]) ** 2)

    best, value = churn.nelder_mead(rosenbrock, np.array([-1.2, 1.0]))
    assert best == pytest.approx([1.0, 1.0], abs=1e-4)
    assert value < 1e-8


def test_fit_recovers_known_parameters() -> None:
    data = simulate(seed=11, n=5000, params=TRUE)
    fitted = churn.fit_bgnbd_arrays(data["x"], data["t_x"], data["T"])
    assert fitted.source == "fitted" and fitted.buyers == 5000
    assert fitted.r == pytest.approx(TRUE.r, rel=0.15)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.15)
    assert fitted.a == pytest.approx(TRUE.a, rel=0.25)
    assert fitted.b == pytest.approx(TRUE.b, rel=0.25)
    # the optimum really is one: no nearby point is more likely
    x, t_x, T = data["x"], data["t_x"], data["T"]
    best = churn.log_likelihood((fitted.r, fitted.alpha, fitted.a, fitted.b), x, t_x, T).sum()
    assert fitted.log_likelihood == pytest.approx(best, rel=1e-12)
    for k in range(4):
        nudged = [fitted.r, fitted.alpha, fitted.a, fitted.b]
        nudged[k] *= 1.02
        assert churn.log_likelihood(tuple(nudged), x, t_x, T).sum() < best  # type: ignore[arg-type]


def test_fit_from_states_equals_fit_from_arrays() -> None:
    data = simulate(seed=5, n=300, params=TRUE)
    as_of = T0 + 800 * DAY_MS
    states = []
    xs, txs, Ts, event_counts = [], [], [], []
    for i in range(300):
        first = as_of - round(data["T"][i] * DAY_MS)
        # x repeat purchases spread up to t_x
        times = [first] + [first + round(data["t_x"][i] * DAY_MS * (k + 1) / data["x"][i]) for k in range(data["x"][i])]
        state = RelationshipState(f"c{i}")
        for k, at in enumerate(times):
            apply_event(state, PurchaseEvent(f"c{i}-{k}", f"c{i}", at, "web", f"o{i}{k}", 100, "EUR"), 10**13)
        states.append(state)
        xs.append(len({at // DAY_MS for at in times}) - 1)  # repeat purchase days: same-day purchases are one
        event_counts.append(len(times))
        txs.append((times[-1] - first) / DAY_MS)
        Ts.append((as_of - first) / DAY_MS)
    from_states = churn.fit_bgnbd(states, as_of)
    from_arrays = churn.fit_bgnbd_arrays(xs, txs, Ts)
    assert (from_states.r, from_states.alpha, from_states.a, from_states.b) == pytest.approx(
        (from_arrays.r, from_arrays.alpha, from_arrays.a, from_arrays.b), rel=1e-9)
    # the population gap is the median of the rhythm's mean gaps, which are over purchase times
    # (same-day purchases included), so per customer t_x / (purchases - 1)
    gaps = [t / (n - 1) for n, t in zip(event_counts, txs) if n > 1]
    assert from_states.population_gap_days == pytest.approx(float(np.median(gaps)), abs=1e-5)


@pytest.mark.parametrize("buyers, repeaters", [(0, 0), (49, 20), (200, 9)])
def test_too_little_data_gives_the_defaults(buyers: int, repeaters: int) -> None:
    x = [1] * repeaters + [0] * (buyers - repeaters)
    fitted = churn.fit_bgnbd_arrays(x, [10.0] * repeaters + [0.0] * (buyers - repeaters), [100.0] * buyers)
    d = churn.DEFAULT_PARAMS
    assert (fitted.source, fitted.buyers) == ("default", buyers)
    assert (fitted.r, fitted.alpha, fitted.a, fitted.b) == (d.r, d.alpha, d.a, d.b)


def test_fit_bgnbd_of_no_states_is_the_defaults_with_the_default_gap() -> None:
    fitted = churn.fit_bgnbd([], T0)
    assert (fitted.source, fitted.population_gap_days) == ("default", churn.DEFAULT_GAP_DAYS)


def test_churn_risk_is_calibrated_on_a_simulated_population() -> None:
    data = simulate(seed=23, n=6000, params=TRUE)
    fitted = churn.fit_bgnbd_arrays(data["x"], data["t_x"], data["T"])
    predicted = np.array([churn.churn_probability(fitted, Summary(int(x), float(t), float(T)), 90.0)
                          for x, t, T in zip(data["x"], data["t_x"], data["T"])])
    observed = data["future"] == 0
    assert predicted.mean() == pytest.approx(observed.mean(), abs=0.02)
    order = np.argsort(predicted)
    for decile in np.array_split(order, 10):  # 600 customers each: 3 standard errors is under 0.07
        assert predicted[decile].mean() == pytest.approx(observed[decile].mean(), abs=0.07)
    expected = sum(churn.expected_purchases(fitted, Summary(int(x), float(t), float(T)), 90.0)
                   for x, t, T in zip(data["x"], data["t_x"], data["T"]))
    assert expected == pytest.approx(float(data["future"].sum()), rel=0.1)
