"""Co-purchase statistics on a timer: counted in ClickHouse by the sink, published on the
model-params topic under the key ``copurchase``, applied by the state workers.

The statistics themselves (and how suggestions are drawn from them) are pure:
:mod:`domain.model.suggest`. This module is the glue: the one aggregation over the raw purchases
table (each order's categories, returns left out; then orders per pair of categories), and the
table's bytes on the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from domain.model.suggest import CoPurchaseTable, table_from_pairs

COPURCHASE_KEY = b"copurchase"
"""The model-params topic's key of the co-purchase table (BG/NBD parameters are under ``bgnbd``)."""

# FINAL: a replayed batch's rows, not merged yet, would count an order twice. Two ARRAY JOIN
# clauses over the same array give every ordered pair, (a, a) included: the diagonal counts the
# orders holding a. The second part counts the orders.
COPURCHASE_SQL = """
WITH orders AS (
    SELECT arrayDistinct(item_categories) AS cats
    FROM {db}.purchases FINAL
    WHERE NOT is_return AND notEmpty(item_categories)
)
SELECT 'pair' AS kind, a, b, count() AS n
FROM orders ARRAY JOIN cats AS a ARRAY JOIN cats AS b
GROUP BY a, b
UNION ALL
SELECT 'orders' AS kind, '' AS a, '' AS b, count() AS n FROM orders
"""


def table_from_rows(rows: Sequence[Sequence[Any]], computed_at: int) -> CoPurchaseTable:
    """The table of :data:`COPURCHASE_SQL`'s rows (kind, a, b, n)."""
    orders = 0
    counts: dict[tuple[str, str], int] = {}
    for kind, a, b, n in rows:
        if kind == "orders":
            orders = int(n)
        else:
            counts[(str(a), str(b))] = int(n)
    return table_from_pairs(orders, counts, computed_at=computed_at)


def table_to_bytes(table: CoPurchaseTable) -> bytes:
    return orjson.dumps(table.as_dict())


def table_from_bytes(data: bytes) -> CoPurchaseTable:
    return CoPurchaseTable.from_dict(orjson.loads(data))
