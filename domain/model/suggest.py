"""Next-best categories: co-purchase statistics over all customers, and suggestions from them. Pure.

The statistics (:class:`CoPurchaseTable`) come from each customer's *set* of categories bought
(returns left out), so they read as "of the customers who bought A, this share also bought B":

* ``buyers[A]``: customers who bought A; ``customers``: customers who bought anything;
* confidence(A → B) = customers who bought both / ``buyers[A]``;
* lift(A → B) = confidence(A → B) / (``buyers[B]`` / ``customers``): above 1, buying A makes B
  more likely than it is for the average customer.

For each category the table keeps its :data:`PARTNERS_KEPT` best partners by confidence (ties:
higher lift, then the name), and only pairs bought together by at least :data:`MIN_SUPPORT`
customers, so one customer's basket never becomes a "statistic" about others. It also keeps the
categories by popularity (buyers, then name) for the fallback.

A customer's suggestions (:func:`suggest`), up to :data:`SUGGESTIONS`:

1. every category the customer bought is an anchor, weighted by how much of it they bought:
   weight log2(1 + units), so 1 unit weighs 1, 3 units 2, 7 units 3 (frequency counts, but a
   basket of twelve yoghurts does not drown out one pair of shoes);
2. a partner B of the anchors scores the weighted mean of confidence(A → B) over all anchors
   (anchors without B as a partner add 0): 0..1, the chance-like share of "customers like them";
3. categories bought *recently* are never suggested: :data:`RECENT` is the categories of the
   customer's last purchase (what the shop "remembers"; anything bought before it may be
   suggested again, since buying again is what loyal customers do);
4. ranked by score, then name; the reason names the anchor that contributed most, e.g.
   "bought with shoes by 38 % of customers who bought shoes";
5. slots left (no anchors, too few partners) are filled with the most popular categories not yet
   chosen nor recent, scored by their share of customers, with the reason
   "popular: bought by 24 % of customers".

Stream and backtest build the same table from the same counts (:func:`table_from_pairs`): the
sink from one ClickHouse aggregation, the backtest from :func:`category_sets` of a history file.
"""

from __future__ import annotations

import math
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
"""Customers who must have bought both categories of a pair before it is a partner."""
POPULAR_REASON = "popular: "
"""How the reason of a popularity fallback begins."""
RECENT = "the categories of the last purchase"
"""What "bought recently" means for the exclusion (documentation; see :func:`recent_categories`)."""


@dataclass(frozen=True, slots=True)
class Partner:
    """B as a partner of some category A: how many bought both, confidence(A → B), lift."""

    category: str
    both: int
    confidence: float
    lift: float


@dataclass(frozen=True)
class CoPurchaseTable:
    """The co-purchase statistics the suggestions read; built by :func:`table_from_pairs`."""

    customers: int
    buyers: dict[str, int]
    partners: dict[str, tuple[Partner, ...]]
    popular: tuple[str, ...]
    computed_at: int = 0  # epoch ms; 0 when not known

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form (the model-params topic carries it under the key ``copurchase``)."""
        return {
            "customers": self.customers,
            "computed_at": self.computed_at,
            "buyers": dict(sorted(self.buyers.items())),
            "partners": {a: [[p.category, p.both, p.confidence, p.lift] for p in ps]
                         for a, ps in sorted(self.partners.items())},
            "popular": list(self.popular),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoPurchaseTable:
        return cls(
            customers=int(data["customers"]),
            buyers={str(k): int(v) for k, v in data["buyers"].items()},
            partners={str(a): tuple(Partner(str(b), int(n), float(c), float(lift)) for b, n, c, lift in ps)
                      for a, ps in data["partners"].items()},
            popular=tuple(str(c) for c in data["popular"]),
            computed_at=int(data.get("computed_at", 0)),
        )


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One suggested category, with why (shown to staff) and its score (0..1)."""

    category: str
    reason: str
    score: float

    @property
    def from_copurchase(self) -> bool:
        """Whether the customer's own purchases led here (not the popularity fallback)."""
        return not self.reason.startswith(POPULAR_REASON)


# ---------------------------------------------------------------------------------------------
# Statistics.


