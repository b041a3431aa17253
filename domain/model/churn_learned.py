"""A churn risk learned from the business's own history, on top of BG/NBD. Pure Python plus numpy.

BG/NBD sees three numbers per buyer (repeat purchase days, time of the last, tenure). The state
knows more: spend and its trend, the customer's own rhythm and its regularity, discount share,
returns, contact-centre quality, visits, channels. This module learns how much each of those
moves the odds of "no purchase in the next ``horizon_days``", with BG/NBD's own probability as one
input, by an L2-regularised logistic regression fitted with Newton's method (IRLS):

* features as of a past cut-off ``c - h`` from the same :class:`RelationshipState` the worker keeps
  (:func:`features`), label = no purchase in ``(c - h, c]`` (:func:`training_set`);
* features are standardised with the training means and spreads, so a coefficient is the change
  in log-odds per standard deviation and the intercept is the log-odds of an average customer;
* the risk of a customer is ``sigmoid(intercept + sum(coef * z))`` and its **drivers** are the
  terms ``coef * z``: each input's signed contribution to the log-odds relative to the training
  population's mean. They sum exactly to the logit minus the intercept.

Fallback to BG/NBD: customers who never bought, no fitted model, a model fitted for another
horizon, or a history too small to learn from (:data:`MIN_TRAIN_BUYERS`, :data:`MIN_TRAIN_CLASS`).

Tenure drifts with the calendar: between the training cut-off and the time a model scores, every
buyer is ``horizon`` days older. When the training buyers' tenures do not span one horizon (a young
history: the oldest first bought less than ``horizon`` days before the training cut-off), the model
would score every buyer beyond the tenures it saw, extrapolating a slope learned from weeks of
history; :func:`fit_model` then leaves ``tenure`` out (:data:`DRIFTING_FEATURES`). BG/NBD's logit,
an input, still carries the customer's age through its own model.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from domain.model import churn
from domain.model.churn import BgNbdParams
from domain.model.components import MIN_GAP_DAYS, channels_used
from domain.relationship import DAY_MS, RelationshipState, purchase_days, purchase_rhythm, window

FEATURES: tuple[str, ...] = (
    "bgnbd_logit",  # logit of BG/NBD's P(no purchase in the horizon)
    "recency_gaps",  # ln(1 + days since the last purchase / own mean gap (population's if one purchase day))
    "purchase_days",  # ln(1 + distinct days with a purchase)
    "tenure",  # ln(1 + days since the first purchase)
    "purchases_90d",  # ln(1 + purchases in the last 90 days)
    "spend_365d",  # ln(1 + spend in the last 365 days, major units)
    "spend_trend",  # ln(1 + spend in 90 days) - ln(1 + the 275 days before, scaled to 90 days)
    "last_amount",  # ln(1 + the last purchase's amount, major units)
    "gap_regularity",  # coefficient of variation of the gaps between purchases (0 with fewer than 2 gaps)
    "single_purchase_day",  # 1 when all purchases fell on one day
    "discount_share",  # share of spend in 365 days bought on discount or promo
    "return_share",  # returns per purchase in 365 days
    "complaints_90d",  # ln(1 + complaints and cancel requests in 90 days)
    "unresolved_90d",  # ln(1 + unresolved calls in 90 days)
    "sentiment_90d",  # mean call sentiment in 90 days (-1..1; 0 without calls)
    "visits_30d",  # ln(1 + visits in 30 days)
    "visits_90d",  # ln(1 + visits in 90 days)
    "channels",  # channels bought or visited in
)
DRIFTING_FEATURES: tuple[str, ...] = ("tenure",)
"""Inputs that grow by one horizon between training and scoring for every buyer: fitted only when
the training buyers' values span that growth (:func:`fit_model`)."""
MIN_TRAIN_BUYERS = 200
"""Fewer training buyers than this and no model is fitted: BG/NBD alone."""
MIN_TRAIN_CLASS = 20
"""Fewer churned (or fewer retained) training buyers than this and no model is fitted."""
DEFAULT_L2 = 1.0
"""Ridge penalty on the standardised coefficients (not the intercept), in units of the summed
log-likelihood: negligible with thousands of buyers, it keeps a constant or separable input finite."""
DRIVERS_KEPT = 3
"""Top contributions (by absolute size) a risk carries."""
_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}
_P_CLIP = 1e-9
_SPREAD_FLOOR = 1e-9


