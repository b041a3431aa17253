"""Per-customer relationship state, kept in event time.

Pure Python: no Faust, Kafka or ClickHouse imports and no clock reads. The stream worker and
the offline replay both fold events into a :class:`RelationshipState` with :func:`apply_event`,
so they agree by construction.

Why the state looks the way it does: every part of it is an order-independent fold, so events
that arrive out of order, however late, give exactly the same state as sorted ones.

* Counts and sums live in per-day :class:`Tally` buckets plus a lifetime tally. Rolling 7/30/90/365
  day windows are sums over buckets as of a time; buckets older than the longest window are
  pruned, which cannot change any window that is still asked for.
* Sentiment is summed in integer thousandths, because float addition depends on order.
* "Last purchase" and "first/last seen" are maxima and minima, ties broken by event id.
* Purchase rhythm (gaps between purchases) comes from the most recent purchase times kept as a
  sorted list: the top *k* of a set does not depend on the order it was built in.
* Event ids are remembered for a horizon of *arrival* time (the Kafka record timestamp), so an
  upstream resend or a replay after a crash is recognised and counted once. Arrival time, not
  event time, bounds that memory because resends and replays are close to the original in
  arrival, however old the event itself is.

Lateness needs no bound for correctness: an event of any age folds into the same state.
An event older than the longest window (365 days) before the customer's newest event counts in
the lifetime figures only, exactly as it would had it arrived in order and aged out since.
"""

from __future__ import annotations

import bisect
import enum
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from itertools import chain

from domain.records import CallEvent, Event, PurchaseEvent, VisitEvent

DAY_MS = 86_400_000
WINDOWS_DAYS = (7, 30, 90, 365)
LONGEST_WINDOW_DAYS = max(WINDOWS_DAYS)
RECENT_PURCHASES_KEPT = 64
MAX_CATEGORIES = 200
LAST_PURCHASE_ITEMS_KEPT = 10


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class Tally:
    """Additive counters for one day, or for a customer's whole history."""

    purchases: int = 0
    spend_minor: int = 0
    discounted_purchases: int = 0
    discounted_spend_minor: int = 0
    discount_minor: int = 0
    returns: int = 0
    refund_minor: int = 0
    calls: int = 0
    complaints: int = 0
    cancel_requests: int = 0
    unresolved_calls: int = 0
    wait_seconds: int = 0
    sentiment_milli_sum: int = 0
    sentiment_n: int = 0
    effort_sum: int = 0
    effort_n: int = 0
    nps_sum: int = 0
    nps_n: int = 0
    visits: int = 0
    recognized_visits: int = 0

    def __init__(self, purchases: int = 0, spend_minor: int = 0, discounted_purchases: int = 0,
                 discounted_spend_minor: int = 0, discount_minor: int = 0, returns: int = 0, refund_minor: int = 0,
                 calls: int = 0, complaints: int = 0, cancel_requests: int = 0, unresolved_calls: int = 0,
                 wait_seconds: int = 0, sentiment_milli_sum: int = 0, sentiment_n: int = 0, effort_sum: int = 0,
                 effort_n: int = 0, nps_sum: int = 0, nps_n: int = 0, visits: int = 0, recognized_visits: int = 0) -> None:
        # Written out: see domain/__init__.py, "Value classes" (a tally per event and per window).
        self.purchases = purchases
        self.spend_minor = spend_minor
        self.discounted_purchases = discounted_purchases
        self.discounted_spend_minor = discounted_spend_minor
        self.discount_minor = discount_minor
        self.returns = returns
        self.refund_minor = refund_minor
        self.calls = calls
        self.complaints = complaints
        self.cancel_requests = cancel_requests
        self.unresolved_calls = unresolved_calls
        self.wait_seconds = wait_seconds
        self.sentiment_milli_sum = sentiment_milli_sum
        self.sentiment_n = sentiment_n
        self.effort_sum = effort_sum
        self.effort_n = effort_n
        self.nps_sum = nps_sum
        self.nps_n = nps_n
        self.visits = visits
        self.recognized_visits = recognized_visits

    def add(self, other: Tally) -> None:
        # Written out field by field: this is the innermost loop of every window sum.
        self.purchases += other.purchases
        self.spend_minor += other.spend_minor
        self.discounted_purchases += other.discounted_purchases
        self.discounted_spend_minor += other.discounted_spend_minor
        self.discount_minor += other.discount_minor
        self.returns += other.returns
        self.refund_minor += other.refund_minor
        self.calls += other.calls
        self.complaints += other.complaints
        self.cancel_requests += other.cancel_requests
        self.unresolved_calls += other.unresolved_calls
        self.wait_seconds += other.wait_seconds
        self.sentiment_milli_sum += other.sentiment_milli_sum
        self.sentiment_n += other.sentiment_n
        self.effort_sum += other.effort_sum
        self.effort_n += other.effort_n
        self.nps_sum += other.nps_sum
        self.nps_n += other.nps_n
        self.visits += other.visits
        self.recognized_visits += other.recognized_visits


