"""Signals decoded by ClickHouse: the Avro container the sink builds from the records' bodies, and
on chDB, migration 0012's views filling signals_current (and signals_history), tier_days and
relationships exactly as the Python path does, once per batch however often it is retried, and
a corrupt record sending its batch to the Python path, which skips that record alone."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from aiokafka import TopicPartition

from config.settings import Settings
from config.topics import Topics
from ops.simulate import encode_event, generate
from schemas import HEADER_SIZE, Codec, DecodeError, codec, history_paths, load_schema
from sinks.avro import (
    RECORD_END,
    SIGNALS_TABLE,
    Container,
    container_header,
    long_bytes,
    signal_container_schema,
    signal_suffix,
)
from sinks.clickhouse import ClickHouseSink, SinkBatch
from streams.decoding import EventDecoder
from streams.messages import Message
from streams.processor import CustomerProcessor
from streams.sink import ClickHouseSinkService
from streams.state import customer_cache

NOW = 1_767_225_600_000 + 123  # 2026-01-01 00:00:00.123 UTC: the batch's updated_at
TABLES = ("signals_current", "signals_history", "tier_days", "relationships")


# -- the container, without ClickHouse ----------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 300, -300, 2**31, NOW, 2**63 - 1, -(2**63)])
def test_a_long_is_encoded_as_avro_encodes_it(value: int) -> None:
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, "long", value)
    assert long_bytes(value) == expected.getvalue()


def test_the_bodies_behind_one_header_are_a_container_of_the_signals_with_the_batch_s_fields() -> None:
    signals = _signals()[:5]
    schema = signal_container_schema(load_schema("loyalty_signal"))
    container = Container(container_header(schema))
    container.add([value[HEADER_SIZE:] for value in signals[:2]], signal_suffix(NOW))
    container.add([value[HEADER_SIZE:] for value in signals[2:]], signal_suffix(NOW + 1))  # a second batch
    read = [_plain(datum) for datum in fastavro.reader(io.BytesIO(container.data))]
    decoded = [codec("loyalty_signal").decode(value) for value in signals]
    assert len(read) == len(container) == 5
    assert [r.pop("updated_at") for r in read] == [NOW, NOW, NOW + 1, NOW + 1, NOW + 1]
    assert [r.pop("record_end") for r in read] == [RECORD_END] * 5
    assert read == decoded


def _plain(value: Any) -> Any:
    """A datum as the codec reads it: timestamps in epoch milliseconds, dates in days."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days
    return value


# -- signals as the state worker writes them ----------------------------------------------------


class _DictStore(dict):  # type: ignore[type-arg]
    def get(self, key: bytes, message: Message) -> bytes | None:  # type: ignore[override]
        return dict.get(self, key)

    def put(self, key: bytes, value: bytes, message: Message) -> None:
        self[key] = value


_SIGNALS: list[bytes] = []


def _signals() -> list[bytes]:
    """Signals of the state worker from simulated traffic, in batches: many carry earlier days'
    ends, and some customers recur (several versions of one customer)."""
    if not _SIGNALS:
        settings = Settings(kafka_bootstrap="127.0.0.1:1")
        topics = Topics(settings.topic_prefix)
        events = generate(customers=60, days=1, seed=11, end_ms=NOW - 60_000, history_days=12)
        processor = CustomerProcessor(settings, customer_cache(_DictStore(), 0), EventDecoder(settings, b"k"),
                                      topics.alert_due)
        for start in range(0, len(events), 50):
            messages = [Message(topics.for_kind(e.kind), 0, start + n, e.customer_id.encode(), encode_event(e), NOW)
                        for n, e in enumerate(events[start:start + 50])]
            _SIGNALS.extend(value for _, value in asyncio.run(processor.process(messages, NOW)).signals)
    return list(_SIGNALS)