@dataclass(frozen=True, slots=True)
class LearnedChurnModel:
    """A fitted logistic churn model; ``horizon_days`` is the horizon its labels used."""

    horizon_days: int
    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    buyers: int = 0  # training rows
    base_rate: float = math.nan  # share of training rows that churned
    trained_cutoff: int | None = None  # the cut-off c - h of the training features (epoch ms)

    def as_dict(self) -> dict[str, object]:
        return {
            "horizon_days": self.horizon_days, "features": list(self.features), "means": list(self.means),
            "scales": list(self.scales), "coefficients": list(self.coefficients), "intercept": self.intercept,
            "buyers": self.buyers, "base_rate": self.base_rate, "trained_cutoff": self.trained_cutoff,
        }

    @staticmethod
    def from_dict(data: Mapping[str, object]) -> LearnedChurnModel:
        """The model of :meth:`as_dict`'s output; a feature this code does not compute is an error."""
        names = tuple(str(n) for n in data["features"])  # type: ignore[attr-defined]
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ValueError(f"churn model uses unknown features: {', '.join(unknown)}")
        cut = data.get("trained_cutoff")
        return LearnedChurnModel(
            horizon_days=int(data["horizon_days"]),  # type: ignore[call-overload]
            features=names,
            means=tuple(float(v) for v in data["means"]),  # type: ignore[attr-defined]
            scales=tuple(float(v) for v in data["scales"]),  # type: ignore[attr-defined]
            coefficients=tuple(float(v) for v in data["coefficients"]),  # type: ignore[attr-defined]
            intercept=float(data["intercept"]),  # type: ignore[arg-type]
            buyers=int(data.get("buyers", 0)),  # type: ignore[call-overload]
            base_rate=math.nan if data.get("base_rate") is None else float(data["base_rate"]),  # type: ignore[arg-type]
            trained_cutoff=None if cut is None else int(cut),  # type: ignore[call-overload]
        )


