"""How well gone_quiet alerts pick customers who really stopped, next to a naive rule. Pure.

At a cut-off, a customer counts as *alerted* by gone_quiet when their quiet due time (expected
next purchase plus tolerance, from their own rhythm) fell in the ``window_days`` before the
cut-off: the alert fired then, and nothing bought since cleared it. The naive rule alerts when
the last purchase became ``naive_days`` old in the same window. Precision is the share of
alerted customers who then made no purchase in the following ``horizon_days``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from domain.alerts.evaluate import quiet_due_at
from domain.alerts.rules import DEFAULT_RULES, AlertRules
from domain.model.replay import fold_events, score_states
from domain.records import Event, PurchaseEvent
from domain.relationship import DAY_MS


@dataclass(frozen=True)
class RuleFigures:
    rule: str
    alerted: int
    precision: float | None  # share of alerted with no purchase in the horizon
    mean_prior_purchases: float | None
    median_days_quiet_at_alert: float | None


@dataclass(frozen=True)
class QuietBacktest:
    cutoff_ms: int
    horizon_days: int
    window_days: int
    buyers: int
    base_rate: float  # share of all buyers with no purchase in the horizon
    gone_quiet: RuleFigures
    naive: RuleFigures

    def format(self) -> str:
        rows = [("rule", "alerted", "precision", "mean prior purchases", "median days quiet at alert")]
        for f in (self.gone_quiet, self.naive):
            rows.append((f.rule, str(f.alerted), _pct(f.precision), _num(f.mean_prior_purchases),
                         _num(f.median_days_quiet_at_alert)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"alerts in the {self.window_days} days before the cut-off; outcome over the next "
                 f"{self.horizon_days} days; {self.buyers} buyers, base rate of no purchase {_pct(self.base_rate)}"]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _figures(rule: str, alerted: list[tuple[str, int, float]], stopped: set[str]) -> RuleFigures:
    if not alerted:
        return RuleFigures(rule, 0, None, None, None)
    return RuleFigures(
        rule, len(alerted),
        sum(1 for cid, _, _ in alerted if cid in stopped) / len(alerted),
        statistics.fmean(p for _, p, _ in alerted),
        statistics.median(q for _, _, q in alerted),
    )


def backtest_gone_quiet(events: Sequence[Event], cutoff_ms: int, horizon_days: int = 90, window_days: int = 30,
                        naive_days: int = 60, rules: AlertRules = DEFAULT_RULES) -> QuietBacktest:
    folded = fold_events(events, cutoff_ms - 1)
    _, signals = score_states(folded.states, cutoff_ms, horizon_days)
    end = cutoff_ms + horizon_days * DAY_MS
    bought_after = {e.customer_id for e in events
                    if isinstance(e, PurchaseEvent) and not e.is_return and cutoff_ms <= e.occurred_at < end}
    window_start = cutoff_ms - window_days * DAY_MS
    buyers = [s for s in signals if s.purchases > 0 and s.last_purchase_at is not None]
    stopped = {s.customer_id for s in buyers if s.customer_id not in bought_after}
    quiet, naive = [], []
    for s in buyers:
        last = s.last_purchase_at
        assert last is not None  # a buyer has a last purchase (see buyers above)
        due = quiet_due_at(s, rules)
        if due is not None and window_start <= due < cutoff_ms:
            quiet.append((s.customer_id, s.purchases, (due - last) / DAY_MS))
        naive_due = last + naive_days * DAY_MS
        if window_start <= naive_due < cutoff_ms:
            naive.append((s.customer_id, s.purchases, float(naive_days)))
    return QuietBacktest(
        cutoff_ms, horizon_days, window_days, len(buyers),
        len(stopped) / len(buyers) if buyers else 0.0,
        _figures("gone_quiet (own rhythm)", quiet, stopped),
        _figures(f"naive ({naive_days} days without purchase)", naive, stopped),
    )
