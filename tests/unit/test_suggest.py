"""Next-best categories on hand-made orders: the shares, the suggestions and reasons, the
exclusion of what was bought recently, the popularity fallback, and the backtest's hit rate."""

from __future__ import annotations

import pytest

from domain.model import score_customer, signal_to_dict
from domain.model.backtest_suggest import backtest_suggestions, hits_at_k, next_purchases
from domain.model.churn import BgNbdParams
from domain.model.suggest import (
    CoPurchaseTable,
    Partner,
    Suggestion,
    order_sets,
    pair_counts,
    percent,
    suggest,
    table_from_sets,
)
from domain.records import PurchaseEvent, PurchaseItem
from domain.relationship import DAY_MS, RelationshipState, apply_event
from schemas import Codec
from streams.copurchase import table_from_bytes, table_from_rows, table_to_bytes

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
P = BgNbdParams(r=2.0, alpha=10.0, a=1.0, b=3.0, population_gap_days=30.0)

# Eleven orders' categories:
#   4 x {shoes, socks}, 2 x {shoes, socks, care}, 1 x {shoes, care}, 3 x {books, toys}, 1 x {books}
# orders with: shoes 7, socks 6, books 4, care 3, toys 3; together: shoes+socks 6, shoes+care 3,
# books+toys 3, socks+care 2 (under the minimum support of 3: no partners).
SETS = ([frozenset({"shoes", "socks"})] * 4 + [frozenset({"shoes", "socks", "care"})] * 2
        + [frozenset({"shoes", "care"})] + [frozenset({"books", "toys"})] * 3 + [frozenset({"books"})])


@pytest.fixture(scope="module")
def table() -> CoPurchaseTable:
    return table_from_sets(SETS)


def purchase(eid: str, day: int, *lines: tuple[str, int], cid: str = "c1", is_return: bool = False) -> PurchaseEvent:
    items = tuple(PurchaseItem(f"sku-{c}", c, units, 1_000) for c, units in lines)
    return PurchaseEvent(eid, cid, T0 + day * DAY_MS, "store", f"o-{eid}", 1_000, "EUR", items=items,
                         is_return=is_return, location_id="S01")


def state_of(*events: PurchaseEvent, cid: str = "c1") -> RelationshipState:
    state = RelationshipState(cid)
    for event in events:
        apply_event(state, event, 100_000 * DAY_MS)
    return state


def test_the_table_holds_the_hand_computed_shares(table: CoPurchaseTable) -> None:
    assert table.orders == 11
    assert table.orders_with == {"books": 4, "care": 3, "shoes": 7, "socks": 6, "toys": 3}
    assert table.popular == ("shoes", "socks", "books", "care", "toys")  # orders, then name
    # confidence(shoes -> socks) = 6/7; lift = (6/7) / (6/11) = 11/7
    assert table.partners == {
        "books": (Partner("toys", 3, 0.75, 2.75),),  # 3/4; (3/4) / (3/11)
        "care": (Partner("shoes", 3, 1.0, 1.571429),),  # 3/3; 1 / (7/11)
        "shoes": (Partner("socks", 6, 0.857143, 1.571429), Partner("care", 3, 0.428571, 1.571429)),
        "socks": (Partner("shoes", 6, 1.0, 1.571429),),  # socks+care (2 orders) is under the support
        "toys": (Partner("books", 3, 1.0, 2.75),),  # 3/3; 1 / (4/11)
    }


def test_order_sets_leave_returns_later_orders_and_resent_ids_out() -> None:
    events = [purchase("a", 0, ("shoes", 1), ("socks", 2)), purchase("a", 0, ("shoes", 1), ("socks", 2)),
              purchase("b", 1, ("care", 1), is_return=True), purchase("c", 2, ("shoes", 1), cid="c2"),
              purchase("d", 9, ("toys", 1), cid="c2")]
    sets = order_sets(events, before=T0 + 5 * DAY_MS)
    assert sets == [frozenset({"shoes", "socks"}), frozenset({"shoes"})]
    assert pair_counts(sets) == (2, {("shoes", "shoes"): 2, ("shoes", "socks"): 1, ("socks", "shoes"): 1,
                                     ("socks", "socks"): 1})


