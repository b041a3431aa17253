"""Input limits: what an event must satisfy before it may touch a customer's state. Pure.

A failing event is never "fixed up": it is dead-lettered with the reason, and the reason names
the field and the bound, never the field's value (values may carry personal data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from domain.records import (
    CALL_DIRECTIONS,
    CALL_REASONS,
    PURCHASE_CHANNELS,
    VISIT_CHANNELS,
    CallEvent,
    Event,
    PurchaseEvent,
    VisitEvent,
)

CUSTOMER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# 2000-01-01T00:00:00Z: by default anything older is a bad clock, not history
# (LOYALTY_EARLIEST_EVENT_TIME moves it for a business importing older purchases)
EARLIEST_EVENT_MS = 946_684_800_000
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_ITEMS = 500
MAX_CATEGORIES_VIEWED = 200
MAX_AMOUNT_MINOR = 100_000_000_00  # 100 million in major units
MAX_QUANTITY = 10_000
MAX_SECONDS = 86_400


class ValidationError(ValueError):
    """An event that breaks a limit; never retryable."""


@dataclass(frozen=True)
class Limits:
    currency: str
    future_skew_ms: int
    earliest_ms: int = EARLIEST_EVENT_MS  # the oldest event time accepted, epoch milliseconds


def validate(event: Event, limits: Limits, now_ms: int) -> None:
    """Raise :class:`ValidationError` naming the first limit the event breaks."""
    _check(bool(CUSTOMER_ID.match(event.customer_id)), "customer_id: must be 1-64 letters, digits or _.:- "
           "and start with a letter or digit")
    _check(0 < len(event.event_id) <= MAX_ID_CHARS, f"event_id: must be 1-{MAX_ID_CHARS} characters")
    # Messages that depend on the limits are built only when a check fails: formatting the
    # earliest time on every event cost about a fifth of validating it.
    if event.occurred_at < limits.earliest_ms:
        raise ValidationError(f"occurred_at: before {format_moment(limits.earliest_ms)} (LOYALTY_EARLIEST_EVENT_TIME)")
    if event.occurred_at > now_ms + limits.future_skew_ms:
        raise ValidationError(f"occurred_at: more than {limits.future_skew_ms // 1000}s in the future")
    if isinstance(event, PurchaseEvent):
        _validate_purchase(event, limits)
    elif isinstance(event, CallEvent):
        _validate_call(event)
    elif isinstance(event, VisitEvent):
        _validate_visit(event)


def _validate_purchase(event: PurchaseEvent, limits: Limits) -> None:
    _check(event.channel in PURCHASE_CHANNELS, "channel: unknown")
    _check(0 < len(event.order_id) <= MAX_ID_CHARS, f"order_id: must be 1-{MAX_ID_CHARS} characters")
    if event.currency != limits.currency:
        raise ValidationError(f"currency: only {limits.currency} is accepted (LOYALTY_CURRENCY)")
    _check(0 <= event.amount_minor <= MAX_AMOUNT_MINOR, f"amount_minor: must be 0..{MAX_AMOUNT_MINOR}")
    _check(0 <= event.discount_minor <= MAX_AMOUNT_MINOR, f"discount_minor: must be 0..{MAX_AMOUNT_MINOR}")
    _check(event.promo_code is None or len(event.promo_code) <= MAX_TEXT_CHARS,
           f"promo_code: longer than {MAX_TEXT_CHARS} characters")
    _check(event.location_id is None or len(event.location_id) <= MAX_ID_CHARS,
           f"location_id: longer than {MAX_ID_CHARS} characters")
    _check(len(event.items) <= MAX_ITEMS, f"items: more than {MAX_ITEMS} lines")
    for item in event.items:
        _check(0 < len(item.sku) <= MAX_ID_CHARS, f"items.sku: must be 1-{MAX_ID_CHARS} characters")
        _check(0 < len(item.category) <= MAX_TEXT_CHARS, f"items.category: must be 1-{MAX_TEXT_CHARS} characters")
        _check(0 < item.quantity <= MAX_QUANTITY, f"items.quantity: must be 1..{MAX_QUANTITY}")
        _check(0 <= item.unit_price_minor <= MAX_AMOUNT_MINOR, f"items.unit_price_minor: must be 0..{MAX_AMOUNT_MINOR}")


def _validate_call(event: CallEvent) -> None:
    _check(event.direction in CALL_DIRECTIONS, "direction: unknown")
    _check(event.reason in CALL_REASONS, "reason: unknown")
    _check(0 <= event.wait_seconds <= MAX_SECONDS, f"wait_seconds: must be 0..{MAX_SECONDS}")
    _check(0 <= event.duration_seconds <= MAX_SECONDS, f"duration_seconds: must be 0..{MAX_SECONDS}")
    _check(event.sentiment is None or -1.0 <= event.sentiment <= 1.0, "sentiment: must be -1..1")
    _check(event.effort_score is None or 1 <= event.effort_score <= 7, "effort_score: must be 1..7")
    _check(event.nps is None or 0 <= event.nps <= 10, "nps: must be 0..10")
    _check(0 < len(event.agent_id) <= MAX_ID_CHARS, f"agent_id: must be 1-{MAX_ID_CHARS} characters")


def _validate_visit(event: VisitEvent) -> None:
    _check(event.channel in VISIT_CHANNELS, "channel: unknown")
    _check(0 < len(event.location_id) <= MAX_ID_CHARS, f"location_id: must be 1-{MAX_ID_CHARS} characters")
    _check(0 <= event.duration_seconds <= MAX_SECONDS, f"duration_seconds: must be 0..{MAX_SECONDS}")
    _check(len(event.categories_viewed) <= MAX_CATEGORIES_VIEWED,
           f"categories_viewed: more than {MAX_CATEGORIES_VIEWED} entries")
    for category in event.categories_viewed:
        _check(0 < len(category) <= MAX_TEXT_CHARS, f"categories_viewed: entries must be 1-{MAX_TEXT_CHARS} characters")


def format_moment(epoch_ms: int) -> str:
    """An epoch-millisecond time as ISO-8601 UTC: the date alone at midnight, else to the millisecond."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    if epoch_ms % 86_400_000 == 0:
        return moment.date().isoformat()
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise ValidationError(reason)