@dataclass(slots=True, unsafe_hash=True)
class ChurnRisk:
    """A customer's churn risk, the model that gave it, and what moved it."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    risk: float
    model: str  # "learned" or "bgnbd"
    drivers: tuple[tuple[str, float], ...] = ()  # (feature, contribution to the log-odds), largest first

    def __init__(self, risk: float, model: str, drivers: tuple[tuple[str, float], ...] = ()) -> None:
        self.risk = risk
        self.model = model
        self.drivers = drivers


# ---------------------------------------------------------------------------------------------
# Features.


def _log1p_major(minor: int) -> float:
    return math.log1p(max(0, minor) / 100.0)


def _logit(p: float) -> float:
    p = min(1.0 - _P_CLIP, max(_P_CLIP, p))
    return math.log(p / (1.0 - p))


def features(state: RelationshipState, as_of: int, bgnbd_risk: float, population_gap_days: float,
             days: int | None = None) -> list[float]:
    """The inputs of :data:`FEATURES`, in order, for a buyer as of ``as_of``.

    ``bgnbd_risk`` is BG/NBD's P(no purchase in the horizon) for the same customer and time;
    ``days`` the customer's purchase days when already counted.
    """
    w30 = window(state, 30, as_of)
    w90 = window(state, 90, as_of)
    w365 = window(state, 365, as_of)
    rhythm = purchase_rhythm(state)
    gap = max(MIN_GAP_DAYS, rhythm.mean_gap_days if rhythm.mean_gap_days is not None else population_gap_days)
    last = state.last_purchase
    since_last = 0.0 if last is None else max(0, as_of - last.occurred_at) / DAY_MS
    first = state.first_purchase_at
    tenure = 0.0 if first is None else max(0, as_of - first) / DAY_MS
    days = purchase_days(state) if days is None else days
    earlier_spend = max(0, w365.spend_minor - w90.spend_minor) * 90 / 275
    regularity = 0.0
    if rhythm.mean_gap_days and rhythm.gap_stddev_days is not None and rhythm.purchases_seen > 2:
        regularity = rhythm.gap_stddev_days / rhythm.mean_gap_days
    return [
        _logit(bgnbd_risk),
        math.log1p(since_last / gap),
        math.log1p(days),
        math.log1p(tenure),
        math.log1p(w90.purchases),
        _log1p_major(w365.spend_minor),
        _log1p_major(w90.spend_minor) - math.log1p(earlier_spend / 100.0),
        0.0 if last is None else _log1p_major(last.amount_minor),
        regularity,
        1.0 if days <= 1 else 0.0,
        0.0 if w365.spend_minor <= 0 else w365.discounted_spend_minor / w365.spend_minor,
        0.0 if w365.purchases == 0 else min(1.0, w365.returns / w365.purchases),
        math.log1p(w90.complaints + w90.cancel_requests),
        math.log1p(w90.unresolved_calls),
        0.0 if w90.sentiment_n == 0 else w90.sentiment_milli_sum / w90.sentiment_n / 1000.0,
        math.log1p(w30.visits),
        math.log1p(w90.visits),
        float(channels_used(state)),
    ]


# ---------------------------------------------------------------------------------------------
# Scoring.


def churn_risk(
    state: RelationshipState, as_of: int, params: BgNbdParams, horizon_days: int,
    model: LearnedChurnModel | None, drivers_kept: int = DRIVERS_KEPT,
) -> ChurnRisk:
    """The churn risk of a customer: the learned model's when it applies, else BG/NBD's."""
    summary = churn.summarise(state, as_of)
    if summary is None:  # never bought: outside both models' training population
        known_since = state.first_seen_at if state.first_seen_at is not None else as_of
        days_known = max(0, as_of - known_since) / DAY_MS
        return ChurnRisk(churn.prospect_churn_probability(params, days_known, horizon_days), "bgnbd")
    bgnbd = churn.churn_probability(params, summary, horizon_days)
    if model is None or model.horizon_days != horizon_days:
        return ChurnRisk(bgnbd, "bgnbd")
    x = features(state, as_of, bgnbd, params.population_gap_days, summary.x + 1)
    logit, terms = contributions(model, x)
    ranked = heapq.nsmallest(drivers_kept, terms.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return ChurnRisk(_sigmoid(logit), "learned", tuple((name, round(value, 6)) for name, value in ranked))


def contributions(model: LearnedChurnModel, x: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The log-odds of ``x`` and each input's term; the terms sum to log-odds minus the intercept."""
    terms: dict[str, float] = {}
    logit = model.intercept
    index = _FEATURE_INDEX
    for name, mean, scale, coef in zip(model.features, model.means, model.scales, model.coefficients):
        term = coef * (x[index[name]] - mean) / scale
        terms[name] = term
        logit += term
    return logit, terms


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# ---------------------------------------------------------------------------------------------
# Training.


