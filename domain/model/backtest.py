"""Backtest of the churn risk: score as of a cut-off, then look at what customers did. Pure.

Every customer who bought before the cut-off is scored as of the cut-off from the events before
it; the outcome is whether they bought (a purchase, not a return) in the ``horizon_days`` days
from the cut-off. Reported: AUC of ``churn_risk`` for "no purchase", the Brier score (next to
the Brier score of always predicting the observed base rate), a reliability table by deciles of
predicted risk, and two baselines ranked the same way in the same run: days since the last
purchase, and the purchase count (fewer purchases, more risk). Never-buyers are scored for the
tier table but left out of the churn metrics (BG/NBD describes buyers).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domain.model import churn
from domain.model.churn import BgNbdParams
from domain.model.churn_learned import LearnedChurnModel
from domain.model.churn_training import bought_between, train_churn_model
from domain.model.replay import (
    DEFAULT_CURRENCY,
    InvalidLine,
    fold_events,
    read_events_file,
    score_states,
)
from domain.model.tiers import TIERS
from domain.records import Event, PurchaseEvent
from domain.relationship import DAY_MS
from domain.validation import EARLIEST_EVENT_MS

RELIABILITY_BINS = 10


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    n: int
    lowest: float
    highest: float
    mean_predicted: float
    observed: float  # share of the bin with no purchase in the horizon


@dataclass(frozen=True)
class BacktestReport:
    cutoff_ms: int
    horizon_days: int
    customers: int  # buyers before the cut-off: the churn metrics' population
    prospects: int  # scored, but never bought before the cut-off
    base_rate: float  # observed share with no purchase in the horizon
    mean_predicted: float
    auc: float
    brier: float
    brier_base_rate: float
    baseline_auc: dict[str, float]
    reliability: list[ReliabilityBin]
    params: BgNbdParams
    tiers: dict[str, str] = field(repr=False)  # customer_id -> tier, every scored customer
    invalid_count: int = 0
    invalid: list[InvalidLine] = field(default_factory=list, repr=False)

    def format(self) -> str:
        """A plain-text report."""
        p = self.params
        rows = [
            f"cut-off {self.cutoff_ms} ms, horizon {self.horizon_days} days",
            (f"customers {self.customers} (buyers before the cut-off), prospects {self.prospects}, "
            f"invalid lines {self.invalid_count}"),
            f"BG/NBD ({p.source}, {p.buyers} buyers): r={p.r:.4g} alpha={p.alpha:.4g}d a={p.a:.4g} b={p.b:.4g}",
            f"observed no-purchase rate {self.base_rate:.4f}, mean predicted churn {self.mean_predicted:.4f}",
            "",
            f"{'ranker':<36}{'AUC':>8}",
            f"{'churn_risk (BG/NBD)':<36}{self.auc:>8.4f}",
        ]
        rows += [f"{'baseline: ' + name:<36}{value:>8.4f}" for name, value in self.baseline_auc.items()]
        rows += [
            "",
            f"Brier score {self.brier:.4f} (always predicting the base rate: {self.brier_base_rate:.4f})",
            "",
            f"{'decile':<8}{'n':>7}{'range':>17}{'predicted':>11}{'observed':>10}",
        ]
        for i, b in enumerate(self.reliability, start=1):
            rows.append(f"{i:<8}{b.n:>7}{b.lowest:>8.3f}-{b.highest:<8.3f}{b.mean_predicted:>11.4f}{b.observed:>10.4f}")
        counts = Counter(self.tiers.values())
        rows += ["", "tiers: " + ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))]
        return "\n".join(rows)


def backtest_events(events: Sequence[Event], cutoff_ms: int, horizon_days: int = 90) -> BacktestReport:
    """Backtest on events already read (any order; duplicates allowed)."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, not {horizon_days}")
    folded = fold_events(events, cutoff_ms - 1)  # strictly before the cut-off
    params, signals = score_states(folded.states, cutoff_ms, horizon_days)
    horizon_end = cutoff_ms + horizon_days * DAY_MS
    bought_after = {
        e.customer_id for e in events
        if isinstance(e, PurchaseEvent) and not e.is_return and cutoff_ms <= e.occurred_at < horizon_end
    }
    buyers = [s for s in signals if s.purchases > 0]
    predicted = np.array([s.churn_risk for s in buyers], dtype=float)
    churned = np.array([s.customer_id not in bought_after for s in buyers], dtype=bool)
    since_last = np.array([s.days_since_last_purchase or 0.0 for s in buyers], dtype=float)
    counts = np.array([s.purchases for s in buyers], dtype=float)
    base = float(churned.mean()) if buyers else math.nan
    return BacktestReport(
        cutoff_ms=cutoff_ms,
        horizon_days=horizon_days,
        customers=len(buyers),
        prospects=len(signals) - len(buyers),
        base_rate=base,
        mean_predicted=float(predicted.mean()) if buyers else math.nan,
        auc=auc(predicted, churned),
        brier=brier(predicted, churned),
        brier_base_rate=brier(np.full(len(buyers), base), churned),
        baseline_auc={
            "days_since_last_purchase": auc(since_last, churned),
            "purchase_count": auc(-counts, churned),
        },
        reliability=reliability_table(predicted, churned),
        params=params,
        tiers={s.customer_id: s.tier for s in signals},
    )


