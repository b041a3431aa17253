"""Daily tiers end to end, against the real broker and chDB: a small history over 92 event days
for four customers, each counted once per day in the tier they ended the day in (migration 0007).

Days are numbered from day 0 = 2026-06-01 (UTC). The tiers follow domain/model/tiers.py with
the default population gap of 30 days: one purchase makes a customer `new` for 60 days; after
that, no purchase for 60 days is `at_risk` and for 90 days `lapsed` (P(alive) is 1 with no repeat
purchase, so it plays no part). A customer is re-scored only when an event arrives, so between
events they stay in the tier of their last one.

    customer  events (day hh:mm)                              tier at the end of the day
    A         0 09:00 visit                                   0 prospect
              (third publish) 0 15:00 buy 40.00               0 new (the day's row replaced)
    B         0 10:00 buy 20.00; 1, 2, 61, 91 10:00 visits    0 1 2 new, 61 at_risk (61 days), 91 lapsed (91)
    C         5 12:00 visit                                   5 prospect
    D         30 10:00 buy 30.00                              30 new
              (third publish) 91 12:00 visit                  91 at_risk (61.1 days; first purchase >= 60 days ago)

First publish: everything but A's purchase and D's visit, so B's history is a backfill (its
visits in one or few batches, each closing its earlier days). The purchases go first, before
the worker starts, and are folded before the visits are sent: the input topics have no order
between them, and B's purchase folded after its visits would be a late event (day 0 older than
day 91), which by design leaves the rows of the days before it as they were. Second publish:
the first again, byte for byte (a replayed batch: duplicates). Third: A's purchase and D's
visit (live).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from config.topics import Topics
from domain.records import Event, PurchaseEvent, PurchaseItem, VisitEvent
from ops.simulate import encode_event
from schemas import codec
from tests.harness import read_topic, send_raw, wait_drained, wait_until

pytestmark = pytest.mark.kafka

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DAY0 = date(2026, 6, 1)
T0 = 1_780_272_000_000  # 2026-06-01T00:00:00Z
assert date(1970, 1, 1) + timedelta(milliseconds=T0) == DAY0


def at(day: int, hour: int) -> int:
    return T0 + day * DAY_MS + hour * HOUR_MS


def buy(eid: str, cid: str, when: int, amount: int) -> PurchaseEvent:
    return PurchaseEvent(eid, cid, when, "store", f"o-{eid}", amount, "EUR",
                         items=(PurchaseItem("sku-1", "shoes", 1, amount),), location_id="S01")


def visit(eid: str, cid: str, when: int) -> VisitEvent:
    return VisitEvent(eid, cid, when, "store", "S01", 300, True)


FIRST: list[Event] = [
    visit("a-v0", "A", at(0, 9)),
    buy("b-p0", "B", at(0, 10), 2_000),
    visit("b-v1", "B", at(1, 10)),
    visit("b-v2", "B", at(2, 10)),
    visit("b-v61", "B", at(61, 10)),
    visit("b-v91", "B", at(91, 10)),
    visit("c-v5", "C", at(5, 12)),
    buy("d-p30", "D", at(30, 10), 3_000),
]
THIRD: list[Event] = [buy("a-p0", "A", at(0, 15), 4_000), visit("d-v91", "D", at(91, 12))]


def span(first: int, last: int, *cells: tuple[str, int, int, int]) -> list[tuple[date, str, int, int, int]]:
    """(day, tier, customers, active, revenue_365d_minor) for every day first..last and each cell;
    `active` applies to the first day of the span only (the days after it have no event)."""
    return [(DAY0 + timedelta(days=d), tier, n, active if d == first else 0, revenue)
            for d in range(first, last + 1) for tier, n, active, revenue in cells]


# (day, tier, customers, active customers, revenue_365d_minor), ordered by day and tier name.
AFTER_FIRST = [
    *span(0, 0, ("new", 1, 1, 2_000), ("prospect", 1, 1, 0)),  # B new, A prospect
    *span(1, 1, ("new", 1, 1, 2_000), ("prospect", 1, 0, 0)),
    *span(2, 4, ("new", 1, 1, 2_000), ("prospect", 1, 0, 0)),
    *span(5, 29, ("new", 1, 0, 2_000), ("prospect", 2, 1, 0)),  # C
    *span(30, 60, ("new", 2, 1, 5_000), ("prospect", 2, 0, 0)),  # D: 2,000 + 3,000
    *span(61, 90, ("at_risk", 1, 1, 2_000), ("new", 1, 0, 3_000), ("prospect", 2, 0, 0)),  # B leaves new
    *span(91, 91, ("lapsed", 1, 1, 2_000), ("new", 1, 0, 3_000), ("prospect", 2, 0, 0)),
]
AFTER_THIRD = [
    *span(0, 0, ("new", 2, 2, 6_000)),  # A ended day 0 new (its prospect row replaced): 4,000 + 2,000
    *span(1, 1, ("new", 2, 1, 6_000)),
    *span(2, 4, ("new", 2, 1, 6_000)),
    *span(5, 29, ("new", 2, 0, 6_000), ("prospect", 1, 1, 0)),
    *span(30, 60, ("new", 3, 1, 9_000), ("prospect", 1, 0, 0)),
    *span(61, 90, ("at_risk", 1, 1, 2_000), ("new", 2, 0, 7_000), ("prospect", 1, 0, 0)),  # A and D new
    *span(91, 91, ("at_risk", 1, 1, 3_000), ("lapsed", 1, 1, 2_000), ("new", 1, 0, 4_000),  # D, B, A
          ("prospect", 1, 0, 0)),
]
# tier_days FINAL per customer: (day, tier, version = events applied by the end of that day)
ROWS_AFTER_FIRST = {
    "A": [(0, "prospect", 1)],
    "B": [(0, "new", 1), (1, "new", 2), (2, "new", 3), (61, "at_risk", 4), (91, "lapsed", 5)],
    "C": [(5, "prospect", 1)],
    "D": [(30, "new", 1)],
}
ROWS_AFTER_THIRD = {**ROWS_AFTER_FIRST, "A": [(0, "new", 2)], "D": [(30, "new", 1), (91, "at_risk", 2)]}


def records(settings, events: list[Event]) -> list[tuple[str, bytes | None, bytes, int | None]]:
    topics = Topics(settings.topic_prefix)
    return [(topics.for_kind(e.kind), e.customer_id.encode(), encode_event(e), None) for e in events]


def daily(worker, db: str) -> list[tuple]:
    rows = worker.query(f"SELECT toString(day), tier, customers, active_customers, revenue_365d_minor "
                        f"FROM {db}.v_daily_tiers ORDER BY day, tier")
    return [(date.fromisoformat(d), t, int(n), int(a), int(r)) for d, t, n, a, r in rows]


def tier_rows(worker, db: str) -> dict[str, list[tuple[int, str, int]]]:
    rows = worker.query(f"SELECT customer_id, toString(day), tier, version FROM {db}.tier_days FINAL "
                        "ORDER BY customer_id, day")
    out: dict[str, list[tuple[int, str, int]]] = {}
    for cid, day, tier, version in rows:
        out.setdefault(cid, []).append(((date.fromisoformat(day) - DAY0).days, tier, int(version)))
    return out


def test_each_customer_once_per_day_in_their_end_of_day_tier(settings, worker):
    db = settings.clickhouse_database
    first = records(settings, FIRST)
    purchases = [r for r, e in zip(first, FIRST, strict=True) if e.kind == "purchase"]
    send_raw(settings, purchases)  # before the worker starts
    worker.start()
    wait_drained(worker, len(purchases))
    send_raw(settings, [r for r, e in zip(first, FIRST, strict=True) if e.kind != "purchase"])  # B's visits: a backfill
    wait_drained(worker, len(FIRST))
    wait_until(lambda: tier_rows(worker, db) == ROWS_AFTER_FIRST, timeout=60, what="tier_days after the first publish",
               show=lambda: tier_rows(worker, db))
    assert daily(worker, db) == AFTER_FIRST
    assert len({row[0] for row in AFTER_FIRST}) == 92  # every day 0..91, also those without an event

    # B's five event days each came once: as a signal's own day or as a day end it carried.
    signals = [codec("loyalty_signal").decode(v) for k, v in read_topic(settings, settings.topic_prefix + "signals")
               if k == b"B" and v is not None]
    days = [s["as_of"] // DAY_MS for s in signals] + [e["day"] for s in signals for e in s["day_ends"]]
    assert sorted(d - T0 // DAY_MS for d in days) == [0, 1, 2, 61, 91]
    assert sorted((e["day"] - T0 // DAY_MS, e["tier"]) for s in signals for e in s["day_ends"]) == [
        (d, t) for d, t, _ in ROWS_AFTER_FIRST["B"] if d not in {s["as_of"] // DAY_MS - T0 // DAY_MS for s in signals}]

    # A replayed batch: the same records again. Duplicates change no row and no count.
    send_raw(settings, first)
    wait_drained(worker, len(FIRST))
    assert tier_rows(worker, db) == ROWS_AFTER_FIRST
    assert daily(worker, db) == AFTER_FIRST

    # Live: A buys later on day 0 (its day-0 row is replaced), D comes back on day 91.
    send_raw(settings, records(settings, THIRD))
    wait_drained(worker, len(FIRST) + len(THIRD))
    wait_until(lambda: tier_rows(worker, db) == ROWS_AFTER_THIRD, timeout=60, what="tier_days after the third publish",
               show=lambda: tier_rows(worker, db))
    assert daily(worker, db) == AFTER_THIRD
    # The newest day is today's tier mix (signals_current), each customer once.
    current = dict(worker.query(f"SELECT tier, count() FROM {db}.signals_current FINAL GROUP BY tier"))
    assert {t: n for d, t, n, _, _ in AFTER_THIRD if d == DAY0 + timedelta(days=91)} == {
        t: int(n) for t, n in current.items()}
    audience = worker.query(f"SELECT toString(day), active_customers, loyal_customers, transactional_customers "
                            f"FROM {db}.v_audience_vs_loyal ORDER BY day")
    assert [(d, int(a), int(lo), int(tr)) for d, a, lo, tr in audience] == [
        ("2026-06-01", 2, 0, 0), ("2026-06-02", 1, 0, 0), ("2026-06-03", 1, 0, 0), ("2026-06-06", 1, 0, 0),
        ("2026-07-01", 1, 0, 0), ("2026-08-01", 1, 0, 0), ("2026-08-31", 2, 0, 0)]
    worker.stop()
