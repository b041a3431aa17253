"""Training the learned churn model from a history of events. Pure.

One function for every caller: ``loyalty backtest`` (train one period before the cut-off it
evaluates), ``loyalty replay`` (train on the file as of its ``--as-of``) and the sink's refit
(train on the events in ClickHouse as of now), so the three learn the same model from the same
history. Features are taken as of ``cutoff - horizon`` from states folded with
:func:`domain.model.replay.fold_events` (the worker's fold), labels from ``[cutoff - horizon, cutoff)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from domain.model.churn import fit_bgnbd
from domain.model.churn_learned import LearnedChurnModel, fit_model, training_set
from domain.model.replay import fold_events
from domain.records import Event, PurchaseEvent
from domain.relationship import DAY_MS


def bought_between(events: Iterable[Event], start_ms: int, end_ms: int) -> set[str]:
    """Customers with a purchase (not a return) in ``[start_ms, end_ms)``."""
    return {
        e.customer_id for e in events
        if isinstance(e, PurchaseEvent) and not e.is_return and start_ms <= e.occurred_at < end_ms
    }


def train_churn_model(
    events: Sequence[Event], cutoff_ms: int, horizon_days: int, sample: int | None = None
) -> LearnedChurnModel | None:
    """The learned churn model as of ``cutoff_ms``: features at ``cutoff_ms - horizon``, labels from
    the horizon that ends at ``cutoff_ms``, BG/NBD fitted on the states at the feature cut-off."""
    train_cut = cutoff_ms - horizon_days * DAY_MS
    folded = fold_events(events, train_cut - 1)
    params = fit_bgnbd(folded.states.values(), train_cut)
    rows, labels = training_set(folded.states, train_cut, params, horizon_days,
                                bought_between(events, train_cut, cutoff_ms), sample)
    return fit_model(rows, labels, horizon_days, trained_cutoff=train_cut)