TALLY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Tally))
assert len(TALLY_FIELDS) == 20, "Tally.add must name every field"


@dataclass(slots=True)
class ChannelSeen:
    first_at: int
    last_at: int
    purchases: int = 0
    visits: int = 0
    calls: int = 0

    def __init__(self, first_at: int, last_at: int, purchases: int = 0, visits: int = 0, calls: int = 0) -> None:
        self.first_at = first_at
        self.last_at = last_at
        self.purchases = purchases
        self.visits = visits
        self.calls = calls


@dataclass(slots=True)
class LastPurchase:
    occurred_at: int
    event_id: str
    order_id: str
    channel: str
    location_id: str | None
    amount_minor: int
    currency: str
    categories: list[str]
    skus: list[str]

    def __init__(self, occurred_at: int, event_id: str, order_id: str, channel: str, location_id: str | None,
                 amount_minor: int, currency: str, categories: list[str], skus: list[str]) -> None:
        self.occurred_at = occurred_at
        self.event_id = event_id
        self.order_id = order_id
        self.channel = channel
        self.location_id = location_id
        self.amount_minor = amount_minor
        self.currency = currency
        self.categories = categories
        self.skus = skus


@dataclass(slots=True)
class RelationshipState:
    customer_id: str
    events_applied: int = 0
    first_seen_at: int | None = None
    last_seen_at: int | None = None
    first_purchase_at: int | None = None
    lifetime: Tally = field(default_factory=Tally)
    days: dict[int, Tally] = field(default_factory=dict)
    channels: dict[str, ChannelSeen] = field(default_factory=dict)
    categories_bought: dict[str, int] = field(default_factory=dict)
    categories_viewed: dict[str, int] = field(default_factory=dict)
    recent_purchase_at: list[int] = field(default_factory=list)
    last_purchase: LastPurchase | None = None
    last_received_at: int | None = None
    # event id -> arrival time, oldest arrival first (the order records arrive in)
    seen_events: dict[str, int] = field(default_factory=dict)
    # (events_applied, days, as_of day) -> window sum: the model, the facts and the alert rules
    # all ask for the same few windows of one state. Not part of the state's value.
    _windows: dict[tuple[int, int, int], Tally] = field(default_factory=dict, repr=False, compare=False)
    # (events_applied, value) of the rhythm and of the purchase days, asked for by the model, the
    # churn summary and the facts alike; recomputed once another event is applied.
    _rhythm: tuple[int, Rhythm] | None = field(default=None, repr=False, compare=False)
    _purchase_days: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    def __init__(self, customer_id: str, events_applied: int = 0, first_seen_at: int | None = None,
                 last_seen_at: int | None = None, first_purchase_at: int | None = None, lifetime: Tally | None = None,
                 days: dict[int, Tally] | None = None, channels: dict[str, ChannelSeen] | None = None,
                 categories_bought: dict[str, int] | None = None, categories_viewed: dict[str, int] | None = None,
                 recent_purchase_at: list[int] | None = None, last_purchase: LastPurchase | None = None,
                 last_received_at: int | None = None, seen_events: dict[str, int] | None = None,
                 _windows: dict[tuple[int, int, int], Tally] | None = None, _rhythm: tuple[int, Rhythm] | None = None,
                 _purchase_days: tuple[int, int] | None = None) -> None:
        # None for a container: a new empty one, as the fields' default factories give.
        self.customer_id = customer_id
        self.events_applied = events_applied
        self.first_seen_at = first_seen_at
        self.last_seen_at = last_seen_at
        self.first_purchase_at = first_purchase_at
        self.lifetime = Tally() if lifetime is None else lifetime
        self.days = {} if days is None else days
        self.channels = {} if channels is None else channels
        self.categories_bought = {} if categories_bought is None else categories_bought
        self.categories_viewed = {} if categories_viewed is None else categories_viewed
        self.recent_purchase_at = [] if recent_purchase_at is None else recent_purchase_at
        self.last_purchase = last_purchase
        self.last_received_at = last_received_at
        self.seen_events = {} if seen_events is None else seen_events
        self._windows = {} if _windows is None else _windows
        self._rhythm = _rhythm
        self._purchase_days = _purchase_days

    @property
    def version(self) -> int:
        """Grows with every applied event: the row version ClickHouse keeps the latest of."""
        return self.events_applied