def category_sets(events: Iterable[Event], before: int | None = None) -> dict[str, frozenset[str]]:
    """Each customer's set of categories bought (returns left out), from purchases before ``before``."""
    sets: dict[str, set[str]] = {}
    for event in events:
        if not isinstance(event, PurchaseEvent) or event.is_return or not event.items:
            continue
        if before is not None and event.occurred_at >= before:
            continue
        sets.setdefault(event.customer_id, set()).update(item.category for item in event.items)
    return {cid: frozenset(cats) for cid, cats in sets.items()}


def pair_counts(sets: Iterable[frozenset[str] | set[str]]) -> tuple[int, dict[tuple[str, str], int]]:
    """(customers, {(a, b): customers who bought both}) over category sets; (a, a) counts buyers of a.

    The same figures as the sink's SQL (:mod:`streams.copurchase`), so both build one table.
    """
    counts: Counter[tuple[str, str]] = Counter()
    customers = 0
    for cats in sets:
        if not cats:
            continue
        customers += 1
        for a in cats:
            for b in cats:
                counts[(a, b)] += 1
    return customers, dict(counts)


def table_from_pairs(
    customers: int, counts: Mapping[tuple[str, str], int], *, min_support: int = MIN_SUPPORT,
    partners_kept: int = PARTNERS_KEPT, popular_kept: int = POPULAR_KEPT, computed_at: int = 0,
) -> CoPurchaseTable:
    """The table of (customers, pair counts) as :func:`pair_counts` gives them."""
    buyers = {a: n for (a, b), n in counts.items() if a == b and n > 0}
    partners: dict[str, list[Partner]] = {}
    for (a, b), both in counts.items():
        if a == b or both < min_support or a not in buyers or b not in buyers:
            continue
        confidence = both / buyers[a]
        lift = confidence / (buyers[b] / customers)
        partners.setdefault(a, []).append(Partner(b, both, round(confidence, 6), round(lift, 6)))
    kept = {a: tuple(sorted(ps, key=lambda p: (-p.confidence, -p.lift, p.category))[:partners_kept])
            for a, ps in sorted(partners.items())}
    popular = tuple(sorted(buyers, key=lambda c: (-buyers[c], c))[:popular_kept])
    return CoPurchaseTable(customers, dict(sorted(buyers.items())), kept, popular, computed_at)


def table_from_sets(sets: Iterable[frozenset[str] | set[str]], **options: Any) -> CoPurchaseTable:
    """The table of customers' category sets (see :func:`table_from_pairs` for the options)."""
    customers, counts = pair_counts(sets)
    return table_from_pairs(customers, counts, **options)


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
    if table is None or table.customers == 0:
        return []
    recent = recent_categories(state)
    # sorted: the same sums in the same order whatever order the events arrived in
    weights = {a: math.log2(1 + units) for a, units in sorted(state.categories_bought.items()) if units > 0}
    total = sum(weights.values())
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, str, Partner]] = {}  # partner -> (contribution, anchor, stats)
    for anchor, weight in weights.items():
        for partner in table.partners.get(anchor, ()):
            b = partner.category
            if b in recent:
                continue
            contribution = weight * partner.confidence
            scores[b] = scores.get(b, 0.0) + contribution
            held = best.get(b)
            if held is None or contribution > held[0] or (contribution == held[0] and anchor < held[1]):
                best[b] = (contribution, anchor, partner)
    ranked = sorted(scores, key=lambda b: (-scores[b], b))[:limit]
    out = []
    for b in ranked:
        _, anchor, partner = best[b]
        share = percent(partner.both, table.buyers[anchor])
        out.append(Suggestion(b, f"bought with {anchor} by {share} % of customers who bought {anchor}",
                              round(scores[b] / total, 6)))
    chosen = set(ranked)
    for b in table.popular:
        if len(out) >= limit:
            break
        if b in recent or b in chosen:
            continue
        out.append(Suggestion(b, f"{POPULAR_REASON}bought by {percent(table.buyers[b], table.customers)} % of customers",
                              round(table.buyers[b] / table.customers, 6)))
    return out


def suggestions_to_dicts(suggestions: Sequence[Suggestion]) -> list[dict[str, Any]]:
    """The ``SuggestedCategory`` datums of ``schemas/loyalty_signal.avsc``."""
    return [{"category": s.category, "reason": s.reason, "score": s.score} for s in suggestions]
