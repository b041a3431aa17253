"""The learned churn model: refitted by the sink from the raw events in ClickHouse, published on
the model-params topic under the key ``churn`` beside BG/NBD's ``bgnbd``.

The raw interaction tables hold every accepted event. A deterministic sample of buyers (by
``cityHash64(customer_id)``) bounds the cost; their events are read back as domain events and the
model is trained with the same pure code as ``loyalty backtest`` and ``loyalty replay``
(:func:`domain.model.churn_training.train_churn_model`): states folded to one horizon before now,
labels from that horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from domain.model.churn_learned import LearnedChurnModel
from domain.model.churn_training import train_churn_model
from domain.records import CallEvent, Event, PurchaseEvent, VisitEvent

CHURN_SAMPLE = 20_000
"""Buyers the churn model is trained on: 18 coefficients are pinned tightly by far fewer."""
_SAMPLE = ("SELECT customer_id FROM {db}.purchases WHERE NOT is_return GROUP BY customer_id "
           "ORDER BY cityHash64(customer_id) LIMIT {sample}")
CHURN_EVENTS_SQL = {
    "purchase": "SELECT event_id, customer_id, toUnixTimestamp64Milli(occurred_at), channel, order_id, amount_minor, "
                "currency, discount_minor, promo_code, is_return, location_id FROM {db}.purchases FINAL "
                "WHERE customer_id IN (" + _SAMPLE + ") AND occurred_at < fromUnixTimestamp64Milli({now})",
    "call": "SELECT event_id, customer_id, toUnixTimestamp64Milli(occurred_at), direction, reason, wait_seconds, "
            "duration_seconds, resolved, sentiment, effort_score, nps, agent_id FROM {db}.calls FINAL "
            "WHERE customer_id IN (" + _SAMPLE + ") AND occurred_at < fromUnixTimestamp64Milli({now})",
    "visit": "SELECT event_id, customer_id, toUnixTimestamp64Milli(occurred_at), channel, location_id, "
             "duration_seconds, recognized FROM {db}.visits FINAL "
             "WHERE customer_id IN (" + _SAMPLE + ") AND occurred_at < fromUnixTimestamp64Milli({now})",
}


def event_from_row(kind: str, row: Sequence[Any]) -> Event:
    """The domain event of a row of :data:`CHURN_EVENTS_SQL` (items and contacts are not read:
    the churn features do not use them)."""
    if kind == "purchase":
        eid, cid, at, channel, order_id, amount, currency, discount, promo, is_return, location = row
        return PurchaseEvent(str(eid), str(cid), _ms(at), str(channel), str(order_id), int(amount), str(currency),
                             discount_minor=int(discount), promo_code=promo, is_return=bool(is_return),
                             location_id=location)
    if kind == "call":
        eid, cid, at, direction, reason, wait, duration, resolved, sentiment, effort, nps, agent = row
        return CallEvent(str(eid), str(cid), _ms(at), str(direction), str(reason), int(wait), int(duration),
                         bool(resolved), str(agent), sentiment=None if sentiment is None else round(float(sentiment), 3),
                         effort_score=effort, nps=nps)
    if kind == "visit":
        eid, cid, at, channel, location, duration, recognized = row
        return VisitEvent(str(eid), str(cid), _ms(at), str(channel), str(location), int(duration), bool(recognized))
    raise ValueError(f"unknown event kind {kind!r}")


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)


def fit_churn_from_rows(rows: dict[str, Sequence[Sequence[Any]]], now: int, horizon_days: int) -> LearnedChurnModel | None:
    """Train on the rows of :data:`CHURN_EVENTS_SQL` by kind; None when the history is too short."""
    events = [event_from_row(kind, row) for kind, kind_rows in rows.items() for row in kind_rows]
    return train_churn_model(events, now, horizon_days)


def churn_to_bytes(model: LearnedChurnModel) -> bytes:
    return orjson.dumps(model.as_dict())


def churn_from_bytes(data: bytes) -> LearnedChurnModel:
    return LearnedChurnModel.from_dict(orjson.loads(data))
