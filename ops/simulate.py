"""A deterministic synthetic customer base, and the tools to publish it and check the result.

What it is for: the benchmark, the integration tests and the fault tests need event streams whose
right answer is known. :func:`generate` builds purchases, calls and visits for a population of
customers drawn from a few documented :data:`PERSONAS`; :func:`expected_by_customer` computes, by
its own simple arithmetic (never through :mod:`domain.relationship`), what the pipeline
should end up with for each customer; :func:`to_outgoing` adds resends and malformed payloads;
:func:`publish` sends it all to Kafka and :func:`write_ledger` records what was sent.

Determinism: everything random comes from ``random.Random`` instances seeded from the arguments
(one per customer, so a customer's history does not depend on how many others there are). Nothing
reads the clock or the global ``random`` state, except :func:`simulate_main`, which takes "now" as
the end of the window when none is given, and :func:`publish`, which paces and times sending.

How every customer shows up: the personas' rates are realistic (a loyal customer buys every one
to two weeks), so a short window would miss most customers. Each customer therefore has an
*anchor*: if nothing they did falls in the live window (the last ``days``, after any history), one
interaction of their persona's anchor kind is placed at a uniform time in it. A 1-day run with
2,000 customers thus yields events for all 2,000 of them; in longer runs the rhythm alone covers
nearly everyone and anchors are rare.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from config.settings import Settings
from config.topics import Topics
from domain.records import (
    CallEvent,
    Event,
    EventKind,
    PurchaseEvent,
    PurchaseItem,
    VisitEvent,
    event_from_dict,
    event_to_dict,
)
from schemas import HEADER_SIZE, DecodeError, codec

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
KINDS: tuple[EventKind, ...] = ("purchase", "call", "visit")

# -- personas -----------------------------------------------------------------------------------

Shape = Literal["steady", "lapsing", "new"]


@dataclass(frozen=True)
class Persona:
    """How one kind of customer behaves. Rates are per customer; shares are probabilities."""

    name: str
    description: str
    purchase_every_days: tuple[float, float]  # each customer's mean gap is drawn from this range
    rhythm_sigma: float  # spread of the gaps (lognormal sigma): 0.15 is clockwork, 1.0 erratic
    visits_per_day: float
    calls_per_day: float
    purchase_channels: Mapping[str, float]
    visit_channels: Mapping[str, float]
    discounted_share: float  # purchases with a discount or a promo code
    return_share: float  # purchases later returned (in part)
    max_lines: int
    recognized_share: float  # visits where the customer is recognised
    call_reasons: Mapping[str, float]
    resolved_share: float  # calls resolved on the call (complaints and cancellations: less)
    sentiment_mean: float  # -1..1
    effort_mean: float  # 1..7
    nps_range: tuple[int, int]
    anchor: EventKind  # kind of the guaranteed interaction in the live window
    shape: Shape = "steady"
    # Chance per year that the customer stops buying for good (they may still visit or call):
    # churn spread over the whole history, so a backtest at any cut-off has churners to find.
    dropout_per_year: float = 0.0


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona(
            name="fiercely_loyal",
            description="Buys on a steady rhythm at full price across store, app and web; "
            "recognised on nearly every visit; rare calls, resolved, warm.",
            purchase_every_days=(3, 7),
            rhythm_sigma=0.15,
            visits_per_day=0.35,
            calls_per_day=0.01,
            purchase_channels={"store": 0.45, "app": 0.30, "web": 0.20, "phone": 0.05},
            visit_channels={"store": 0.5, "app": 0.3, "web": 0.2},
            discounted_share=0.05,
            return_share=0.02,
            max_lines=4,
            recognized_share=0.9,
            call_reasons={"order_status": 0.35, "product_question": 0.35, "billing": 0.1,
                          "technical_support": 0.1, "complaint": 0.05, "other": 0.05},
            resolved_share=0.95,
            sentiment_mean=0.6,
            effort_mean=2.0,
            nps_range=(9, 10),
            anchor="purchase",
            dropout_per_year=0.03,
        ),
        Persona(
            name="loyal",
            description="Buys every week or two, mostly at full price, in store and online; "
            "often recognised; content.",
            purchase_every_days=(6, 14),
            rhythm_sigma=0.35,
            visits_per_day=0.2,
            calls_per_day=0.01,
            purchase_channels={"store": 0.5, "web": 0.3, "app": 0.15, "phone": 0.05},
            visit_channels={"store": 0.5, "web": 0.3, "app": 0.2},
            discounted_share=0.15,
            return_share=0.04,
            max_lines=3,
            recognized_share=0.65,
            call_reasons={"order_status": 0.35, "product_question": 0.3, "billing": 0.15,
                          "technical_support": 0.1, "complaint": 0.07, "cancel_request": 0.01,
                          "other": 0.02},
            resolved_share=0.9,
            sentiment_mean=0.35,
            effort_mean=2.5,
            nps_range=(7, 10),
            anchor="purchase",
            dropout_per_year=0.08,
        ),
        Persona(
            name="transactional",
            description="Price-driven: irregular purchases, most with a discount or promo code, "
            "mostly online; few visits, rarely recognised; neutral.",
            purchase_every_days=(10, 30),
            rhythm_sigma=1.0,
            visits_per_day=0.04,
            calls_per_day=0.005,
            purchase_channels={"web": 0.6, "app": 0.2, "store": 0.2},
            visit_channels={"web": 0.7, "app": 0.2, "store": 0.1},
            discounted_share=0.8,
            return_share=0.08,
            max_lines=2,
            recognized_share=0.1,
            call_reasons={"order_status": 0.5, "billing": 0.2, "product_question": 0.1,
                          "complaint": 0.1, "cancel_request": 0.05, "other": 0.05},
            resolved_share=0.85,
            sentiment_mean=0.0,
            effort_mean=3.5,
            nps_range=(4, 8),
            anchor="purchase",
            dropout_per_year=0.35,
        ),
        Persona(
            name="lapsing",
            description="Used to buy regularly; from 15-60 days before the end the rhythm slows "
            "to a stop 10-50 days later (often already past); still browses now and then.",
            purchase_every_days=(7, 21),
            rhythm_sigma=0.5,
            visits_per_day=0.08,
            calls_per_day=0.01,
            purchase_channels={"store": 0.5, "web": 0.3, "app": 0.2},
            visit_channels={"web": 0.6, "app": 0.3, "store": 0.1},
            discounted_share=0.2,
            return_share=0.05,
            max_lines=3,
            recognized_share=0.4,
            call_reasons={"order_status": 0.3, "billing": 0.2, "product_question": 0.2,
                          "complaint": 0.15, "cancel_request": 0.05, "other": 0.1},
            resolved_share=0.8,
            sentiment_mean=0.0,
            effort_mean=3.5,
            nps_range=(3, 8),
            anchor="visit",
            dropout_per_year=0.5,
            shape="lapsing",
        ),
        Persona(
            name="new",
            description="First seen in the last 30 days (never before the window) with a "
            "welcome-promo purchase; explores online, asks questions.",
            purchase_every_days=(5, 20),
            rhythm_sigma=0.6,
            visits_per_day=0.25,
            calls_per_day=0.03,
            purchase_channels={"web": 0.45, "app": 0.35, "store": 0.2},
            visit_channels={"web": 0.5, "app": 0.35, "store": 0.15},
            discounted_share=0.4,
            return_share=0.05,
            max_lines=2,
            recognized_share=0.3,
            call_reasons={"order_status": 0.4, "product_question": 0.3, "technical_support": 0.15,
                          "billing": 0.1, "other": 0.05},
            resolved_share=0.9,
            sentiment_mean=0.3,
            effort_mean=3.0,
            nps_range=(6, 10),
            anchor="purchase",
            dropout_per_year=0.3,
            shape="new",
        ),
        Persona(
            name="complaint_prone",
            description="Calls often about complaints, billing and cancellation; many calls "
            "unresolved, negative sentiment, high effort, low NPS; returns a lot.",
            purchase_every_days=(10, 25),
            rhythm_sigma=0.8,
            visits_per_day=0.05,
            calls_per_day=0.15,
            purchase_channels={"web": 0.5, "store": 0.3, "app": 0.1, "phone": 0.1},
            visit_channels={"web": 0.6, "store": 0.3, "app": 0.1},
            discounted_share=0.3,
            return_share=0.2,
            max_lines=3,
            recognized_share=0.3,
            call_reasons={"complaint": 0.4, "billing": 0.2, "cancel_request": 0.15,
                          "technical_support": 0.15, "order_status": 0.1},
            resolved_share=0.45,
            sentiment_mean=-0.45,
            effort_mean=5.5,
            nps_range=(0, 5),
            anchor="call",
            dropout_per_year=0.4,
        ),
    )
}

DEFAULT_MIX: dict[str, float] = {
    "fiercely_loyal": 0.10,
    "loyal": 0.25,
    "transactional": 0.25,
    "lapsing": 0.15,
    "new": 0.10,
    "complaint_prone": 0.15,
}
"""Share of each persona in the population (normalised if it does not sum to 1)."""

# -- catalogue ----------------------------------------------------------------------------------

CATEGORIES: dict[str, tuple[int, int]] = {
    "groceries": (99, 1_999),
    "household": (199, 2_999),
    "beauty": (399, 5_999),
    "books": (599, 3_999),
    "toys": (499, 7_999),
    "apparel": (1_499, 12_999),
    "shoes": (3_999, 17_999),
    "sports": (999, 19_999),
    "home": (999, 24_999),
    "electronics": (1_999, 89_999),
}
"""Product categories and the range of their unit prices, minor units."""

SKUS_PER_CATEGORY = 60
STORES = tuple(f"STORE-{n:03d}" for n in range(1, 13))
ONLINE_LOCATIONS = {"web": "web-shop", "app": "mobile-app"}
AGENTS = tuple(f"AG{n:03d}" for n in range(1, 41))
PROMOS: tuple[tuple[str, int], ...] = (
    ("SPRING15", 15), ("VIP10", 10), ("SAVE20", 20), ("FLASH25", 25), ("FREESHIP", 0),
)
WELCOME_PROMO = ("WELCOME10", 10)
_EVERYDAY = frozenset({"groceries", "household"})

# Relative activity per hour of day: shops open 08-21, the contact centre 08-20, online all day.
_STORE_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 4, 6, 8, 10, 10, 9, 8, 8, 9, 10, 10, 8, 5, 0, 0, 0)
_ONLINE_HOURS = (6, 3, 2, 1, 1, 2, 5, 9, 12, 13, 14, 15, 17, 16, 14, 14, 15, 17, 19, 20, 20, 19, 15, 10)
_CONTACT_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 6, 10, 10, 9, 7, 8, 9, 9, 8, 7, 5, 3, 0, 0, 0, 0)

_ID_NAMESPACE = uuid.UUID("6f1d8a52-3a57-4c8e-9d0e-6c6f79616c74")


@cache
def sku_price(sku: str) -> int:
    """The fixed unit price of a SKU (minor units), so a product costs the same in every order."""
    category = sku.rsplit("-", 1)[0].lower()
    lo, hi = CATEGORIES[category]
    price = random.Random(f"sku|{sku}").randint(lo // 100 + 1, hi // 100 + 1) * 100 - 1  # x.99
    return max(lo, min(hi, price))


def customer_id(n: int) -> str:
    """The id of the n-th simulated customer (1-based): C0000001, C0000002, ..."""
    return f"C{n:07d}"


# -- population ---------------------------------------------------------------------------------


def personas(customers: int, seed: int, mix: Mapping[str, float] | None = None) -> dict[str, str]:
    """Ground truth: the persona of every simulated customer, by customer id.

    The counts follow the mix exactly (largest remainder), the assignment is shuffled.
    """
    if customers < 0:
        raise ValueError("customers must not be negative")
    shares = _normalised_mix(mix)
    exact = {name: share * customers for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(shares, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: customers - sum(counts.values())]:
        counts[name] += 1
    names = [name for name in shares for _ in range(counts[name])]
    random.Random(f"personas|{seed}").shuffle(names)
    return {customer_id(i + 1): name for i, name in enumerate(names)}


def _normalised_mix(mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = DEFAULT_MIX if mix is None else mix
    unknown = set(mix) - set(PERSONAS)
    if unknown:
        raise ValueError(f"unknown personas {sorted(unknown)}; known: {sorted(PERSONAS)}")
    if any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError("persona shares must be non-negative and not all zero")
    total = sum(mix.values())
    return {name: mix[name] / total for name in PERSONAS if mix.get(name, 0) > 0}


# -- generation ---------------------------------------------------------------------------------


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
        self.favourites = rng.sample(sorted(CATEGORIES), 3)
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
        hours = _STORE_HOURS if channel == "store" else _CONTACT_HOURS if channel == "phone" else _ONLINE_HOURS
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
            quantity = rng.choice((1, 1, 2, 3, 4)) if category in _EVERYDAY else rng.choice((1,) * 6 + (2,))
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
        t = self._at_plausible_hour(t, _STORE_HOURS if channel == "store" else _ONLINE_HOURS, purchase.occurred_at)
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
        t = self._at_plausible_hour(t, _CONTACT_HOURS, self.active_from if lo is None else lo)
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
        hours = _STORE_HOURS if channel == "store" else _ONLINE_HOURS
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


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


# -- what is published --------------------------------------------------------------------------

MalformedNote = Literal["truncated_avro", "random_bytes", "json_text", "wrong_schema"]
MALFORMED_NOTES: tuple[MalformedNote, ...] = ("truncated_avro", "random_bytes", "json_text", "wrong_schema")
DUPLICATE_MAX_DELAY = 100
"""A resend follows its original within this many messages: late enough to interleave with other
events, early enough to stay inside the dedup horizon of arrival time, so it is recognised as a
duplicate rather than refused as too late."""


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: a valid event (``note`` "event" or "duplicate"), or bad bytes
    (``event`` None, ``note`` one of :data:`MALFORMED_NOTES`)."""

    topic_kind: EventKind
    key: bytes
    value: bytes
    event: Event | None
    note: str

    @property
    def valid(self) -> bool:
        return self.event is not None


