"""Next-best categories: co-purchase statistics over all customers' orders, and suggestions. Pure.

The statistics (:class:`CoPurchaseTable`) count *orders* (purchases, returns left out) by the
categories they hold, so they read as "of the orders with A, this share also held B":

* ``orders_with[A]``: orders holding A; ``orders``: all orders with at least one item;
* confidence(A → B) = orders holding both / ``orders_with[A]``;
* lift(A → B) = confidence(A → B) / (``orders_with[B]`` / ``orders``).

Orders, not customers: over a long history a regular customer has bought nearly every category
once, so "customers who bought A also bought B" says little (on the simulator, suggestions from
per-customer sets hit the next purchase less often than plain popularity did).

For each category the table keeps its :data:`PARTNERS_KEPT` best partners by confidence (ties:
higher lift, then the name), and only pairs held together by at least :data:`MIN_SUPPORT` orders.
It also keeps the categories by popularity (orders, then name) for the fallback.

A customer's suggestions (:func:`suggest`), up to :data:`SUGGESTIONS`:

1. the anchors are the categories of the customer's last purchase (recency: what the shop
   "remembers"); on the simulator, anchoring on every category bought, weighted by units, hit
   the next purchase less often (see docs/model.md);
2. a partner B scores the mean of confidence(A → B) over the anchors (an anchor without B as a
   partner adds 0): 0..1;
3. categories bought *recently* are never suggested: :data:`RECENT`, the categories of the last
   purchase (anything bought before it may be suggested again);
4. ranked by score, then name; the reason names the anchor with the highest confidence (ties:
   the alphabetically first), e.g. "bought with shoes in 38 % of orders with shoes";
5. slots left (no purchase yet, too few partners) are filled with the most popular categories not
   yet chosen nor recent, scored by their share of orders, with the reason
   "popular: in 24 % of orders".

Stream and backtest build the same table from the same counts (:func:`table_from_pairs`): the
sink from one ClickHouse aggregation, the backtest from :func:`order_sets` of a history file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domain.records import Event, PurchaseEvent
from domain.relationship import RelationshipState

SUGGESTIONS = 3
"""Suggestions per customer."""
PARTNERS_KEPT = 10
"""Best partners kept per category (a few more than are suggested, so exclusions leave enough)."""
POPULAR_KEPT = 20
"""Most popular categories kept for the fallback."""
MIN_SUPPORT = 3
"""Orders that must hold both categories of a pair before it is a partner."""
POPULAR_REASON = "popular: "
"""How the reason of a popularity fallback begins."""
RECENT = "the categories of the last purchase"
"""What "bought recently" means for the exclusion (documentation; see :func:`recent_categories`)."""


@dataclass(frozen=True, slots=True)
class Partner:
    """B as a partner of some category A: orders holding both, confidence(A → B), lift."""

    category: str
    both: int
    confidence: float
    lift: float


@dataclass(frozen=True)
class CoPurchaseTable:
    """The co-purchase statistics the suggestions read; built by :func:`table_from_pairs`."""

    orders: int
    orders_with: dict[str, int]
    partners: dict[str, tuple[Partner, ...]]
    popular: tuple[str, ...]
    computed_at: int = 0  # epoch ms; 0 when not known

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form (the model-params topic carries it under the key ``copurchase``)."""
        return {
            "orders": self.orders,
            "computed_at": self.computed_at,
            "orders_with": dict(sorted(self.orders_with.items())),
            "partners": {a: [[p.category, p.both, p.confidence, p.lift] for p in ps]
                         for a, ps in sorted(self.partners.items())},
            "popular": list(self.popular),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoPurchaseTable:
        return cls(
            orders=int(data["orders"]),
            orders_with={str(k): int(v) for k, v in data["orders_with"].items()},
            partners={str(a): tuple(Partner(str(b), int(n), float(c), float(lift)) for b, n, c, lift in ps)
                      for a, ps in data["partners"].items()},
            popular=tuple(str(c) for c in data["popular"]),
            computed_at=int(data.get("computed_at", 0)),
        )


@dataclass(slots=True, unsafe_hash=True)
class Suggestion:
    """One suggested category, with why (shown to staff) and its score (0..1)."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    category: str
    reason: str
    score: float

    def __init__(self, category: str, reason: str, score: float) -> None:
        self.category = category
        self.reason = reason
        self.score = score

    @property
    def from_copurchase(self) -> bool:
        """Whether the customer's own purchases led here (not the popularity fallback)."""
        return not self.reason.startswith(POPULAR_REASON)


# ---------------------------------------------------------------------------------------------
# Statistics.


def order_sets(events: Iterable[Event], before: int | None = None) -> list[frozenset[str]]:
    """The categories of each order (a purchase with items, not a return) before ``before``; an
    event id seen twice counts once."""
    seen: dict[str, frozenset[str]] = {}
    for event in events:
        if not isinstance(event, PurchaseEvent) or event.is_return or not event.items:
            continue
        if before is not None and event.occurred_at >= before:
            continue
        seen.setdefault(event.event_id, frozenset(item.category for item in event.items))
    return list(seen.values())


def pair_counts(sets: Iterable[frozenset[str] | set[str]]) -> tuple[int, dict[tuple[str, str], int]]:
    """(sets, {(a, b): sets holding both}) over category sets; (a, a) counts the sets holding a.

    The same figures as the sink's SQL (:mod:`streams.copurchase`), so both build one table.
    """
    counts: Counter[tuple[str, str]] = Counter()
    total = 0
    for cats in sets:
        if not cats:
            continue
        total += 1
        for a in cats:
            for b in cats:
                counts[(a, b)] += 1
    return total, dict(counts)


def table_from_pairs(
    orders: int, counts: Mapping[tuple[str, str], int], *, min_support: int = MIN_SUPPORT,
    partners_kept: int = PARTNERS_KEPT, popular_kept: int = POPULAR_KEPT, computed_at: int = 0,
) -> CoPurchaseTable:
    """The table of (orders, pair counts) as :func:`pair_counts` gives them."""
    having = {a: n for (a, b), n in counts.items() if a == b and n > 0}
    partners: dict[str, list[Partner]] = {}
    for (a, b), both in counts.items():
        if a == b or both < min_support or a not in having or b not in having:
            continue
        confidence = both / having[a]
        lift = confidence / (having[b] / orders)
        partners.setdefault(a, []).append(Partner(b, both, round(confidence, 6), round(lift, 6)))
    kept = {a: tuple(sorted(ps, key=lambda p: (-p.confidence, -p.lift, p.category))[:partners_kept])
            for a, ps in sorted(partners.items())}
    popular = tuple(sorted(having, key=lambda c: (-having[c], c))[:popular_kept])
    return CoPurchaseTable(orders, dict(sorted(having.items())), kept, popular, computed_at)


def table_from_sets(sets: Iterable[frozenset[str] | set[str]], **options: Any) -> CoPurchaseTable:
    """The table of orders' category sets (see :func:`table_from_pairs` for the options)."""
    orders, counts = pair_counts(sets)
    return table_from_pairs(orders, counts, **options)


# ---------------------------------------------------------------------------------------------
# Suggestions.


def recent_categories(state: RelationshipState) -> frozenset[str]:
    """What the customer bought recently (:data:`RECENT`): never suggested to them."""
    last = state.last_purchase
    return frozenset() if last is None else frozenset(last.categories)


def percent(part: int, whole: int) -> int:
    """part/whole as a whole percentage, halves rounded up (38.5 % reads 39 %)."""
    return (200 * part + whole) // (2 * whole)


def suggest(state: RelationshipState, table: CoPurchaseTable | None, limit: int = SUGGESTIONS) -> list[Suggestion]:
    """Up to ``limit`` suggested categories for the customer (none without a table)."""
    if table is None or table.orders == 0:
        return []
    anchors = sorted(recent_categories(state))  # sorted: the same sums in the same order every time
    recent = set(anchors)
    scores: dict[str, float] = {}
    best: dict[str, tuple[Partner, str]] = {}  # partner -> (its strongest anchor's figures, that anchor)
    for anchor in anchors:
        for partner in table.partners.get(anchor, ()):
            b = partner.category
            if b in recent:
                continue
            scores[b] = scores.get(b, 0.0) + partner.confidence
            if b not in best or partner.confidence > best[b][0].confidence:  # ties: the first anchor
                best[b] = (partner, anchor)
    ranked = sorted(scores, key=lambda b: (-scores[b], b))[:limit]
    out = []
    for b in ranked:
        partner, anchor = best[b]
        share = percent(partner.both, table.orders_with[anchor])
        out.append(Suggestion(b, f"bought with {anchor} in {share} % of orders with {anchor}",
                              round(scores[b] / len(anchors), 6)))
    chosen = set(ranked)
    for b in table.popular:
        if len(out) >= limit:
            break
        if b in recent or b in chosen:
            continue
        out.append(Suggestion(b, f"{POPULAR_REASON}in {percent(table.orders_with[b], table.orders)} % of orders",
                              round(table.orders_with[b] / table.orders, 6)))
    return out


def suggestions_to_dicts(suggestions: Sequence[Suggestion]) -> list[dict[str, Any]]:
    """The ``SuggestedCategory`` datums of ``schemas/loyalty_signal.avsc``."""
    return [{"category": s.category, "reason": s.reason, "score": s.score} for s in suggestions]