def test_the_sink_s_rows_build_the_same_table_and_it_survives_the_topic(table: CoPurchaseTable) -> None:
    orders, counts = pair_counts(SETS)
    rows = [("pair", a, b, n) for (a, b), n in sorted(counts.items())] + [("orders", "", "", orders)]
    assert table_from_rows(rows, computed_at=0) == table
    assert table_from_bytes(table_to_bytes(table)) == table


def test_suggestions_are_the_last_purchase_s_partners_then_the_popular(table: CoPurchaseTable) -> None:
    # the last purchase holds shoes (books came before): socks 6/7, care 3/7, then the most popular
    # category neither recent nor chosen: books, in 4 of 11 orders (36 %)
    state = state_of(purchase("p1", 0, ("books", 1)), purchase("p2", 10, ("shoes", 3)))
    assert suggest(state, table) == [
        Suggestion("socks", "bought with shoes in 86 % of orders with shoes", 0.857143),
        Suggestion("care", "bought with shoes in 43 % of orders with shoes", 0.428571),
        Suggestion("books", "popular: in 36 % of orders", 0.363636),
    ]


def test_what_the_last_purchase_holds_is_never_suggested(table: CoPurchaseTable) -> None:
    # shoes, socks and care, each the others' partners, all in the last purchase: only the popular
    # books (4/11) and toys (3/11) are left, two suggestions
    state = state_of(purchase("p1", 0, ("shoes", 1), ("socks", 1), ("care", 1)))
    assert suggest(state, table) == [
        Suggestion("books", "popular: in 36 % of orders", 0.363636),
        Suggestion("toys", "popular: in 27 % of orders", 0.272727),
    ]
    # bought before the last purchase, not in it: shoes may be suggested again (socks -> shoes 6/6);
    # then books 4/11 and care 3/11 (ahead of toys 3/11 by name)
    again = state_of(purchase("p1", 0, ("shoes", 1)), purchase("p2", 5, ("socks", 1)))
    assert suggest(again, table) == [
        Suggestion("shoes", "bought with socks in 100 % of orders with socks", 1.0),
        Suggestion("books", "popular: in 36 % of orders", 0.363636),
        Suggestion("care", "popular: in 27 % of orders", 0.272727),
    ]


def test_scores_average_over_the_anchors_and_ties_go_by_name(table: CoPurchaseTable) -> None:
    # last purchase care and toys: care -> shoes 1, toys -> books 1; each averaged over 2 anchors
    # (0.5), tied, so by name; then the most popular left: socks 6/11 = 54.5 %, halves up
    state = state_of(purchase("p1", 0, ("care", 1), ("toys", 1)))
    assert suggest(state, table) == [
        Suggestion("books", "bought with toys in 100 % of orders with toys", 0.5),
        Suggestion("shoes", "bought with care in 100 % of orders with care", 0.5),
        Suggestion("socks", "popular: in 55 % of orders", 0.545455),
    ]
    # care -> shoes 1 and socks -> shoes 1: shoes scores (1 + 1) / 2 and its reason names care,
    # the first of the tied anchors by name
    both = state_of(purchase("p1", 0, ("socks", 1), ("care", 1)))
    assert suggest(both, table)[0] == Suggestion("shoes", "bought with care in 100 % of orders with care", 1.0)


def test_without_purchases_the_most_popular_and_without_a_table_nothing(table: CoPurchaseTable) -> None:
    prospect = RelationshipState("c9")
    assert suggest(prospect, table) == [
        Suggestion("shoes", "popular: in 64 % of orders", 0.636364),
        Suggestion("socks", "popular: in 55 % of orders", 0.545455),
        Suggestion("books", "popular: in 36 % of orders", 0.363636),
    ]
    assert suggest(state_of(purchase("p1", 0, ("shoes", 1))), None) == []


def test_percent_rounds_halves_up() -> None:
    assert [percent(6, 7), percent(3, 7), percent(6, 11), percent(1, 8), percent(0, 5)] == [86, 43, 55, 13, 0]


