"""BG/NBD population parameters: refitted from the buyers in ClickHouse, kept in model_params."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from domain.model import DEFAULT_PARAMS, MODEL_VERSION, BgNbdParams, fit_bgnbd_arrays
from sinks.clickhouse import ClickHouseSink

# A deterministic sample bounds the fit's cost; 100,000 buyers pin four parameters tightly.
REFIT_SAMPLE = 100_000
# BG/NBD's (x, t_x, T) as domain.model.churn.summarise gives them, from the raw purchases (the
# events the workers accepted): x counts repeat purchase *days* (UTC), several purchases on one day
# being one transaction; returns are no purchases; T runs to now (or to a later last purchase).
# The population's typical gap is the median of the buyers' own mean gaps in the relationships.
REFIT_SQL = """
SELECT p.x, p.t_x, p.T, r.mean_gap_days
FROM (
    SELECT customer_id,
           uniqExact(toDate(occurred_at, 'UTC')) - 1 AS x,
           (max(toUnixTimestamp64Milli(occurred_at)) - min(toUnixTimestamp64Milli(occurred_at))) / 86400000 AS t_x,
           (greatest({now}, max(toUnixTimestamp64Milli(occurred_at))) - min(toUnixTimestamp64Milli(occurred_at)))
               / 86400000 AS T
    FROM {db}.purchases FINAL
    WHERE NOT is_return
    GROUP BY customer_id
    ORDER BY cityHash64(customer_id), customer_id
    LIMIT {sample}
) AS p
LEFT JOIN (SELECT customer_id, mean_gap_days FROM {db}.relationships FINAL) AS r ON r.customer_id = p.customer_id
ORDER BY cityHash64(p.customer_id), p.customer_id
"""
PARAM_COLUMNS = ("fitted_at", "model_version", "source", "r", "alpha", "a", "b", "buyers", "log_likelihood",
                 "population_gap_days")


def fit_from_rows(rows: Sequence[Sequence[Any]]) -> BgNbdParams:
    """Fit on (x, t_x, T, mean_gap_days) rows; the defaults when there are too few buyers."""
    gaps = [float(r[3]) for r in rows if r[3] is not None]
    gap = round(statistics.median(gaps), 6) if gaps else DEFAULT_PARAMS.population_gap_days
    return fit_bgnbd_arrays((int(r[0]) for r in rows), (float(r[1]) for r in rows), (float(r[2]) for r in rows),
                            population_gap_days=gap)


def store_params(sink: ClickHouseSink, params: BgNbdParams, fitted_at: int) -> None:
    row = [fitted_at, MODEL_VERSION, params.source, params.r, params.alpha, params.a, params.b, params.buyers,
           params.log_likelihood, params.population_gap_days]
    sink.client.insert(f"{sink.database}.model_params", [row], column_names=list(PARAM_COLUMNS))


def load_params(sink: ClickHouseSink) -> BgNbdParams | None:
    """The newest fitted parameters of this model version, if any."""
    _, rows = sink.query(
        f"SELECT source, r, alpha, a, b, buyers, log_likelihood, population_gap_days FROM {sink.database}.model_params "
        "WHERE model_version = {version:String} AND source = 'fitted' ORDER BY fitted_at DESC LIMIT 1",
        {"version": MODEL_VERSION},
    )
    if not rows:
        return None
    source, r, alpha, a, b, buyers, ll, gap = rows[0]
    return BgNbdParams(r, alpha, a, b, source=source, buyers=int(buyers), log_likelihood=ll, population_gap_days=gap)
