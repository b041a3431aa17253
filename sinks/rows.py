"""ClickHouse rows of what travels on the topics: raw interactions, signals (with the relationship
facts and the day ends they carry), alerts and dead letters. Pure: datums in, rows out (dicts by
column, or for the signals, the hot path, tuples in column order)."""

from __future__ import annotations

from datetime import date, timedelta
from operator import attrgetter, itemgetter
from typing import Any

from domain.records import CallEvent, Event, PurchaseEvent, VisitEvent

PURCHASE_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "channel", "order_id", "amount_minor", "currency",
    "discount_minor", "promo_code", "item_skus", "item_categories", "item_quantities",
    "item_unit_prices_minor", "is_return", "location_id", "contact_email", "contact_phone",
)
CALL_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "direction", "reason", "wait_seconds", "duration_seconds",
    "resolved", "sentiment", "effort_score", "nps", "agent_id", "caller_phone",
)
VISIT_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "channel", "location_id", "duration_seconds", "recognized",
    "categories_viewed",
)
SOURCE_COLUMNS = ("source_topic", "source_partition", "source_offset", "ingested_at")
DEAD_LETTER_COLUMNS = (
    "stage", "source_topic", "partition", "offset", "error_type", "reason", "payload_bytes", "failed_at",
)
SIGNAL_COMPONENTS = ("recency", "frequency", "monetary", "breadth", "relationship_quality",
                     "price_independence", "recognition")
SIGNAL_COLUMNS = (
    "customer_id", "version", "as_of", "model_version", "loyalty_score", "tier", "tier_reason",
    *(f"component_{name}" for name in SIGNAL_COMPONENTS),
    "churn_risk", "horizon_days", "p_alive", "expected_purchases", "expected_next_purchase_at",
    "days_since_last_purchase", "purchase_gap_days", "purchase_gap_source", "purchases", "spend_365d_minor",
    "last_purchase_at", "last_purchase_categories", "last_purchase_skus", "last_purchase_channel",
    "last_purchase_location_id", "favourite_category", "preferred_channel", "open_issues", "greeting_hint",
    "suggested_categories", "suggestion_reasons", "suggestion_scores",
    "params_source", "churn_model", "churn_driver_features", "churn_driver_contributions", "updated_at",
)
ALERT_COLUMNS = (
    "alert_id", "customer_id", "kind", "severity", "raised_at", "model_version", "summary", "before_score",
    "after_score", "before_tier", "after_tier", "tier_reason", "measure", "measure_before", "measure_after",
    "threshold", "explanation_components", "explanation_before", "explanation_after", "churn_risk",
    "greeting_hint", "processed_at", "historical", "updated_at",
)
TIER_DAY_COLUMNS = (
    "customer_id", "day", "as_of", "version", "tier", "loyalty_score", "churn_risk", "spend_365d_minor", "updated_at",
)
RAW_TABLE = {"purchase": "purchases", "call": "calls", "visit": "visits"}
DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)
RAW_COLUMNS = {"purchase": PURCHASE_COLUMNS, "call": CALL_COLUMNS, "visit": VISIT_COLUMNS}


_PURCHASE_HEAD = attrgetter("event_id", "customer_id", "occurred_at", "channel", "order_id", "amount_minor", "currency",
                            "discount_minor", "promo_code")
_PURCHASE_TAIL = attrgetter("is_return", "location_id", "contact_email", "contact_phone")
_CALL = attrgetter(*CALL_COLUMNS)
_VISIT_HEAD = attrgetter(*VISIT_COLUMNS[:-1])


def raw_values(event: Event) -> tuple[Any, ...]:
    """The raw-interaction table row of an event (without the source columns), its values in
    :data:`RAW_COLUMNS` order."""
    if isinstance(event, PurchaseEvent):
        items = event.items
        return (*_PURCHASE_HEAD(event), [i.sku for i in items], [i.category for i in items],
                [i.quantity for i in items], [i.unit_price_minor for i in items], *_PURCHASE_TAIL(event))
    if isinstance(event, CallEvent):
        return _CALL(event)  # type: ignore[no-any-return]
    if isinstance(event, VisitEvent):
        return (*_VISIT_HEAD(event), list(event.categories_viewed))
    raise TypeError(f"not an event: {type(event).__name__}")


