"""Co-purchase statistics on a timer: counted in ClickHouse by the sink, published on the
model-params topic under the key ``copurchase``, applied by the state workers.

The statistics themselves (and how suggestions are drawn from them) are pure:
:mod:`domain.model.suggest`. This module is the glue: the one aggregation over the raw purchases
table (each customer's set of categories bought, returns left out; then customers per pair of
categories), and the table's bytes on the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from domain.model.suggest import CoPurchaseTable, table_from_pairs

COPURCHASE_KEY = b"copurchase"
"""The model-params topic's key of the co-purchase table (BG/NBD parameters are under ``bgnbd``)."""

# Duplicated raw rows (a replayed batch before the merge) cannot change a set, so no FINAL.
# Two ARRAY JOIN clauses over the same array give every ordered pair, (a, a) included: the
# diagonal counts the buyers of a. The second part counts the customers who bought anything.
COPURCHASE_SQL = """
WITH sets AS (
    SELECT customer_id, groupUniqArray(category) AS cats
    FROM {db}.purchases ARRAY JOIN item_categories AS category
    WHERE NOT is_return
    GROUP BY customer_id
)
SELECT 'pair' AS kind, a, b, count() AS customers
FROM sets ARRAY JOIN cats AS a ARRAY JOIN cats AS b
GROUP BY a, b
UNION ALL
SELECT 'customers' AS kind, '' AS a, '' AS b, count() AS customers FROM sets
"""


def table_from_rows(rows: Sequence[Sequence[Any]], computed_at: int) -> CoPurchaseTable:
    """The table of :data:`COPURCHASE_SQL`'s rows (kind, a, b, customers)."""
    customers = 0
    counts: dict[tuple[str, str], int] = {}
    for kind, a, b, n in rows:
        if kind == "customers":
            customers = int(n)
        else:
            counts[(str(a), str(b))] = int(n)
    return table_from_pairs(customers, counts, computed_at=computed_at)


def table_to_bytes(table: CoPurchaseTable) -> bytes:
    return orjson.dumps(table.as_dict())


def table_from_bytes(data: bytes) -> CoPurchaseTable:
    return CoPurchaseTable.from_dict(orjson.loads(data))
