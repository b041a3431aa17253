"""Offline replay: JSON lines of events in, one loyalty signal per customer out. No Kafka.

Input: one JSON object per line,
``{"type": "purchase"|"call"|"visit", "event_id", "customer_id", "occurred_at", ...}``.
``occurred_at`` is ISO-8601 (``2024-05-01T12:00:00Z``; an offset is converted to UTC, no offset
means UTC) or an integer of epoch milliseconds. Beyond those, every field is optional except a
purchase's money:

* purchase: ``amount`` (decimal string or number in major units, converted exactly to minor units
  with the currency's ISO 4217 exponent) or ``amount_minor`` (integer); ``currency``.
  Defaults: channel ``"unknown"``, order_id = event_id, discount 0 (``discount`` in major units
  or ``discount_minor``), promo_code none, items ``[]`` (an item needs ``sku``; category
  ``"unknown"``, quantity 1, unit price 0 (``unit_price`` or ``unit_price_minor``)),
  is_return false, location_id none.
* call: direction ``"inbound"``, reason ``"other"``, wait_seconds 0, duration_seconds 0,
  resolved **true** (a missing outcome is not evidence of an open issue), agent_id
  ``"unknown"``, sentiment, effort_score and nps none.
* visit: channel ``"unknown"``, location_id ``"unknown"``, duration_seconds 0, recognized
  **false** (not recognised unless the source says so), categories_viewed ``[]``.

A line that is not such an event is reported with its line number and reason, skipped and
counted; then each event must pass :func:`domain.validation.validate` like a live one
(the future-time check aside: a replay is history). Duplicated event ids count once (the earliest
occurrence wins, so the file's order does not matter). Events after ``as_of`` are ignored. The
rest are sorted by ``(occurred_at, event_id)`` and folded with
:func:`domain.relationship.apply_event`, exactly as the stream worker folds them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from domain.model.churn import BgNbdParams, fit_bgnbd
from domain.model.churn_learned import LearnedChurnModel
from domain.model.signals import DEFAULT_HORIZON_DAYS, LoyaltySignal, score_customer, signal_to_dict
from domain.records import CallEvent, Event, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import DAY_MS, Outcome, RelationshipState, apply_event
from domain.validation import EARLIEST_EVENT_MS, Limits, ValidationError, validate

DEFAULT_CURRENCY = "EUR"
"""Currency a replay accepts unless told otherwise (the worker's default, LOYALTY_CURRENCY)."""
REPLAY_ALLOWED_LATENESS_MS = DAY_MS
"""Sorted input is never late and duplicates are removed before folding, so the state's event-id
memory only needs to be short; short keeps apply_event's scans of it cheap."""
MAX_REPORTED_ERRORS = 1000
"""Invalid lines kept with their reasons; all of them are counted."""
CURRENCY_EXPONENTS = {
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}
"""ISO 4217 minor-unit exponents that are not 2."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidEvent(ValueError):
    """A line that is not a valid event; the message is the reason."""


@dataclass(frozen=True, slots=True)
class InvalidLine:
    line_no: int  # 1-based
    reason: str


@dataclass
class ParsedEvents:
    events: list[Event] = field(default_factory=list)
    invalid: list[InvalidLine] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS
    invalid_count: int = 0
    lines: int = 0  # non-blank lines read


@dataclass
class FoldResult:
    states: dict[str, RelationshipState]
    applied: int
    duplicates: int
    after_as_of: int


@dataclass(frozen=True)
class ReplaySummary:
    lines: int
    events_applied: int
    invalid_count: int
    invalid: list[InvalidLine]
    duplicates: int
    after_as_of: int
    customers: int
    as_of: int | None
    horizon_days: int
    params: BgNbdParams
    tier_counts: dict[str, int]
    out_path: str
    churn_model: int | None = None  # training buyers of the learned churn model; None: BG/NBD alone

    def format(self) -> str:
        p = self.params
        lines = [
            f"lines read        {self.lines}",
            f"events applied    {self.events_applied}",
            f"invalid lines     {self.invalid_count}",
            f"duplicates        {self.duplicates}",
            f"after as-of       {self.after_as_of}",
            f"customers scored  {self.customers}  -> {self.out_path}",
            f"BG/NBD ({p.source}, {p.buyers} buyers): r={p.r:.4g} alpha={p.alpha:.4g}d a={p.a:.4g} b={p.b:.4g}",
            "churn risk        " + ("BG/NBD (no learned model)" if self.churn_model is None
                                    else f"learned model trained on {self.churn_model} buyers"),
            "tiers             " + ", ".join(f"{t}={n}" for t, n in sorted(self.tier_counts.items())),
        ]
        lines += [f"  line {e.line_no}: {e.reason}" for e in self.invalid[:20]]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading.


def read_events(lines: Iterable[str], currency: str = DEFAULT_CURRENCY,
                earliest_ms: int = EARLIEST_EVENT_MS) -> ParsedEvents:
    """Parse and validate JSON lines; invalid ones are reported, not raised. Blank lines are skipped."""
    parsed = ParsedEvents()
    limits = Limits(currency=currency, future_skew_ms=0, earliest_ms=earliest_ms)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed.lines += 1
        try:
            event = parse_event(_load(line))
            validate(event, limits, now_ms=event.occurred_at)
        except (InvalidEvent, ValidationError) as exc:
            parsed.invalid_count += 1
            if len(parsed.invalid) < MAX_REPORTED_ERRORS:
                parsed.invalid.append(InvalidLine(line_no, str(exc)))
            continue
        parsed.events.append(event)
    return parsed


def read_events_file(path: str | Path, currency: str = DEFAULT_CURRENCY,
                     earliest_ms: int = EARLIEST_EVENT_MS) -> ParsedEvents:
    with open(path, encoding="utf-8") as handle:
        return read_events(handle, currency, earliest_ms)


def _load(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line, parse_float=Decimal)
    except ValueError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEvent("not a JSON object")
    return data


def parse_event(data: dict[str, Any]) -> Event:
    """One event from a decoded JSON object, with the documented defaults."""
    kind = data.get("type")
    if kind not in ("purchase", "call", "visit"):
        raise InvalidEvent(f"type: must be purchase, call or visit, not {kind!r}")
    event_id = _str(data, "event_id")
    customer_id = _str(data, "customer_id")
    occurred_at = _timestamp(data)
    if kind == "purchase":
        currency = _str(data, "currency")
        return PurchaseEvent(
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
            channel=_str(data, "channel", "unknown"),
            order_id=_str(data, "order_id", event_id),
            amount_minor=_money(data, "amount", currency, required=True),
            currency=currency,
            discount_minor=_money(data, "discount", currency),
            promo_code=_opt_str(data, "promo_code"),
            items=tuple(_item(item, currency) for item in _list(data, "items")),
            is_return=_bool(data, "is_return", False),
            location_id=_opt_str(data, "location_id"),
        )
    if kind == "call":
        return CallEvent(
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
            direction=_str(data, "direction", "inbound"),
            reason=_str(data, "reason", "other"),
            wait_seconds=_int(data, "wait_seconds", 0),
            duration_seconds=_int(data, "duration_seconds", 0),
            resolved=_bool(data, "resolved", True),
            agent_id=_str(data, "agent_id", "unknown"),
            sentiment=_opt_float(data, "sentiment"),
            effort_score=_opt_int(data, "effort_score"),
            nps=_opt_int(data, "nps"),
        )
    if kind == "visit":
        viewed = _list(data, "categories_viewed")
        if not all(isinstance(c, str) for c in viewed):
            raise InvalidEvent("categories_viewed: must be a list of strings")
        return VisitEvent(
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
            channel=_str(data, "channel", "unknown"),
            location_id=_str(data, "location_id", "unknown"),
            duration_seconds=_int(data, "duration_seconds", 0),
            recognized=_bool(data, "recognized", False),
            categories_viewed=tuple(viewed),
        )
    raise AssertionError(kind)  # unreachable: checked above


_MISSING = object()


def _str(data: dict[str, Any], name: str, default: Any = _MISSING) -> str:
    """A required (no default) or defaulted string; null counts as absent."""
    value = data.get(name)
    if value is None:
        if default is _MISSING:
            raise InvalidEvent(f"{name}: missing")
        return default
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name}: must be a non-empty string")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidEvent(f"{name}: must be a string or null")
    return value


def _int(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{name}: must be an integer")
    return value


def _opt_int(data: dict[str, Any], name: str) -> int | None:
    return None if data.get(name) is None else _int(data, name, 0)


def _opt_float(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise InvalidEvent(f"{name}: must be a number")
    if isinstance(value, Decimal) and not value.is_finite():
        raise InvalidEvent(f"{name}: must be a finite number")
    return float(value)


def _bool(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidEvent(f"{name}: must be true or false")
    return value


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidEvent(f"{name}: must be a list")
    return value


def _timestamp(data: dict[str, Any]) -> int:
    value = data.get("occurred_at")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise InvalidEvent("occurred_at: missing, or not an ISO-8601 string or epoch milliseconds")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidEvent(f"occurred_at: not ISO-8601 ({exc})") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _money(data: dict[str, Any], name: str, currency: str, required: bool = False) -> int:
    """``name`` in major units or ``name_minor`` in minor units, as exact integer minor units."""
    major, minor = data.get(name), data.get(f"{name}_minor")
    if major is not None and minor is not None:
        raise InvalidEvent(f"{name}: give {name} or {name}_minor, not both")
    if minor is not None:
        if isinstance(minor, bool) or not isinstance(minor, int):
            raise InvalidEvent(f"{name}_minor: must be an integer")
        return minor
    if major is None:
        if required:
            raise InvalidEvent(f"{name}: missing ({name} or {name}_minor)")
        return 0
    if isinstance(major, bool) or not isinstance(major, (str, int, Decimal)):
        raise InvalidEvent(f"{name}: must be a decimal string or a number")
    try:
        amount = Decimal(major) if not isinstance(major, Decimal) else major
    except InvalidOperation as exc:
        raise InvalidEvent(f"{name}: not a decimal number") from exc
    if not amount.is_finite():
        raise InvalidEvent(f"{name}: not a finite number")
    scaled = amount.scaleb(CURRENCY_EXPONENTS.get(currency, 2))
    if scaled != scaled.to_integral_value():
        raise InvalidEvent(f"{name}: more decimal places than {currency} has")
    return int(scaled)


def _item(data: Any, currency: str) -> PurchaseItem:
    if not isinstance(data, dict):
        raise InvalidEvent("items: each item must be an object")
    return PurchaseItem(
        sku=_str(data, "sku"),
        category=_str(data, "category", "unknown"),
        quantity=_int(data, "quantity", 1),
        unit_price_minor=_money(data, "unit_price", currency),
    )


# ---------------------------------------------------------------------------------------------
# Folding and scoring.


def fold_events(events: Iterable[Event], as_of: int) -> FoldResult:
    """States of every customer from the events at or before ``as_of``, in any input order."""
    unique: dict[str, Event] = {}
    duplicates = after = 0
    for event in events:
        if event.occurred_at > as_of:
            after += 1
            continue
        kept = unique.get(event.event_id)
        if kept is None:
            unique[event.event_id] = event
            continue
        duplicates += 1
        # The earliest copy wins; an exact tie is broken by content, never by input order.
        if (event.occurred_at, repr(event)) < (kept.occurred_at, repr(kept)):
            unique[event.event_id] = event
    states: dict[str, RelationshipState] = {}
    applied = 0
    for event in sorted(unique.values(), key=lambda e: (e.occurred_at, e.event_id)):
        state = states.get(event.customer_id)
        if state is None:
            state = states[event.customer_id] = RelationshipState(event.customer_id)
        outcome = apply_event(state, event, REPLAY_ALLOWED_LATENESS_MS)
        if outcome is Outcome.APPLIED:
            applied += 1
        else:  # cannot happen for sorted, deduplicated input; counted rather than hidden
            duplicates += 1
    return FoldResult(states, applied, duplicates, after)


def score_states(
    states: dict[str, RelationshipState], as_of: int | None, horizon_days: int = DEFAULT_HORIZON_DAYS,
    params: BgNbdParams | None = None, learned: LearnedChurnModel | None = None,
) -> tuple[BgNbdParams, list[LoyaltySignal]]:
    """Score every customer (sorted by customer id), fitting BG/NBD on the population unless
    ``params`` are given; ``learned`` is the churn model (None: BG/NBD's risk).

    ``as_of=None`` scores each customer as of their own newest event, as the stream worker does.
    """
    if params is None:
        fit_at = as_of if as_of is not None else max((s.last_seen_at or 0) for s in states.values()) if states else 0
        params = fit_bgnbd(states.values(), fit_at)
    signals = [
        score_customer(states[cid], as_of if as_of is not None else states[cid].last_seen_at or 0, params,
                       horizon_days, learned)
        for cid in sorted(states)
    ]
    return params, signals


def run_replay(
    events_path: str | Path,
    as_of_ms: int | None,
    out_path: str | Path,
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    currency: str = DEFAULT_CURRENCY,
    params: BgNbdParams | None = None,
    earliest_ms: int = EARLIEST_EVENT_MS,
    learned: LearnedChurnModel | None | str = "fit",
) -> ReplaySummary:
    """Replay a JSON-lines event file as of ``as_of_ms`` and write one signal per line to ``out_path``.

    ``as_of_ms=None`` ("latest") scores each customer as of their own newest event, like the
    stream; ``params`` pins the BG/NBD parameters instead of fitting them on the file.
    ``learned`` is the churn model: ``"fit"`` trains it on the file as of ``as_of_ms`` (the
    newest event for "latest"), as the sink's refit does on its history; None uses BG/NBD alone.
    """
    from domain.model.churn_training import train_churn_model  # imports this module

    parsed = read_events_file(events_path, currency, earliest_ms)
    folded = fold_events(parsed.events, as_of_ms if as_of_ms is not None else 2**62)
    if learned == "fit":
        newest = max((e.occurred_at for e in parsed.events), default=0)
        learned = train_churn_model(parsed.events, (as_of_ms if as_of_ms is not None else newest) + 1, horizon_days)
    elif isinstance(learned, str):
        raise ValueError(f"learned must be a model, None or 'fit', not {learned!r}")
    params, signals = score_states(folded.states, as_of_ms, horizon_days, params, learned)
    with open(out_path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(signal_to_dict(signal), separators=(",", ":")) + "\n" for signal in signals)
    return ReplaySummary(
        lines=parsed.lines,
        events_applied=folded.applied,
        invalid_count=parsed.invalid_count,
        invalid=parsed.invalid,
        duplicates=folded.duplicates,
        after_as_of=folded.after_as_of,
        customers=len(signals),
        as_of=as_of_ms,
        horizon_days=horizon_days,
        params=params,
        tier_counts=dict(Counter(s.tier for s in signals)),
        out_path=str(out_path),
        churn_model=None if learned is None else learned.buyers,
    )
