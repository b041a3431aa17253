"""ClickHouse sink, on clickhouse-connect's public Client API only.

One DSN selects the engine: ``chdb:///path`` runs ClickHouse in-process through chDB (the
default), ``http(s)://user:password@host:8123/`` speaks to a server. The schema is created by
versioned migration files (``migrations/NNNN_name.sql``), each applied once and recorded.

Delivery guarantee: at-least-once. Every insert carries a deterministic
``insert_deduplication_token`` built from the batch's source offsets, so retrying the same batch
inserts nothing new (the tables set ``non_replicated_deduplication_window``); rows replayed after
a crash in different batch boundaries are removed by the ReplacingMergeTree keys, and BI reads
use FINAL or argMax.

The client is synchronous (chDB certainly is), so the worker calls :meth:`ClickHouseSink.write`
through :class:`AsyncSinkRunner`, which runs it on one dedicated thread and retries errors that
can succeed later with bounded exponential back-off, holding the batch (and so its offsets)
until ClickHouse has acknowledged it.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from sinks.avro import Container
from sinks.cluster import on_cluster
from sinks.threads import NamedExecutor

logger = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class TableRows:
    """Rows for one table: kept as tuples while a batch is built, turned into columns to insert."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        # one C-level call picks a row's values in column order
        self._pick = operator.itemgetter(*self.columns) if len(self.columns) > 1 else (
            lambda row, name=self.columns[0]: (row[name],))
        self._rows: list[Sequence[Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        """Add a row given by column name."""
        self._rows.append(self._pick(row))

    def add(self, values: Sequence[Any]) -> None:
        """Add a row given as its values in column order (no dict to build)."""
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for the {len(self.columns)} columns {self.columns}")
        self._rows.append(values)

    @property
    def data(self) -> list[list[Any]]:
        """Column-oriented data, one list per column."""
        if not self._rows:
            return [[] for _ in self.columns]
        return [list(values) for values in zip(*self._rows)]

    def __len__(self) -> int:
        return len(self._rows)

    def extend(self, other: TableRows) -> None:
        if other.columns != self.columns:
            raise ValueError(f"cannot combine rows of columns {other.columns} with {self.columns}")
        self._rows.extend(other._rows)


@dataclass
class AvroInsert:
    """Records for one table in an Avro container (ClickHouse decodes them), and how to build
    the same rows in Python instead: each fallback adds its records' rows to a batch."""

    container: Container
    fallbacks: list[Callable[[SinkBatch], None]] = field(default_factory=list)


@dataclass
class SinkBatch:
    """Everything one processed batch writes, and the source offsets it covers."""

    tables: dict[str, TableRows] = field(default_factory=dict)
    # (topic, partition) -> (first offset, last offset)
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    avro: dict[str, AvroInsert] = field(default_factory=dict)

    def rows(self, table: str, columns: Sequence[str]) -> TableRows:
        rows = self.tables.get(table)
        if rows is None:
            rows = self.tables[table] = TableRows(columns)
        return rows

    def avro_insert(self, table: str, header: bytes) -> AvroInsert:
        """The Avro insert into ``table``, its container started with ``header``."""
        insert = self.avro.get(table)
        if insert is None:
            insert = self.avro[table] = AvroInsert(Container(header))
        elif insert.container.header != header:
            raise ValueError(f"{table}: one insert cannot mix containers of two schemas")
        return insert

    def fall_back(self, table: str) -> None:
        """Replace the Avro insert into ``table`` by the same records' rows, built in Python."""
        insert = self.avro.pop(table)
        for fallback in insert.fallbacks:
            fallback(self)

    def cover(self, topic: str, partition: int, offset: int) -> None:
        lo, hi = self.offsets.get((topic, partition), (offset, offset))
        self.offsets[(topic, partition)] = (min(lo, offset), max(hi, offset))

    def dedup_token(self, table: str) -> str:
        """Same batch, same token: ClickHouse then ignores a retried insert."""
        spans = ",".join(f"{t}/{p}:{lo}-{hi}" for (t, p), (lo, hi) in sorted(self.offsets.items()))
        return f"{table}|{spans}"

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values()) + sum(len(a.container) for a in self.avro.values())

    @classmethod
    def combine(cls, batches: Sequence[SinkBatch]) -> SinkBatch:
        """One batch with every row and source offset of ``batches`` (written as one insert per table)."""
        combined = cls()
        for batch in batches:
            for table, rows in batch.tables.items():
                combined.rows(table, rows.columns).extend(rows)
            for table, insert in batch.avro.items():
                into = combined.avro_insert(table, insert.container.header)
                into.container.extend(insert.container)
                into.fallbacks.extend(insert.fallbacks)
            for (topic, partition), (lo, hi) in batch.offsets.items():
                combined.cover(topic, partition, lo)
                combined.cover(topic, partition, hi)
        return combined


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file, in order."""
    found = []
    for entry in resources.files("sinks").joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


RETRYABLE_CODES: dict[int, str] = {
    159: "TIMEOUT_EXCEEDED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",  # a replica that lost its coordinator; it comes back
    252: "TOO_MANY_PARTS",
    285: "TOO_FEW_LIVE_REPLICAS",
    319: "UNKNOWN_STATUS_OF_INSERT",  # the deduplication token makes the second try harmless
    745: "SERVER_OVERLOADED",
    999: "KEEPER_EXCEPTION",
}
"""ClickHouse error codes (``system.errors``) after which the same insert can succeed: the server
is busy, short of memory or briefly cut off. Any other server error (a wrong query, a missing
table, a type mismatch) fails again the same way, so retrying would only hold the batch."""

_ERROR_CODE = re.compile(r"\bCode:\s*(\d+)")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of ``exc``: the driver's ``code``, else the message's ``Code: NNN``.

    clickhouse-connect sets ``code`` on its errors from the HTTP header or, on chDB, from the
    message; the message is read only for an error raised without it.
    """
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _ERROR_CODE.search(str(exc))
    return int(match.group(1)) if match else None


def retryable(exc: BaseException) -> bool:
    """Errors that may succeed later: the server is away, busy or timed out.

    A server error is judged by its code (:data:`RETRYABLE_CODES`); an error without one is a
    failed connection when the driver calls it operational.
    """
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, ClickHouseError):
        return False
    code = error_code(exc)
    if code is not None:
        return code in RETRYABLE_CODES
    return isinstance(exc, OperationalError)


