"""Input limits: each bound refuses exactly what breaks it, and names the field, not the value."""

from __future__ import annotations

import dataclasses

import pytest

from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent
from domain.validation import Limits, ValidationError, validate

NOW = 1_767_225_600_000
LIMITS = Limits(currency="EUR", future_skew_ms=300_000)
PURCHASE = PurchaseEvent("e1", "C0000001", NOW - 1000, "store", "o1", 1000, "EUR",
                         items=(PurchaseItem("sku", "shoes", 1, 1000),), location_id="S1")
CALL = CallEvent("e2", "C0000001", NOW - 1000, "inbound", "complaint", 10, 100, False, "A1", -0.5, 3, 7)
VISIT = VisitEvent("e3", "C0000001", NOW - 1000, "web", "site", 30, True, ("shoes",))


@pytest.mark.parametrize("event", [PURCHASE, CALL, VISIT], ids=["purchase", "call", "visit"])
def test_valid_events_pass(event):
    validate(event, LIMITS, NOW)


def test_edges_that_are_still_valid():
    validate(dataclasses.replace(PURCHASE, occurred_at=NOW + 300_000), LIMITS, NOW)
    validate(dataclasses.replace(PURCHASE, amount_minor=0), LIMITS, NOW)
    validate(dataclasses.replace(CALL, sentiment=1.0, effort_score=7, nps=0), LIMITS, NOW)


@pytest.mark.parametrize(
    "event, field",
    [
        (dataclasses.replace(PURCHASE, amount_minor=-1), "amount_minor"),
        (dataclasses.replace(PURCHASE, amount_minor=10**13), "amount_minor"),
        (dataclasses.replace(PURCHASE, discount_minor=-5), "discount_minor"),
        (dataclasses.replace(PURCHASE, currency="USD"), "currency"),
        (dataclasses.replace(PURCHASE, customer_id="bad id with spaces"), "customer_id"),
        (dataclasses.replace(PURCHASE, customer_id=""), "customer_id"),
        (dataclasses.replace(PURCHASE, customer_id="x" * 65), "customer_id"),
        (dataclasses.replace(PURCHASE, event_id=""), "event_id"),
        (dataclasses.replace(PURCHASE, occurred_at=0), "occurred_at"),
        (dataclasses.replace(PURCHASE, occurred_at=-1), "occurred_at"),
        (dataclasses.replace(PURCHASE, occurred_at=253_402_300_799_000), "occurred_at"),  # year 9999
        (dataclasses.replace(PURCHASE, occurred_at=NOW + 300_001), "occurred_at"),
        (dataclasses.replace(PURCHASE, promo_code="x" * 10_000_000), "promo_code"),
        (dataclasses.replace(PURCHASE, items=(PurchaseItem("s", "c", 1, 1),) * 501), "items"),
        (dataclasses.replace(PURCHASE, items=(PurchaseItem("s", "c", 0, 1),)), "items.quantity"),
        (dataclasses.replace(PURCHASE, items=(PurchaseItem("s", "", 1, 1),)), "items.category"),
        (dataclasses.replace(CALL, wait_seconds=-1), "wait_seconds"),
        (dataclasses.replace(CALL, duration_seconds=86_401), "duration_seconds"),
        (dataclasses.replace(CALL, sentiment=1.5), "sentiment"),
        (dataclasses.replace(CALL, effort_score=0), "effort_score"),
        (dataclasses.replace(CALL, nps=11), "nps"),
        (dataclasses.replace(CALL, reason="shouting"), "reason"),
        (dataclasses.replace(VISIT, categories_viewed=("c",) * 201), "categories_viewed"),
        (dataclasses.replace(VISIT, channel="fax"), "channel"),
        (dataclasses.replace(VISIT, location_id=""), "location_id"),
    ],
)
def test_each_limit_names_its_field(event, field):
    with pytest.raises(ValidationError) as caught:
        validate(event, LIMITS, NOW)
    assert str(caught.value).startswith(f"{field}:")


def test_reason_never_echoes_the_value():
    secret = "alice@example.com"
    with pytest.raises(ValidationError) as caught:
        validate(dataclasses.replace(PURCHASE, customer_id=secret), LIMITS, NOW)
    assert secret not in str(caught.value)


# -- the earliest accepted time (LOYALTY_EARLIEST_EVENT_TIME) ---------------------------------

Y1990 = 631_152_000_000  # 1990-01-01T00:00:00Z
Y1995_JUNE = 802_656_000_000  # 1995-06-09T00:00:00Z
Y2000 = 946_684_800_000  # 2000-01-01T00:00:00Z


@pytest.mark.parametrize(
    "earliest_ms, occurred_at, reason",
    [
        (Y2000, Y2000, None),  # the default bound itself is accepted
        (Y2000, Y2000 - 1, "occurred_at: before 2000-01-01 (LOYALTY_EARLIEST_EVENT_TIME)"),
        (Y2000, Y1995_JUNE, "occurred_at: before 2000-01-01 (LOYALTY_EARLIEST_EVENT_TIME)"),
        (Y1990, Y1995_JUNE, None),  # older purchase history, once the bound is moved
        (Y1990, Y1990, None),
        (Y1990, Y1990 - 1, "occurred_at: before 1990-01-01 (LOYALTY_EARLIEST_EVENT_TIME)"),
        (Y1990 + 45_296_789, Y1990 + 45_296_788,
         "occurred_at: before 1990-01-01T12:34:56.789Z (LOYALTY_EARLIEST_EVENT_TIME)"),
    ],
)
def test_the_earliest_time_is_a_limit(earliest_ms, occurred_at, reason):
    limits = Limits(currency="EUR", future_skew_ms=300_000, earliest_ms=earliest_ms)
    event = dataclasses.replace(PURCHASE, occurred_at=occurred_at)
    if reason is None:
        validate(event, limits, NOW)
        return
    with pytest.raises(ValidationError) as caught:
        validate(event, limits, NOW)
    assert str(caught.value) == reason


def test_the_default_earliest_time_is_2000():
    assert Limits(currency="EUR", future_skew_ms=0).earliest_ms == Y2000
