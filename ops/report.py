"""The loyalty report: key figures from the BI views (migrations 0004 and 0007), as terminal
tables or as one self-contained HTML page with charts.

Everything goes through one ``query(sql) -> (columns, rows)`` callable, so the report runs
against embedded chDB, through the worker's HTTP API while it owns the engine, or against a
server with nothing but the ``loyalty_bi_reader`` role: it reads the ``v_*`` views only.
:func:`build_report` runs the queries once; :func:`render_text` and :func:`render_html` draw the
same figures, so the page's tables and charts agree by construction.

The page needs no network: the charts are inline SVG drawn here, with no script. Each chart is
``<svg data-chart="NAME" data-points="N">`` with N marks ``<rect class="mark" data-key=...
data-value=...>``, one per figure, so a test (or a curious reader) can check what was drawn.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.model.tiers import TIERS

Query = Callable[[str], tuple[Sequence[str], Sequence[Sequence[Any]]]]
"""Runs one read query and returns (column names, rows)."""

LOYAL_TIERS = ("fiercely_loyal", "loyal")
AUDIENCE_TIERS = ("transactional", "captive")
"""Customers who buy without being loyal: the big audience that is not a loyal base."""
TIER_COLOURS = {
    "fiercely_loyal": "#1b7837", "loyal": "#7fbf7b", "transactional": "#f1a340", "captive": "#b35806",
    "at_risk": "#d73027", "lapsed": "#8c8c8c", "new": "#4393c3", "prospect": "#c2a5cf",
}
"""One colour per tier, the same in every chart (captive in a darker orange beside transactional)."""

# Every figure of the report, from the BI views. {db}: the database; {days}: the window of the
# daily series, ending at the newest event day; {top}: customers at risk listed.
SQL: dict[str, str] = {
    "tiers_now": (
        "SELECT tier, customers, share, avg_loyalty_score, avg_churn_risk, revenue_365d_minor "
        "FROM {db}.v_tiers_current ORDER BY customers DESC, tier"
    ),
    # The newest day from the view itself (a window over its answer: the view runs once).
    "tiers_over_time": (
        "SELECT day, tier, customers FROM (SELECT day, tier, customers, max(day) OVER () AS newest "
        "FROM {db}.v_daily_tiers) WHERE day > newest - {days} ORDER BY day, tier"
    ),
    "audience": (
        "SELECT day, active_customers, loyal_customers, transactional_customers, captive_customers, loyal_share, "
        "transactional_or_captive_share, loyal_revenue_share, transactional_or_captive_revenue_share "
        "FROM (SELECT *, max(day) OVER () AS newest FROM {db}.v_audience_vs_loyal) "
        "WHERE day > newest - {days} ORDER BY day"
    ),
    "score_histogram": "SELECT bin_from, bin_to, customers FROM {db}.v_score_histogram ORDER BY bin_from",
    "at_risk": (
        "SELECT customer_id, tier, churn_risk, expected_spend_minor, value_at_risk_minor "
        "FROM {db}.v_customers_at_risk ORDER BY value_at_risk_minor DESC, customer_id LIMIT {top}"
    ),
    "alerts_daily": (
        "SELECT day, sum(alerts) AS alerts FROM {db}.v_alerts_daily "
        "WHERE day > (SELECT max(day) FROM {db}.v_alerts_daily) - {days} GROUP BY day ORDER BY day"
    ),
    "alerts_outcome": (
        "SELECT kind, outcome, alerts, customers, avg_days_to_purchase "
        "FROM {db}.v_alerts_outcome ORDER BY kind, outcome"
    ),
    "transitions": (
        "SELECT week, from_tier, to_tier, customers "
        "FROM {db}.v_tier_transitions_weekly ORDER BY week, from_tier, to_tier"
    ),
}


@dataclass(frozen=True)
class Figures:
    """The answer of one query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


@dataclass
class Report:
    """Every figure of the report, queried once."""

    database: str
    currency: str
    top: int
    days: int
    generated_at: str
    figures: dict[str, Figures] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Figures:
        return self.figures[name]

    @property
    def last_week(self) -> str | None:
        """The newest week of the transition matrix (its Monday), if any."""
        weeks = {day_label(w) for w in self["transitions"].column("week")}
        return max(weeks) if weeks else None

    def transitions_last_week(self) -> list[tuple[str, str, int]]:
        """(from_tier, to_tier, customers) of :attr:`last_week`."""
        week = self.last_week
        return [(str(f), str(t), int(n)) for w, f, t, n in self["transitions"].rows if day_label(w) == week]