def apply_event(
    state: RelationshipState, event: Event, dedup_horizon_ms: int, received_at: int | None = None
) -> Outcome:
    """Fold one event into the customer's state, in place.

    ``received_at`` is when the event arrived (the Kafka record timestamp; offline replay passes
    nothing and the event time stands in). Ids are remembered for ``dedup_horizon_ms`` of arrival
    time. Validation (bounds, formats) happens before this; see :mod:`domain.validation`.
    """
    if event.customer_id != state.customer_id:
        raise ValueError(f"event {event.event_id} is for {event.customer_id}, not {state.customer_id}")
    if event.event_id in state.seen_events:
        return Outcome.DUPLICATE
    arrival = event.occurred_at if received_at is None else received_at
    state.last_received_at = arrival if state.last_received_at is None else max(state.last_received_at, arrival)
    state.seen_events[event.event_id] = arrival
    _forget_events_before(state, state.last_received_at - dedup_horizon_ms)

    at = event.occurred_at
    state.events_applied += 1
    state.first_seen_at = at if state.first_seen_at is None else min(state.first_seen_at, at)
    state.last_seen_at = at if state.last_seen_at is None else max(state.last_seen_at, at)

    delta = _tally_of(event)
    state.lifetime.add(delta)
    day = at // DAY_MS
    newest_day = state.last_seen_at // DAY_MS
    if day > newest_day - LONGEST_WINDOW_DAYS:
        bucket = state.days.get(day)
        if bucket is None:
            bucket = state.days[day] = Tally()
        bucket.add(delta)
    _prune_days(state, newest_day)
    _touch_channel(state, event)

    if isinstance(event, PurchaseEvent):
        _apply_purchase(state, event)
    elif isinstance(event, VisitEvent):
        for category in event.categories_viewed:
            _count(state.categories_viewed, category, 1)
    return Outcome.APPLIED


def apply_events(
    state: RelationshipState, events: Iterable[Event], dedup_horizon_ms: int
) -> dict[Outcome, int]:
    """Apply several events (arrival time = event time); return how many ended in each outcome."""
    outcomes = {outcome: 0 for outcome in Outcome}
    for event in events:
        outcomes[apply_event(state, event, dedup_horizon_ms)] += 1
    return outcomes


def _tally_of(event: Event) -> Tally:
    tally = Tally()
    if isinstance(event, PurchaseEvent):
        if event.is_return:
            tally.returns = 1
            tally.refund_minor = event.amount_minor
        else:
            tally.purchases = 1
            tally.spend_minor = event.amount_minor
            tally.discount_minor = event.discount_minor
            if event.discounted:
                tally.discounted_purchases = 1
                tally.discounted_spend_minor = event.amount_minor
    elif isinstance(event, CallEvent):
        tally.calls = 1
        tally.complaints = int(event.reason == "complaint")
        tally.cancel_requests = int(event.reason == "cancel_request")
        tally.unresolved_calls = int(not event.resolved)
        tally.wait_seconds = event.wait_seconds
        if event.sentiment is not None:
            tally.sentiment_milli_sum = round(event.sentiment * 1000)
            tally.sentiment_n = 1
        if event.effort_score is not None:
            tally.effort_sum = event.effort_score
            tally.effort_n = 1
        if event.nps is not None:
            tally.nps_sum = event.nps
            tally.nps_n = 1
    else:
        tally.visits = 1
        tally.recognized_visits = int(event.recognized)
    return tally


