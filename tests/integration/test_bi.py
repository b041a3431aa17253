"""The BI model of migration 0004 against a real ClickHouse: chDB in tmp_path (or the server in
CLICKHOUSE_URL, in a database of its own). Known rows go in; every view must return exactly the
figures worked out by hand below. Then the report page is rendered in headless Chromium and its
charts and figures are checked against direct queries.

The customers, their signal history (weeks start on Monday: W1 = 2026-01-05, W2 = 2026-01-12,
W3 = 2026-01-19) and their state now:

    id  history (version: day tier score churn spend)           now            purchases expected
    A   1: 01-05 new 40 .5 1000; 2: 01-05 loyal 60 .25 3000;     at_risk           3        2
        3: 01-13 at_risk 50 .5 3000
    B   1: 01-06 transactional 30 .5 2000;                       transactional     5        4
        2: 01-14 transactional 35 .25 2500
    C   1: 01-06 fiercely_loyal 100 .125 10000                   fiercely_loyal   10        4
    D   1: 01-14 loyal 70 .25 4000                               loyal             4        3
    E   1: 01-14 loyal 80 .25 6000                               loyal             2        1
    F   1: 01-20 lapsed 20 1.0 800                               lapsed            1        0
    G   (no history)                                             prospect (0)      0        0

tier_days (migration 0007) holds each customer's newest version of each day, as the sink writes
it: A 01-05 v2 (its v1 of that day superseded), A 01-13, B 01-06, B 01-14, C 01-06, D, E 01-14,
F 01-20.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from domain.model.tiers import TIERS
from ops.report import CHARTS, build_report, render_html
from sinks.clickhouse import ClickHouseSink, migrations, split_statements

ROLES = Path(__file__).resolve().parents[2] / "sinks" / "roles"
BI_SQL = next(sql for _, name, sql in migrations() if name == "bi")
CAPTIVE_SQL = next(sql for _, name, sql in migrations() if name == "captive")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


SIGNAL_COLUMNS = ["customer_id", "version", "as_of", "model_version", "tier", "loyalty_score", "churn_risk",
                  "spend_365d_minor", "purchases", "expected_purchases", "horizon_days", "updated_at"]


def signal(cid: str, version: int, at: str, tier: str, score: float, churn: float, spend: int,
           purchases: int = 1, expected: float = 1.0) -> list[Any]:
    return [cid, version, ts(at), "test", tier, score, churn, spend, purchases, expected, 90, ts(at)]


HISTORY = [
    signal("A", 1, "2026-01-05 10:00", "new", 40, 0.5, 1000),
    signal("A", 2, "2026-01-05 18:00", "loyal", 60, 0.25, 3000),
    signal("A", 3, "2026-01-13 09:00", "at_risk", 50, 0.5, 3000, 3, 2),
    signal("B", 1, "2026-01-06 08:00", "transactional", 30, 0.5, 2000),
    signal("B", 2, "2026-01-14 08:00", "transactional", 35, 0.25, 2500, 5, 4),
    signal("C", 1, "2026-01-06 09:00", "fiercely_loyal", 100, 0.125, 10000, 10, 4),
    signal("D", 1, "2026-01-14 10:00", "loyal", 70, 0.25, 4000, 4, 3),
    signal("E", 1, "2026-01-14 11:00", "loyal", 80, 0.25, 6000, 2, 1),
    signal("F", 1, "2026-01-20 12:00", "lapsed", 20, 1.0, 800, 1, 0),
]
CURRENT = [row for row in HISTORY if row[1] == max(r[1] for r in HISTORY if r[0] == row[0])] + [
    signal("G", 1, "2026-01-20 13:00", "prospect", 0, 0.75, 0, 0, 0.5),
]
STALE_CURRENT = [HISTORY[1]]  # A's version 2, inserted after version 3: FINAL must keep version 3

TIER_DAY_COLUMNS = ["customer_id", "day", "as_of", "version", "tier", "loyalty_score", "churn_risk",
                    "spend_365d_minor", "updated_at"]


def tier_day(row: list[Any]) -> list[Any]:
    """The tier_days row of a history row (its columns in SIGNAL_COLUMNS order)."""
    cid, version, as_of, _, tier, score, churn, spend = row[:8]
    return [cid, as_of.date(), as_of, version, tier, score, churn, spend, as_of]


TIER_DAYS = [tier_day(row) for row in HISTORY if row[1] != 1 or row[0] != "A"]  # A's v1 lost to v2 (same day)
STALE_TIER_DAYS = [tier_day(HISTORY[0])]  # A's 01-05 v1, arriving after v2: FINAL keeps v2

REL_COLUMNS = ["customer_id", "version", "visits_90d", "recognized_share_90d", "calls_90d", "unresolved_calls_90d",
               "avg_sentiment_90d", "updated_at"]
RELATIONSHIPS = [
    ["A", 3, 4, 0.25, 2, 1, 0.9, ts("2026-01-13 09:00")],  # 25-50% (lower bound inclusive), unresolved
    ["B", 2, 0, None, 0, 0, None, ts("2026-01-14 08:00")],  # no visits, no calls
    ["C", 1, 10, 1.0, 1, 0, 0.5, ts("2026-01-06 09:00")],  # 75-100%, positive
    ["D", 1, 5, 0.8, 1, 0, 0.2, ts("2026-01-14 10:00")],  # 75-100%, neutral (0.2 is not > 0.2)
    ["E", 1, 2, 0.5, 3, 0, -0.5, ts("2026-01-14 11:00")],  # 50-75%, negative
    ["F", 1, 1, 0.0, 1, 0, None, ts("2026-01-20 12:00")],  # 0-25%, no sentiment
    ["G", 1, 0, None, 0, 0, None, ts("2026-01-20 13:00")],  # no visits, no calls
]
STALE_RELATIONSHIPS = [["C", 0, 0, None, 0, 0, None, ts("2026-01-01 00:00")]]  # older version: FINAL drops it

PURCHASE_COLUMNS = ["event_id", "customer_id", "occurred_at", "is_return", "amount_minor", "currency", "ingested_at"]


def purchase(event_id: str, cid: str, at: str, is_return: bool = False) -> list[Any]:
    return [event_id, cid, ts(at), is_return, 1000, "EUR", ts(at)]


PURCHASES = [
    purchase("p1", "A", "2026-01-20 10:00"),
    purchase("p2", "B", "2026-01-07 10:00", is_return=True),  # a return is not a purchase after the alert
    purchase("p3", "B", "2026-02-15 12:00"),
    purchase("p4", "C", "2026-01-01 10:00"),  # before C's alert
    purchase("p5", "D", "2026-01-15 00:00"),
    purchase("p6", "D", "2026-01-16 00:00"),
]
PURCHASE_REPLAY = [purchase("p5", "D", "2026-01-15 00:00")]

ALERT_COLUMNS = ["alert_id", "customer_id", "kind", "severity", "raised_at", "after_score", "after_tier",
                 "updated_at"]


def alert(alert_id: str, cid: str, kind: str, at: str, updated: str | None = None) -> list[Any]:
    return [alert_id, cid, kind, "warning", ts(at), 0.0, "", ts(updated or at)]


ALERTS = [
    alert("al1", "A", "score_drop", "2026-01-13 10:00"),  # bought 7 days later
    alert("al2", "B", "tier_downgrade", "2026-01-06 12:00"),  # a return next day, bought 40 days later
    alert("al3", "C", "score_drop", "2026-01-14 00:00"),  # never bought after
    alert("al4", "D", "score_drop", "2026-01-14 00:00"),  # bought 1 day later
]
ALERT_REPLAY = [alert("al1", "A", "score_drop", "2026-01-13 10:00", updated="2026-01-13 11:00")]


# -- the database --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    server = os.environ.get("CLICKHOUSE_URL")
    database = f"test_bi_{uuid.uuid4().hex[:10]}" if server else "loyalty"
    dsn = server or f"chdb://{tmp_path_factory.mktemp('bi') / 'clickhouse'}"
    sink = ClickHouseSink(dsn, database)
    sink.migrate()
    db = sink.database
    insert = sink.client.insert
    insert(f"{db}.signals_history", HISTORY, column_names=SIGNAL_COLUMNS)
    # Each table's rows as given (G has a current signal and no history): without the view that
    # copies every signals_current insert into signals_history (migration 0011) meanwhile.
    sink.client.command(f"DETACH TABLE {db}.signals_history_mv")
    try:
        insert(f"{db}.signals_current", CURRENT, column_names=SIGNAL_COLUMNS)
        insert(f"{db}.signals_current", STALE_CURRENT, column_names=SIGNAL_COLUMNS)
    finally:
        sink.client.command(f"ATTACH TABLE {db}.signals_history_mv")
    insert(f"{db}.tier_days", TIER_DAYS, column_names=TIER_DAY_COLUMNS)
    insert(f"{db}.tier_days", STALE_TIER_DAYS, column_names=TIER_DAY_COLUMNS)
    insert(f"{db}.relationships", RELATIONSHIPS, column_names=REL_COLUMNS)
    insert(f"{db}.relationships", STALE_RELATIONSHIPS, column_names=REL_COLUMNS)
    insert(f"{db}.purchases", PURCHASES, column_names=PURCHASE_COLUMNS)
    insert(f"{db}.purchases", PURCHASE_REPLAY, column_names=PURCHASE_COLUMNS)
    insert(f"{db}.alerts", ALERTS, column_names=ALERT_COLUMNS)
    insert(f"{db}.alerts", ALERT_REPLAY, column_names=ALERT_COLUMNS)
    yield sink
    if server:
        sink.client.command(f"DROP DATABASE IF EXISTS {db}")
    sink.close()


def rows(sink: ClickHouseSink, sql: str) -> list[tuple[Any, ...]]:
    return sink.query(sql.replace("{db}", sink.database))[1]


def approx_rows(got: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Floats compared to 1e-9, everything else exactly."""
    return [tuple(pytest.approx(v, abs=1e-9) if isinstance(v, float) else v for v in row) for row in got]