def build_report(query: Query, database: str, *, top: int = 10, days: int = 30, currency: str = "EUR",
                 generated_at: str = "") -> Report:
    """Run every query of :data:`SQL` once."""
    if top < 1 or days < 1:
        raise ValueError(f"top and days must be positive, not {top} and {days}")
    report = Report(database, currency, top, days, generated_at)
    for name, template in SQL.items():
        columns, rows = query(template.format(db=database, top=top, days=days))
        report.figures[name] = Figures(list(columns), [tuple(row) for row in rows])
    return report


# -- formatting --------------------------------------------------------------------------------


def day_label(value: Any) -> str:
    """A Date as YYYY-MM-DD, whether it came as a date (chDB) or a string (the worker's JSON)."""
    return str(value)[:10]


def money(minor: Any, currency: str) -> str:
    """Integer minor units (cents) as major units with the currency."""
    return f"{float(minor) / 100:,.2f} {currency}"


def percent(share: Any) -> str:
    return "" if share is None else f"{100 * float(share):.1f}%"


def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):,.{digits}f}"


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns under a dashed rule, as ``loyalty query`` prints them."""
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def key_figures(report: Report) -> list[tuple[str, ...]]:
    """The headline numbers: (label, value)."""
    now = report["tiers_now"]
    tiers = dict(zip(now.column("tier"), now.column("customers"), strict=True))
    customers = sum(int(n) for n in tiers.values())
    loyal = sum(int(tiers.get(t, 0)) for t in LOYAL_TIERS)
    audience_now = sum(int(tiers.get(t, 0)) for t in AUDIENCE_TIERS)
    audience = report["audience"].rows
    at_risk = report["at_risk"].column("value_at_risk_minor")
    alerts = sum(int(n) for n in report["alerts_daily"].column("alerts"))
    latest = audience[-1] if audience else None
    return [
        ("customers", f"{customers:,}"),
        ("fiercely loyal + loyal now", f"{loyal:,} ({percent(loyal / customers) if customers else '-'})"),
        ("transactional now", f"{int(tiers.get('transactional', 0)):,}"),
        ("captive now", f"{int(tiers.get('captive', 0)):,}"),
        ("transactional + captive now", f"{audience_now:,} ({percent(audience_now / customers) if customers else '-'})"),
        ("active on the newest day", "-" if latest is None else f"{int(latest[1]):,} on {day_label(latest[0])}"),
        ("loyal share of them", "-" if latest is None else percent(latest[5])),
        ("transactional + captive share", "-" if latest is None else percent(latest[6])),
        ("loyal share of revenue", "-" if latest is None or latest[7] is None else percent(latest[7])),
        ("transactional + captive revenue", "-" if latest is None or latest[8] is None else percent(latest[8])),
        (f"value at risk, top {report.top}", money(sum(float(v) for v in at_risk), report.currency)),
        (f"alerts, last {report.days} days", f"{alerts:,}"),
    ]


def sections(report: Report) -> list[tuple[str, list[str], list[tuple[str, ...]]]]:
    """(title, columns, formatted rows) of every table, for the terminal and the page alike."""
    cur = report.currency
    tiers = report["tiers_now"]
    audience = report["audience"]
    risk = report["at_risk"]
    outcome = report["alerts_outcome"]
    tier_columns = _tier_order({str(t) for _, t, _ in report["tiers_over_time"].rows})
    return [
        ("Key figures", ["figure", "value"], key_figures(report)),
        ("Tier distribution now", ["tier", "customers", "share", "avg score", "avg churn risk", "revenue 365d"],
         [(str(t), number(int(n)), percent(s), number(sc, 1), number(c, 3), money(r, cur))
          for t, n, s, sc, c, r in tiers.rows]),
        (f"Customers per tier at the end of each day, last {report.days} days", ["day", *tier_columns, "total"],
         tiers_by_day(report, tier_columns)),
        (f"Audience vs loyal base, last {report.days} days",
         ["day", "active", "loyal", "transactional", "captive", "loyal share", "transactional or captive share",
          "loyal revenue share", "transactional or captive revenue share"],
         [(day_label(d), number(int(a)), number(int(lo)), number(int(tr)), number(int(ca)), percent(ls), percent(ts),
           percent(lr), percent(tr_r))
          for d, a, lo, tr, ca, ls, ts, lr, tr_r in audience.rows]),
        (f"Top {report.top} customers at risk (value at risk = churn risk x expected spend)",
         ["customer", "tier", "churn risk", "expected spend", "value at risk"],
         [(str(c), str(t), number(r, 3), money(e, cur), money(v, cur)) for c, t, r, e, v in risk.rows]),
        (f"Alerts per day, last {report.days} days", ["day", "alerts"],
         [(day_label(d), number(int(n))) for d, n in report["alerts_daily"].rows]),
        ("Alert outcomes (did the customer buy after the alert?)",
         ["kind", "outcome", "alerts", "customers", "avg days to purchase"],
         [(str(k), str(o), number(int(a)), number(int(c)), number(d, 1)) for k, o, a, c, d in outcome.rows]),
        (f"Tier transitions, week of {report.last_week or '-'} (tier at the end of the week before -> now)",
         ["from", "to", "customers"],
         [(f, t, number(n)) for f, t, n in report.transitions_last_week()]),
    ]


def tiers_by_day(report: Report, tiers: list[str]) -> list[tuple[str, ...]]:
    """The daily series as one row per day: customers per tier (in ``tiers`` order) and in all."""
    by_day: dict[str, dict[str, int]] = {}
    for d, t, n in report["tiers_over_time"].rows:
        by_day.setdefault(day_label(d), {})[str(t)] = int(n)
    return [(d, *(number(counts.get(t, 0)) for t in tiers), number(sum(counts.values())))
            for d, counts in sorted(by_day.items())]


def render_text(report: Report) -> str:
    """The report as terminal tables."""
    parts = [f"Loyalty report ({report.database}){' - ' + report.generated_at if report.generated_at else ''}"]
    for title, columns, rows in sections(report):
        parts.append(f"\n{title}\n" + (text_table(columns, rows) if rows else "(no data)"))
    return "\n".join(parts) + "\n"


# -- charts (inline SVG) -----------------------------------------------------------------------

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 16, 56


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _svg(name: str, marks: list[str], body: list[str], title: str, height: int = HEIGHT) -> str:
    """The chart's root element: data-points says how many marks it drew."""
    content = body if marks else [f'<text x="{WIDTH / 2}" y="{height / 2}" text-anchor="middle">no data</text>']
    return (f'<svg xmlns="http://www.w3.org/2000/svg" data-chart="{name}" data-points="{len(marks)}" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{_esc(title)}">'
            f"<title>{_esc(title)}</title>" + "".join(content) + "".join(marks) + "</svg>")