def _touch_channel(state: RelationshipState, event: Event) -> None:
    channel = "phone" if isinstance(event, CallEvent) else event.channel
    seen = state.channels.get(channel)
    if seen is None:
        seen = state.channels[channel] = ChannelSeen(first_at=event.occurred_at, last_at=event.occurred_at)
    else:
        seen.first_at = min(seen.first_at, event.occurred_at)
        seen.last_at = max(seen.last_at, event.occurred_at)
    if isinstance(event, PurchaseEvent):
        seen.purchases += 0 if event.is_return else 1
    elif isinstance(event, CallEvent):
        seen.calls += 1
    else:
        seen.visits += 1


def _apply_purchase(state: RelationshipState, event: PurchaseEvent) -> None:
    if event.is_return:
        return
    at = event.occurred_at
    state.first_purchase_at = at if state.first_purchase_at is None else min(state.first_purchase_at, at)
    for item in event.items:
        _count(state.categories_bought, item.category, item.quantity)
    recent = state.recent_purchase_at
    bisect.insort(recent, at)
    if len(recent) > RECENT_PURCHASES_KEPT:
        del recent[: len(recent) - RECENT_PURCHASES_KEPT]
    last = state.last_purchase
    if last is None or (at, event.event_id) > (last.occurred_at, last.event_id):
        state.last_purchase = LastPurchase(
            occurred_at=at,
            event_id=event.event_id,
            order_id=event.order_id,
            channel=event.channel,
            location_id=event.location_id,
            amount_minor=event.amount_minor,
            currency=event.currency,
            categories=sorted({item.category for item in event.items}),
            skus=[item.sku for item in event.items[:LAST_PURCHASE_ITEMS_KEPT]],
        )


def _count(counter: dict[str, int], key: str, n: int) -> None:
    if key in counter or len(counter) < MAX_CATEGORIES:
        counter[key] = counter.get(key, 0) + n


def _forget_events_before(state: RelationshipState, horizon: int) -> None:
    # Ids sit in arrival order, so expired ones are at the front: this stops at the first live
    # one and costs O(1) per event. An id that arrived out of timestamp order is forgotten a
    # little later, once the ids before it have gone.
    seen = state.seen_events
    while seen:
        event_id, arrived = next(iter(seen.items()))
        if arrived >= horizon:
            break
        del seen[event_id]


def _prune_days(state: RelationshipState, newest_day: int) -> None:
    oldest_kept = newest_day - LONGEST_WINDOW_DAYS + 1
    if state.days and min(state.days) < oldest_kept:
        for day in [d for d in state.days if d < oldest_kept]:
            del state.days[day]


# ---------------------------------------------------------------------------------------------
# Reading the state: windows and derived facts.


def window(state: RelationshipState, days: int, as_of: int) -> Tally:
    """Sum of the day buckets in the ``days`` days up to and including ``as_of``'s day.

    The result is shared (memoised per state version): read it, do not add to it.
    """
    if days > LONGEST_WINDOW_DAYS:
        raise ValueError(f"windows are kept for at most {LONGEST_WINDOW_DAYS} days, not {days}")
    last_day = as_of // DAY_MS
    key = (state.events_applied, days, last_day)
    cached = state._windows.get(key)
    if cached is None:
        if len(state._windows) > 32:
            state._windows.clear()
        first_day = last_day - days + 1
        cached = Tally()
        for day, tally in state.days.items():
            if first_day <= day <= last_day:
                cached.add(tally)
        state._windows[key] = cached
    return cached


