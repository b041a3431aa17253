"""Alerts in the worker: evaluate per changed customer, keep gone-quiet timers, deliver.

The rules are pure (:mod:`loyalty_stream.alerts`); this module keeps their per-customer state in
a Faust table, the due times in a :class:`~loyalty_stream.alerts.DueIndex` rebuilt from that table
after every rebalance, and delivers each alert three ways: the alerts topic, the ClickHouse
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

import orjson

from loyalty_stream.alerts import (
    DEFAULT_RULES,
    AlertRules,
    AlertState,
    DueIndex,
    alert_facts,
    alert_state_from_dict,
    alert_state_to_dict,
    alert_to_dict,
    evaluate,
)
from loyalty_stream.model import LoyaltySignal
from loyalty_stream.relationship import RelationshipState
from loyalty_stream.sinks.clickhouse import SinkBatch
from loyalty_stream.streams.processing import StateCache, StateStore

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


def alert_state_cache(store: StateStore, max_entries: int = 100_000) -> StateCache[AlertState]:
    """The cache of per-customer alert states (compact JSON in the store)."""
    return StateCache(store, lambda data: alert_state_from_dict(orjson.loads(data)),
                      lambda st: orjson.dumps(alert_state_to_dict(st)), max_entries)


class Alerting:
    """Per-customer alert evaluation and the gone-quiet timers of one worker."""

    def __init__(self, states: StateCache[AlertState], rules: AlertRules = DEFAULT_RULES) -> None:
        self.states = states
        self.rules = rules
        self.due = DueIndex()
        self.stream_time = 0
        self.raised = 0

    def observe(self, event_time: int) -> None:
        self.stream_time = max(self.stream_time, event_time)

    def evaluate(self, key: bytes, message: Any, state: RelationshipState, signal: LoyaltySignal,
                 batch: SinkBatch, now: int) -> list[dict[str, Any]]:
        """Evaluate the rules for one customer's new signal; stage alert rows in ``batch``.

        Returns the alert datums to publish once the batch is written.
        """
        previous = self.states.get(key, message)
        result = evaluate(signal, alert_facts(state, signal.as_of, self.rules), previous, self.rules)
        self.states.put(key, result.state, message)
        self.due.update(state.customer_id, result.due_at)
        alerts = [alert_to_dict(alert) for alert in result.alerts]
        for alert in alerts:
            batch.rows("alerts", ALERT_COLUMNS).append(alert_row(alert, now))
        self.raised += len(alerts)
        return alerts

    def due_now(self, limit: int = 5000) -> list[tuple[str, int]]:
        """Customers whose gone-quiet time has passed in stream time."""
        return self.due.pop_due(self.stream_time, limit=limit)

    def rebuild(self, items: Any) -> None:
        """Rebuild the due index from the alert-state table (after a rebalance or restart)."""
        index = DueIndex()
        for key, value in items:
            data = orjson.loads(value)
            if data.get("quiet_due_at") is not None:
                index.schedule(bytes(key).decode(), int(data["quiet_due_at"]))
        self.due = index
        logger.info("gone-quiet timers rebuilt: %d customers scheduled", len(index))