# -- the snapshot and the views ------------------------------------------------------------------

def test_the_materialized_view_fills_the_week_ends_on_insert(sink):
    got = rows(sink, "SELECT customer_id, (week_ends.1, arrayMap(c -> (intDiv(c, 16), c % 16), week_ends.2)) "
                     "FROM {db}.customer_week_tiers FINAL ORDER BY customer_id")
    w1, w2, w3 = date(2026, 1, 5), date(2026, 1, 12), date(2026, 1, 19)
    code = {tier: TIERS.index(tier) + 1 for tier in TIERS}
    assert got == [
        ("A", ([w1, w2], [(2, code["loyal"]), (3, code["at_risk"])])),
        ("B", ([w1, w2], [(1, code["transactional"]), (2, code["transactional"])])),
        ("C", ([w1], [(1, code["fiercely_loyal"])])),
        ("D", ([w2], [(1, code["loyal"])])),
        ("E", ([w2], [(1, code["loyal"])])),
        ("F", ([w3], [(1, code["lapsed"])])),
    ]


def jan(day: int) -> date:
    return date(2026, 1, day)


# v_daily_tiers: every day from 01-05 to 01-20, each customer once, in the tier of their newest
# row up to that day (carried over days without one); active = of them, with a row that day.
# day, tier, customers, active, avg score, avg churn, revenue_365d_minor (the customers' spend summed)
DAILY = [
    (jan(5), "loyal", 1, 1, 60.0, 0.25, 3000),  # A (v2 of the day: loyal, not its v1 new)
    *[row for d in range(6, 13) for row in (
        (jan(d), "fiercely_loyal", 1, int(d == 6), 100.0, 0.125, 10000),  # C from 01-06
        (jan(d), "loyal", 1, 0, 60.0, 0.25, 3000),  # A carried
        (jan(d), "transactional", 1, int(d == 6), 30.0, 0.5, 2000),  # B from 01-06
    )],
    (jan(13), "at_risk", 1, 1, 50.0, 0.5, 3000),  # A leaves loyal
    (jan(13), "fiercely_loyal", 1, 0, 100.0, 0.125, 10000),
    (jan(13), "transactional", 1, 0, 30.0, 0.5, 2000),
    *[row for d in range(14, 20) for row in (
        (jan(d), "at_risk", 1, 0, 50.0, 0.5, 3000),
        (jan(d), "fiercely_loyal", 1, 0, 100.0, 0.125, 10000),
        (jan(d), "loyal", 2, 2 * int(d == 14), 75.0, 0.25, 10000),  # D and E: mean(70, 80), 4000 + 6000
        (jan(d), "transactional", 1, int(d == 14), 35.0, 0.25, 2500),  # B's v2
    )],
    (jan(20), "at_risk", 1, 0, 50.0, 0.5, 3000),
    (jan(20), "fiercely_loyal", 1, 0, 100.0, 0.125, 10000),
    (jan(20), "lapsed", 1, 1, 20.0, 1.0, 800),  # F
    (jan(20), "loyal", 2, 0, 75.0, 0.25, 10000),
    (jan(20), "transactional", 1, 0, 35.0, 0.25, 2500),
]
DAILY_SQL = ("SELECT day, tier, customers, active_customers, avg_loyalty_score, avg_churn_risk, revenue_365d_minor "
             "FROM {db}.v_daily_tiers ORDER BY day, tier")