@dataclass(slots=True, unsafe_hash=True)
class Rhythm:
    """The customer's own purchase rhythm, from the most recent purchases."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    purchases_seen: int
    mean_gap_days: float | None
    gap_stddev_days: float | None

    def __init__(self, purchases_seen: int, mean_gap_days: float | None, gap_stddev_days: float | None) -> None:
        self.purchases_seen = purchases_seen
        self.mean_gap_days = mean_gap_days
        self.gap_stddev_days = gap_stddev_days


def purchase_rhythm(state: RelationshipState) -> Rhythm:
    memo = state._rhythm
    if memo is not None and memo[0] == state.events_applied:
        return memo[1]
    times = state.recent_purchase_at
    gaps = [(b - a) / DAY_MS for a, b in zip(times, times[1:])]
    if not gaps:
        rhythm = Rhythm(len(times), None, None)
    else:
        mean = sum(gaps) / len(gaps)
        variance = sum((g - mean) ** 2 for g in gaps) / len(gaps)
        rhythm = Rhythm(len(times), round(mean, 6), round(math.sqrt(variance), 6))
    state._rhythm = (state.events_applied, rhythm)
    return rhythm


def purchase_days(state: RelationshipState) -> int:
    """Distinct days (UTC) with at least one purchase (not a return), over the whole history.

    Several purchases on one day are one transaction for the churn model. Exact from what the
    state keeps: the day buckets of the last 365 days, plus the 64 most recent purchase times for
    days before those buckets. Purchases older than both count one day each (then, and only then,
    two purchases on one such day count twice).
    """
    if state.lifetime.purchases == 0:
        return 0
    memo = state._purchase_days
    if memo is not None and memo[0] == state.events_applied:
        return memo[1]
    oldest_kept = (state.last_seen_at or 0) // DAY_MS - LONGEST_WINDOW_DAYS + 1
    days: set[int] = set()
    covered = 0
    for day, tally in state.days.items():
        if tally.purchases and day >= oldest_kept:
            days.add(day)
            covered += tally.purchases
    for at in state.recent_purchase_at:
        day = at // DAY_MS
        if day < oldest_kept:
            days.add(day)
            covered += 1
    count = len(days) + max(0, state.lifetime.purchases - covered)
    state._purchase_days = (state.events_applied, count)
    return count


def favourite(counter: dict[str, int]) -> str | None:
    """The key with the highest count; ties go to the alphabetically first key."""
    if not counter:
        return None
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def preferred_channel(state: RelationshipState) -> str | None:
    """Channel with the most purchases, then the most visits; ties alphabetical."""
    if not state.channels:
        return None
    return min(
        state.channels.items(), key=lambda kv: (-kv[1].purchases, -kv[1].visits, -kv[1].calls, kv[0])
    )[0]


# ---------------------------------------------------------------------------------------------
# Plain-dict form, the datum of ``schemas/relationship_state.avsc``.


def state_to_dict(state: RelationshipState) -> dict:
    """The Avro datum of a state (lists sorted, so equal states give equal bytes).

    Day buckets go out as two parallel arrays (day numbers, and their counters flattened in
    :data:`TALLY_FIELDS` order), the layout of schema version 2.
    """
    day_numbers = sorted(state.days)
    day_counters: list[int] = []
    for day in day_numbers:
        day_counters.extend(_tally_values(state.days[day]))
    return {
        "customer_id": state.customer_id,
        "events_applied": state.events_applied,
        "first_seen_at": state.first_seen_at,
        "last_seen_at": state.last_seen_at,
        "first_purchase_at": state.first_purchase_at,
        "lifetime": _tally_dict(state.lifetime),
        "days": [],
        "day_numbers": day_numbers,
        "day_counters": day_counters,
        "channels": [
            {"channel": name, "first_at": c.first_at, "last_at": c.last_at,
             "purchases": c.purchases, "visits": c.visits, "calls": c.calls}
            for name, c in sorted(state.channels.items())
        ],
        "categories_bought": dict(sorted(state.categories_bought.items())),
        "categories_viewed": dict(sorted(state.categories_viewed.items())),
        "recent_purchase_at": list(state.recent_purchase_at),
        "last_purchase": None if state.last_purchase is None else {
            name: getattr(state.last_purchase, name) for name in LAST_PURCHASE_FIELDS
        },
        "last_received_at": state.last_received_at,
        "seen_events": [],
        "seen_event_ids": list(state.seen_events),
        "seen_received_at": list(state.seen_events.values()),
    }


def state_from_dict(data: dict) -> RelationshipState:
    """The state of a datum of any schema version (version 1 kept one record per day and per id)."""
    last = data.get("last_purchase")
    days = {d["day"]: Tally(**d["tally"]) for d in data.get("days", ())}
    width = len(TALLY_FIELDS)
    counters = data.get("day_counters") or ()
    for i, day in enumerate(data.get("day_numbers") or ()):
        days[day] = Tally(*counters[i * width:(i + 1) * width])
    seen_events = {s["event_id"]: s["received_at"] for s in data.get("seen_events", ())}
    seen_events.update(zip(data.get("seen_event_ids") or (), data.get("seen_received_at") or ()))
    return RelationshipState(
        customer_id=data["customer_id"],
        events_applied=data["events_applied"],
        first_seen_at=data.get("first_seen_at"),
        last_seen_at=data.get("last_seen_at"),
        first_purchase_at=data.get("first_purchase_at"),
        lifetime=Tally(**data["lifetime"]),
        days=days,
        channels={
            c["channel"]: ChannelSeen(c["first_at"], c["last_at"], c["purchases"], c["visits"], c["calls"])
            for c in data.get("channels", ())
        },
        categories_bought=dict(data.get("categories_bought") or {}),
        categories_viewed=dict(data.get("categories_viewed") or {}),
        recent_purchase_at=list(data.get("recent_purchase_at") or ()),
        last_purchase=None if last is None else LastPurchase(
            **{**last, "categories": list(last["categories"]), "skus": list(last["skus"])}),
        last_received_at=data.get("last_received_at"),
        seen_events=seen_events,
    )


def state_to_list(state: RelationshipState) -> list:
    """The state as one flat list of plain values (the body of the compact stored record).

    Positional, so it carries no field names: the stored record's version fixes the layout (see
    :func:`state_from_list`). Day buckets go out as their numbers and one flat list of counters in
    :data:`TALLY_FIELDS` order; maps and channels sorted, so equal states give equal values.
    """
    days = state.days
    day_numbers = sorted(days)
    counters = list(chain.from_iterable(map(_tally_values, map(days.__getitem__, day_numbers))))
    last = state.last_purchase
    return [
        state.customer_id, state.events_applied, state.first_seen_at, state.last_seen_at,
        state.first_purchase_at, state.last_received_at, list(_tally_values(state.lifetime)),
        day_numbers, counters,
        [[name, c.first_at, c.last_at, c.purchases, c.visits, c.calls] for name, c in sorted(state.channels.items())],
        sorted(state.categories_bought.items()), sorted(state.categories_viewed.items()),
        state.recent_purchase_at,
        None if last is None else [last.occurred_at, last.event_id, last.order_id, last.channel, last.location_id,
                                   last.amount_minor, last.currency, last.categories, last.skus],
        list(state.seen_events), list(state.seen_events.values()),
    ]


def state_from_list(values: list) -> RelationshipState:
    """The state of :func:`state_to_list`'s values."""
    (customer_id, events_applied, first_seen_at, last_seen_at, first_purchase_at, last_received_at, lifetime,
     day_numbers, counters, channels, bought, viewed, recent, last, seen_ids, seen_at) = values
    width = len(TALLY_FIELDS)
    return RelationshipState(
        customer_id=customer_id,
        events_applied=events_applied,
        first_seen_at=first_seen_at,
        last_seen_at=last_seen_at,
        first_purchase_at=first_purchase_at,
        lifetime=Tally(*lifetime),
        days={day: Tally(*counters[i * width:(i + 1) * width]) for i, day in enumerate(day_numbers)},
        channels={c[0]: ChannelSeen(*c[1:]) for c in channels},
        categories_bought=dict(bought),
        categories_viewed=dict(viewed),
        recent_purchase_at=recent,
        last_purchase=None if last is None else LastPurchase(*last),
        last_received_at=last_received_at,
        seen_events=dict(zip(seen_ids, seen_at)),
    )


