"""Alerts in the worker: evaluate per changed customer, keep gone-quiet timers, deliver.

The rules are pure (:mod:`domain.alerts`); their per-customer state travels in the
customer's record (one table write with the relationship state), the gone-quiet due times in a
small table of their own and in a :class:`~domain.alerts.DueIndex` rebuilt from it after
every rebalance. Alerts leave the worker on the alerts topic only: the ClickHouse sink stores them
from there, and the webhook consumer (:mod:`streams.webhooks`) delivers the live ones.

Each alert is stamped with the worker's clock (``processed_at``) and flagged ``historical`` when
the event time it is about is older than the live window before that clock
(:func:`domain.alerts.is_historical`): a backfill of old history raises its alerts as it always
did, but they are marked as about the past and page nobody.

Time for the gone-quiet timers is *stream time*, the newest event time this worker has seen, so
a replay of history or a backlog being caught up never raises alerts early. An idle input
therefore also holds the timers until the next event arrives.
"""

from __future__ import annotations

import logging
from typing import Any

from domain.alerts import (
    DEFAULT_RULES,
    AlertRules,
    DueIndex,
    alert_facts,
    alert_to_dict,
    evaluate,
    stamp,
)
from domain.model import LoyaltySignal
from streams.state import CustomerRecord, StateStore

logger = logging.getLogger(__name__)

class Alerting:
    """Per-customer alert evaluation and the gone-quiet timers of one worker.

    What the rules remember lives in each :class:`CustomerRecord` (written with the customer's
    state). Only the gone-quiet due times are kept in a table of their own, ``due_times``
    (epoch ms as ASCII digits, empty when nothing is scheduled), written when a due time changes,
    so that the timers can be rebuilt after a rebalance without decoding every customer.
    """

    def __init__(self, due_times: StateStore, rules: AlertRules = DEFAULT_RULES,
                 live_window_ms: int = 48 * 3_600_000) -> None:
        self.due_times = due_times
        self.rules = rules
        self.live_window_ms = live_window_ms
        self.due = DueIndex()
        self.stream_time = 0
        self.raised = 0
        self.historical = 0

    def observe(self, event_time: int) -> None:
        self.stream_time = max(self.stream_time, event_time)

    def evaluate(self, key: bytes, message: Any, record: CustomerRecord, signal: LoyaltySignal, now: int,
                 store_due_time: bool = False) -> list[dict[str, Any]]:
        """Evaluate the rules for one customer's new signal; update ``record.alerts`` (the caller
        stores the record). ``now`` is the worker's clock (epoch ms): each alert is stamped with
        it and flagged historical when its event time is older than the live window before it.

        The due time is written when it differs from the scheduled one (the index mirrors the
        table), or always with ``store_due_time`` (the timer's own checks, which popped it).
        Returns the alert datums to publish once the batch is written.
        """
        customer_id = record.state.customer_id
        # in place: the record's alert state is replaced by the result in any case (a dropped batch's
        # records are forgotten, and read from the table again)
        result = evaluate(signal, alert_facts(record.state, signal.as_of, self.rules), record.alerts, self.rules,
                          in_place=True)
        record.alerts = result.state
        if store_due_time or self.due.due_at(customer_id) != result.due_at:
            self.due_times.put(key, b"" if result.due_at is None else str(result.due_at).encode(), message)
        self.due.update(customer_id, result.due_at)
        alerts = [alert_to_dict(stamp(alert, now, self.live_window_ms)) for alert in result.alerts]
        self.raised += len(alerts)
        self.historical += sum(1 for alert in alerts if alert["historical"])
        return alerts

    def forget(self, keys: list[bytes]) -> None:
        """Unschedule customers whose batch was dropped (their partition is lost): the index follows
        the table again once the partition's owner, maybe this worker again, re-reads them."""
        for key in keys:
            self.due.cancel(key.decode())

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
