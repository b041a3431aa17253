"""Churn risk from the BG/NBD model (Fader, Hardie and Lee 2005, "Counting your customers the
easy way"). Pure Python plus numpy; time is always an argument, measured here in days.

The model: while alive a customer buys as a Poisson process with rate ``lambda`` ~ Gamma(r, alpha);
after each repeat purchase they drop out for good with probability ``p`` ~ Beta(a, b). What a
customer has shown us is summarised as

* ``x``   repeat purchase days (distinct days with a purchase, after the first),
* ``t_x`` days from the first to the last purchase,
* ``T``   days from the first purchase to ``as_of``.

From the population the four parameters are fitted by maximum likelihood; from them and a
customer's ``(x, t_x, T)`` follow P(alive), the chance of no purchase in the next ``H`` days and
the expected number of purchases in them.

Why "no purchase in H" has a closed form: given alive, the posterior of ``lambda`` is
Gamma(r + x, alpha + T), and a live customer cannot drop out before their next purchase, so
P(no purchase in H | alive) = ((alpha + T) / (alpha + T + H)) ** (r + x). Then
churn = 1 - P(alive) * (1 - P(no purchase in H | alive)).

Known limit of BG/NBD: with no repeat purchase (x = 0) P(alive) is 1 (dropout only happens right
after a repeat purchase). Their churn risk still grows with time since the first purchase,
because the posterior purchase rate falls as T grows, so one-time buyers from long ago get a
churn risk close to 1.

Customers who never bought (only visits or calls) are outside BG/NBD. For them the same
Poisson-Gamma part is used with the clock started at their first contact: churn =
((alpha + T) / (alpha + T + H)) ** r, P(alive) is undefined (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from domain.relationship import DAY_MS, RelationshipState, purchase_days, purchase_rhythm

MIN_FIT_BUYERS = 50
"""Fewer buyers than this and the fit is not attempted: :data:`DEFAULT_PARAMS` are used."""
MIN_FIT_REPEATERS = 10
"""Fewer customers with a repeat purchase than this and dropout cannot be estimated: defaults."""
DEFAULT_GAP_DAYS = 30.0
"""Typical days between purchases when the population shows none (fewer than one repeat buyer)."""
_LOG_BOUND = 12.0  # parameters are searched in log space within exp(+-12): beyond is degenerate


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """Population parameters of BG/NBD, with time in days."""

    r: float
    alpha: float
    a: float
    b: float
    source: str = "default"  # "fitted" or "default"
    buyers: int = 0  # customers the fit saw
    log_likelihood: float | None = None  # total log-likelihood at the optimum, when fitted
    population_gap_days: float = DEFAULT_GAP_DAYS  # median of the buyers' own mean gaps

    def as_dict(self) -> dict[str, object]:
        return {
            "r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b, "source": self.source,
            "buyers": self.buyers, "log_likelihood": self.log_likelihood,
            "population_gap_days": self.population_gap_days,
        }


DEFAULT_PARAMS = BgNbdParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
"""The CDNOW estimates of Fader, Hardie and Lee (2005), alpha converted from weeks to days.

Used when a population is too small to fit: they describe a real retail population with
infrequent buyers, so they err on the side of "may not come back"."""


@dataclass(slots=True, unsafe_hash=True)
class Summary:
    """A buyer's history in BG/NBD terms (days)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    x: int
    t_x: float
    T: float

    def __init__(self, x: int, t_x: float, T: float) -> None:
        self.x = x
        self.t_x = t_x
        self.T = T


def summarise(state: RelationshipState, as_of: int) -> Summary | None:
    """``(x, t_x, T)`` of a customer as of ``as_of``; None when they never bought.

    ``x`` counts repeat purchase *days*: several purchases on one day are one transaction, as in
    the model's definition (Fader, Hardie and Lee count one transaction per customer-day).

    The state must hold events up to ``as_of`` only; a last purchase after ``as_of`` is clamped.
    """
    if state.first_purchase_at is None or state.last_purchase is None or state.lifetime.purchases < 1:
        return None
    first = state.first_purchase_at
    last = max(state.last_purchase.occurred_at, first)
    end = max(as_of, last)
    return Summary(x=purchase_days(state) - 1, t_x=(last - first) / DAY_MS, T=(end - first) / DAY_MS)


# ---------------------------------------------------------------------------------------------
# Per-customer quantities.


def p_alive(params: BgNbdParams, s: Summary) -> float:
    """P(the customer is still alive at T) given their history (FHL 2005, eq. 12)."""
    if s.x == 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_odds = math.log(a) - math.log(b + s.x - 1) + (r + s.x) * (
        math.log(alpha + s.T) - math.log(alpha + s.t_x)
    )
    if log_odds > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(log_odds))