def run_backtest(
    events_path: str | Path, cutoff_ms: int, horizon_days: int = 90, *, currency: str = DEFAULT_CURRENCY,
    earliest_ms: int = EARLIEST_EVENT_MS,
) -> BacktestReport:
    """Backtest the events of a JSON-lines file (the format :mod:`.replay` reads)."""
    parsed = read_events_file(events_path, currency, earliest_ms)
    report = backtest_events(parsed.events, cutoff_ms, horizon_days)
    return BacktestReport(**{**report.__dict__, "invalid_count": parsed.invalid_count, "invalid": parsed.invalid})


# ---------------------------------------------------------------------------------------------
# Metrics.


def auc(scores: Iterable[float], labels: Iterable[bool]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half.

    Mann-Whitney U with average ranks; NaN when either class is empty.
    """
    s = _array(scores, float)
    y = _array(labels, bool)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, tie_counts = np.unique(s, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(tie_counts) - (tie_counts - 1) / 2.0  # 1-based
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def brier(probabilities: Iterable[float], labels: Iterable[bool]) -> float:
    """Mean squared difference between predicted probability and outcome (0 or 1)."""
    p = _array(probabilities, float)
    y = _array(labels, float)
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def reliability_table(
    probabilities: Iterable[float], labels: Iterable[bool], bins: int = RELIABILITY_BINS
) -> list[ReliabilityBin]:
    """Equal-count bins by predicted probability (deciles by default), lowest first."""
    p = _array(probabilities, float)
    y = _array(labels, float)
    order = np.argsort(p, kind="stable")
    table = []
    for chunk in np.array_split(order, min(bins, p.size)) if p.size else []:
        table.append(ReliabilityBin(
            n=int(chunk.size),
            lowest=float(p[chunk].min()),
            highest=float(p[chunk].max()),
            mean_predicted=float(p[chunk].mean()),
            observed=float(y[chunk].mean()),
        ))
    return table


def _array(values: Iterable[float] | Iterable[bool], dtype: type) -> np.ndarray:
    return np.asarray(values if isinstance(values, (np.ndarray, list, tuple)) else list(values), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Personas against tiers.


UNSCORED = "(unscored)"


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of customers by known persona (rows) and assigned tier (columns)."""

    personas: list[str]
    tiers: list[str]
    counts: dict[tuple[str, str], int]

    def count(self, persona: str, tier: str) -> int:
        return self.counts.get((persona, tier), 0)

    def format(self) -> str:
        width = max([len(p) for p in self.personas] + [7]) + 2
        col = max([len(t) for t in self.tiers] + [5]) + 2
        rows = ["persona".ljust(width) + "".join(t.rjust(col) for t in self.tiers)]
        for persona in self.personas:
            rows.append(persona.ljust(width) + "".join(str(self.count(persona, t)).rjust(col) for t in self.tiers))
        return "\n".join(rows)


def persona_confusion(personas: dict[str, str], tiers: dict[str, str]) -> ConfusionMatrix:
    """Cross-tab of ground-truth personas (customer_id -> persona) against assigned tiers.

    Customers with a persona but no signal are counted under ``(unscored)``; customers without a
    persona are left out.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for customer_id, persona in personas.items():
        counts[(persona, tiers.get(customer_id, UNSCORED))] += 1
    seen_tiers = {tier for _, tier in counts}
    columns = [t for t in TIERS if t in seen_tiers] + sorted(seen_tiers - set(TIERS))
    return ConfusionMatrix(personas=sorted(set(personas.values())), tiers=columns, counts=dict(counts))


# ---------------------------------------------------------------------------------------------
# The learned churn risk against BG/NBD.


@dataclass(frozen=True, slots=True)
class RiskMetrics:
    auc: float
    brier: float
    mean_predicted: float
    reliability: list[ReliabilityBin]


@dataclass(frozen=True)
class ChurnComparison:
    """The learned risk and BG/NBD's on the same buyers, cut-off and horizon.

    The learned model is trained one period earlier (features at ``cutoff - horizon``, labels
    from the horizon up to the cut-off), so it is never evaluated on what it was trained on.
    """

    cutoff_ms: int
    horizon_days: int
    customers: int
    base_rate: float
    params: BgNbdParams
    model: LearnedChurnModel | None
    learned: RiskMetrics  # equals bgnbd when no model could be trained (the fallback)
    bgnbd: RiskMetrics
    risks: dict[str, float] = field(default_factory=dict, repr=False)  # customer_id -> learned churn_risk

    def format(self) -> str:
        m = self.model
        trained = ("no model (too little history): the learned risk is BG/NBD's" if m is None else
                   f"trained on {m.buyers} buyers as of {m.trained_cutoff} ms (churned {m.base_rate:.4f})")
        rows = [
            f"cut-off {self.cutoff_ms} ms, horizon {self.horizon_days} days: {self.customers} buyers, "
            f"observed no-purchase rate {self.base_rate:.4f}",
            f"learned churn model {trained}",
            f"{'':<22}{'learned':>10}{'BG/NBD':>10}",
            f"{'AUC':<22}{self.learned.auc:>10.4f}{self.bgnbd.auc:>10.4f}",
            f"{'Brier':<22}{self.learned.brier:>10.4f}{self.bgnbd.brier:>10.4f}",
            f"{'mean predicted':<22}{self.learned.mean_predicted:>10.4f}{self.bgnbd.mean_predicted:>10.4f}",
            f"{'decile':<8}{'learned pred/obs':>22}{'BG/NBD pred/obs':>22}",
        ]
        for i, (a, b) in enumerate(zip(self.learned.reliability, self.bgnbd.reliability), start=1):
            rows.append(f"{i:<8}{a.mean_predicted:>13.4f}/{a.observed:<8.4f}{b.mean_predicted:>13.4f}/{b.observed:<8.4f}")
        if m is not None:
            top = sorted(zip(m.features, m.coefficients), key=lambda fc: -abs(fc[1]))[:6]
            rows.append("largest coefficients (log-odds per s.d.): " + ", ".join(f"{f} {c:+.3f}" for f, c in top))
        return "\n".join(rows)

    def verdict(self) -> str:
        better = self.learned.auc > self.bgnbd.auc and self.learned.brier < self.bgnbd.brier
        return "better on both" if better else "NOT better on both"


def compare_churn(events: Sequence[Event], cutoff_ms: int, horizon_days: int) -> ChurnComparison:
    """Score the buyers as of ``cutoff_ms`` with the learned model and with BG/NBD alone."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, not {horizon_days}")
    model = train_churn_model(events, cutoff_ms, horizon_days)
    folded = fold_events(events, cutoff_ms - 1)
    params, signals = score_states(folded.states, cutoff_ms, horizon_days, learned=model)
    bought = bought_between(events, cutoff_ms, cutoff_ms + horizon_days * DAY_MS)
    buyers = [s for s in signals if s.purchases > 0]
    learned = np.array([s.churn_risk for s in buyers], dtype=float)
    bgnbd_risks: list[float] = []
    for s in buyers:
        summary = churn.summarise(folded.states[s.customer_id], cutoff_ms)
        assert summary is not None  # a buyer
        bgnbd_risks.append(round(churn.churn_probability(params, summary, horizon_days), 6))
    bgnbd = np.array(bgnbd_risks, dtype=float)
    churned = np.array([s.customer_id not in bought for s in buyers], dtype=bool)
    return ChurnComparison(
        cutoff_ms=cutoff_ms, horizon_days=horizon_days, customers=len(buyers),
        base_rate=float(churned.mean()) if buyers else math.nan, params=params, model=model,
        learned=_metrics(learned, churned), bgnbd=_metrics(bgnbd, churned),
        risks={s.customer_id: s.churn_risk for s in buyers},
    )


def _metrics(predicted: np.ndarray, churned: np.ndarray) -> RiskMetrics:
    return RiskMetrics(auc(predicted, churned), brier(predicted, churned),
                       float(predicted.mean()) if predicted.size else math.nan, reliability_table(predicted, churned))
