"""Alerts in the worker: evaluate per changed customer, keep gone-quiet timers, deliver.

The rules are pure (:mod:`domain.alerts`); their per-customer state travels in the
customer's record (one table write with the relationship state), the gone-quiet due times in a
small table of their own and in a :class:`~domain.alerts.DueIndex` rebuilt from it after
every rebalance. This module also delivers each alert three ways: the alerts topic, the ClickHouse
``alerts`` table (in the same batch as the signal that raised it) and, when configured, a signed
webhook that never blocks processing.

Time for the gone-quiet timers is *stream time*, the newest event time this worker has seen, so
a replay of history or a backlog being caught up never raises alerts early. An idle input
therefore also holds the timers until the next event arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from domain.alerts import (
    DEFAULT_RULES,
    AlertRules,
    DueIndex,
    alert_facts,
    alert_to_dict,
    evaluate,
)
from domain.model import LoyaltySignal
from sinks.clickhouse import SinkBatch
from streams.processing import CustomerRecord, StateStore

logger = logging.getLogger(__name__)

ALERT_COLUMNS = (
    "alert_id", "customer_id", "kind", "severity", "raised_at", "model_version", "summary", "before_score",
    "after_score", "before_tier", "after_tier", "tier_reason", "measure", "measure_before", "measure_after",
    "threshold", "explanation_components", "explanation_before", "explanation_after", "churn_risk",
    "greeting_hint", "updated_at",
)

AlertPublisher = Callable[[bytes, dict[str, Any]], Awaitable[None]]


def alert_row(alert: dict[str, Any], now: int) -> dict[str, Any]:
    ctx = alert.get("context") or {}
    row = {name: alert.get(name) for name in ALERT_COLUMNS if name in alert}
    row.update(
        explanation_components=[c["component"] for c in alert["explanation"]],
        explanation_before=[c["before"] for c in alert["explanation"]],
        explanation_after=[c["after"] for c in alert["explanation"]],
        churn_risk=ctx.get("churn_risk"), greeting_hint=ctx.get("greeting_hint", ""), updated_at=now,
    )
    return row


class Alerting:
    """Per-customer alert evaluation and the gone-quiet timers of one worker.

    What the rules remember lives in each :class:`CustomerRecord` (written with the customer's
    state). Only the gone-quiet due times are kept in a table of their own, ``due_times``
    (epoch ms as ASCII digits, empty when nothing is scheduled), written when a due time changes,
    so that the timers can be rebuilt after a rebalance without decoding every customer.
    """

    def __init__(self, due_times: StateStore, rules: AlertRules = DEFAULT_RULES) -> None:
        self.due_times = due_times
        self.rules = rules
        self.due = DueIndex()
        self.stream_time = 0
        self.raised = 0

    def observe(self, event_time: int) -> None:
        self.stream_time = max(self.stream_time, event_time)

    def evaluate(self, key: bytes, message: Any, record: CustomerRecord, signal: LoyaltySignal,
                 batch: SinkBatch, now: int, store_due_time: bool = False) -> list[dict[str, Any]]:
        """Evaluate the rules for one customer's new signal; update ``record.alerts`` (the caller
        stores the record) and stage alert rows in ``batch``.

        The due time is written when it differs from the scheduled one (the index mirrors the
        table), or always with ``store_due_time`` (the timer's own checks, which popped it).
        Returns the alert datums to publish once the batch is written.
        """
        customer_id = record.state.customer_id
        result = evaluate(signal, alert_facts(record.state, signal.as_of, self.rules), record.alerts, self.rules)
        record.alerts = result.state
        if store_due_time or self.due.due_at(customer_id) != result.due_at:
            self.due_times.put(key, b"" if result.due_at is None else str(result.due_at).encode(), message)
        self.due.update(customer_id, result.due_at)
        alerts = [alert_to_dict(alert) for alert in result.alerts]
        for alert in alerts:
            batch.rows("alerts", ALERT_COLUMNS).append(alert_row(alert, now))
        self.raised += len(alerts)
        return alerts

    def due_now(self, limit: int = 5000) -> list[tuple[str, int]]:
        """Customers whose gone-quiet time has passed in stream time."""
        return self.due.pop_due(self.stream_time, limit=limit)

    def rebuild(self, items: Any) -> None:
        """Rebuild the due index from the due-times table (after a rebalance or restart)."""
        index = DueIndex()
        for key, value in items:
            if value:
                index.schedule(bytes(key).decode(), int(value))
        self.due = index
        logger.info("gone-quiet timers rebuilt: %d customers scheduled", len(index))
