"""Next-best categories end to end: orders in, the sink counts the co-purchase statistics in
ClickHouse and publishes them, the state worker applies them, and the know-me profile over HTTP
and the signal in ClickHouse carry the suggestions with their reasons."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from domain.records import PurchaseEvent, PurchaseItem, VisitEvent
from ops.simulate import publish, to_outgoing
from tests.harness import WorkerProcess, delete_topics, drop_database, isolated_settings, wait_until

pytestmark = pytest.mark.kafka

MINUTE_MS = 60_000

# Eleven orders, one per customer (the hand-computed table of tests/unit/test_suggest.py):
#   K01-K04 {shoes, socks}, K05-K06 {shoes, socks, care}, K07 {shoes, care}, K08-K10 {books, toys},
#   K11 {books}. Orders with: shoes 7, socks 6, books 4, care 3, toys 3; books -> toys 3/4.
ORDERS = ([("shoes", "socks")] * 4 + [("care", "shoes", "socks")] * 2 + [("care", "shoes")]
          + [("books", "toys")] * 3 + [("books",)])

# K11 bought books last: its partner toys (3 of the 4 orders with books), then the most popular
# categories not in that purchase: shoes (7 of 11 orders), socks (6 of 11, 54.5 % rounds up).
K11 = [
    {"category": "toys", "reason": "bought with books in 75 % of orders with books", "score": 0.75},
    {"category": "shoes", "reason": "popular: in 64 % of orders", "score": 0.636364},
    {"category": "socks", "reason": "popular: in 55 % of orders", "score": 0.545455},
]
# K05 bought shoes, socks and care, which are each other's only partners: books (4/11), toys (3/11).
K05 = [
    {"category": "books", "reason": "popular: in 36 % of orders", "score": 0.363636},
    {"category": "toys", "reason": "popular: in 27 % of orders", "score": 0.272727},
]


@pytest.fixture
def fast_refit(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Settings]:
    """Settings whose sink recounts the statistics every 1.2 s and whose worker looks every 0.5 s."""
    settings = isolated_settings(tmp_path, kafka_bootstrap, model_refit_minutes=0.02, model_params_check_seconds=0.5)
    yield settings
    delete_topics(settings)
    drop_database(settings)


def test_suggestions_reach_the_profile_and_clickhouse(fast_refit: Settings, tmp_path: Path) -> None:
    from ops.admin import create_topics

    settings = fast_refit
    create_topics(settings)
    start = int(time.time() * 1000) - 60 * MINUTE_MS
    orders = [
        PurchaseEvent(f"order-{n:02d}", f"K{n:02d}", start + n * MINUTE_MS, "store", f"o-{n:02d}", 1_000, "EUR",
                      items=tuple(PurchaseItem(f"sku-{c}", c, 1, 1_000 // len(cats)) for c in cats), location_id="S01")
        for n, cats in enumerate(ORDERS, start=1)
    ]
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        publish(settings, to_outgoing(orders, seed=1))
        db = settings.clickhouse_database
        wait_until(lambda: int(worker.scalar(f"SELECT count() FROM {db}.purchases FINAL")) == len(ORDERS),
                   timeout=120, what="every order in ClickHouse")
        # The profile is scored when asked, with the table in use: once the worker holds the table
        # counted over all eleven orders, K11's profile shows its suggestions.
        wait_until(lambda: worker.get("/customers/K11")["know_me"]["suggested_categories"] == K11,
                   timeout=120, what="the co-purchase table applied by the worker")
        profile = worker.get("/customers/K11")
        assert profile["know_me"]["suggested_categories"] == K11
        assert profile["know_me"]["greeting_hint"].endswith("You might also like toys.")
        assert worker.get("/customers/K05")["know_me"]["suggested_categories"] == K05

        # A visit (no order: the statistics stay as they are) makes the worker score K11 and K05
        # again; their signals in ClickHouse carry the suggestions.
        visits = [VisitEvent(f"visit-{cid}", cid, start + 30 * MINUTE_MS, "store", "S01", 300, True)
                  for cid in ("K11", "K05")]
        publish(settings, to_outgoing(visits, seed=2))
        sql = (f"SELECT customer_id, suggested_categories, suggestion_reasons, suggestion_scores FROM {db}.signals_current"
               " FINAL WHERE customer_id IN ('K05', 'K11') AND version = 2 ORDER BY customer_id")
        wait_until(lambda: len(worker.query(sql)) == 2, timeout=120, what="the signals of the visits in ClickHouse")
        rows = worker.query(sql)
    finally:
        worker.stop()
    assert rows == [
        ["K05", [s["category"] for s in K05], [s["reason"] for s in K05], [s["score"] for s in K05]],
        ["K11", [s["category"] for s in K11], [s["reason"] for s in K11], [s["score"] for s in K11]],
    ]