def test_v_daily_tiers(sink):
    got = rows(sink, DAILY_SQL)
    assert got == approx_rows(DAILY)
    assert len({row[0] for row in got}) == 16  # 01-05 .. 01-20, days without any event included
    # The newest day is the tier mix of signals_current for every customer with history (all but G).
    newest = {tier: n for day, tier, n, *_ in got if day == jan(20)}
    current = dict(rows(sink, "SELECT tier, count() FROM {db}.signals_current FINAL WHERE customer_id != 'G' "
                              "GROUP BY tier"))
    assert newest == current


AUDIENCE = [  # day, active, loyal (fiercely + loyal), transactional, shares
    (date(2026, 1, 5), 1, 1, 0, 1.0, 0.0),  # A, once: it ended the day loyal (its first signal said new)
    (date(2026, 1, 6), 2, 1, 1, 0.5, 0.5),
    (date(2026, 1, 13), 1, 0, 0, 0.0, 0.0),
    (date(2026, 1, 14), 3, 2, 1, 2 / 3, 1 / 3),
    (date(2026, 1, 20), 1, 0, 0, 0.0, 0.0),
]


def test_v_audience_vs_loyal(sink):
    got = rows(sink, "SELECT day, active_customers, loyal_customers, transactional_customers, loyal_share, "
                     "transactional_share FROM {db}.v_audience_vs_loyal ORDER BY day")
    assert got == approx_rows(AUDIENCE)


TRANSITIONS = [  # week, from, to, customers; each week sums to the customers known by its end
    (date(2026, 1, 5), "(new)", "fiercely_loyal", 1),
    (date(2026, 1, 5), "(new)", "loyal", 1),
    (date(2026, 1, 5), "(new)", "transactional", 1),
    (date(2026, 1, 12), "(new)", "loyal", 2),
    (date(2026, 1, 12), "fiercely_loyal", "fiercely_loyal", 1),  # C: no signal in W2, keeps the tier
    (date(2026, 1, 12), "loyal", "at_risk", 1),
    (date(2026, 1, 12), "transactional", "transactional", 1),
    (date(2026, 1, 19), "(new)", "lapsed", 1),
    (date(2026, 1, 19), "at_risk", "at_risk", 1),
    (date(2026, 1, 19), "fiercely_loyal", "fiercely_loyal", 1),
    (date(2026, 1, 19), "loyal", "loyal", 2),
    (date(2026, 1, 19), "transactional", "transactional", 1),
]


def test_v_tier_transitions_weekly(sink):
    got = rows(sink, "SELECT week, from_tier, to_tier, customers FROM {db}.v_tier_transitions_weekly "
                     "ORDER BY week, from_tier, to_tier")
    assert got == TRANSITIONS


AT_RISK = [  # customer, tier, aov, expected spend, value at risk; ties broken by customer id
    ("A", "at_risk", 1000.0, 2000.0, 1000.0),  # 3000 / 3 = 1000; x 2 expected; x 0.5 churn
    ("D", "loyal", 1000.0, 3000.0, 750.0),
    ("E", "loyal", 3000.0, 3000.0, 750.0),
    ("B", "transactional", 500.0, 2000.0, 500.0),
    ("C", "fiercely_loyal", 1000.0, 4000.0, 500.0),
    ("F", "lapsed", 800.0, 0.0, 0.0),  # G never bought: left out
]