def fit_logistic(
    X: np.ndarray, y: np.ndarray, l2: float = DEFAULT_L2, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method; returns (coefficients, intercept).

    Maximises sum(y log p + (1 - y) log(1 - p)) - l2/2 |coef|^2 (the intercept is not penalised).
    The objective is strictly concave for l2 > 0, so Newton from zero converges; a step that does
    not improve it is halved.
    """
    n, k = X.shape
    A = np.hstack([np.ones((n, 1)), X])
    penalty = np.full(k + 1, l2)
    penalty[0] = 0.0
    beta = np.zeros(k + 1)

    def objective(b: np.ndarray) -> float:
        z = A @ b
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * np.sum(penalty * b * b))

    current = objective(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(A @ beta)))
        gradient = A.T @ (y - p) - penalty * beta
        hessian = (A * (p * (1.0 - p))[:, None]).T @ A + np.diag(penalty) + 1e-12 * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):
            candidate = beta + step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            step = step / 2.0
        beta, previous, current = candidate, current, value
        if float(np.max(np.abs(step))) < tol or abs(current - previous) < tol * (1.0 + abs(current)):
            break
    return beta[1:], float(beta[0])


def fit_model(
    rows: Sequence[Sequence[float]], churned: Sequence[bool], horizon_days: int, *,
    l2: float = DEFAULT_L2, trained_cutoff: int | None = None,
) -> LearnedChurnModel | None:
    """A model fitted on feature rows (:data:`FEATURES` order) and labels; None if too little history."""
    y = np.asarray(churned, dtype=float)
    positives = int(y.sum())
    if len(rows) < MIN_TRAIN_BUYERS or min(positives, len(rows) - positives) < MIN_TRAIN_CLASS:
        return None
    X = np.asarray(rows, dtype=float)
    names = fitted_features(X, horizon_days)
    X = X[:, [_FEATURE_INDEX[name] for name in names]]
    means = X.mean(axis=0)
    scales = X.std(axis=0)
    scales = np.where(scales < _SPREAD_FLOOR, 1.0, scales)
    coef, intercept = fit_logistic((X - means) / scales, y, l2)
    return LearnedChurnModel(
        horizon_days=horizon_days, features=names,
        means=tuple(round(float(v), 12) for v in means), scales=tuple(round(float(v), 12) for v in scales),
        coefficients=tuple(round(float(v), 12) for v in coef), intercept=round(intercept, 12),
        buyers=len(rows), base_rate=round(positives / len(rows), 6), trained_cutoff=trained_cutoff,
    )


def fitted_features(X: np.ndarray, horizon_days: int) -> tuple[str, ...]:
    """:data:`FEATURES` less the drifting ones whose training values do not span one horizon.

    ``tenure`` is ln(1 + days): it is kept when the oldest training buyer's tenure is at least
    ``horizon_days``, so that at scoring time (every buyer ``horizon_days`` older) the tenures lie
    within about twice the range the slope was learned on, not far beyond it.
    """
    oldest_days = math.expm1(float(X[:, _FEATURE_INDEX["tenure"]].max())) if len(X) else 0.0
    # 1e-6: ln/expm1 round trip of a tenure of exactly one horizon
    short = oldest_days + 1e-6 < horizon_days
    return tuple(name for name in FEATURES if not (short and name in DRIFTING_FEATURES))


def sample_key(customer_id: str) -> bytes:
    """A stable pseudo-random order of customers, for a deterministic training sample."""
    return hashlib.blake2b(customer_id.encode(), digest_size=8).digest()


def training_set(
    states: Mapping[str, RelationshipState], cutoff: int, params: BgNbdParams, horizon_days: int,
    bought_after: Iterable[str], sample: int | None = None,
) -> tuple[list[list[float]], list[bool]]:
    """Feature rows as of ``cutoff`` for the buyers in ``states`` (folded to before ``cutoff``) and
    their labels: churned unless their id is in ``bought_after`` (bought in the horizon after).

    ``sample`` keeps that many buyers, chosen by :func:`sample_key` (the same on every run).
    """
    bought = set(bought_after)
    buyers = [cid for cid, s in states.items() if s.lifetime.purchases > 0 and s.first_purchase_at is not None]
    buyers.sort(key=sample_key)
    if sample is not None:
        buyers = buyers[:sample]
    rows: list[list[float]] = []
    labels: list[bool] = []
    for cid in buyers:
        state = states[cid]
        summary = churn.summarise(state, cutoff)
        assert summary is not None  # a buyer
        bgnbd = churn.churn_probability(params, summary, horizon_days)
        rows.append(features(state, cutoff, bgnbd, params.population_gap_days))
        labels.append(cid not in bought)
    return rows, labels