def copy_state(state: RelationshipState) -> RelationshipState:
    """An independent copy of the state's value (its memoised windows and rhythm stay behind).

    Built field by field rather than with ``copy.deepcopy``, which rebuilds objects through
    ``__setstate__``: that failed on a compiled build's :class:`Rhythm` (then frozen), and a
    state's copy leaves the memoised values behind anyway."""
    last = state.last_purchase
    return RelationshipState(
        customer_id=state.customer_id,
        events_applied=state.events_applied,
        first_seen_at=state.first_seen_at,
        last_seen_at=state.last_seen_at,
        first_purchase_at=state.first_purchase_at,
        lifetime=Tally(*_tally_values(state.lifetime)),
        days={day: Tally(*_tally_values(tally)) for day, tally in state.days.items()},
        channels={name: ChannelSeen(c.first_at, c.last_at, c.purchases, c.visits, c.calls)
                  for name, c in state.channels.items()},
        categories_bought=dict(state.categories_bought),
        categories_viewed=dict(state.categories_viewed),
        recent_purchase_at=list(state.recent_purchase_at),
        last_purchase=None if last is None else LastPurchase(
            last.occurred_at, last.event_id, last.order_id, last.channel, last.location_id, last.amount_minor,
            last.currency, list(last.categories), list(last.skus)),
        last_received_at=state.last_received_at,
        seen_events=dict(state.seen_events),
    )