def test_v_customers_at_risk(sink):
    got = rows(sink, "SELECT customer_id, tier, avg_order_value_minor, expected_spend_minor, value_at_risk_minor "
                     "FROM {db}.v_customers_at_risk")
    assert got == approx_rows(AT_RISK)  # the view's own order
    got = rows(sink, "SELECT customer_id FROM {db}.v_customers_at_risk ORDER BY value_at_risk_minor DESC, customer_id "
                     "LIMIT 2")
    assert got == [("A",), ("D",)]


def test_v_alerts_outcome(sink):
    got = rows(sink, "SELECT kind, outcome, alerts, customers, avg_days_to_purchase FROM {db}.v_alerts_outcome "
                     "ORDER BY kind, outcome")
    assert got == approx_rows([
        ("score_drop", "no_purchase_yet", 1, 1, None),  # C bought before the alert only
        ("score_drop", "purchased_within_30d", 2, 2, 4.0),  # A after 7 days, D after 1 (the replayed p5 too)
        ("tier_downgrade", "purchased_later", 1, 1, 40.0),  # B: the return does not count
    ])


def test_v_alerts_daily(sink):
    got = rows(sink, "SELECT day, kind, alerts FROM {db}.v_alerts_daily ORDER BY day, kind")
    assert got == [(date(2026, 1, 6), "tier_downgrade", 1), (date(2026, 1, 13), "score_drop", 1),
                   (date(2026, 1, 14), "score_drop", 2)]  # al1's replay counted once