def test_the_signal_carries_the_suggestions_and_the_greeting_the_first(table: CoPurchaseTable) -> None:
    state = state_of(purchase("p1", 0, ("books", 1)), purchase("p2", 10, ("shoes", 3)))
    signal = score_customer(state, T0 + 12 * DAY_MS, P, copurchase=table)
    assert signal.greeting_hint == ("Welcome back! Last time (2 days ago) you bought shoes in store S01. "
                                    "You might also like socks.")
    datum = signal_to_dict(signal)
    assert datum["suggested_categories"][0] == {
        "category": "socks", "reason": "bought with shoes in 86 % of orders with shoes", "score": 0.857143}
    signal_codec = Codec("loyalty_signal")
    assert signal_codec.decode(signal_codec.encode(datum)) == {**datum, "relationship": None, "day_ends": []}
    # a popularity fallback is not worth a sentence in the greeting
    only_popular = score_customer(state_of(purchase("p1", 0, ("shoes", 3), ("socks", 1), ("care", 1))),
                                  T0 + 1 * DAY_MS, P, copurchase=table)
    assert only_popular.suggested_categories[0].reason == "popular: in 36 % of orders"
    assert only_popular.greeting_hint == "Welcome back! Last time (yesterday) you bought care, shoes and more in store S01."
    assert score_customer(state, T0 + 12 * DAY_MS, P).suggested_categories == []


def test_hits_at_k_counts_customers_whose_next_purchase_was_suggested() -> None:
    suggested = {"a": ["x", "y", "z", "w"], "b": ["x"], "c": ["y", "z"]}
    bought_next = {"a": frozenset({"w"}), "b": frozenset({"q", "x"}), "c": frozenset({"q"}), "d": frozenset({"x"})}
    # a: w is 4th (not in the first 3); b: x hit; c: miss; d: nothing suggested
    assert hits_at_k(suggested, bought_next) == 1
    assert hits_at_k(suggested, bought_next, k=4) == 2


def test_the_backtest_on_a_hand_made_history() -> None:
    cut = 100  # the cut-off's day
    # Before the cut-off, 13 customers with one order each: 4 x {shoes, socks}, 3 x {books, toys},
    # 2 x {books}, 4 x {care}. Popularity: books 5, care 4, shoes 4, socks 4, toys 3. Partners
    # (support >= 3): shoes <-> socks (4/4), books -> toys (3/5), toys -> books (3/3).
    history = [purchase(f"s{n}", n, ("shoes", 1), ("socks", 1), cid=f"s{n}") for n in range(4)]
    history += [purchase(f"b{n}", n, ("books", 1), ("toys", 1), cid=f"b{n}") for n in range(3)]
    history += [purchase(f"o{n}", n, ("books", 1), cid=f"o{n}") for n in range(2)]
    history += [purchase(f"c{n}", n, ("care", 1), cid=f"c{n}") for n in range(4)]
    history += [
        # s0: both partners recent; suggested = baseline = [books, care, toys]: both hit
        purchase("s0-next", cut, ("toys", 1), cid="s0"),
        # o0: suggested [toys (books -> toys), care, shoes]; baseline [care, shoes, socks]: only the suggestion hits
        purchase("o0-next", cut + 1, ("toys", 1), cid="o0"),
        # o1: the first purchase after the cut-off is held out (books: recent, both miss); the later
        # toys, which the suggestion would have caught, does not count
        purchase("o1-next", cut + 1, ("books", 1), cid="o1"),
        purchase("o1-later", cut + 5, ("toys", 1), cid="o1"),
        # b0: both partners recent; suggested = baseline = [care, shoes, socks]: both hit
        purchase("b0-next", cut + 2, ("socks", 1), cid="b0"),
        # never bought before the cut-off: not evaluated
        purchase("n0", cut + 3, ("books", 1), cid="new"),
    ]
    report = backtest_suggestions(history, T0 + cut * DAY_MS)
    assert (report.customers, report.hits, report.baseline_hits) == (4, 3, 2)
    assert (report.hit_rate, report.baseline_hit_rate) == (0.75, 0.5)
    assert (report.table_orders, report.categories) == (13, 5)
    assert next_purchases(history, T0 + cut * DAY_MS)["o1"] == frozenset({"books"})
