"""Backtest of the next-best categories: hit rate at 3 on held-out purchases, against popularity. Pure.

Statistics from the orders before a cut-off (:func:`domain.model.suggest.order_sets`),
each customer's suggestions as of the cut-off from their state folded from the events before it
(the worker's :func:`domain.model.suggest.suggest`), and the customer's *first purchase at or after
the cut-off* held out: a hit when any of its categories is among the suggested ones. Evaluated:
customers who bought before the cut-off and again after it. The baseline, ranked the same way in
the same run, suggests the most popular categories (by orders before the cut-off) not bought
recently, the same exclusion the suggestions obey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from domain.model.replay import fold_events
from domain.model.suggest import SUGGESTIONS, CoPurchaseTable, order_sets, recent_categories, suggest, table_from_sets
from domain.records import Event, PurchaseEvent
from domain.relationship import RelationshipState


@dataclass(frozen=True)
class SuggestionBacktest:
    cutoff_ms: int
    customers: int  # evaluated: bought before the cut-off and after it
    hits: int  # co-purchase suggestions
    baseline_hits: int  # popularity
    table_orders: int  # orders the statistics were counted on
    categories: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.customers if self.customers else float("nan")

    @property
    def baseline_hit_rate(self) -> float:
        return self.baseline_hits / self.customers if self.customers else float("nan")

    def format(self) -> str:
        return "\n".join([
            (f"next purchased category, hit rate @{SUGGESTIONS} ({self.customers} customers who bought before and "
             f"after the cut-off; statistics of {self.table_orders} orders, {self.categories} categories)"),
            f"{'suggester':<36}{'hits':>8}{'rate':>8}",
            f"{'co-purchase suggestions':<36}{self.hits:>8}{self.hit_rate:>8.4f}",
            f"{'baseline: most popular, not recent':<36}{self.baseline_hits:>8}{self.baseline_hit_rate:>8.4f}",
        ])


def hits_at_k(suggested: Mapping[str, Sequence[str]], bought_next: Mapping[str, frozenset[str]],
              k: int = SUGGESTIONS) -> int:
    """Customers of ``bought_next`` whose next purchase has a category among their first ``k`` suggested."""
    return sum(1 for cid, bought in bought_next.items() if bought & set(suggested.get(cid, ())[:k]))


def next_purchases(events: Sequence[Event], cutoff_ms: int) -> dict[str, frozenset[str]]:
    """Categories of each customer's first purchase (not a return) at or after the cut-off."""
    first: dict[str, PurchaseEvent] = {}
    for event in events:
        if not isinstance(event, PurchaseEvent) or event.is_return or event.occurred_at < cutoff_ms or not event.items:
            continue
        held = first.get(event.customer_id)
        if held is None or (event.occurred_at, event.event_id) < (held.occurred_at, held.event_id):
            first[event.customer_id] = event
    return {cid: frozenset(item.category for item in e.items) for cid, e in first.items()}


def popular_not_recent(state: RelationshipState, table: CoPurchaseTable, k: int = SUGGESTIONS) -> list[str]:
    """The baseline: the ``k`` most popular categories the customer did not buy recently."""
    recent = recent_categories(state)
    return [c for c in table.popular if c not in recent][:k]


def backtest_suggestions(events: Sequence[Event], cutoff_ms: int) -> SuggestionBacktest:
    """Hit rate at 3 of the suggestions and of the popularity baseline (events in any order)."""
    table = table_from_sets(order_sets(events, before=cutoff_ms))
    states = fold_events(events, cutoff_ms - 1).states  # strictly before the cut-off
    held_out = {cid: cats for cid, cats in next_purchases(events, cutoff_ms).items()
                if cid in states and states[cid].last_purchase is not None}
    suggested = {cid: [s.category for s in suggest(states[cid], table)] for cid in held_out}
    baseline = {cid: popular_not_recent(states[cid], table) for cid in held_out}
    return SuggestionBacktest(
        cutoff_ms=cutoff_ms,
        customers=len(held_out),
        hits=hits_at_k(suggested, held_out),
        baseline_hits=hits_at_k(baseline, held_out),
        table_orders=table.orders,
        categories=len(table.orders_with),
    )