def test_v_recognition_and_quality(sink):
    got = rows(sink, "SELECT recognition, service, customers, avg_loyalty_score, avg_churn_risk, fiercely_loyal_share, "
                     "loyal_share, transactional_share, at_risk_share, lapsed_share, new_share, prospect_share "
                     "FROM {db}.v_recognition_and_quality ORDER BY recognition_order, service_order")
    assert got == approx_rows([
        ("no visits", "no calls", 2, 17.5, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.5),  # B and G
        ("0-25%", "no sentiment", 1, 20.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0),  # F
        ("25-50%", "unresolved", 1, 50.0, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),  # A
        ("50-75%", "negative", 1, 80.0, 0.25, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # E
        ("75-100%", "neutral", 1, 70.0, 0.25, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # D
        ("75-100%", "positive", 1, 100.0, 0.125, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # C (not its stale row)
    ])


def test_v_tiers_current_and_score_histogram(sink):
    got = rows(sink, "SELECT tier, customers, share, avg_loyalty_score, revenue_365d_minor FROM {db}.v_tiers_current "
                     "ORDER BY tier")
    assert got == approx_rows([
        ("at_risk", 1, 1 / 7, 50.0, 3000), ("fiercely_loyal", 1, 1 / 7, 100.0, 10000), ("lapsed", 1, 1 / 7, 20.0, 800),
        ("loyal", 2, 2 / 7, 75.0, 10000), ("prospect", 1, 1 / 7, 0.0, 0), ("transactional", 1, 1 / 7, 35.0, 2500),
    ])
    got = rows(sink, "SELECT bin_from, bin_to, customers FROM {db}.v_score_histogram ORDER BY bin_from")
    assert got == [(0, 10, 1), (20, 30, 1), (30, 40, 1), (50, 60, 1), (70, 80, 1), (80, 90, 1), (90, 100, 1)]


def refreshed(sink: ClickHouseSink) -> None:
    """tiers_now recomputed now, from what signals_current holds (migration 0013)."""
    sink.client.command(f"SYSTEM REFRESH VIEW {sink.database}.tiers_now_mv")
    sink.client.command(f"SYSTEM WAIT VIEW {sink.database}.tiers_now_mv")


def test_v_tiers_now_is_v_tiers_current_as_of_its_refresh(sink):
    columns = "tier, customers, share, avg_loyalty_score, avg_churn_risk, revenue_365d_minor"
    refreshed(sink)
    exact = rows(sink, f"SELECT {columns} FROM {{db}}.v_tiers_current ORDER BY tier")
    assert rows(sink, f"SELECT {columns} FROM {{db}}.v_tiers_now ORDER BY tier") == approx_rows(exact)
    assert len(exact) == 6
    # A newer version of F (lapsed) moves it to loyal: v_tiers_now shows it after the next refresh.
    db = sink.database
    moved = rows(sink, f"SELECT {', '.join(SIGNAL_COLUMNS)} FROM {{db}}.signals_current FINAL WHERE customer_id = 'F'")[0]
    newer = list(moved)
    newer[SIGNAL_COLUMNS.index("version")] += 100
    newer[SIGNAL_COLUMNS.index("tier")] = "loyal"
    before = dict(rows(sink, "SELECT tier, customers FROM {db}.v_tiers_now"))
    sink.client.command(f"DETACH TABLE {db}.signals_history_mv")  # the history other tests read stays as it is
    try:
        sink.client.insert(f"{db}.signals_current", [newer], column_names=SIGNAL_COLUMNS)
        refreshed(sink)
        after = dict(rows(sink, "SELECT tier, customers FROM {db}.v_tiers_now"))
        assert rows(sink, f"SELECT {columns} FROM {{db}}.v_tiers_now ORDER BY tier") == approx_rows(
            rows(sink, f"SELECT {columns} FROM {{db}}.v_tiers_current ORDER BY tier"))
    finally:
        sink.client.insert(f"{db}.signals_current", [[*moved[:1], moved[1] + 200, *moved[2:]]],
                           column_names=SIGNAL_COLUMNS)  # F as it was, for the other tests
        sink.client.command(f"ATTACH TABLE {db}.signals_history_mv")
    assert before["lapsed"] == 1 and "lapsed" not in after  # no row for a tier nobody is in
    assert after == {**{t: n for t, n in before.items() if t != "lapsed"}, "loyal": before["loyal"] + 1}
    refreshed(sink)
    assert rows(sink, "SELECT count() FROM {db}.v_tiers_now WHERE refreshed_at < now64(3) - 60") == [(0,)]


def test_the_sink_sets_how_often_tiers_now_is_refreshed(sink):
    sink.refresh_tiers_now_every(7)
    try:
        create = rows(sink, "SHOW CREATE TABLE {db}.tiers_now_mv")[0][0]
        assert "REFRESH EVERY 7 SECOND" in create
    finally:
        sink.refresh_tiers_now_every(5)


def test_a_replayed_row_inflates_no_count(sink):
    """B's version 2 arrives again in another insert block (a replay with other batch boundaries):
    its history row and its tier_days row."""
    views = ("v_daily_tiers", "v_audience_vs_loyal", "v_tier_transitions_weekly")
    before = {view: rows(sink, f"SELECT * FROM {{db}}.{view} ORDER BY ALL") for view in views}
    sink.client.insert(f"{sink.database}.signals_history", [HISTORY[4]], column_names=SIGNAL_COLUMNS)
    sink.client.insert(f"{sink.database}.tier_days", [tier_day(HISTORY[4])], column_names=TIER_DAY_COLUMNS)
    try:
        for view, expected in before.items():
            assert rows(sink, f"SELECT * FROM {{db}}.{view} ORDER BY ALL") == expected, view
        assert rows(sink, DAILY_SQL) == approx_rows(DAILY)
    finally:
        # Put the module's data back as it was: the replayed rows collapse on their keys.
        db = sink.database
        for table in ("signals_history", "tier_days"):
            sink.client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")


def test_the_tier_list_in_sql_is_the_model_s():
    """Tier codes only grow: 0004 wrote the first seven, 0009 appended captive; the newest list is TIERS."""
    def lists(sql: str) -> list[tuple[str, ...]]:
        return [tuple(t.strip(" '\n") for t in found.split(",")) for found in re.findall(r"\[('prospect'[^\]]*)\]", sql)]
    assert lists(BI_SQL) and all(found == TIERS[:7] for found in lists(BI_SQL))
    assert lists(CAPTIVE_SQL) and all(found == TIERS for found in lists(CAPTIVE_SQL))


# -- roles -----------------------------------------------------------------------------------------

# the BI views of every migration (0004_bi and the ones added later, e.g. 0006's alert views)
VIEWS = [view for _, _, sql in migrations() for view in re.findall(r"CREATE VIEW IF NOT EXISTS \{db\}\.(v_\w+)", sql)]


def role_statements(name: str, db: str) -> list[str]:
    return split_statements((ROLES / name).read_text().replace("{db}", db))


def test_every_view_of_the_migration_is_granted_to_the_bi_reader():
    assert len(VIEWS) >= 5
    statements = role_statements("bi_reader.sql", "loyalty")
    granted = {m.group(1) for s in statements
               if (m := re.fullmatch(r"GRANT SELECT ON loyalty\.(\w+) TO loyalty_bi_reader", s))}
    assert granted == set(VIEWS)
    definer = {m.group(1) for s in statements
               if (m := re.fullmatch(r"ALTER TABLE loyalty\.(\w+) MODIFY SQL SECURITY DEFINER", s))}
    assert definer == set(VIEWS)
    assert not [s for s in statements if "INSERT" in s or "ALL" in s.split()]


def test_the_writer_inserts_and_reads_no_contact_pseudonyms():
    statements = role_statements("writer.sql", "loyalty")
    text = " ".join(statements)
    for table in ("purchases", "calls", "visits", "relationships", "signals_current", "signals_history", "tier_days",
                  "signals_avro", "alerts", "dead_letters"):
        assert f"GRANT INSERT ON loyalty.{table} TO loyalty_writer" in statements
    for table in ("alerts", "signals_current", "signals_history"):
        assert not re.search(rf"SELECT[^;]*ON loyalty\.{table} ", text + " "), table
    # the churn refit reads raw interactions back: named columns only, never the contact pseudonyms
    for table in ("purchases", "calls", "visits"):
        (grant,) = [s for s in statements if "SELECT" in s and f"ON loyalty.{table} " in s + " "]
        assert grant.startswith("GRANT SELECT(") and "contact" not in grant and "caller_phone" not in grant, grant
    (relationships,) = [s for s in statements if s.startswith("GRANT SELECT(") and "relationships" in s]
    assert "contact" not in relationships


@pytest.mark.parametrize("name", ["bi_reader.sql", "writer.sql"])
def test_role_files_parse_as_separate_statements(sink, name):
    """Each statement goes through ClickHouse's own parser (formatQuery), one at a time."""
    statements = role_statements(name, sink.database)
    assert len(statements) > 5
    for statement in statements:
        (formatted,) = sink.client.query("SELECT formatQuerySingleLine(%(s)s)", parameters={"s": statement}).result_rows
        assert formatted[0].split()[0] == statement.split()[0]


def test_roles_apply_on_a_server(sink):
    if not os.environ.get("CLICKHOUSE_URL"):
        pytest.skip("CLICKHOUSE_URL is not set: chDB has no access control, so roles need a ClickHouse server")
    tag = uuid.uuid4().hex[:8]
    names = {"loyalty_bi_reader": f"loyalty_bi_reader_{tag}", "loyalty_writer": f"loyalty_writer_{tag}"}
    try:
        for file in ("bi_reader.sql", "writer.sql"):
            for statement in role_statements(file, sink.database):
                for role, renamed in names.items():
                    statement = statement.replace(role, renamed)
                sink.client.command(statement)
        grants = " ".join(r[0] for r in rows(sink, f"SHOW GRANTS FOR {names['loyalty_bi_reader']}"))
        for view in VIEWS:
            assert f"{sink.database}.{view}" in grants
        assert f"{sink.database}.purchases" not in grants
        writer = " ".join(r[0] for r in rows(sink, f"SHOW GRANTS FOR {names['loyalty_writer']}"))
        assert f"GRANT INSERT ON {sink.database}.purchases" in writer
    finally:
        for renamed in names.values():
            sink.client.command(f"DROP ROLE IF EXISTS {renamed}")


# -- the report page in headless Chromium ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Marks(HTMLParser):
    """The charts of a DOM dump: data-points and the marks (data-key -> data-value) of each."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, Any]] = {}
        self._current: str | None = None
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "svg" and a.get("data-chart"):
            self._current = a["data-chart"]
            self.charts[self._current] = {"points": int(a["data-points"] or 0), "marks": {}}
        elif tag == "rect" and self._current and "mark" in (a.get("class") or "").split():
            self.charts[self._current]["marks"][a["data-key"]] = a["data-value"]
        elif tag == "table" and a.get("data-table"):
            self._table = a["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def render_in_chromium(page: Path, profile: Path) -> str:
    """The DOM after Chromium loaded and laid out the page (no network: the page needs none)."""
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_report_page_renders_in_chromium_with_every_chart(sink, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed in CI (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    report = build_report(lambda sql: sink.query(sql), sink.database, top=4, days=30, currency="EUR",
                          generated_at="test")
    page = tmp_path / "report.html"
    text = render_html(report)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page must not load anything"
    page.write_text(text, encoding="utf-8")
    dom = Marks()
    dom.feed(render_in_chromium(page, tmp_path / "profile"))
    assert set(dom.charts) == set(CHARTS)
    for name, chart in dom.charts.items():
        assert chart["points"] == len(chart["marks"]) > 0, name

    # Every chart against a direct query of the tables underneath, computed here independently.
    db = sink.database
    # Each customer's newest tier_days row up to each day, carried forward, counted in Python.
    days = rows(sink, f"SELECT customer_id, day, tier FROM {db}.tier_days FINAL ORDER BY customer_id, day")
    counts: dict[str, int] = {}
    for offset in range(16):  # 01-05 .. 01-20
        day = date(2026, 1, 5 + offset)
        last = {c: t for c, d, t in days if d <= day}
        for tier in set(last.values()):
            counts[f"{day}|{tier}"] = sum(1 for t in last.values() if t == tier)
    assert dom.charts["tiers-over-time"]["marks"] == {k: str(n) for k, n in counts.items()}
    histogram = rows(sink, f"SELECT toUInt8(least(intDiv(toUInt32(loyalty_score), 10), 9)) * 10 AS b, count() "
                           f"FROM {db}.signals_current FINAL GROUP BY b")
    assert dom.charts["score-histogram"]["marks"] == {f"{b}-{b + 10}": str(n) for b, n in histogram}
    risk = rows(sink, f"SELECT customer_id, churn_risk * expected_purchases * spend_365d_minor / purchases AS v "
                      f"FROM {db}.signals_current FINAL WHERE purchases > 0 ORDER BY v DESC, customer_id LIMIT 4")
    assert {k: float(v) for k, v in dom.charts["customers-at-risk"]["marks"].items()} == {c: v for c, v in risk}
    alerts = rows(sink, f"SELECT toString(toDate(raised_at)) AS d, uniqExact(alert_id) FROM {db}.alerts GROUP BY d")
    assert dom.charts["alerts-per-day"]["marks"] == {d: str(n) for d, n in alerts}
    # The newest week (2026-01-19): every customer known by then, each in one cell.
    assert dom.charts["tier-transitions"]["marks"] == {
        "(new)|lapsed": "1", "at_risk|at_risk": "1", "fiercely_loyal|fiercely_loyal": "1", "loyal|loyal": "2",
        "transactional|transactional": "1"}

    # The printed figures are the same numbers.
    tiers_now = {row[0]: row[1] for row in dom.tables["tiers-now"][1:]}
    direct = rows(sink, f"SELECT tier, count() FROM {db}.signals_current FINAL GROUP BY tier")
    assert tiers_now == {t: f"{n:,}" for t, n in direct}
    key = dict(dom.tables["key-figures"][1:])
    assert key["customers"] == "7"
    assert key["fiercely loyal + loyal now"] == "3 (42.9%)"
    assert key["value at risk, top 4"] == "30.00 EUR"  # (1000 + 750 + 750 + 500) minor units


# -- the Grafana dashboard's queries -----------------------------------------------------------------------

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning" / "dashboards"


def test_every_grafana_panel_query_runs_on_the_views(sink):
    queries = [(panel["title"], target["rawSql"]) for file in sorted(DASHBOARDS.glob("*.json"))
               for panel in json.loads(file.read_text())["panels"] for target in panel.get("targets", [])]
    assert queries
    for title, sql in queries:
        runnable = sql.replace("${database}", sink.database)
        runnable = re.sub(r"\$__dateFilter\((\w+)\)", r"\1 BETWEEN '2026-01-01' AND '2026-02-01'", runnable)
        assert "$" not in runnable, f"{title}: a macro this test does not know"
        assert sink.query(runnable)[1], f"{title}: no rows"


def migrated_before(sink: ClickHouseSink, suffix: str, monkeypatch: pytest.MonkeyPatch, *left_out: str) -> ClickHouseSink:
    """A database of the module's engine migrated without the migrations ``left_out``, holding HISTORY."""
    from sinks import clickhouse

    older = ClickHouseSink(sink.dsn, f"{sink.database}_{suffix}")
    older._client = sink.client  # the same engine (chDB opens one directory per process)
    every = clickhouse.migrations()
    monkeypatch.setattr(clickhouse, "migrations", lambda: [m for m in every if m[1] not in left_out])
    older.migrate()
    older.client.insert(f"{older.database}.signals_history", HISTORY, column_names=SIGNAL_COLUMNS)
    monkeypatch.setattr(clickhouse, "migrations", lambda: every)
    return older


def test_0004_backfills_the_week_ends_from_history_written_before_it(sink, monkeypatch):
    """A database that had signals before migration 0004: the weekly transitions start complete,
    and 0014 drops the daily snapshot 0004 created."""
    # 0007 and 0009 change 0004's views; 0012's views write into 0007's tier_days; 0014 drops 0004's snapshot
    older = migrated_before(sink, "before_bi", monkeypatch, "bi", "daily_tiers", "captive", "signals_avro",
                            "drop_signals_daily")
    try:
        assert older.migrate() == ["0004_bi", "0007_daily_tiers", "0009_captive", "0012_signals_avro",
                                   "0014_drop_signals_daily"]
        tables = {name for (name,) in older.query(
            f"SELECT name FROM system.tables WHERE database = '{older.database}'")[1]}
        assert "customer_week_tiers" in tables and not tables & {"signals_daily", "signals_daily_mv"}
        got = older.query(f"SELECT week, from_tier, to_tier, customers FROM {older.database}.v_tier_transitions_weekly "
                          "ORDER BY week, from_tier, to_tier")[1]
        assert got == TRANSITIONS
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS {older.database}")


def test_0007_backfills_tier_days_from_history_written_before_it(sink, monkeypatch):
    """A database with 0004's views and a signal history: after 0007 the daily tiers are the
    module's, built from each customer-day's newest history row."""
    older = migrated_before(sink, "before_daily", monkeypatch, "daily_tiers", "captive", "signals_avro")
    try:
        assert older.migrate() == ["0007_daily_tiers", "0009_captive", "0012_signals_avro"]
        assert older.query(DAILY_SQL.replace("{db}", older.database))[1] == approx_rows(DAILY)
        got = older.query(f"SELECT day, active_customers, loyal_customers, transactional_customers, loyal_share, "
                          f"transactional_share FROM {older.database}.v_audience_vs_loyal ORDER BY day")[1]
        assert got == approx_rows(AUDIENCE)
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS {older.database}")

# -- captive customers (migration 0009) ----------------------------------------------------------------
#
# A database of its own on the same engine, migrated up to 0008, then given these signals, then
# migrated to 0009 (as a database that had captive signals before 0009 would be):
#
#     id  history (version: day tier score churn spend)                      now          relationship (90 days)
#     K   1: 01-05 loyal 60 .25 3000; 2: 01-13 captive 50 .25 3000           captive      no visits, 5 calls, 2 unresolved
#     L   1: 01-06 loyal 70 .25 4000; 2: 01-13 loyal 72 .25 5000             loyal        no visits, no calls
#     M   1: 01-06 transactional 30 .5 1000                                  transactional no visits, no calls
#     N   1: 01-13 captive 45 .25 2000                                       captive      2 visits, none recognised; 3 calls,
#                                                                                         1 unresolved

CAPTIVE_HISTORY = [
    signal("K", 1, "2026-01-05 10:00", "loyal", 60, 0.25, 3000),
    signal("K", 2, "2026-01-13 10:00", "captive", 50, 0.25, 3000, 12, 3),
    signal("L", 1, "2026-01-06 10:00", "loyal", 70, 0.25, 4000),
    signal("L", 2, "2026-01-13 12:00", "loyal", 72, 0.25, 5000, 8, 2),
    signal("M", 1, "2026-01-06 11:00", "transactional", 30, 0.5, 1000),
    signal("N", 1, "2026-01-13 11:00", "captive", 45, 0.25, 2000, 9, 2),
]
CAPTIVE_RELATIONSHIPS = [
    ["K", 2, 0, None, 5, 2, -0.5, ts("2026-01-13 10:00")],
    ["L", 2, 0, None, 0, 0, None, ts("2026-01-13 12:00")],
    ["M", 1, 0, None, 0, 0, None, ts("2026-01-06 11:00")],
    ["N", 1, 2, 0.0, 3, 1, -0.3, ts("2026-01-13 11:00")],
]


@pytest.fixture(scope="module")
def captive_db(sink: ClickHouseSink) -> Iterator[ClickHouseSink]:
    from sinks import clickhouse

    db = ClickHouseSink(sink.dsn, f"{sink.database}_captive")
    db._client = sink.client  # the same engine (chDB opens one directory per process)
    every = clickhouse.migrations()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(clickhouse, "migrations", lambda: [m for m in every if m[1] != "captive"])
            db.migrate()
        current = [row for row in CAPTIVE_HISTORY if row[1] == max(r[1] for r in CAPTIVE_HISTORY if r[0] == row[0])]
        db.client.insert(f"{db.database}.signals_history", CAPTIVE_HISTORY, column_names=SIGNAL_COLUMNS)
        db.client.insert(f"{db.database}.signals_current", current, column_names=SIGNAL_COLUMNS)
        # as the sink writes them: one tier_days row per signal (FINAL keeps each day's newest)
        db.client.insert(f"{db.database}.tier_days", [tier_day(r) for r in CAPTIVE_HISTORY], column_names=TIER_DAY_COLUMNS)
        db.client.insert(f"{db.database}.relationships", CAPTIVE_RELATIONSHIPS, column_names=REL_COLUMNS)
        yield db
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS {db.database}")


def week_codes(db: ClickHouseSink) -> list[tuple[Any, ...]]:
    return db.query(f"SELECT customer_id, arrayMap(c -> (intDiv(c, 16), c % 16), week_ends.2) "
                    f"FROM {db.database}.customer_week_tiers FINAL ORDER BY customer_id")[1]


def test_captive_customers_reach_the_bi_views(captive_db):
    db = captive_db
    # before 0009, 0004's materialized view had no code for captive: 0, '(unknown)'
    assert week_codes(db) == [("K", [(1, 6), (2, 0)]), ("L", [(1, 6), (2, 6)]), ("M", [(1, 7)]), ("N", [(1, 0)])]
    assert db.migrate() == ["0009_captive"]
    # 0009 recoded the captive weeks already stored (8) ...
    assert week_codes(db) == [("K", [(1, 6), (2, 8)]), ("L", [(1, 6), (2, 6)]), ("M", [(1, 7)]), ("N", [(1, 8)])]
    # ... and codes new captive signals as 8: N's week 3 (version 2, code 2 * 16 + 8)
    n2 = signal("N", 2, "2026-01-19 11:00", "captive", 44, 0.25, 2000)
    db.client.insert(f"{db.database}.signals_history", [n2], column_names=SIGNAL_COLUMNS)
    db.client.insert(f"{db.database}.tier_days", [tier_day(n2)], column_names=TIER_DAY_COLUMNS)
    assert week_codes(db)[3] == ("N", [(1, 8), (2, 8)])
    q = db.database

    # "big audience or loyal base?": day, active, loyal, transactional, captive, transactional or captive,
    # their shares, revenue (the 365-day spend of the day's active customers), loyal and
    # transactional-or-captive revenue and revenue shares
    got = db.query(f"SELECT day, active_customers, loyal_customers, transactional_customers, captive_customers, "
                   "transactional_or_captive_customers, loyal_share, transactional_share, captive_share, "
                   "transactional_or_captive_share, revenue_365d_minor, loyal_revenue_365d_minor, "
                   "transactional_or_captive_revenue_365d_minor, loyal_revenue_share, "
                   f"transactional_or_captive_revenue_share FROM {q}.v_audience_vs_loyal ORDER BY day")[1]
    assert got == approx_rows([
        (date(2026, 1, 5), 1, 1, 0, 0, 0, 1.0, 0.0, 0.0, 0.0, 3000, 3000, 0, 1.0, 0.0),  # K loyal
        (date(2026, 1, 6), 2, 1, 1, 0, 1, 0.5, 0.5, 0.0, 0.5, 5000, 4000, 1000, 0.8, 0.2),  # L loyal, M transactional
        # K (3000) and N (2000) captive, L loyal (5000)
        (date(2026, 1, 13), 3, 1, 0, 2, 2, 1 / 3, 0.0, 2 / 3, 2 / 3, 10000, 5000, 5000, 0.5, 0.5),
        (date(2026, 1, 19), 1, 0, 0, 1, 1, 0.0, 0.0, 1.0, 1.0, 2000, 0, 2000, 0.0, 1.0),  # N captive
    ])
    got = db.query(f"SELECT week, from_tier, to_tier, customers FROM {q}.v_tier_transitions_weekly "
                   "ORDER BY week, from_tier, to_tier")[1]
    assert got == [
        (date(2026, 1, 5), "(new)", "loyal", 2), (date(2026, 1, 5), "(new)", "transactional", 1),
        (date(2026, 1, 12), "(new)", "captive", 1), (date(2026, 1, 12), "loyal", "captive", 1),
        (date(2026, 1, 12), "loyal", "loyal", 1), (date(2026, 1, 12), "transactional", "transactional", 1),
        (date(2026, 1, 19), "captive", "captive", 2), (date(2026, 1, 19), "loyal", "loyal", 1),
        (date(2026, 1, 19), "transactional", "transactional", 1),
    ]
    got = db.query(f"SELECT day, tier, customers, revenue_365d_minor FROM {q}.v_daily_tiers "
                   "WHERE tier = 'captive' ORDER BY day")[1]
    # K (3000) and N (2000) captive from 01-13, carried forward to the newest day (N's 01-19 row
    # keeps both in captive): every day 2 customers and 5000 of revenue
    assert got == [(date(2026, 1, d), "captive", 2, 5000) for d in range(13, 20)]
    got = db.query(f"SELECT tier, customers, share, avg_loyalty_score, revenue_365d_minor FROM {q}.v_tiers_current "
                   "ORDER BY tier")[1]
    assert got == approx_rows([("captive", 2, 0.5, 47.5, 5000), ("loyal", 1, 0.25, 72.0, 5000),
                               ("transactional", 1, 0.25, 30.0, 1000)])
    got = db.query(f"SELECT recognition, service, customers, loyal_share, transactional_share, captive_share "
                   f"FROM {q}.v_recognition_and_quality ORDER BY recognition_order, service_order")[1]
    assert got == approx_rows([("no visits", "no calls", 2, 0.5, 0.5, 0.0), ("no visits", "unresolved", 1, 0.0, 0.0, 1.0),
                               ("0-25%", "unresolved", 1, 0.0, 0.0, 1.0)])
