"""How fast the BI views answer on 1,000,000 customers, in embedded ClickHouse (chDB).

Builds a fresh chDB in a temporary directory, applies the migrations, loads synthetic rows directly with
columnar Arrow inserts (no Kafka, no worker): signals_current (every version, as the sink inserts
them; its materialized view fills signals_history), tier_days (each
customer-day's last version), relationships, purchases and alerts. Then runs every ``v_*`` view
the way a BI tool does (a whole view, or a top-N of it) a few times and prints p50/p99 per query;
the figures go to var/bench-bi.json.

    .venv/bin/python bench/bi_views.py                    # 1,000,000 customers, 7 runs per query
    .venv/bin/python bench/bi_views.py --customers 100000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from domain.model.tiers import TIERS
from ops.report import SQL, build_report
from sinks.clickhouse import ClickHouseSink

DB = "loyalty"
DAY_MS = 86_400_000
END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed end, so every run loads the same data
HISTORY_DAYS = 56  # eight weeks of signal history
# How the synthetic base is spread over the tiers (in TIERS order).
TIER_WEIGHTS = np.array([0.05, 0.10, 0.08, 0.12, 0.10, 0.25, 0.25, 0.05])
TIER_STAYS = 0.8  # chance that a new version keeps the previous version's tier
ALERT_SHARE = 0.05  # customers with an alert
PURCHASES_PER_CUSTOMER = 3

# What a BI tool runs: each view as a whole (the small ones) or its top of the list.
QUERIES: dict[str, str] = {
    "v_daily_tiers": "SELECT * FROM {db}.v_daily_tiers ORDER BY day, tier",
    "v_audience_vs_loyal": "SELECT * FROM {db}.v_audience_vs_loyal ORDER BY day",
    "v_tier_transitions_weekly": "SELECT * FROM {db}.v_tier_transitions_weekly ORDER BY week, from_tier, to_tier",
    "v_customers_at_risk (top 20)":
        "SELECT * FROM {db}.v_customers_at_risk ORDER BY value_at_risk_minor DESC, customer_id LIMIT 20",
    "v_alerts_outcome": "SELECT * FROM {db}.v_alerts_outcome ORDER BY kind, outcome",
    "v_alerts_daily": "SELECT * FROM {db}.v_alerts_daily ORDER BY day, kind",
    "v_recognition_and_quality":
        "SELECT * FROM {db}.v_recognition_and_quality ORDER BY recognition_order, service_order",
    "v_tiers_current": "SELECT * FROM {db}.v_tiers_current ORDER BY tier",
    "v_tiers_now": "SELECT * FROM {db}.v_tiers_now ORDER BY tier",
    "v_score_histogram": "SELECT * FROM {db}.v_score_histogram ORDER BY bin_from",
}

def customer_ids(index: np.ndarray) -> pa.Array:
    return pa.array(np.char.add("c", np.char.zfill(index.astype(str), 7)))


def timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(ms.astype("datetime64[ms]"), type=pa.timestamp("ms", tz="UTC"))


def synthetic_signals(n: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    """(signals_history, signals_current): 1-8 versions per customer over HISTORY_DAYS."""
    versions = rng.integers(1, 9, n)  # versions per customer
    rows = int(versions.sum())
    customer = np.repeat(np.arange(n), versions)
    first_row = np.repeat(np.cumsum(versions) - versions, versions)
    version = (np.arange(rows) - first_row + 1).astype(np.uint64)
    # Each customer's versions at increasing times inside the window.
    offsets = rng.random(rows)
    order = np.lexsort((offsets, customer))
    offsets = offsets[order]
    as_of = END_MS - HISTORY_DAYS * DAY_MS + (offsets * HISTORY_DAYS * DAY_MS).astype(np.int64)
    # Tiers: a random start, kept with probability TIER_STAYS at every later version.
    fresh = rng.choice(len(TIERS), rows, p=TIER_WEIGHTS / TIER_WEIGHTS.sum())
    keep = (rng.random(rows) < TIER_STAYS) & (version > 1)
    run_start = np.where(keep, 0, np.arange(rows))
    run_start = np.maximum.accumulate(run_start)
    tier_index = fresh[run_start]
    tier_names = np.array(TIERS, dtype=object)[tier_index]
    score = np.round(rng.random(rows) * 100, 3)
    churn = np.round(rng.random(rows), 6)
    purchases = np.where(tier_index == 0, 0, rng.integers(1, 40, rows)).astype(np.uint64)
    spend = (purchases * rng.integers(500, 20_000, rows)).astype(np.int64)
    expected = np.round(rng.random(rows) * 6, 6)
    history = pa.table({
        "customer_id": customer_ids(customer),
        "version": pa.array(version),
        "as_of": timestamps(as_of),
        "model_version": pa.array(["bench"] * rows),
        "loyalty_score": pa.array(score),
        "tier": pa.array(tier_names, type=pa.string()),
        "churn_risk": pa.array(churn),
        "horizon_days": pa.array(np.full(rows, 90, dtype=np.uint16)),
        "expected_purchases": pa.array(expected),
        "purchases": pa.array(purchases),
        "spend_365d_minor": pa.array(spend),
        "updated_at": timestamps(as_of),
    })
    last = np.cumsum(versions) - 1
    current = history.take(pa.array(last))
    return history, current


def synthetic_tier_days(history: pa.Table) -> pa.Table:
    """Each customer-day's last version of the history: the rows the sink writes to tier_days."""
    customer = history.column("customer_id").to_numpy(zero_copy_only=False)
    as_of = history.column("as_of").cast(pa.int64()).to_numpy()
    day = as_of // DAY_MS
    # rows are in (customer, version) order, so a day's last row is followed by another day or customer
    last = np.ones(len(day), dtype=bool)
    last[:-1] = (customer[1:] != customer[:-1]) | (day[1:] != day[:-1])
    rows = history.filter(pa.array(last))
    return pa.table({
        "customer_id": rows.column("customer_id"),
        "day": pa.array((rows.column("as_of").cast(pa.int64()).to_numpy() // DAY_MS).astype("int32"), type=pa.date32()),
        "as_of": rows.column("as_of"),
        "version": rows.column("version"),
        "tier": rows.column("tier"),
        "loyalty_score": rows.column("loyalty_score"),
        "churn_risk": rows.column("churn_risk"),
        "spend_365d_minor": rows.column("spend_365d_minor"),
        "updated_at": rows.column("updated_at"),
    })


def synthetic_relationships(n: int, rng: np.random.Generator) -> pa.Table:
    visits = rng.poisson(3.0, n).astype(np.uint64)
    recognized = rng.binomial(visits.astype(np.int64), rng.random(n))
    share = np.where(visits > 0, recognized / np.maximum(visits, 1), np.nan)
    calls = rng.poisson(0.8, n).astype(np.uint64)
    unresolved = rng.binomial(calls.astype(np.int64), 0.15).astype(np.uint64)
    sentiment = np.where(calls > 0, np.round(rng.uniform(-1, 1, n), 6), np.nan)
    return pa.table({
        "customer_id": customer_ids(np.arange(n)),
        "version": pa.array(rng.integers(1, 100, n).astype(np.uint64)),
        "visits_90d": pa.array(visits),
        "recognized_share_90d": pa.array(share, from_pandas=True),
        "calls_90d": pa.array(calls),
        "unresolved_calls_90d": pa.array(unresolved),
        "avg_sentiment_90d": pa.array(sentiment, from_pandas=True),
        "updated_at": timestamps(np.full(n, END_MS)),
    })


def synthetic_purchases(n: int, rng: np.random.Generator) -> pa.Table:
    rows = n * PURCHASES_PER_CUSTOMER
    customer = rng.integers(0, n, rows)
    occurred = END_MS - HISTORY_DAYS * DAY_MS + rng.integers(0, HISTORY_DAYS * DAY_MS, rows)
    return pa.table({
        "event_id": pa.array(np.char.add("p", np.arange(rows).astype(str))),
        "customer_id": customer_ids(customer),
        "occurred_at": timestamps(occurred),
        "channel": pa.array(["store"] * rows),
        "amount_minor": pa.array(rng.integers(500, 20_000, rows)),
        "currency": pa.array(["EUR"] * rows),
        "is_return": pa.array(rng.random(rows) < 0.05),
        "ingested_at": timestamps(occurred),
    })


def synthetic_alerts(n: int, rng: np.random.Generator) -> pa.Table:
    rows = int(n * ALERT_SHARE)
    raised = END_MS - HISTORY_DAYS * DAY_MS + rng.integers(0, HISTORY_DAYS * DAY_MS, rows)
    kinds = np.array(["score_drop", "tier_downgrade", "gone_quiet", "relationship_strain", "price_flight"],
                     dtype=object)
    return pa.table({
        "alert_id": pa.array(np.char.add("a", np.arange(rows).astype(str))),
        "customer_id": customer_ids(rng.integers(0, n, rows)),
        "kind": pa.array(kinds[rng.integers(0, len(kinds), rows)], type=pa.string()),
        "severity": pa.array(np.array(["info", "warning", "critical"], dtype=object)[rng.integers(0, 3, rows)],
                             type=pa.string()),
        "raised_at": timestamps(raised),
    })


def load(sink: ClickHouseSink, n: int, seed: int) -> dict[str, int]:
    """Create the schema and load the synthetic base; return the rows per table."""
    sink.migrate()
    rng = np.random.default_rng(seed)
    history, _ = synthetic_signals(n, rng)
    tables = {
        # every version into signals_current, as the sink inserts them (FINAL keeps the newest);
        # signals_history_mv copies them into signals_history (migration 0011)
        "signals_current": history,
        "tier_days": synthetic_tier_days(history),
        "relationships": synthetic_relationships(n, rng),
        "purchases": synthetic_purchases(n, rng),
        "alerts": synthetic_alerts(n, rng),
    }
    chunk = 1_000_000
    for name, table in tables.items():
        for start in range(0, table.num_rows, chunk):
            sink.client.insert_arrow(f"{DB}.{name}", table.slice(start, chunk))
    return {name: table.num_rows for name, table in tables.items()} | {"signals_history": history.num_rows}


def settle(sink: ClickHouseSink, timeout: float = 120.0) -> float:
    """Wait until the background merges after the load are done (the steady state a BI tool sees
    between ingest bursts); return the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        _, rows = sink.query(f"SELECT count() FROM system.merges WHERE database = '{DB}'")
        if rows[0][0] == 0:
            break
        time.sleep(0.5)
    sink.client.command(f"SYSTEM REFRESH VIEW {DB}.tiers_now_mv")  # v_tiers_now as of the loaded data
    sink.client.command(f"SYSTEM WAIT VIEW {DB}.tiers_now_mv")
    return time.perf_counter() - start


def answer(sink: ClickHouseSink, sql: str) -> list[tuple[Any, ...]]:
    return sink.query(sql)[1]


def timed(run: Callable[[], Any], runs: int) -> tuple[list[float], int]:
    """Seconds per run (after one warm-up run) and the rows of the last answer."""
    rows = len(run())
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        rows = len(run())
        seconds.append(time.perf_counter() - start)
    return seconds, rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query (after one warm-up)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="var/bench-bi.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-bi-") as tmp:
        sink = ClickHouseSink(f"chdb://{tmp}/clickhouse", DB)
        try:
            start = time.perf_counter()
            loaded = load(sink, args.customers, args.seed)
            load_seconds = time.perf_counter() - start
            print(f"loaded {args.customers:,} customers in {load_seconds:.1f}s: "
                  + ", ".join(f"{name} {rows:,}" for name, rows in loaded.items()))
            settled = settle(sink)
            _, parts = sink.query(f"SELECT table, count() FROM system.parts WHERE database = '{DB}' AND active "
                                  "GROUP BY table ORDER BY table")
            print(f"background merges done after {settled:.1f}s; active parts: "
                  + ", ".join(f"{table} {n}" for table, n in parts))
            results = []
            for name, template in QUERIES.items():
                sql = template.format(db=DB)
                seconds, rows = timed(partial(answer, sink, sql), args.runs)
                results.append({"query": name, "sql": sql, "rows": rows,
                                "p50_ms": round(1000 * statistics.median(seconds), 1),
                                "p99_ms": round(1000 * percentile(seconds, 0.99), 1),
                                "runs": args.runs})
            # `loyalty report`: every query of the report (what one run of the command costs).
            seconds, _ = timed(lambda: [build_report(sink.query, DB)], args.runs)
            results.append({"query": "loyalty report (all its queries)", "sql": "", "rows": len(SQL),
                            "p50_ms": round(1000 * statistics.median(seconds), 1),
                            "p99_ms": round(1000 * percentile(seconds, 0.99), 1), "runs": args.runs})
        finally:
            sink.close()

    width = max(len(r["query"]) for r in results)
    print(f"\n{'query'.ljust(width)}  {'rows':>7}  {'p50 ms':>8}  {'p99 ms':>8}")
    print(f"{'-' * width}  {'-' * 7}  {'-' * 8}  {'-' * 8}")
    for r in results:
        print(f"{r['query'].ljust(width)}  {r['rows']:>7,}  {r['p50_ms']:>8.1f}  {r['p99_ms']:>8.1f}")
    report = {
        "customers": args.customers, "runs": args.runs, "seed": args.seed,
        "rows": loaded, "load_seconds": round(load_seconds, 1),
        "active_parts": dict(parts),
        "engine": "chdb", "machine": {"python": platform.python_version(), "cpus": _cpus(),
                                      "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "queries": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
