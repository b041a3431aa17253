"""The loyalty report without a database: a fake ``query`` answers each of the report's queries
with known rows; the text and the page must show exactly those figures, and every chart must
draw one mark per figure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from html.parser import HTMLParser
from typing import Any

import pytest

from ops.report import CHARTS, SQL, build_report, render_html, render_text

DB = "bi_db"

ANSWERS: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {
    "tiers_now": (["tier", "customers", "share", "avg_loyalty_score", "avg_churn_risk", "revenue_365d_minor"], [
        ("loyal", 6, 0.6, 70.0, 0.2, 600000), ("captive", 2, 0.2, 40.0, 0.3, 60000),
        ("fiercely_loyal", 1, 0.1, 95.0, 0.05, 250000), ("transactional", 1, 0.1, 30.0, 0.5, 30000)]),
    "tiers_over_time": (["day", "tier", "customers"], [
        (date(2026, 1, 5), "loyal", 4), (date(2026, 1, 5), "transactional", 2),
        (date(2026, 1, 6), "captive", 2), (date(2026, 1, 6), "fiercely_loyal", 1), (date(2026, 1, 6), "loyal", 3)]),
    "audience": (["day", "active_customers", "loyal_customers", "transactional_customers", "captive_customers",
                  "loyal_share", "transactional_or_captive_share", "loyal_revenue_share",
                  "transactional_or_captive_revenue_share"], [
        (date(2026, 1, 5), 6, 4, 2, 0, 4 / 6, 2 / 6, 0.8, 0.2), (date(2026, 1, 6), 6, 4, 0, 2, 4 / 6, 2 / 6, 0.7, 0.3)]),
    "score_histogram": (["bin_from", "bin_to", "customers"], [(20, 30, 3), (60, 70, 6), (90, 100, 1)]),
    "at_risk": (["customer_id", "tier", "churn_risk", "expected_spend_minor", "value_at_risk_minor"], [
        ("c-<script>1", "loyal", 0.5, 20000.0, 10000.0), ("c2", "transactional", 0.25, 8000.0, 2000.0)]),
    # Through the worker's JSON API days arrive as strings: the report takes both.
    "alerts_daily": (["day", "alerts"], [("2026-01-05", 2), ("2026-01-06", 5)]),
    "alerts_outcome": (["kind", "outcome", "alerts", "customers", "avg_days_to_purchase"], [
        ("score_drop", "purchased_within_30d", 2, 2, 4.0), ("gone_quiet", "no_purchase_yet", 5, 4, None)]),
    "transitions": (["week", "from_tier", "to_tier", "customers"], [
        (date(2025, 12, 29), "(new)", "loyal", 9),
        (date(2026, 1, 5), "(new)", "fiercely_loyal", 1), (date(2026, 1, 5), "loyal", "loyal", 5),
        (date(2026, 1, 5), "loyal", "transactional", 3)]),
}


class FakeClickHouse:
    """Answers the report's queries (recognised by their text) and records them."""

    def __init__(self, answers: dict[str, tuple[list[str], list[tuple[Any, ...]]]]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    def __call__(self, sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        self.seen.append(sql)
        for name, template in SQL.items():
            if sql == template.format(db=DB, top=2, days=7):
                return self.answers[name]
        raise AssertionError(f"unexpected query: {sql}")


@pytest.fixture
def report():
    fake = FakeClickHouse(ANSWERS)
    built = build_report(fake, DB, top=2, days=7, currency="EUR", generated_at="2026-01-07 08:00 UTC")
    assert len(fake.seen) == len(SQL)  # every query once
    return built


class Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, Any]] = {}
        self._chart: str | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(str(a[key]))
        if tag == "script":
            self.external.append("<script>")
        if tag == "svg":
            self._chart = a["data-chart"]
            self.charts[self._chart] = {"points": int(a["data-points"] or 0), "marks": {}}
        elif tag == "rect" and "mark" in (a.get("class") or "").split():
            assert self._chart is not None
            self.charts[self._chart]["marks"][a["data-key"]] = a["data-value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None


def parse(page: str) -> Svg:
    svg = Svg()
    svg.feed(page)
    return svg


def test_every_query_reads_the_bi_views_of_the_database_only():
    for name, template in SQL.items():
        sql = template.format(db=DB, top=2, days=7)
        tables = set(re.findall(r"FROM\s+(\w+)\.(\w+)", sql))
        assert tables and all(db == DB and t.startswith("v_") for db, t in tables), name


def test_build_report_rejects_empty_windows():
    with pytest.raises(ValueError):
        build_report(FakeClickHouse(ANSWERS), DB, top=0)
    with pytest.raises(ValueError):
        build_report(FakeClickHouse(ANSWERS), DB, days=0)


def test_the_terminal_report_prints_the_figures(report):
    text = render_text(report)
    lines = text.splitlines()
    assert lines[0] == "Loyalty report (bi_db) - 2026-01-07 08:00 UTC"
    assert "customers                        10" in lines  # 6 + 2 + 1 + 1
    assert "fiercely loyal + loyal now       7 (70.0%)" in lines
    assert "value at risk, top 2             120.00 EUR" in lines  # (10000 + 2000) minor units
    assert "alerts, last 7 days              7" in lines
    assert "active on the newest day         6 on 2026-01-06" in lines
    assert "loyal           6          60.0%  70.0       0.200           6,000.00 EUR" in lines
    # the big audience that is not a loyal base: transactional (1) and captive (2) now; on the newest
    # day 2 of 6 active customers (33.3%) and 30% of their revenue
    assert "captive now                      2" in lines
    assert "transactional + captive now      3 (30.0%)" in lines
    assert "loyal share of them              66.7%" in lines
    assert "transactional + captive share    33.3%" in lines
    assert "loyal share of revenue           70.0%" in lines
    assert "transactional + captive revenue  30.0%" in lines
    assert "captive         2          20.0%  40.0       0.300           600.00 EUR" in lines
    assert ("2026-01-05  6       4      2              0        66.7%        33.3%                           "
            "80.0%                20.0%") in lines
    # The daily series as a table: a tier without customers that day shows 0; total = the row's sum.
    block = text.split("Customers per tier at the end of each day, last 7 days\n")[1].split("\n\n")[0]
    assert block.splitlines() == ["day         fiercely_loyal  loyal  transactional  captive  total",
                                  "----------  --------------  -----  -------------  -------  -----",
                                  "2026-01-05  0               4      2              0        6",
                                  "2026-01-06  1               3      0              2        6"]
    assert "c-<script>1  loyal          0.500       200.00 EUR      100.00 EUR" in lines
    # Only the newest week of the transition matrix.
    assert "Tier transitions, week of 2026-01-05 (tier at the end of the week before -> now)" in lines
    block = text.split("Tier transitions, week of 2026-01-05")[1].splitlines()[3:]
    assert block == ["(new)  fiercely_loyal  1", "loyal  loyal           5", "loyal  transactional   3"]
    assert "no_purchase_yet" in text and "gone_quiet" in text


def test_every_chart_draws_one_mark_per_figure(report):
    page = parse(render_html(report))
    assert set(page.charts) == set(CHARTS)
    marks = {name: chart["marks"] for name, chart in page.charts.items()}
    for name, chart in page.charts.items():
        assert chart["points"] == len(chart["marks"]), name
    assert marks["tiers-over-time"] == {"2026-01-05|loyal": "4", "2026-01-05|transactional": "2",
                                        "2026-01-06|captive": "2", "2026-01-06|fiercely_loyal": "1",
                                        "2026-01-06|loyal": "3"}
    assert marks["score-histogram"] == {"20-30": "3", "60-70": "6", "90-100": "1"}
    assert marks["tier-transitions"] == {"(new)|fiercely_loyal": "1", "loyal|loyal": "5", "loyal|transactional": "3"}
    assert marks["customers-at-risk"] == {"c-<script>1": "10000.0", "c2": "2000.0"}
    assert marks["alerts-per-day"] == {"2026-01-05": "2", "2026-01-06": "5"}


def test_the_page_is_self_contained_and_escapes_data(report):
    page = render_html(report)
    assert parse(page).external == []
    assert "<script>" not in page and "c-&lt;script&gt;1" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_bars_are_proportional_and_stack_within_the_plot(report):
    page = render_html(report)
    svg = re.search(r'<svg[^>]*data-chart="tiers-over-time".*?</svg>', page, re.S)
    assert svg
    heights = {key: float(h) for h, key in re.findall(r'height="([\d.]+)"[^>]*data-key="([^"]+)"', svg.group(0))}
    # 2026-01-05 is the tallest day (6 customers) and fills the plot; each bar is proportional to its value.
    unit = heights["2026-01-05|loyal"] / 4
    assert heights["2026-01-05|transactional"] == pytest.approx(2 * unit)
    assert heights["2026-01-06|loyal"] == pytest.approx(3 * unit)
    assert heights["2026-01-05|loyal"] + heights["2026-01-05|transactional"] == pytest.approx(300 - 16 - 56)
    assert heights["2026-01-06|captive"] == pytest.approx(2 * unit)


def test_captive_has_its_own_colour_next_to_transactional(report):
    svg = re.search(r'<svg[^>]*data-chart="tiers-over-time".*?</svg>', render_html(report), re.S)
    assert svg
    fills = {tier: fill for fill, tier in re.findall(r'<rect[^>]*fill="([^"]+)"[^>]*data-key="2026-01-0\d\|(\w+)"',
                                                     svg.group(0))}
    assert fills["captive"] == "#b35806" and fills["transactional"] == "#f1a340"


def test_an_empty_database_gives_a_page_with_empty_charts():
    empty = {name: (columns, []) for name, (columns, _) in ANSWERS.items()}
    built = build_report(FakeClickHouse(empty), DB, top=2, days=7)
    page = render_html(built)
    charts = parse(page).charts
    assert {name: c["points"] for name, c in charts.items()} == {name: 0 for name in CHARTS}
    assert page.count(">no data</text>") == len(CHARTS)
    text = render_text(built)
    assert "customers                        0" in text and "(no data)" in text



def test_a_year_of_daily_tiers_draws_a_year_of_days():
    """A backfilled year: 365 days x 2 tiers (loyal grows by one a day, transactional shrinks)."""
    first = date(2025, 1, 1).toordinal()
    series = [(date.fromordinal(first + i), tier, n) for i in range(365)
              for tier, n in (("loyal", 1 + i), ("transactional", 400 - i))]
    answers = {**ANSWERS, "tiers_over_time": (["day", "tier", "customers"], series)}

    def query(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        name = next(name for name, template in SQL.items() if sql == template.format(db=DB, top=2, days=365))
        return answers[name]

    report = build_report(query, DB, top=2, days=365)
    chart = parse(render_html(report)).charts["tiers-over-time"]
    assert chart["points"] == len(chart["marks"]) == 730
    assert chart["marks"]["2025-01-01|loyal"] == "1" and chart["marks"]["2025-12-31|transactional"] == "36"
    text = render_text(report)
    rows = text.split("Customers per tier at the end of each day, last 365 days\n")[1].split("\n\n")[0].splitlines()[2:]
    assert len(rows) == 365
    assert rows[0].split() == ["2025-01-01", "1", "400", "401"] and rows[-1].split() == ["2025-12-31", "365", "36", "401"]
