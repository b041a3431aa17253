"""ClickHouse rows of what travels on the topics: raw interactions, signals (with the relationship
facts and the day ends they carry), alerts and dead letters. Pure: datums in, rows (dicts by column) out."""

from __future__ import annotations

from datetime import date, timedelta
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


def raw_row(event: Event) -> dict[str, Any]:
    """The raw-interaction table row of an event (without the source columns)."""
    if isinstance(event, PurchaseEvent):
        return {
            "event_id": event.event_id, "customer_id": event.customer_id, "occurred_at": event.occurred_at,
            "channel": event.channel, "order_id": event.order_id, "amount_minor": event.amount_minor,
            "currency": event.currency, "discount_minor": event.discount_minor, "promo_code": event.promo_code,
            "item_skus": [i.sku for i in event.items], "item_categories": [i.category for i in event.items],
            "item_quantities": [i.quantity for i in event.items],
            "item_unit_prices_minor": [i.unit_price_minor for i in event.items],
            "is_return": event.is_return, "location_id": event.location_id,
            "contact_email": event.contact_email, "contact_phone": event.contact_phone,
        }
    if isinstance(event, CallEvent):
        return {name: getattr(event, name) for name in CALL_COLUMNS}
    if isinstance(event, VisitEvent):
        row = {name: getattr(event, name) for name in VISIT_COLUMNS}
        row["categories_viewed"] = list(event.categories_viewed)
        return row
    raise TypeError(f"not an event: {type(event).__name__}")


def signal_row(signal: dict[str, Any], version: int, spend_365d_minor: int, now: int) -> dict[str, Any]:
    """The signals_current / signals_history row of a signal datum."""
    row = {k: v for k, v in signal.items()
           if k not in ("components", "relationship", "churn_drivers", "suggested_categories", "day_ends")}
    for name in SIGNAL_COMPONENTS:
        row[f"component_{name}"] = signal["components"][name]
    drivers = signal.get("churn_drivers") or []
    row["churn_model"] = signal.get("churn_model", "bgnbd")
    row["churn_driver_features"] = [d["feature"] for d in drivers]
    row["churn_driver_contributions"] = [d["contribution"] for d in drivers]
    suggestions = signal.get("suggested_categories") or []  # absent from signals of older writers
    row["suggested_categories"] = [s["category"] for s in suggestions]
    row["suggestion_reasons"] = [s["reason"] for s in suggestions]
    row["suggestion_scores"] = [s["score"] for s in suggestions]
    row.update(version=version, spend_365d_minor=spend_365d_minor, updated_at=now)
    return row


def tier_day_rows(signal: dict[str, Any], version: int, spend_365d_minor: int, now: int) -> list[dict[str, Any]]:
    """The tier_days rows of a signal datum: its own day (as of the signal), then each earlier
    event day the batch closed (``day_ends``, absent from writers before that field)."""
    cid = signal["customer_id"]
    rows = [{"customer_id": cid, "day": _date(end["day"]), "as_of": end["as_of"], "version": end["version"],
             "tier": end["tier"], "loyalty_score": end["loyalty_score"], "churn_risk": end["churn_risk"],
             "spend_365d_minor": end["spend_365d_minor"], "updated_at": now} for end in signal.get("day_ends") or ()]
    rows.append({"customer_id": cid, "day": _date(signal["as_of"] // DAY_MS), "as_of": signal["as_of"],
                 "version": version, "tier": signal["tier"], "loyalty_score": signal["loyalty_score"],
                 "churn_risk": signal["churn_risk"], "spend_365d_minor": spend_365d_minor, "updated_at": now})
    return rows


def _date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def relationship_row(signal: dict[str, Any], now: int) -> dict[str, Any] | None:
    """The relationships row of the facts a signal carries (None when the writer sent none)."""
    facts = signal.get("relationship")
    if facts is None:
        return None
    row = dict(facts)
    row.update(customer_id=signal["customer_id"], updated_at=now)
    return row


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