def p_no_purchase_if_alive(params: BgNbdParams, s: Summary, horizon_days: float) -> float:
    """P(no purchase in the next ``horizon_days`` | alive): the NBD part."""
    return ((params.alpha + s.T) / (params.alpha + s.T + horizon_days)) ** (params.r + s.x)


def churn_probability(params: BgNbdParams, s: Summary, horizon_days: float) -> float:
    """P(no purchase in the next ``horizon_days`` days)."""
    return 1.0 - p_alive(params, s) * (1.0 - p_no_purchase_if_alive(params, s, horizon_days))


def prospect_churn_probability(params: BgNbdParams, days_known: float, horizon_days: float) -> float:
    """P(no first purchase in the next ``horizon_days``) for someone known ``days_known`` days."""
    return ((params.alpha + days_known) / (params.alpha + days_known + horizon_days)) ** params.r


def prospect_expected_purchases(params: BgNbdParams, days_known: float, horizon_days: float) -> float:
    """Expected purchases in the horizon for a never-buyer (Poisson-Gamma part only)."""
    return params.r * horizon_days / (params.alpha + days_known)


def expected_purchases(params: BgNbdParams, s: Summary, horizon_days: float) -> float:
    """Expected purchases in the next ``horizon_days`` (FHL 2005, eq. 10).

    The Gauss hypergeometric function is evaluated after Euler's transformation,
    (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), whose
    parameters do not grow with x, so the series neither overflows nor needs many terms for
    heavy buyers.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t = horizon_days
    if t <= 0:
        return 0.0
    if abs(a - 1.0) < 1e-6:  # removable singularity at a = 1: evaluate just beside it
        a = 1.0 + 1e-6
    c = a + b + s.x - 1.0
    z = t / (alpha + s.T + t)
    if c <= 1e-3:  # the series is undefined; fall back to the no-dropout (NBD) expectation
        return (r + s.x) * t / (alpha + s.T) * p_alive(params, s)
    f = _hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
    value = c / (a - 1.0) * (1.0 - (1.0 - z) ** (a - 1.0) * f)
    return max(0.0, value * p_alive(params, s))


def _hyp2f1(a: float, b: float, c: float, z: float, tol: float = 1e-13, max_terms: int = 200_000) -> float:
    """Gauss hypergeometric series for 0 <= z < 1.

    Summed term by term until a term is below ``tol`` of the total. The loop is the hot spot of
    scoring (tens of terms per customer), so it counts in a float and takes absolute values
    inline: the same operations on the same values as ``abs()`` and ``a + k`` with an int ``k``,
    so the same result to the bit, at about half the cost.
    """
    term = 1.0
    total = 1.0
    k = 0.0
    end = float(max_terms)
    while k < end:
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z
        total += term
        if (term if term >= 0.0 else -term) <= tol * (total if total >= 0.0 else -total):
            break
        k += 1.0
    return total


# ---------------------------------------------------------------------------------------------
# Fitting.


def log_likelihood(
    params: tuple[float, float, float, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (FHL 2005, eq. 6), vectorised.

    ln Gamma(v + x) - ln Gamma(v) is computed as the sum of ln(v + i) for i < x (x is an
    integer), so no gamma function is needed.
    """
    r, alpha, a, b = params
    x_max = int(x.max()) if x.size else 0
    steps = np.arange(x_max, dtype=float)

    def rising_log(v: float) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(np.log(v + steps))))

    a1 = rising_log(r)[x] + r * math.log(alpha)
    a2 = rising_log(b)[x] - rising_log(a + b)[x]
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            math.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + a2 + np.logaddexp(a3, a4)