def preload_insert_modules() -> None:
    """Import pandas now, if it is installed (chDB depends on it). clickhouse-connect imports it
    at a client's first insert, to tell a DataFrame from rows: about 0.25 s of CPU that would
    otherwise delay the first batch after start-up."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


class ClickHouseSink:
    """Creates the schema and writes batches. Synchronous; see :class:`AsyncSinkRunner`."""

    def __init__(self, dsn: str, database: str, cluster: str | None = None) -> None:
        self.dsn = dsn
        self.database = database
        self.cluster = cluster
        self._cluster_tables: set[str] = set()
        self._client: Client | None = None
        self._column_types: dict[str, dict[str, str]] = {}  # table -> column -> type name
        #: Avro containers ClickHouse refused for good, whose records were decoded in Python instead.
        self.avro_fallbacks = 0

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = clickhouse_connect.get_client(dsn=self.dsn)
            preload_insert_modules()
        return self._client

    def ddl(self, statement: str) -> list[str]:
        """A migration statement as this deployment runs it: as written on one server or the
        embedded engine, rewritten for the cluster when one is named (:mod:`sinks.cluster`)."""
        if self.cluster is None:
            return [statement]
        return on_cluster(statement, self.cluster, self._cluster_tables)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; return their names."""
        db = self.database
        for statement in self.ddl(f"CREATE DATABASE IF NOT EXISTS {db}") + self.ddl(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
        ):
            self.client.command(statement)
        done = {row[0] for row in self.client.query(f"SELECT version FROM {db}.schema_migrations FINAL").result_rows}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                # On a cluster, the rewrite of a later statement needs the tables created earlier
                # (a materialized view reads their local form); rewriting is pure text, nothing runs.
                for text in split_statements(sql.replace("{db}", db)):
                    self.ddl(text)
                continue
            for statement in (s for text in split_statements(sql.replace("{db}", db)) for s in self.ddl(text)):
                self.client.command(statement)
            self.client.insert(f"{db}.schema_migrations", [[version, name]], column_names=["version", "name"])
            applied.append(f"{version:04d}_{name}")
            logger.info("applied ClickHouse migration %04d_%s", version, name)
        return applied

    def refresh_tiers_now_every(self, seconds: int) -> None:
        """How often ClickHouse recomputes ``tiers_now`` (migration 0013), on every node of a cluster.

        A server that refuses it (a writer role without ``ALTER VIEW MODIFY REFRESH``) keeps the
        interval it has, with a warning: the sink's work does not depend on it."""
        on_cluster = f" ON CLUSTER {self.cluster}" if self.cluster else ""
        try:
            self.client.command(f"ALTER TABLE {self.database}.tiers_now_mv{on_cluster} "
                                f"MODIFY REFRESH EVERY {int(seconds)} SECOND")
        except ClickHouseError as exc:
            logger.warning("tiers_now keeps its refresh interval: ClickHouse refused %s s: %s", seconds, exc)

    def write(self, batch: SinkBatch) -> int:
        """Insert every table of the batch; return the rows written.

        The Avro containers go first. One that ClickHouse refuses for good (a corrupt record, or
        anything else a retry cannot mend) is replaced in the batch by the same records' rows
        built in Python (:meth:`SinkBatch.fall_back`), which skip the bad record alone; the tables
        are inserted after, so those rows join the batch's own in one insert per table (each
        insert's token is the table's: a second insert of the same table would be ignored). A
        retry after an error that can succeed later finds the batch as it was left: the
        container not yet written, or already replaced.

        The column types are read once per table (``DESCRIBE TABLE``) and given to every insert:
        without them clickhouse-connect describes the table again before each insert. A failed
        insert forgets them, so a table altered meanwhile is described afresh on the retry.
        """
        written = 0
        for table in list(batch.avro):
            written += self._write_avro(batch, table)
        for table, rows in batch.tables.items():
            if not len(rows):
                continue
            full = f"{self.database}.{table}"
            types = self._column_types.get(table)
            if types is None or not types.keys() >= set(rows.columns):
                described = self.client.query(f"DESCRIBE TABLE {full}").named_results()
                types = self._column_types[table] = {col["name"]: col["type"] for col in described}
            # a column the table lacks: no types, so the driver describes the table and names it
            type_names = [types[c] for c in rows.columns] if types.keys() >= set(rows.columns) else None
            try:
                self.client.insert(
                    full, rows.data, column_names=list(rows.columns), column_type_names=type_names,
                    column_oriented=True, settings=self.insert_settings(batch, table),
                )
            except ClickHouseError:
                self._column_types.pop(table, None)
                raise
            written += len(rows)
        return written

    def _write_avro(self, batch: SinkBatch, table: str) -> int:
        container = batch.avro[table].container
        if not len(container):
            del batch.avro[table]
            return 0
        try:
            self.client.raw_insert(f"{self.database}.{table}", insert_block=container.data, fmt="Avro",
                                   settings=self.insert_settings(batch, table))
        except ClickHouseError as exc:
            if retryable(exc):
                raise
            logger.warning("ClickHouse refused the %d records for %s (%s); building their rows in Python instead",
                           len(container), table, exc)
            batch.fall_back(table)
            self.avro_fallbacks += 1
            return 0
        return len(container)

    @staticmethod
    def insert_settings(batch: SinkBatch, table: str) -> dict[str, Any]:
        """The batch's deduplication token, also for the blocks the table's materialized views
        write (signals_current fills signals_history): a retried batch writes each table once."""
        return {"insert_deduplication_token": batch.dedup_token(table),
                "deduplicate_blocks_in_dependent_materialized_views": 1}

    def query(self, sql: str, parameters: dict[str, Any] | None = None,
              settings: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        result = self.client.query(sql, parameters=parameters, settings=settings)
        return list(result.column_names), [tuple(r) for r in result.result_rows]


class AsyncSinkRunner:
    """Runs a :class:`ClickHouseSink` off the event loop, on one thread, with retries.

    Read queries (BI, the model refit) go to ``reader``, a second client on a thread of its own,
    when one is given: they then never wait behind a batch being written, nor delay one.
    """

    def __init__(self, sink: ClickHouseSink, max_backoff: float = 30.0,
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 reader: ClickHouseSink | None = None) -> None:
        self.sink = sink
        self.max_backoff = max_backoff
        self.on_retry = on_retry
        self._executor = NamedExecutor("ch-write")
        self.reader = reader
        self._read_executor = NamedExecutor("ch-read") if reader is not None else None
        self._closed = False
        self.retries = 0
        self._waiting: list[tuple[SinkBatch, asyncio.Future[int]]] = []
        self._writing: asyncio.Future[None] | None = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def write(self, batch: SinkBatch) -> int:
        """Write the batch, retrying until ClickHouse acknowledges it; return its rows.

        Batches handed in while an insert is running (other agents', typically) wait for it and
        then go together as one insert per table: fewer, larger inserts cost ClickHouse less
        (fewer parts to write and merge) and keep a steady load from queueing behind them. Each
        caller still returns only once its own rows are acknowledged.

        Errors that cannot succeed later (bad SQL, bad data) are raised: they are bugs, and
        retrying would stall the partition for nothing.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        self._waiting.append((batch, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._write_waiting())
        return await done

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            combined = group[0][0] if len(group) == 1 else SinkBatch.combine([batch for batch, _ in group])
            try:
                await self._write_one(combined)
            except Exception as exc:  # noqa: BLE001 - handed to every caller, whose agent then stops
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for batch, done in group:
                if not done.done():
                    done.set_result(len(batch))

    async def _write_one(self, batch: SinkBatch) -> int:
        delay = 0.2
        while True:
            try:
                return int(await self.call(self.sink.write, batch))
            except Exception as exc:
                if not retryable(exc):
                    raise
                self.retries += 1
                wait = min(delay, self.max_backoff) * (0.5 + random.random() / 2)
                logger.warning("ClickHouse write failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, wait)
                if self.on_retry:
                    self.on_retry(exc, wait)
                await asyncio.sleep(wait)
                delay *= 2

    async def query(self, sql: str, parameters: dict[str, Any] | None = None,
                    settings: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        if self.reader is None or self._read_executor is None:
            return await self.call(self.sink.query, sql, parameters, settings)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self.reader.query, sql, parameters, settings)

    def shutdown(self) -> None:
        """Close the client on its own thread and stop the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.reader is not None and self._read_executor is not None:
            self._read_executor.submit(self.reader.close).result(timeout=30)
            self._read_executor.shutdown(wait=True)
        self._executor.submit(self.sink.close).result(timeout=30)
        self._executor.shutdown(wait=True)


def now_ms() -> int:
    return int(time.time() * 1000)
