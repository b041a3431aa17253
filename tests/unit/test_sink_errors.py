"""ClickHouse errors judged by their code, and the insert column types read once per table (on chDB)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from sinks.clickhouse import RETRYABLE_CODES, ClickHouseSink, SinkBatch, error_code, retryable

RETRY = [
    ("too many parts, code from the driver", DatabaseError("Too many parts", code=252), 252),
    ("memory limit, generic message", DatabaseError("The ClickHouse server returned an error", code=241), 241),
    ("timeout, code only in the message", DatabaseError("Code: 159. DB::Exception: Timeout exceeded"), 159),
    ("retried request, network error", OperationalError("HTTP 502", code=210), 210),
    ("connection refused, no code", OperationalError("Error executing HTTP request: Connection refused"), None),
    ("socket reset", ConnectionResetError("reset by peer"), None),
    ("plain timeout", TimeoutError("timed out"), None),
]
NO_RETRY = [
    ("syntax error", DatabaseError("Code: 62. DB::Exception: Syntax error (SYNTAX_ERROR)", code=62), 62),
    # the old text search would retry this one: the word TIMEOUT is in the message
    ("unknown column named like a timeout", DatabaseError("Missing columns: 'TIMEOUT_EXCEEDED'", code=47), 47),
    ("unknown table after a retried request", OperationalError("Table x does not exist", code=60), 60),
    ("driver-side mistake", ProgrammingError("No data specified for insert"), None),
    ("not a ClickHouse error", ValueError("bad row"), None),
]


@pytest.mark.parametrize(("exc", "code"), [(e, c) for _, e, c in RETRY], ids=[i for i, _, _ in RETRY])
def test_errors_that_can_succeed_later_are_retried(exc: BaseException, code: int | None) -> None:
    assert error_code(exc) == code
    assert retryable(exc)


@pytest.mark.parametrize(("exc", "code"), [(e, c) for _, e, c in NO_RETRY], ids=[i for i, _, _ in NO_RETRY])
def test_errors_that_fail_again_the_same_way_are_not_retried(exc: BaseException, code: int | None) -> None:
    assert error_code(exc) == code
    assert not retryable(exc)


# -- on a real chDB ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path_factory.mktemp('sink') / 'clickhouse'}", f"t_{uuid.uuid4().hex[:12]}")
    sink.client.command(f"CREATE DATABASE {sink.database}")
    yield sink
    sink.client.command(f"DROP DATABASE {sink.database}")
    sink.close()


def test_the_retryable_codes_are_named_as_clickhouse_names_them(sink: ClickHouseSink) -> None:
    codes = ", ".join(map(str, RETRYABLE_CODES))
    rows = sink.client.query(f"SELECT code, name FROM system.errors WHERE code IN ({codes}) "
                             "SETTINGS system_events_show_zero_values = 1").result_rows
    assert dict(rows) == RETRYABLE_CODES


@pytest.mark.parametrize(("sql", "code", "retry"), [
    ("SELECT groupArray(number) FROM numbers(10000000) SETTINGS max_memory_usage = 1000000", 241, True),
    ("SELECT * FROM no_such_database.t", 81, False),
    ("SELEC 1", 62, False),
])
def test_chdb_errors_carry_their_code(sink: ClickHouseSink, sql: str, code: int, retry: bool) -> None:
    with pytest.raises(DatabaseError) as raised:
        sink.client.query(sql)
    assert (raised.value.code, error_code(raised.value), retryable(raised.value)) == (code, code, retry)


def _batch(offset: int, columns: tuple[str, ...], rows: list[dict]) -> SinkBatch:
    batch = SinkBatch()
    batch.cover("purchases", 0, offset)
    table = batch.rows("visits", columns)
    for row in rows:
        table.append(row)
    return batch


def test_column_types_are_described_once_per_table(sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sink.database
    sink.client.command(f"CREATE TABLE {db}.visits (customer_id String, at DateTime64(3, 'UTC'), "
                        "store Nullable(String)) ENGINE = MergeTree ORDER BY customer_id")
    described: list[str] = []
    query = sink.client.query

    def counting_query(sql: str, *args: object, **kwargs: object) -> object:
        if sql.startswith("DESCRIBE"):
            described.append(sql)
        return query(sql, *args, **kwargs)

    monkeypatch.setattr(sink.client, "query", counting_query)
    columns = ("customer_id", "at", "store")
    assert sink.write(_batch(1, columns, [{"customer_id": "C1", "at": 1_000, "store": "S1"}])) == 1
    assert sink.write(_batch(2, columns, [{"customer_id": "C2", "at": 2_000, "store": None}])) == 1
    assert described == [f"DESCRIBE TABLE {db}.visits"]

    # a column added meanwhile: the table is described again, once
    sink.client.command(f"ALTER TABLE {db}.visits ADD COLUMN minutes UInt16 DEFAULT 0")
    wider = (*columns, "minutes")
    assert sink.write(_batch(3, wider, [{"customer_id": "C3", "at": 3_000, "store": None, "minutes": 12}])) == 1
    assert sink.write(_batch(4, wider, [{"customer_id": "C4", "at": 4_000, "store": "S2", "minutes": 5}])) == 1
    assert len(described) == 2

    rows = sink.client.query(f"SELECT customer_id, toUnixTimestamp64Milli(at), store, minutes FROM {db}.visits "
                             "ORDER BY customer_id").result_rows
    assert rows == [("C1", 1_000, "S1", 0), ("C2", 2_000, None, 0), ("C3", 3_000, None, 12), ("C4", 4_000, "S2", 5)]


def test_a_column_the_table_lacks_is_named_by_the_driver(sink: ClickHouseSink) -> None:
    sink.client.command(f"CREATE TABLE {sink.database}.calls (customer_id String) ENGINE = MergeTree ORDER BY customer_id")
    batch = SinkBatch()
    batch.cover("calls", 0, 1)
    batch.rows("calls", ("customer_id", "reason")).append({"customer_id": "C1", "reason": "billing"})
    with pytest.raises(ProgrammingError, match="Unrecognized column 'reason'"):
        sink.write(batch)