def _odd_signals() -> list[bytes]:
    """Signals the simulation does not give: churn drivers and suggestions, every optional field
    empty, no relationship facts; one of an older writer schema, one with a wrong header."""
    signal_codec = codec("loyalty_signal")
    base = signal_codec.decode(_signals()[0])
    rich = {**base, "customer_id": "rich", "churn_model": "learned",
            "churn_drivers": [{"feature": "gap", "contribution": 0.25}, {"feature": "calls", "contribution": -0.5}],
            "suggested_categories": [{"category": "cups", "reason": "bought with tea", "score": 0.75},
                                     {"category": "pots", "reason": "popular", "score": 0.125}],
            "tier": "captive", "last_purchase_categories": ["tea", "cups"], "last_purchase_skus": ["T-1"]}
    empty = {**base, "customer_id": "empty", "p_alive": None, "expected_next_purchase_at": None,
             "days_since_last_purchase": None, "last_purchase_at": None, "last_purchase_channel": None,
             "last_purchase_location_id": None, "favourite_category": None, "preferred_channel": None,
             "last_purchase_categories": [], "last_purchase_skus": [], "day_ends": [],
             "relationship": {**base["relationship"], "first_purchase_at": None, "avg_sentiment_30d": None,
                              "mean_gap_days": None, "last_purchase_amount_minor": None, "channels": []}}
    no_facts = {**base, "customer_id": "no-facts", "relationship": None}
    older = Codec("loyalty_signal", json.loads(history_paths("loyalty_signal")[-1].read_text()))
    old = older.encode({**base, "customer_id": "older"})
    wrong_header = b"\xc3\x01" + bytes(8) + signal_codec.encode({**base, "customer_id": "unknown"})[HEADER_SIZE:]
    return [signal_codec.encode(rich), signal_codec.encode(empty), signal_codec.encode(no_facts), old, wrong_header]


def _record(offset: int, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic="loyalty.signals", partition=0, offset=offset, timestamp=NOW, key=b"k", value=value)


def _fetched(values: list[bytes], first: int = 0) -> dict[TopicPartition, list[Any]]:
    return {TopicPartition("loyalty.signals", 0): [_record(first + n, v) for n, v in enumerate(values)]}


# -- on chDB ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avro") / "clickhouse"