def _mark(x: float, y: float, w: float, h: float, key: str, value: Any, fill: str, label: str) -> str:
    return (f'<rect class="mark" x="{x:.2f}" y="{y:.2f}" width="{max(w, 0):.2f}" height="{max(h, 0):.2f}" '
            f'fill="{fill}" data-key="{_esc(key)}" data-value="{_esc(value)}"><title>{_esc(label)}</title></rect>')


def _axis(max_value: float, height: int = HEIGHT) -> list[str]:
    """Horizontal grid lines with value labels (y axis)."""
    base = height - BOTTOM
    out = [f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#444"/>']
    for i in range(1, 5):
        value = max_value * i / 4
        y = base - (base - TOP) * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.2f}" x2="{WIDTH - RIGHT}" y2="{y:.2f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.2f}" text-anchor="end" font-size="11">{value:,.0f}</text>')
    return out


def _x_labels(labels: list[str], slot: float, height: int = HEIGHT) -> list[str]:
    """At most about twelve category labels under the bars, rotated."""
    step = max(1, len(labels) // 12 + (1 if len(labels) % 12 else 0))
    out = []
    for i, label in enumerate(labels):
        if i % step == 0:
            x = LEFT + slot * (i + 0.5)
            y = height - BOTTOM + 14
            out.append(f'<text x="{x:.2f}" y="{y}" font-size="10" text-anchor="end" '
                       f'transform="rotate(-35 {x:.2f} {y})">{_esc(label)}</text>')
    return out


def _legend(tiers: list[str]) -> list[str]:
    out = []
    for i, tier in enumerate(tiers):
        y = TOP + 18 * i
        colour = TIER_COLOURS.get(tier, "#999")
        out.append(f'<rect x="{WIDTH - RIGHT + 16}" y="{y}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{WIDTH - RIGHT + 34}" y="{y + 10}" font-size="11">{_esc(tier)}</text>')
    return out


def _tier_order(tiers: set[str]) -> list[str]:
    known = [t for t in TIERS if t in tiers]
    return known + sorted(tiers - set(known))


def chart_tiers_over_time(report: Report) -> str:
    """Stacked bars: customers per tier and day (one mark per day and tier)."""
    rows = [(day_label(d), str(t), int(n)) for d, t, n in report["tiers_over_time"].rows if int(n) > 0]
    days = sorted({d for d, _, _ in rows})
    tiers = _tier_order({t for _, t, _ in rows})
    totals = {d: sum(n for dd, _, n in rows if dd == d) for d in days}
    top = float(max(totals.values(), default=0) or 1)
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    scale = (HEIGHT - TOP - BOTTOM) / top
    by_key = {(d, t): n for d, t, n in rows}
    marks = []
    for i, d in enumerate(days):
        y = float(HEIGHT - BOTTOM)
        for t in tiers:
            n = by_key.get((d, t), 0)
            if n:
                y -= n * scale
                marks.append(_mark(LEFT + slot * i + slot * 0.1, y, slot * 0.8, n * scale, f"{d}|{t}", n,
                                   TIER_COLOURS.get(t, "#999"), f"{d} {t}: {n:,}"))
    body = _axis(top) + _x_labels(days, slot) + _legend(tiers)
    return _svg("tiers-over-time", marks, body,
                "Customers per day, by the tier they ended the day in (their last event's, carried forward)")


def chart_score_histogram(report: Report) -> str:
    """Bars: current customers per ten-point score bin."""
    rows = [(int(a), int(b), int(n)) for a, b, n in report["score_histogram"].rows]
    top = max((n for _, _, n in rows), default=0) or 1
    slot = (WIDTH - LEFT - RIGHT) / 10
    scale = (HEIGHT - TOP - BOTTOM) / top
    marks = [_mark(LEFT + slot * (a // 10) + slot * 0.1, HEIGHT - BOTTOM - n * scale, slot * 0.8, n * scale,
                   f"{a}-{b}", n, "#4393c3", f"score {a}-{b}: {n:,}") for a, b, n in rows]
    body = _axis(top) + _x_labels([f"{a}-{a + 10}" for a in range(0, 100, 10)], slot)
    return _svg("score-histogram", marks, body, "Loyalty score distribution now (customers per ten points)")


def chart_transitions(report: Report) -> str:
    """Heat map: customers per (tier at the end of the week before, tier at the end of the week)."""
    cells = report.transitions_last_week()
    froms = _tier_order({f for f, _, _ in cells} - {"(new)"})
    if any(f == "(new)" for f, _, _ in cells):
        froms.append("(new)")
    tos = _tier_order({t for _, t, _ in cells})
    size = 44
    left, top = 120, 90
    height = top + size * max(len(froms), 1) + 20
    most = max((n for _, _, n in cells), default=0) or 1
    marks = []
    for f, t, n in cells:
        x, y = left + size * tos.index(t), top + size * froms.index(f)
        shade = 0.12 + 0.88 * n / most
        ink = "#fff" if shade > 0.55 else "#000"
        marks.append(_mark(x, y, size - 2, size - 2, f"{f}|{t}", n, f"rgba(33,102,172,{shade:.3f})",
                           f"{f} -> {t}: {n:,}")
                     + f'<text x="{x + size / 2 - 1:.1f}" y="{y + size / 2 + 4:.1f}" font-size="11" '
                       f'text-anchor="middle" fill="{ink}">{n:,}</text>')
    body = []
    for i, t in enumerate(tos):
        centre = left + size * i + size / 2
        body.append(f'<text x="{centre:.1f}" y="{top - 8}" font-size="11" '
                    f'transform="rotate(-45 {centre:.1f} {top - 8})">{_esc(t)}</text>')
    for i, f in enumerate(froms):
        body.append(f'<text x="{left - 6}" y="{top + size * i + size / 2 + 4:.1f}" font-size="11" '
                    f'text-anchor="end">{_esc(f)}</text>')
    return _svg("tier-transitions", marks, body, f"Tier transitions, week of {report.last_week or '-'}", height)


def chart_at_risk(report: Report) -> str:
    """Horizontal bars: value at risk of the top customers."""
    rows = [(str(c), str(t), float(v)) for c, t, _, _, v in report["at_risk"].rows]
    top = max((v for _, _, v in rows), default=0.0) or 1.0
    bar = 22
    left = 140
    height = TOP + bar * max(len(rows), 1) + 24
    scale = (WIDTH - left - 120) / top
    marks = [_mark(left, TOP + bar * i, v * scale, bar - 4, c, round(v, 6), TIER_COLOURS.get(t, "#999"),
                   f"{c} ({t}): {money(v, report.currency)}")
             + f'<text x="{left + v * scale + 6:.2f}" y="{TOP + bar * i + bar / 2 + 2:.2f}" font-size="11">'
               f"{_esc(money(v, report.currency))}</text>" for i, (c, t, v) in enumerate(rows)]
    body = [f'<text x="{left - 6}" y="{TOP + bar * i + bar / 2 + 2:.2f}" font-size="11" '
            f'text-anchor="end">{_esc(c)}</text>' for i, (c, _, _) in enumerate(rows)]
    return _svg("customers-at-risk", marks, body, f"Top {report.top} customers by value at risk", height)


def chart_alerts_per_day(report: Report) -> str:
    """Bars: alerts raised per day."""
    rows = [(day_label(d), int(n)) for d, n in report["alerts_daily"].rows]
    top = max((n for _, n in rows), default=0) or 1
    slot = (WIDTH - LEFT - RIGHT) / max(len(rows), 1)
    scale = (HEIGHT - TOP - BOTTOM) / top
    marks = [_mark(LEFT + slot * i + slot * 0.1, HEIGHT - BOTTOM - n * scale, slot * 0.8, n * scale, d, n, "#d73027",
                   f"{d}: {n:,} alerts") for i, (d, n) in enumerate(rows)]
    body = _axis(top) + _x_labels([d for d, _ in rows], slot)
    return _svg("alerts-per-day", marks, body, "Alerts raised per day")


CHARTS: dict[str, Callable[[Report], str]] = {
    "tiers-over-time": chart_tiers_over_time,
    "score-histogram": chart_score_histogram,
    "tier-transitions": chart_transitions,
    "customers-at-risk": chart_at_risk,
    "alerts-per-day": chart_alerts_per_day,
}
"""Every chart of the page, by its data-chart name."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 980px; color: #222; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: 0.2rem; }
section { margin: 2rem 0; } table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg { display: block; margin: 0.5rem 0; max-width: 100%; height: auto; }
"""


def _html_table(name: str, columns: list[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i else ""}>{_esc(v)}</td>' for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f'<table data-table="{_esc(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: Report) -> str:
    """One self-contained page: the key figures, every chart and the tables they come from."""
    tables = sections(report)
    names = ["key-figures", "tiers-now", "tiers-by-day", "audience", "customers-at-risk", "alerts-per-day",
             "alert-outcomes", "tier-transitions"]
    table_html = {name: (title, _html_table(name, columns, rows))
                  for name, (title, columns, rows) in zip(names, tables, strict=True)}
    charts = {name: draw(report) for name, draw in CHARTS.items()}

    def block(title: str, *parts: str) -> str:
        return f"<section><h2>{_esc(title)}</h2>{''.join(parts)}</section>"

    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Loyalty report - {_esc(report.database)}</title><style>{_CSS}</style></head><body>",
        "<h1>Loyalty report</h1>",
        f'<p class="sub">Database {_esc(report.database)}; money in {_esc(report.currency)}; '
        f"{_esc(report.generated_at)}</p>",
        block(*table_html["key-figures"]),
        block("Tier distribution over time", charts["tiers-over-time"], table_html["tiers-by-day"][1],
              f"<h3>{_esc(table_html['audience'][0])}</h3>", table_html["audience"][1]),
        block("Loyalty scores and tiers now", charts["score-histogram"], table_html["tiers-now"][1]),
        block(table_html["tier-transitions"][0], charts["tier-transitions"], table_html["tier-transitions"][1]),
        block(table_html["customers-at-risk"][0], charts["customers-at-risk"], table_html["customers-at-risk"][1]),
        block(table_html["alerts-per-day"][0], charts["alerts-per-day"], table_html["alerts-per-day"][1],
              f"<h3>{_esc(table_html['alert-outcomes'][0])}</h3>", table_html["alert-outcomes"][1]),
        "</body></html>",
    ]
    return "\n".join(page) + "\n"