def encode_event(event: Event) -> bytes:
    """The Kafka message value of an event: Avro single-object encoding of its schema."""
    return codec(event.kind).encode(event_to_dict(event))


def to_outgoing(
    events: Sequence[Event], seed: int, duplicate_rate: float = 0.0, malformed_rate: float = 0.0
) -> list[Outgoing]:
    """The messages to publish for ``events``, in order, with resends and bad payloads mixed in.

    ``round(duplicate_rate * len(events))`` events are sent a second time (same key, event id and
    bytes) 1 to :data:`DUPLICATE_MAX_DELAY` messages later; ``round(malformed_rate *
    len(events))`` payloads that no codec accepts are put at random places. Deterministic.
    """
    for name, rate in (("duplicate_rate", duplicate_rate), ("malformed_rate", malformed_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must be between 0 and 1, not {rate}")
    rng = random.Random(f"outgoing|{seed}")
    base = [Outgoing(ev.kind, ev.customer_id.encode(), encode_event(ev), ev, "event") for ev in events]
    n = len(base)
    after: dict[int, list[Outgoing]] = {}  # index of a base message -> what follows it
    for i in sorted(rng.sample(range(n), round(duplicate_rate * n))):
        position = min(n - 1, i + rng.randrange(DUPLICATE_MAX_DELAY))
        original = base[i]
        after.setdefault(position, []).append(
            Outgoing(original.topic_kind, original.key, original.value, original.event, "duplicate")
        )
    bad = [_malformed(rng, events) for _ in range(round(malformed_rate * n))]
    for message in bad:
        after.setdefault(rng.randrange(n) if n else -1, []).append(message)
    out = list(after.get(-1, []))
    for i, message in enumerate(base):
        out.append(message)
        out.extend(after.get(i, []))
    return out


def _malformed(rng: random.Random, events: Sequence[Event]) -> Outgoing:
    """Bytes sent to an event topic that decoding must refuse (checked, not assumed)."""
    note: MalformedNote = rng.choice(MALFORMED_NOTES) if events else "random_bytes"
    source = rng.choice(events) if events else None
    kind: EventKind = source.kind if source else rng.choice(KINDS)
    key = (source.customer_id if source else customer_id(1)).encode()
    if note == "truncated_avro" and source is not None:
        value = encode_event(source)
        cut = len(value)
        while True:  # any strict prefix should fail; shorten further if one ever decodes
            cut = rng.randrange(HEADER_SIZE, cut)
            if not _decodes(kind, value[:cut]):
                return Outgoing(kind, key, value[:cut], None, note)
    if note == "json_text" and source is not None:
        return Outgoing(kind, key, json.dumps(event_to_dict(source)).encode(), None, note)
    if note == "wrong_schema" and source is not None:
        # a valid record of another kind, sent to this kind's topic: its fingerprint is unknown there
        kind = rng.choice([k for k in KINDS if k != source.kind])
        return Outgoing(kind, key, encode_event(source), None, note)
    first = rng.choice([b for b in range(256) if b != 0xC3])  # never the Avro single-object marker
    value = bytes([first]) + rng.randbytes(rng.randrange(0, 200))
    return Outgoing(kind, key, value, None, "random_bytes")


def _decodes(kind: EventKind, value: bytes) -> bool:
    try:
        codec(kind).decode(value)
    except DecodeError:
        return False
    return True


# -- the oracle ---------------------------------------------------------------------------------


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


# -- the ledger ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One sent message as recorded in the ledger; ``event`` is None for a malformed payload."""

    kind: EventKind
    topic: str
    note: str
    key: str
    size: int
    event_id: str | None = None
    customer_id: str | None = None
    occurred_at: int | None = None
    event: Event | None = None


def _default_topics() -> Topics:
    # the settings' default prefix, without reading the environment
    return Topics(str(Settings.model_fields["topic_prefix"].default))


def ledger_entries(outgoing: Iterable[Outgoing], topics: Topics | None = None) -> list[LedgerEntry]:
    """The ledger's view of the messages (what :func:`read_ledger` gives back after writing)."""
    topics = topics or _default_topics()
    return [
        LedgerEntry(
            kind=o.topic_kind,
            topic=topics.for_kind(o.topic_kind),
            note=o.note,
            key=o.key.decode("utf-8", "replace"),
            size=len(o.value),
            event_id=o.event.event_id if o.event else None,
            customer_id=o.event.customer_id if o.event else None,
            occurred_at=o.event.occurred_at if o.event else None,
            event=o.event,
        )
        for o in outgoing
    ]


def write_ledger(path: str | Path, outgoing: Iterable[Outgoing], topics: Topics | None = None) -> int:
    """Write one JSON line per message, in sending order; return how many were written.

    Valid events carry their full content, so the ledger alone is enough to compute
    :func:`expected_by_customer` later.
    """
    count = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as fh:
        for entry in ledger_entries(outgoing, topics):
            line: dict[str, Any] = {
                "kind": entry.kind,
                "topic": entry.topic,
                "note": entry.note,
                "key": entry.key,
                "size": entry.size,
                "event_id": entry.event_id,
                "customer_id": entry.customer_id,
                "occurred_at": entry.occurred_at,
                "event": event_to_dict(entry.event) if entry.event else None,
            }
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            count += 1
    return count


def read_ledger(path: str | Path) -> list[LedgerEntry]:
    """The entries of a ledger written by :func:`write_ledger`."""
    entries = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            data = json.loads(line)
            raw = data.pop("event")
            event = event_from_dict(data["kind"], raw) if raw is not None else None
            entries.append(LedgerEntry(event=event, **data))
    return entries


# -- publishing ---------------------------------------------------------------------------------


class BrokerUnavailableError(ConnectionError):
    """Kafka could not be reached (retrying later may help)."""


class PublishError(RuntimeError):
    """Some messages were not acknowledged by the broker."""

    def __init__(self, message: str, report: PublishReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PublishReport:
    """What :func:`publish` sent."""

    total: int = 0
    sent: int = 0  # acknowledged by the broker
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # messages per topic kind
    by_note: dict[str, int] = field(default_factory=dict)  # event, duplicate, truncated_avro, ...
    elapsed_seconds: float = 0.0
    first_error: str | None = None

    @property
    def per_second(self) -> float:
        return self.sent / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.by_kind.items()))
        notes = ", ".join(f"{note} {n:,}" for note, n in sorted(self.by_note.items()))
        return (
            f"sent {self.sent:,}/{self.total:,} messages in {self.elapsed_seconds:.1f}s "
            f"({self.per_second:,.0f}/s); by kind: {kinds}; by note: {notes}"
            + (f"; {self.failed:,} failed, first: {self.first_error}" if self.failed else "")
        )


class _Future(Protocol):
    def add_callback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def add_errback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


class ProducerLike(Protocol):
    """The part of kafka-python's ``KafkaProducer`` that publishing uses."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> _Future: ...

    def flush(self, timeout: float | None = None) -> None: ...


Progress = Callable[[int, int], None]


def send_outgoing(
    producer: ProducerLike,
    outgoing: Sequence[Outgoing],
    topics: Topics,
    rate: float | None = None,
    progress: Progress | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishReport:
    """Send every message through ``producer`` at up to ``rate`` per second, then flush.

    ``progress(sent, total)`` is called about once a second and once at the end. Delivery
    failures are counted in the report, not raised (see :func:`publish`).
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    report = PublishReport(total=len(outgoing))

    def delivered(_metadata: object) -> None:
        report.sent += 1

    def failed(exc: BaseException) -> None:
        report.failed += 1
        report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"

    started = last_progress = clock()
    for i, message in enumerate(outgoing):
        if rate is not None:
            ahead = started + i / rate - clock()  # pace against the start, so delays do not add up
            if ahead > 0:
                sleep(ahead)
        future = producer.send(topics.for_kind(message.topic_kind), key=message.key, value=message.value)
        future.add_callback(delivered)
        future.add_errback(failed)
        report.by_kind[message.topic_kind] = report.by_kind.get(message.topic_kind, 0) + 1
        report.by_note[message.note] = report.by_note.get(message.note, 0) + 1
        if progress is not None and clock() - last_progress >= 1.0:
            last_progress = clock()
            progress(i + 1, len(outgoing))
    producer.flush()
    report.elapsed_seconds = clock() - started
    if progress is not None:
        progress(len(outgoing), len(outgoing))
    return report


def publish(
    settings: Settings,
    outgoing: Sequence[Outgoing],
    rate: float | None = None,
    progress: Progress | None = None,
    *,
    connect_timeout_s: float = 10.0,
) -> PublishReport:
    """Publish to the input topics, keyed by customer id so a customer's events share a partition.

    Returns once every message is acknowledged by all in-sync replicas. Raises
    :class:`BrokerUnavailableError` when the broker cannot be reached and :class:`PublishError`
    when some messages were refused.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    where = settings.bootstrap
    try:
        producer = KafkaProducer(
            **settings.kafka_python_config(),
            acks="all",
            linger_ms=20,
            max_request_size=settings.max_message_bytes,
            enable_idempotence=True,  # a retried batch is not written twice
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            max_block_ms=int(max(connect_timeout_s, 15) * 1000),
        )
    except KafkaError as exc:
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {where} within {connect_timeout_s:g}s ({exc}); start the local "
            "broker or set LOYALTY_KAFKA_BOOTSTRAP"
        ) from exc
    try:
        report = send_outgoing(producer, outgoing, Topics(settings.topic_prefix), rate, progress)
    except KafkaTimeoutError as exc:
        raise BrokerUnavailableError(
            f"Kafka at {where} stopped answering or a topic is missing ({exc}); do the topics "
            f"{', '.join(Topics(settings.topic_prefix).inputs)} exist?"
        ) from exc
    finally:
        producer.close(timeout=10)
    logger.info("published to %s: %s", where, report.summary())
    if report.failed or report.sent != report.total:
        raise PublishError(f"not every message was acknowledged: {report.summary()}", report)
    return report


def simulate_main(
    settings: Settings,
    customers: int,
    days: float,
    seed: int,
    rate: float | None,
    ledger_path: str | Path | None,
    history_days: float = 0,
    duplicate_rate: float = 0.0,
    malformed_rate: float = 0.0,
    *,
    end_ms: int | None = None,
    stream: TextIO | None = None,
) -> PublishReport:
    """Generate, write the ledger, publish with a progress line on stderr (the CLI's work).

    The window ends now unless ``end_ms`` is given; the currency is ``settings.currency``.
    """
    out = stream or sys.stderr
    end = end_ms if end_ms is not None else int(time.time() * 1000)
    events = generate(customers, days, seed, end, history_days, currency=settings.currency)
    outgoing = to_outgoing(events, seed, duplicate_rate, malformed_rate)
    if ledger_path is not None:
        write_ledger(ledger_path, outgoing, Topics(settings.topic_prefix))
    distinct = len({ev.customer_id for ev in events})
    print(f"{len(events):,} events for {distinct:,} customers, {len(outgoing):,} messages", file=out)

    def show(sent: int, total: int) -> None:
        percent = 100 * sent / total if total else 100
        print(f"\rsent {sent:,}/{total:,} ({percent:.0f}%)", end="", file=out, flush=True)

    report = publish(settings, outgoing, rate, show)
    print(file=out)
    print(report.summary(), file=out)
    return report


def replay_line(event: Event) -> str:
    """One line of the ``loyalty replay`` / ``loyalty backtest`` input format for an event."""
    data: dict[str, Any] = {"type": event.kind, **event_to_dict(event)}
    data["occurred_at"] = (datetime.fromtimestamp(event.occurred_at / 1000, tz=UTC)
                           .isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return json.dumps(data, separators=(",", ":"))


def write_replay_file(path: str | Path, events: Iterable[Event]) -> int:
    """Write events as JSON lines for ``loyalty replay``; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(replay_line(event) + "\n")
            n += 1
    return n