@pytest.fixture
def services(chdb_dir: Path) -> Iterator[tuple[ClickHouseSinkService, ClickHouseSinkService]]:
    """The Python path and the Avro path, each with a database of its own."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=chdb_dir.parent, clickhouse_dsn=f"chdb://{chdb_dir}")
    made = []
    for in_avro in (False, True):
        sink = ClickHouseSink(settings.clickhouse_url, f"t_{uuid.uuid4().hex[:12]}")
        sink.migrate()
        made.append(ClickHouseSinkService(settings, b"k", sink, signals_in_avro=in_avro))
    yield made[0], made[1]
    for service in made:
        service.sink.client.command(f"DROP DATABASE {service.sink.database}")
        service.runner.shutdown()


def _table(sink: ClickHouseSink, table: str) -> list[tuple]:
    """Every row of ``table``, every column, unmerged (no FINAL: a duplicate would show)."""
    columns = [name for name, in sink.query(f"SELECT name FROM system.columns WHERE database = '{sink.database}' "
                                            f"AND table = '{table}' ORDER BY position")[1]]
    order = ", ".join(f"toString({c})" for c in columns)
    return sink.query(f"SELECT {', '.join(columns)} FROM {sink.database}.{table} ORDER BY {order}")[1]


def _tables(sink: ClickHouseSink) -> dict[str, list[tuple]]:
    return {table: _table(sink, table) for table in TABLES}


def test_the_views_fill_the_tables_exactly_as_the_python_path(
        services: tuple[ClickHouseSinkService, ClickHouseSinkService]) -> None:
    python, avro = services
    values = _signals() + _odd_signals()
    for start in range(0, len(values), 100):  # a few batches, so that customers recur across inserts
        fetched = _fetched(values[start:start + 100], first=start)
        batch = avro.rows(fetched, NOW)
        # the signals of the current schema go in the container, the older writer's is decoded here
        assert sorted(batch.avro) == [SIGNALS_TABLE]
        python.sink.write(python.rows(fetched, NOW))
        avro.sink.write(batch)
    expected, got = _tables(python.sink), _tables(avro.sink)
    assert {t: len(rows) for t, rows in got.items()} == {t: len(rows) for t, rows in expected.items()}
    assert len(expected["signals_history"]) == len(values) - 2  # no facts, a wrong header: not stored
    assert len(expected["tier_days"]) > len(expected["signals_history"])  # days the signals closed
    for table in TABLES:
        assert got[table] == expected[table], table
    assert python.totals["skipped_undecodable"] == avro.totals["skipped_undecodable"] == 1  # the wrong header
    rich = [row for row in got["signals_current"] if row[0] == "rich"]
    assert [(row[-8], row[-7], row[-6], row[-3], row[-2]) for row in rich] == [
        (["cups", "pots"], ["bought with tea", "popular"], [0.75, 0.125], ["gap", "calls"], [0.25, -0.5])]


def test_the_signals_table_has_a_column_for_each_field_of_the_schema(
        services: tuple[ClickHouseSinkService, ClickHouseSinkService]) -> None:
    """ClickHouse reads the container's fields by name and skips those the table lacks: a field
    added to loyalty_signal.avsc needs its column (and the views that read it) in a migration."""
    _, avro = services
    described = dict(avro.sink.query(f"SELECT name, type FROM system.columns WHERE database = '{avro.sink.database}' "
                                     f"AND table = '{SIGNALS_TABLE}' ORDER BY position")[1])
    schema = signal_container_schema(load_schema("loyalty_signal"))
    assert list(described) == [f["name"] for f in schema["fields"]]
    facts = next(f for f in schema["fields"] if f["name"] == "relationship")["type"][1]["fields"]
    tuple_type = described["relationship"].removeprefix("Nullable(").removesuffix(")")
    _, [(names,)] = avro.sink.query("SELECT tupleNames(defaultValueOfTypeName({t:String}))", parameters={"t": tuple_type})
    assert list(names) == [f["name"] for f in facts]


def test_a_retried_batch_writes_nothing_twice_even_when_a_view_failed_the_first_time(
        services: tuple[ClickHouseSinkService, ClickHouseSinkService]) -> None:
    python, avro = services
    values = _signals()[:80]
    db = avro.sink.database
    avro.sink.write(avro.rows(_fetched(values[:40]), NOW))
    avro.sink.write(avro.rows(_fetched(values[:40]), NOW))  # the same batch again (an acknowledgement lost)
    # A batch whose insert reached some views but not tier_days (detached meanwhile) ...
    avro.sink.client.command(f"DETACH TABLE {db}.signals_avro_tier_days_mv")
    try:
        avro.sink.write(avro.rows(_fetched(values[40:], first=40), NOW))
    finally:
        avro.sink.client.command(f"ATTACH TABLE {db}.signals_avro_tier_days_mv")
    # ... retried with the same token: the views already written ignore it, tier_days gets its rows once
    for _ in range(2):
        avro.sink.write(avro.rows(_fetched(values[40:], first=40), NOW))
    python.sink.write(python.rows(_fetched(values[:40]), NOW))
    python.sink.write(python.rows(_fetched(values[40:], first=40), NOW))
    assert _tables(avro.sink) == _tables(python.sink)
    assert len(_table(avro.sink, "signals_history")) == 80


@pytest.mark.parametrize(("corrupt", "at", "refused_by"), [
    pytest.param(lambda body: body[:-20], 7, "", id="cut short"),
    pytest.param(lambda body: body + b"\x00\x00", 7, "", id="two bytes too many"),
    # the last datum: no record after it to misread, only the marker shows
    pytest.param(lambda body: body + b"\x00\x00", 29, "record_framed", id="the last two bytes too many"),
    # a string one byte shorter than its length says: it reads on into the score after it, and
    # every field after is read a byte late
    pytest.param(lambda body: body.replace(b"loyalty-model-", b"loyalty-model"), 7, "", id="a string a byte short"),
])
def test_a_corrupt_record_sends_its_batch_to_the_python_path_which_skips_it_alone(
        services: tuple[ClickHouseSinkService, ClickHouseSinkService], corrupt: Any, at: int, refused_by: str,
        caplog: pytest.LogCaptureFixture) -> None:
    python, avro = services
    values = _signals()[:30]
    bad = values[at][:HEADER_SIZE] + corrupt(values[at][HEADER_SIZE:])
    with pytest.raises(DecodeError):
        codec("loyalty_signal").decode(bad)
    batch = avro.rows(_fetched([*values[:at], bad, *values[at + 1:]]), NOW)
    assert len(batch.avro[SIGNALS_TABLE].container) == 30
    assert avro.status()["avro_fallbacks"] == 0
    avro.sink.write(batch)
    assert avro.totals["skipped_undecodable"] == 1
    assert avro.status()["avro_fallbacks"] == 1
    assert "building their rows in Python instead" in caplog.text and refused_by in caplog.text
    python.sink.write(python.rows(_fetched([*values[:at], *values[at + 1:]]), NOW))
    assert _tables(avro.sink) == _tables(python.sink)
    assert len(_table(avro.sink, "signals_history")) == 29


def test_batches_written_together_are_one_container(
        services: tuple[ClickHouseSinkService, ClickHouseSinkService]) -> None:
    """The runner writes the batches handed in meanwhile as one (SinkBatch.combine): one insert
    of one container, a block per batch, each with its own updated_at."""
    python, avro = services
    values = _signals()[:20]
    first, second = avro.rows(_fetched(values[:12]), NOW), avro.rows(_fetched(values[12:], first=12), NOW + 5)
    combined = SinkBatch.combine([first, second])
    assert list(combined.avro) == [SIGNALS_TABLE]
    assert (len(combined.avro[SIGNALS_TABLE].container.blocks), len(combined)) == (2, 20)
    avro.sink.write(combined)
    python.sink.write(python.rows(_fetched(values[:12]), NOW))
    python.sink.write(python.rows(_fetched(values[12:], first=12), NOW + 5))
    assert _tables(avro.sink) == _tables(python.sink)