_SIGNAL_HEAD = itemgetter("as_of", "model_version", "loyalty_score", "tier", "tier_reason")
_COMPONENTS = itemgetter(*SIGNAL_COMPONENTS)
_SIGNAL_MIDDLE = itemgetter("churn_risk", "horizon_days", "p_alive", "expected_purchases", "expected_next_purchase_at",
                            "days_since_last_purchase", "purchase_gap_days", "purchase_gap_source", "purchases")
_SIGNAL_TAIL = itemgetter("last_purchase_at", "last_purchase_categories", "last_purchase_skus",
                          "last_purchase_channel", "last_purchase_location_id", "favourite_category",
                          "preferred_channel", "open_issues", "greeting_hint")


def signal_values(signal: dict[str, Any], version: int, spend_365d_minor: int, now: int) -> tuple[Any, ...]:
    """The signals_current row of a signal datum, its values in :data:`SIGNAL_COLUMNS` order."""
    drivers = signal.get("churn_drivers") or ()
    suggestions = signal.get("suggested_categories") or ()  # absent from signals of older writers
    return (
        signal["customer_id"], version, *_SIGNAL_HEAD(signal), *_COMPONENTS(signal["components"]),
        *_SIGNAL_MIDDLE(signal), spend_365d_minor, *_SIGNAL_TAIL(signal),
        [s["category"] for s in suggestions], [s["reason"] for s in suggestions], [s["score"] for s in suggestions],
        signal["params_source"], signal.get("churn_model", "bgnbd"),
        [d["feature"] for d in drivers], [d["contribution"] for d in drivers], now,
    )


def tier_day_values(signal: dict[str, Any], version: int, spend_365d_minor: int, now: int) -> list[tuple[Any, ...]]:
    """The tier_days rows of a signal datum, values in :data:`TIER_DAY_COLUMNS` order: its own day
    (as of the signal), then each earlier event day the batch closed (``day_ends``, absent from
    writers before that field)."""
    cid = signal["customer_id"]
    rows = [(cid, _date(end["day"]), end["as_of"], end["version"], end["tier"], end["loyalty_score"],
             end["churn_risk"], end["spend_365d_minor"], now) for end in signal.get("day_ends") or ()]
    rows.append((cid, _date(signal["as_of"] // DAY_MS), signal["as_of"], version, signal["tier"],
                 signal["loyalty_score"], signal["churn_risk"], spend_365d_minor, now))
    return rows


def _date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def alert_row(alert: dict[str, Any], now: int) -> dict[str, Any]:
    """The alerts row of an alert datum (``schemas/alert.avsc``)."""
    ctx = alert.get("context") or {}
    row = {name: alert.get(name) for name in ALERT_COLUMNS if name in alert}
    row.update(
        explanation_components=[c["component"] for c in alert["explanation"]],
        explanation_before=[c["before"] for c in alert["explanation"]],
        explanation_after=[c["after"] for c in alert["explanation"]],
        churn_risk=ctx.get("churn_risk"), greeting_hint=ctx.get("greeting_hint", ""),
        # a datum from a writer older than these fields: not known to be historical
        processed_at=alert.get("processed_at"), historical=bool(alert.get("historical", False)), updated_at=now,
    )
    return row


def dead_letter_row(envelope: dict[str, Any]) -> dict[str, Any]:
    """The dead_letters row of a dead-letter envelope (``schemas/dead_letter.avsc``)."""
    return {
        "stage": envelope["stage"], "source_topic": envelope["source_topic"], "partition": envelope["partition"],
        "offset": envelope["offset"], "error_type": envelope["error_type"], "reason": envelope["reason"],
        "payload_bytes": len(envelope["payload"] or b""), "failed_at": envelope["failed_at"],
    }