def fit_bgnbd_arrays(
    x: Iterable[int], t_x: Iterable[float], T: Iterable[float], population_gap_days: float = DEFAULT_GAP_DAYS
) -> BgNbdParams:
    """Maximum-likelihood BG/NBD parameters from per-buyer ``(x, t_x, T)`` in days.

    Nelder-Mead on the log parameters, started from the defaults and from a neutral point; the
    better optimum wins. Too few buyers or repeaters gives :data:`DEFAULT_PARAMS`.
    """
    xs = np.asarray(list(x), dtype=np.int64)
    txs = np.asarray(list(t_x), dtype=float)
    Ts = np.asarray(list(T), dtype=float)
    if not (xs.shape == txs.shape == Ts.shape):
        raise ValueError("x, t_x and T must have the same length")
    buyers = int(xs.size)
    if buyers < MIN_FIT_BUYERS or int((xs > 0).sum()) < MIN_FIT_REPEATERS:
        return _defaults(buyers, population_gap_days)

    def objective(theta: np.ndarray) -> float:
        if np.any(np.abs(theta) > _LOG_BOUND):
            return math.inf
        ll = log_likelihood(tuple(np.exp(theta)), xs, txs, Ts)  # type: ignore[arg-type]
        total = float(ll.sum())
        return -total if math.isfinite(total) else math.inf

    mean_T = float(Ts.mean()) or 1.0
    starts = [
        np.log([DEFAULT_PARAMS.r, DEFAULT_PARAMS.alpha, DEFAULT_PARAMS.a, DEFAULT_PARAMS.b]),
        np.log([1.0, mean_T / max(1.0, float(xs.mean()) + 1.0), 1.0, 1.0]),
    ]
    best_theta, best_value = starts[0], math.inf
    for start in starts:
        theta, value = nelder_mead(objective, start)
        theta, value = nelder_mead(objective, theta)  # a restart escapes a collapsed simplex
        if value < best_value:
            best_theta, best_value = theta, value
    if not math.isfinite(best_value):
        return _defaults(buyers, population_gap_days)
    r, alpha, a, b = (float(v) for v in np.exp(best_theta))
    return BgNbdParams(r, alpha, a, b, source="fitted", buyers=buyers, log_likelihood=-best_value,
                       population_gap_days=population_gap_days)


def fit_bgnbd(states: Iterable[RelationshipState], as_of: int) -> BgNbdParams:
    """Fit BG/NBD on every customer who bought before ``as_of``; defaults if too few.

    Also records the population's typical gap between purchases (median of the buyers' own mean
    gaps), the fallback rhythm for customers with a single purchase.
    """
    xs: list[int] = []
    txs: list[float] = []
    Ts: list[float] = []
    gaps: list[float] = []
    for state in states:
        s = summarise(state, as_of)
        if s is None:
            continue
        xs.append(s.x)
        txs.append(s.t_x)
        Ts.append(s.T)
        gap = purchase_rhythm(state).mean_gap_days
        if gap is not None:
            gaps.append(gap)
    population_gap = float(np.median(gaps)) if gaps else DEFAULT_GAP_DAYS
    return fit_bgnbd_arrays(xs, txs, Ts, population_gap_days=round(population_gap, 6))


def _defaults(buyers: int, population_gap_days: float) -> BgNbdParams:
    d = DEFAULT_PARAMS
    return BgNbdParams(d.r, d.alpha, d.a, d.b, source="default", buyers=buyers,
                       population_gap_days=population_gap_days)


def nelder_mead(
    f: Callable[[np.ndarray], float],
    start: np.ndarray,
    step: float = 0.5,
    max_iter: int = 4000,
    x_tol: float = 1e-7,
    f_tol: float = 1e-9,
) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``start`` with the Nelder-Mead simplex method (standard coefficients).

    Returns the best point and its value. Stops when the simplex has shrunk below ``x_tol`` and
    its values agree within ``f_tol`` (relative), or after ``max_iter`` iterations.
    """
    n = start.size
    simplex = np.vstack([start] + [start + step * np.eye(n)[i] for i in range(n)])
    values = np.array([f(p) for p in simplex])
    for _ in range(max_iter):
        order = np.argsort(values, kind="stable")
        simplex, values = simplex[order], values[order]
        spread = float(np.max(np.abs(simplex[1:] - simplex[0])))
        if spread < x_tol and abs(values[-1] - values[0]) <= f_tol * (1.0 + abs(values[0])):
            break
        centroid = simplex[:-1].mean(axis=0)
        worst = simplex[-1]
        reflected = centroid + (centroid - worst)
        f_reflected = f(reflected)
        if f_reflected < values[0]:
            expanded = centroid + 2.0 * (centroid - worst)
            f_expanded = f(expanded)
            if f_expanded < f_reflected:
                simplex[-1], values[-1] = expanded, f_expanded
            else:
                simplex[-1], values[-1] = reflected, f_reflected
            continue
        if f_reflected < values[-2]:
            simplex[-1], values[-1] = reflected, f_reflected
            continue
        if f_reflected < values[-1]:  # outside contraction
            contracted = centroid + 0.5 * (reflected - centroid)
            f_contracted = f(contracted)
            if f_contracted <= f_reflected:
                simplex[-1], values[-1] = contracted, f_contracted
                continue
        else:  # inside contraction
            contracted = centroid + 0.5 * (worst - centroid)
            f_contracted = f(contracted)
            if f_contracted < values[-1]:
                simplex[-1], values[-1] = contracted, f_contracted
                continue
        best = simplex[0]
        simplex[1:] = best + 0.5 * (simplex[1:] - best)
        values[1:] = [f(p) for p in simplex[1:]]
    i = int(np.argmin(values))
    return simplex[i], float(values[i])