def _tally_dict(tally: Tally) -> dict[str, int]:
    return dict(zip(TALLY_FIELDS, _tally_values(tally)))


LAST_PURCHASE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LastPurchase))
_tally_values = operator.attrgetter(*TALLY_FIELDS)


# ---------------------------------------------------------------------------------------------
# Flat facts: one row of the relationships table in ClickHouse.


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else round(num / den, 6)


# The names of each window's facts, in row order, made once (facts() runs for every signal): the
# purchase, spend and discounted-spend names, then for the 30 and 90 day windows the service ones.
_WINDOW_FACT_NAMES: dict[int, tuple[str, str, str, tuple[str, ...]]] = {
    days: (f"purchases_{days}d", f"spend_{days}d_minor", f"discounted_spend_{days}d_minor",
           (f"calls_{days}d", f"complaints_{days}d", f"unresolved_calls_{days}d", f"avg_sentiment_{days}d",
            f"avg_effort_{days}d", f"visits_{days}d", f"recognized_share_{days}d") if days in (30, 90) else ())
    for days in WINDOWS_DAYS
}


def facts(state: RelationshipState, as_of: int | None = None) -> dict[str, object]:
    """The state as flat, named facts as of ``as_of`` (default: the customer's newest event)."""
    as_of = state.last_seen_at if as_of is None else as_of
    row: dict[str, object] = {
        "customer_id": state.customer_id,
        "version": state.version,
        "events": state.events_applied,
        "first_seen_at": state.first_seen_at,
        "last_seen_at": state.last_seen_at,
        "first_purchase_at": state.first_purchase_at,
    }
    life = state.lifetime
    row.update({
        "purchases_lifetime": life.purchases,
        "spend_lifetime_minor": life.spend_minor,
        "discounted_purchases_lifetime": life.discounted_purchases,
        "discounted_spend_lifetime_minor": life.discounted_spend_minor,
        "returns_lifetime": life.returns,
        "refund_lifetime_minor": life.refund_minor,
        "calls_lifetime": life.calls,
        "complaints_lifetime": life.complaints,
        "unresolved_calls_lifetime": life.unresolved_calls,
        "visits_lifetime": life.visits,
        "recognized_visits_lifetime": life.recognized_visits,
    })
    for days, (purchases, spend, discounted, service) in _WINDOW_FACT_NAMES.items():
        w = window(state, days, as_of) if as_of is not None else Tally()
        row[purchases] = w.purchases
        row[spend] = w.spend_minor
        row[discounted] = w.discounted_spend_minor
        if service:
            calls, complaints, unresolved, sentiment, effort, visits, recognized = service
            row[calls] = w.calls
            row[complaints] = w.complaints
            row[unresolved] = w.unresolved_calls
            row[sentiment] = None if w.sentiment_n == 0 else round(w.sentiment_milli_sum / w.sentiment_n / 1000, 6)
            row[effort] = _ratio(w.effort_sum, w.effort_n)
            row[visits] = w.visits
            row[recognized] = _ratio(w.recognized_visits, w.visits)
    rhythm = purchase_rhythm(state)
    row["mean_gap_days"] = rhythm.mean_gap_days
    row["gap_stddev_days"] = rhythm.gap_stddev_days
    last = state.last_purchase
    row["last_purchase_at"] = None if last is None else last.occurred_at
    row["last_purchase_channel"] = None if last is None else last.channel
    row["last_purchase_location_id"] = None if last is None else last.location_id
    row["last_purchase_amount_minor"] = None if last is None else last.amount_minor
    row["last_purchase_categories"] = [] if last is None else list(last.categories)
    row["preferred_channel"] = preferred_channel(state)
    row["favourite_category"] = favourite(state.categories_bought)
    row["channels"] = sorted(state.channels)
    return row
