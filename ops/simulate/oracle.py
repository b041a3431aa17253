"""The oracle: what the pipeline should hold for each customer, by plain arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from domain.records import CallEvent, Event, PurchaseEvent


@dataclass(slots=True)
class Expected:
    """What the pipeline should hold for one customer, counted over distinct event ids."""

    customer_id: str
    events: int = 0
    purchases: int = 0  # returns excluded
    spend_minor: int = 0
    discounted_purchases: int = 0
    discounted_spend_minor: int = 0
    discount_minor: int = 0  # discounts on purchases (returns excluded)
    returns: int = 0
    refund_minor: int = 0
    calls: int = 0
    complaints: int = 0
    cancel_requests: int = 0
    unresolved_calls: int = 0
    visits: int = 0
    recognized_visits: int = 0
    first_seen_at: int | None = None
    last_seen_at: int | None = None
    first_purchase_at: int | None = None
    last_purchase_at: int | None = None


def expected_by_customer(events: Iterable[Event]) -> dict[str, Expected]:
    """Per-customer totals over distinct event ids (a resend counts once), by plain arithmetic.

    Deliberately written without :mod:`domain.relationship`: it is what that module and
    the ClickHouse rows are checked against.
    """
    seen: set[str] = set()
    result: dict[str, Expected] = {}
    for ev in events:
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        exp = result.get(ev.customer_id)
        if exp is None:
            exp = result[ev.customer_id] = Expected(ev.customer_id)
        exp.events += 1
        at = ev.occurred_at
        exp.first_seen_at = at if exp.first_seen_at is None else min(exp.first_seen_at, at)
        exp.last_seen_at = at if exp.last_seen_at is None else max(exp.last_seen_at, at)
        if isinstance(ev, PurchaseEvent) and ev.is_return:
            exp.returns += 1
            exp.refund_minor += ev.amount_minor
        elif isinstance(ev, PurchaseEvent):
            exp.purchases += 1
            exp.spend_minor += ev.amount_minor
            exp.discount_minor += ev.discount_minor
            if ev.discount_minor > 0 or ev.promo_code:
                exp.discounted_purchases += 1
                exp.discounted_spend_minor += ev.amount_minor
            exp.first_purchase_at = at if exp.first_purchase_at is None else min(exp.first_purchase_at, at)
            exp.last_purchase_at = at if exp.last_purchase_at is None else max(exp.last_purchase_at, at)
        elif isinstance(ev, CallEvent):
            exp.calls += 1
            exp.complaints += ev.reason == "complaint"
            exp.cancel_requests += ev.reason == "cancel_request"
            exp.unresolved_calls += not ev.resolved
        else:
            exp.visits += 1
            exp.recognized_visits += ev.recognized
    return result
