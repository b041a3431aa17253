"""The generator: each customer's history drawn from their persona, merged into one sorted stream.

Determinism: everything random comes from ``random.Random`` instances seeded from the arguments
(one per customer, so a customer's history does not depend on how many others there are); nothing
reads the clock or the global ``random`` state.

What customers buy: each has three favourite categories (70 % of basket lines), one of them
and, mostly, its partners in :data:`~ops.simulate.catalogue.AFFINITY`, so purchases carry
co-purchase structure for the next-best categories to find.

How every customer shows up: the personas' rates are realistic (a loyal customer buys every one
to two weeks), so a short window would miss most customers. Each customer therefore has an
*anchor*: if nothing they did falls in the live window (the last ``days``, after any history), one
interaction of their persona's anchor kind is placed at a uniform time in it. A 1-day run with
2,000 customers thus yields events for all 2,000 of them; in longer runs the rhythm alone covers
nearly everyone and anchors are rare.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from domain.records import CallEvent, Event, PurchaseEvent, PurchaseItem, VisitEvent
from ops.simulate.catalogue import (
    AFFINITY,
    AFFINITY_SHARE,
    AGENTS,
    CATEGORIES,
    CONTACT_HOURS,
    EVERYDAY,
    ONLINE_HOURS,
    ONLINE_LOCATIONS,
    PROMOS,
    SKUS_PER_CATEGORY,
    STORE_HOURS,
    STORES,
    WELCOME_PROMO,
    sku_price,
)
from ops.simulate.persona import PERSONAS, Persona
from ops.simulate.population import personas

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

_ID_NAMESPACE = uuid.UUID("6f1d8a52-3a57-4c8e-9d0e-6c6f79616c74")


@dataclass(frozen=True)
class Window:
    """Event times are in [start, end); the live window [live_start, end) follows any history."""

    start: int
    live_start: int
    end: int


def generate(
    customers: int,
    days: float,
    seed: int,
    end_ms: int,
    history_days: float = 0,
    *,
    currency: str = "EUR",
    mix: Mapping[str, float] | None = None,
) -> list[Event]:
    """Events of ``customers`` customers over ``history_days + days`` days before ``end_ms``.

    Sorted by (occurred_at, event_id), all in [end_ms - (days + history_days) days, end_ms).
    The same arguments always give the same events; every customer has at least one event in the
    last ``days`` (see the module docstring).
    """
    if days <= 0 or history_days < 0:
        raise ValueError("days must be positive and history_days not negative")
    window = Window(
        start=end_ms - round((days + history_days) * DAY_MS),
        live_start=end_ms - round(days * DAY_MS),
        end=end_ms,
    )
    events: list[Event] = []
    for cid, persona_name in personas(customers, seed, mix).items():
        sim = _CustomerSim(cid, PERSONAS[persona_name], seed, window, currency)
        events.extend(sim.events())
    events.sort(key=lambda ev: (ev.occurred_at, ev.event_id))
    return events


class _CustomerSim:
    """One customer's history: a rhythm of purchases, Poisson visits and calls, returns."""

    def __init__(self, cid: str, persona: Persona, seed: int, window: Window, currency: str) -> None:
        self.cid = cid
        self.persona = persona
        self.window = window
        self.currency = currency
        self.rng = rng = random.Random(f"customer|{seed}|{cid}")
        self._id_prefix = f"{seed}|{window.end}|{cid}"
        self._n = 0
        self.gap_ms = rng.uniform(*persona.purchase_every_days) * DAY_MS
        self.home_store = rng.choice(STORES)
        self.favourites = _favourites(rng.sample(sorted(CATEGORIES), 3)[0], random.Random(f"favourites|{seed}|{cid}"))
        self.active_from = window.start
        if persona.shape == "new":
            span = min(30 * DAY_MS, window.end - window.start)
            self.active_from = window.end - 1 - rng.randrange(span)
        # lapsing: full rhythm until slow_from, then linearly down to nothing at stop_at
        self.slow_from = window.end - round(rng.uniform(15, 60) * DAY_MS)
        self.stop_at = self.slow_from + round(rng.uniform(10, 50) * DAY_MS)
        # its own random stream, so the rest of the history is the same with or without dropout
        self.dropout_at = math.inf
        if persona.dropout_per_year > 0:
            per_day = -math.log(1 - persona.dropout_per_year) / 365
            self.dropout_at = self.active_from + random.Random(f"dropout|{seed}|{cid}").expovariate(per_day) * DAY_MS

    def events(self) -> list[Event]:
        out: list[Event] = []
        persona = self.persona
        for i, t in enumerate(self._purchase_times()):
            purchase = self.purchase(t, welcome=persona.shape == "new" and i == 0)
            out.append(purchase)
            if self.rng.random() < persona.return_share:
                out.extend(self._return_of(purchase))
        # a new customer is first seen at the welcome purchase; visits and calls come after it
        lo = out[0].occurred_at if persona.shape == "new" else self.active_from
        for t in self._poisson(persona.visits_per_day, lo, self.window.end, floor=0.3):
            out.append(self.visit(t))
        for t in self._poisson(persona.calls_per_day, lo, self.window.end, floor=0.3):
            out.append(self.call(t))
        if not any(ev.occurred_at >= self.window.live_start for ev in out):
            out.append(self._anchor())
        return out

    # -- times ----------------------------------------------------------------------------------

    def _activity(self, t: float, floor: float = 0.0) -> float:
        """Share of the usual rate at time t (1 except for lapsing customers)."""
        if self.persona.shape != "lapsing" or t <= self.slow_from:
            return 1.0
        if t >= self.stop_at:
            return floor
        return max(floor, 1 - (t - self.slow_from) / (self.stop_at - self.slow_from))

    def _purchase_times(self) -> list[int]:
        rng, sigma = self.rng, self.persona.rhythm_sigma
        times: list[int] = []
        if self.persona.shape == "new":
            t = float(self.active_from)
            times.append(self.active_from)  # the welcome purchase: first seen
        else:
            t = self.window.start - rng.random() * self.gap_ms  # already mid-rhythm at the start
        while True:
            # lognormal with mean 1: same average gap whatever the spread
            t += self.gap_ms * rng.lognormvariate(-sigma * sigma / 2, sigma)
            if t >= self.window.end:
                return times
            if t >= self.window.start and rng.random() < self._activity(t) and t < self.dropout_at:
                times.append(int(t))

    def _poisson(self, per_day: float, lo: int, hi: int, floor: float) -> list[int]:
        times: list[int] = []
        if per_day <= 0:
            return times
        t = float(lo)
        while True:
            t += self.rng.expovariate(per_day / DAY_MS)
            if t >= hi:
                return times
            if self.rng.random() < self._activity(t, floor):
                times.append(int(t))

    def _at_plausible_hour(self, t: int, hours: Sequence[int], lo: int) -> int:
        """Move t to a likely hour of the same day for the channel (kept if that leaves [lo, end))."""
        hour = self.rng.choices(range(24), weights=hours)[0]
        moved = t - t % DAY_MS + hour * HOUR_MS + self.rng.randrange(HOUR_MS)
        return moved if lo <= moved < self.window.end else t

    def _anchor(self) -> Event:
        lo = max(self.window.live_start, self.active_from)
        t = lo + self.rng.randrange(self.window.end - lo)
        kind = self.persona.anchor
        if kind == "purchase":
            return self.purchase(t, lo=lo)
        if kind == "call":
            return self.call(t, lo=lo)
        return self.visit(t, lo=lo)

    # -- events ---------------------------------------------------------------------------------

    def _next_id(self) -> str:
        self._n += 1
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self._id_prefix}|{self._n}"))

    def purchase(self, t: int, welcome: bool = False, lo: int | None = None) -> PurchaseEvent:
        rng, persona = self.rng, self.persona
        channel = _pick(rng, persona.purchase_channels)
        hours = STORE_HOURS if channel == "store" else CONTACT_HOURS if channel == "phone" else ONLINE_HOURS
        t = self._at_plausible_hour(t, hours, self.active_from if lo is None else lo)
        items = self._basket()
        subtotal = sum(item.quantity * item.unit_price_minor for item in items)
        promo_code, percent = None, 0
        if welcome:
            promo_code, percent = WELCOME_PROMO
        elif rng.random() < persona.discounted_share:
            if channel != "store" and rng.random() < 0.6:
                promo_code, percent = rng.choice(PROMOS)
            else:  # a markdown at the till: discount without a code
                percent = rng.choice((10, 20, 30))
        discount = subtotal * percent // 100
        event_id = self._next_id()
        return PurchaseEvent(
            event_id=event_id,
            customer_id=self.cid,
            occurred_at=t,
            channel=channel,
            order_id=f"ORD-{event_id[:8].upper()}{event_id[9:13].upper()}",
            amount_minor=subtotal - discount,
            currency=self.currency,
            discount_minor=discount,
            promo_code=promo_code,
            items=items,
            location_id=self._store() if channel == "store" else None,
        )

    def _basket(self) -> tuple[PurchaseItem, ...]:
        rng = self.rng
        lines = 1 + min(int(rng.expovariate(1.0)), self.persona.max_lines - 1)
        categories = sorted(CATEGORIES)
        items = []
        for _ in range(lines):
            category = rng.choice(self.favourites) if rng.random() < 0.7 else rng.choice(categories)
            sku = f"{category.upper()}-{rng.randrange(1, SKUS_PER_CATEGORY + 1):04d}"
            quantity = rng.choice((1, 1, 2, 3, 4)) if category in EVERYDAY else rng.choice((1,) * 6 + (2,))
            items.append(PurchaseItem(sku=sku, category=category, quantity=quantity, unit_price_minor=sku_price(sku)))
        return tuple(items)

    def _store(self) -> str:
        return self.home_store if self.rng.random() < 0.8 else self.rng.choice(STORES)

    def _return_of(self, purchase: PurchaseEvent) -> list[PurchaseEvent]:
        """A return of one line (some or all units), 1-30 days later, with its share of the discount."""
        rng = self.rng
        t = purchase.occurred_at + round(rng.uniform(1, 30) * DAY_MS)
        if t >= self.window.end:
            return []
        line = rng.choice(purchase.items)
        returned = PurchaseItem(line.sku, line.category, rng.randint(1, line.quantity), line.unit_price_minor)
        value = returned.quantity * returned.unit_price_minor
        subtotal = sum(item.quantity * item.unit_price_minor for item in purchase.items)
        discount = purchase.discount_minor * value // subtotal
        channel = "store" if purchase.channel == "store" or rng.random() < 0.3 else "web"
        t = self._at_plausible_hour(t, STORE_HOURS if channel == "store" else ONLINE_HOURS, purchase.occurred_at)
        return [
            PurchaseEvent(
                event_id=self._next_id(),
                customer_id=self.cid,
                occurred_at=t,
                channel=channel,
                order_id=purchase.order_id,
                amount_minor=value - discount,
                currency=self.currency,
                discount_minor=discount,
                items=(returned,),
                is_return=True,
                location_id=self._store() if channel == "store" else None,
            )
        ]

    def call(self, t: int, lo: int | None = None) -> CallEvent:
        rng, persona = self.rng, self.persona
        t = self._at_plausible_hour(t, CONTACT_HOURS, self.active_from if lo is None else lo)
        direction = "outbound" if rng.random() < 0.15 else "inbound"
        reason = _pick(rng, persona.call_reasons) if direction == "inbound" else rng.choice(
            ("order_status", "billing", "other")
        )
        hard = reason in ("complaint", "cancel_request")
        resolved = rng.random() < persona.resolved_share * (0.7 if hard else 1.0)
        wait_scale = 240 if persona.name == "complaint_prone" else 90
        effort = round(rng.gauss(persona.effort_mean + (1 if not resolved else 0), 1.0))
        surveyed = direction == "inbound" and rng.random() < 0.5
        return CallEvent(
            event_id=self._next_id(),
            customer_id=self.cid,
            occurred_at=t,
            direction=direction,
            reason=reason,
            wait_seconds=0 if direction == "outbound" else min(3_600, int(rng.expovariate(1 / wait_scale))),
            duration_seconds=min(7_200, int(rng.lognormvariate(math.log(360 if hard else 240), 0.6)) + 20),
            resolved=resolved,
            agent_id=rng.choice(AGENTS),
            sentiment=self._sentiment(resolved) if rng.random() < 0.9 else None,
            effort_score=max(1, min(7, effort)) if surveyed else None,
            nps=rng.randint(*persona.nps_range) if surveyed and rng.random() < 0.7 else None,
        )

    def _sentiment(self, resolved: bool) -> float:
        """-1..1 in steps of 1/32: exact in Avro's 32-bit float, so it survives a round trip."""
        mean = self.persona.sentiment_mean + (0.1 if resolved else -0.25)
        value = max(-1.0, min(1.0, self.rng.gauss(mean, 0.25)))
        return round(value * 32) / 32

    def visit(self, t: int, lo: int | None = None) -> VisitEvent:
        rng, persona = self.rng, self.persona
        channel = _pick(rng, persona.visit_channels)
        hours = STORE_HOURS if channel == "store" else ONLINE_HOURS
        t = self._at_plausible_hour(t, hours, self.active_from if lo is None else lo)
        viewed = rng.sample(self.favourites, rng.randint(0, 2))
        if rng.random() < 0.4:
            viewed.append(rng.choice(sorted(set(CATEGORIES) - set(viewed))))
        duration = rng.lognormvariate(math.log(1_200 if channel == "store" else 300), 0.7)
        return VisitEvent(
            event_id=self._next_id(),
            customer_id=self.cid,
            occurred_at=t,
            channel=channel,
            location_id=self._store() if channel == "store" else ONLINE_LOCATIONS[channel],
            duration_seconds=min(14_400, int(duration) + 10),
            recognized=rng.random() < persona.recognized_share,
            categories_viewed=tuple(viewed),
        )


def _favourites(first: str, rng: random.Random) -> list[str]:
    """Three favourite categories: ``first``, then each of the next two one of its partners
    (:data:`AFFINITY`, with :data:`AFFINITY_SHARE`) or else any other category.

    ``first`` is drawn from the customer's main random stream as before the co-purchase structure
    existed, and the partners from a stream of their own, so every other draw (times, channels,
    baskets' sizes) is the same as it was."""
    chosen = [first]
    while len(chosen) < 3:
        partners = [c for c in AFFINITY[first] if c not in chosen]
        if partners and rng.random() < AFFINITY_SHARE:
            chosen.append(rng.choice(partners))
        else:
            chosen.append(rng.choice([c for c in sorted(CATEGORIES) if c not in chosen]))
    return chosen


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]
