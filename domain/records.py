"""Plain records for the events this pipeline reads and the envelopes it writes.

They mirror the ``.avsc`` files in :mod:`schemas` field for field (a unit test
checks that they agree). They are pure data: no Kafka, Faust or ClickHouse in sight, so the
relationship state and the loyalty model can be tested without any I/O.

Money is always an integer number of minor units (cents); sentiment, the one fractional input,
is kept as a float here and turned into integer thousandths where it is summed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Literal

EventKind = Literal["purchase", "call", "visit"]

PURCHASE_CHANNELS = ("store", "web", "app", "phone", "unknown")
VISIT_CHANNELS = ("store", "web", "app", "unknown")
CALL_DIRECTIONS = ("inbound", "outbound")
CALL_REASONS = (
    "order_status",
    "billing",
    "product_question",
    "technical_support",
    "complaint",
    "cancel_request",
    "other",
)


@dataclass(slots=True, unsafe_hash=True)
class PurchaseItem:
    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    sku: str
    category: str
    quantity: int
    unit_price_minor: int

    def __init__(self, sku: str, category: str, quantity: int, unit_price_minor: int) -> None:
        self.sku = sku
        self.category = category
        self.quantity = quantity
        self.unit_price_minor = unit_price_minor


@dataclass(slots=True, unsafe_hash=True)
class PurchaseEvent:
    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    event_id: str
    customer_id: str
    occurred_at: int  # epoch milliseconds, UTC
    channel: str
    order_id: str
    amount_minor: int
    currency: str
    discount_minor: int = 0
    promo_code: str | None = None
    items: tuple[PurchaseItem, ...] = ()
    is_return: bool = False
    location_id: str | None = None
    contact_email: str | None = None  # a pseudonym once ingested, never the address
    contact_phone: str | None = None

    kind: EventKind = field(default="purchase", init=False, repr=False, compare=False)

    def __init__(self, event_id: str, customer_id: str, occurred_at: int, channel: str, order_id: str, amount_minor: int,
                 currency: str, discount_minor: int = 0, promo_code: str | None = None, items: tuple[PurchaseItem, ...] = (),
                 is_return: bool = False, location_id: str | None = None, contact_email: str | None = None,
                 contact_phone: str | None = None) -> None:
        self.event_id = event_id
        self.customer_id = customer_id
        self.occurred_at = occurred_at
        self.channel = channel
        self.order_id = order_id
        self.amount_minor = amount_minor
        self.currency = currency
        self.discount_minor = discount_minor
        self.promo_code = promo_code
        self.items = items
        self.is_return = is_return
        self.location_id = location_id
        self.contact_email = contact_email
        self.contact_phone = contact_phone
        self.kind = "purchase"

    @property
    def discounted(self) -> bool:
        """Bought with a discount or a promotion: price, not preference, may have decided it."""
        return self.discount_minor > 0 or bool(self.promo_code)


@dataclass(slots=True, unsafe_hash=True)
class CallEvent:
    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    event_id: str
    customer_id: str
    occurred_at: int
    direction: str
    reason: str
    wait_seconds: int
    duration_seconds: int
    resolved: bool
    agent_id: str
    sentiment: float | None = None
    effort_score: int | None = None
    nps: int | None = None
    caller_phone: str | None = None  # a pseudonym once ingested, never the number

    kind: EventKind = field(default="call", init=False, repr=False, compare=False)

    def __init__(self, event_id: str, customer_id: str, occurred_at: int, direction: str, reason: str, wait_seconds: int,
                 duration_seconds: int, resolved: bool, agent_id: str, sentiment: float | None = None,
                 effort_score: int | None = None, nps: int | None = None, caller_phone: str | None = None) -> None:
        self.event_id = event_id
        self.customer_id = customer_id
        self.occurred_at = occurred_at
        self.direction = direction
        self.reason = reason
        self.wait_seconds = wait_seconds
        self.duration_seconds = duration_seconds
        self.resolved = resolved
        self.agent_id = agent_id
        self.sentiment = sentiment
        self.effort_score = effort_score
        self.nps = nps
        self.caller_phone = caller_phone
        self.kind = "call"


@dataclass(slots=True, unsafe_hash=True)
class VisitEvent:
    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    event_id: str
    customer_id: str
    occurred_at: int
    channel: str
    location_id: str
    duration_seconds: int
    recognized: bool
    categories_viewed: tuple[str, ...] = ()

    kind: EventKind = field(default="visit", init=False, repr=False, compare=False)

    def __init__(self, event_id: str, customer_id: str, occurred_at: int, channel: str, location_id: str,
                 duration_seconds: int, recognized: bool, categories_viewed: tuple[str, ...] = ()) -> None:
        self.event_id = event_id
        self.customer_id = customer_id
        self.occurred_at = occurred_at
        self.channel = channel
        self.location_id = location_id
        self.duration_seconds = duration_seconds
        self.recognized = recognized
        self.categories_viewed = categories_viewed
        self.kind = "visit"


Event = PurchaseEvent | CallEvent | VisitEvent


def event_from_dict(kind: EventKind, data: dict[str, Any]) -> Event:
    """Build a record from a decoded Avro datum (or any dict with the schema's field names)."""
    if kind == "purchase":
        items = tuple(PurchaseItem(**item) for item in data.get("items") or ())
        fields = {k: v for k, v in data.items() if k in _PURCHASE_FIELDS and k != "items"}
        return PurchaseEvent(items=items, **fields)
    if kind == "call":
        return CallEvent(**{k: v for k, v in data.items() if k in _CALL_FIELDS})
    if kind == "visit":
        fields = {k: v for k, v in data.items() if k in _VISIT_FIELDS and k != "categories_viewed"}
        return VisitEvent(categories_viewed=tuple(data.get("categories_viewed") or ()), **fields)
    raise ValueError(f"unknown event kind {kind!r}")


def event_to_dict(event: Event) -> dict[str, Any]:
    """The Avro datum for a record (the inverse of :func:`event_from_dict`)."""
    data = asdict(event)
    data.pop("kind", None)
    if isinstance(event, PurchaseEvent):
        data["items"] = [asdict(item) for item in event.items]
    elif isinstance(event, VisitEvent):
        data["categories_viewed"] = list(event.categories_viewed)
    return data


def _init_fields(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in dataclass_fields(cls) if f.init)


_PURCHASE_FIELDS = _init_fields(PurchaseEvent)
_CALL_FIELDS = _init_fields(CallEvent)
_VISIT_FIELDS = _init_fields(VisitEvent)

RECORD_FIELDS: dict[str, frozenset[str]] = {
    "purchase": _PURCHASE_FIELDS,
    "call": _CALL_FIELDS,
    "visit": _VISIT_FIELDS,
}
