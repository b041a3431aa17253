"""The alert record, its deterministic id and its Avro datum (``schemas/alert.avsc``). Pure.

An alert carries what a receiver needs to act without a lookup: what happened (kind, severity,
before/after), why (the score components that moved most) and who this is (the know-me context).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

ALERT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty-stream:alert")
"""Namespace of alert ids (uuid5): fixed forever, or replayed alerts would get new ids."""
EXPLANATION_SIZE = 3


def alert_id(customer_id: str, kind: str, raised_at: int) -> str:
    """uuid5 of ``customer_id|kind|raised_at``: the same episode always gets the same id.

    ``raised_at`` is the event time the episode started, so a replay of the same events (or a
    retry after a crash) yields the same id, and receivers can deduplicate on it.
    """
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{customer_id}|{kind}|{raised_at}"))


@dataclass(frozen=True, slots=True)
class ComponentChange:
    component: str
    before: float
    after: float
    change: float


@dataclass(frozen=True, slots=True)
class AlertContext:
    """The customer's know-me context at the time of the alert (from the loyalty signal)."""

    last_purchase_at: int | None
    last_purchase_categories: list[str]
    last_purchase_channel: str | None
    last_purchase_location_id: str | None
    favourite_category: str | None
    preferred_channel: str | None
    open_issues: int
    greeting_hint: str
    expected_next_purchase_at: int | None
    churn_risk: float


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    customer_id: str
    kind: str
    severity: str
    raised_at: int
    model_version: str
    summary: str
    before_score: float | None
    after_score: float
    before_tier: str | None
    after_tier: str
    tier_reason: str
    measure: str
    measure_before: float | None
    measure_after: float
    threshold: float
    explanation: list[ComponentChange] = field(default_factory=list)
    context: AlertContext | None = None
    # Set by the worker when it publishes the alert (:func:`domain.alerts.stamp`): the rules have
    # no clock, and the same episode keeps its id whenever it is evaluated.
    processed_at: int | None = None
    historical: bool = False


ALERT_FIELDS = tuple(Alert.__dataclass_fields__)
STAMP_FIELDS = ("processed_at", "historical")  # added to alert.avsc later, with defaults
CONTEXT_FIELDS = tuple(AlertContext.__dataclass_fields__)


def top_changes(before: dict[str, float], after: dict[str, float], n: int = EXPLANATION_SIZE) -> list[ComponentChange]:
    """The ``n`` components with the largest absolute change (unchanged ones left out).

    Ties go to the component listed first in ``after`` (the model's weight order).
    """
    changes = [
        ComponentChange(name, before[name], value, round(value - before[name], 2))
        for name, value in after.items() if name in before and round(value - before[name], 2) != 0
    ]
    order = {name: i for i, name in enumerate(after)}
    changes.sort(key=lambda c: (-abs(c.change), order[c.component]))
    return changes[:n]


def alert_to_dict(alert: Alert) -> dict[str, object]:
    """The datum of ``schemas/alert.avsc``: same field names and order; JSON-able as it is."""
    data: dict[str, object] = {name: getattr(alert, name) for name in ALERT_FIELDS}
    data["explanation"] = [
        {"component": c.component, "before": c.before, "after": c.after, "change": c.change} for c in alert.explanation
    ]
    ctx = alert.context
    data["context"] = None if ctx is None else {
        name: (list(value) if isinstance(value, list) else value)
        for name in CONTEXT_FIELDS for value in (getattr(ctx, name),)
    }
    return data


def alert_from_dict(data: dict) -> Alert:
    """The inverse of :func:`alert_to_dict` (for receivers and tests)."""
    ctx = data.get("context")
    return Alert(
        **{name: data[name] for name in ALERT_FIELDS if name not in ("explanation", "context", *STAMP_FIELDS)},
        processed_at=data.get("processed_at"), historical=bool(data.get("historical", False)),
        explanation=[ComponentChange(**c) for c in data.get("explanation") or ()],
        context=None if ctx is None else AlertContext(
            **{**ctx, "last_purchase_categories": list(ctx["last_purchase_categories"])}),
    )
