"""The sink's rows: values taken from the datums in column order, the batch's tables, and
signals_history filled once from the signals_current insert (on chDB)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from config.settings import Settings
from config.topics import Topics
from domain.model import DEFAULT_PARAMS, score_customer, signal_to_dict
from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent
from domain.relationship import RelationshipState, apply_event
from ops.simulate import encode_event
from schemas import codec
from sinks.clickhouse import ClickHouseSink, SinkBatch
from sinks.rows import (
    CALL_COLUMNS,
    PURCHASE_COLUMNS,
    SIGNAL_COLUMNS,
    TIER_DAY_COLUMNS,
    VISIT_COLUMNS,
    raw_values,
    signal_values,
    tier_day_values,
)
from streams.processor import relationship_facts
from streams.sink import ClickHouseSinkService

DAY = 86_400_000
AS_OF = 20_470 * DAY + 3_600_000  # 2026-01-17 01:00 UTC (day 20470 since 1970-01-01)

SIGNAL = {
    "customer_id": "c1", "as_of": AS_OF, "model_version": "m7", "loyalty_score": 61.5, "tier": "loyal",
    "tier_reason": "regular", "components": {"recency": 0.9, "frequency": 0.8, "monetary": 0.7, "breadth": 0.6,
                                             "relationship_quality": 0.5, "price_independence": 0.4,
                                             "recognition": 0.3},
    "churn_risk": 0.125, "horizon_days": 90, "p_alive": 0.95, "expected_purchases": 2.5,
    "expected_next_purchase_at": AS_OF + DAY, "days_since_last_purchase": 1.5, "purchase_gap_days": 12.0,
    "purchase_gap_source": "own", "purchases": 4, "last_purchase_at": AS_OF - DAY,
    "last_purchase_categories": ["tea"], "last_purchase_skus": ["T-1"], "last_purchase_channel": "web",
    "last_purchase_location_id": None, "favourite_category": "tea", "preferred_channel": "web", "open_issues": 1,
    "greeting_hint": "welcome back", "params_source": "default", "churn_model": "learned",
    "churn_drivers": [{"feature": "gap", "contribution": 0.25}, {"feature": "calls", "contribution": -0.5}],
    "suggested_categories": [{"category": "cups", "reason": "bought with tea", "score": 0.75}],
    "day_ends": [{"day": 20_468, "as_of": 20_468 * DAY + 500, "version": 3, "tier": "new", "loyalty_score": 40.0,
                  "churn_risk": 0.5, "spend_365d_minor": 900}],
    "relationship": {"version": 5, "spend_365d_minor": 4200},  # not read by signal_values
}


def test_a_signal_gives_its_row_in_column_order() -> None:
    row = dict(zip(SIGNAL_COLUMNS, signal_values(SIGNAL, 5, 4200, 777), strict=True))
    assert row == {
        "customer_id": "c1", "version": 5, "as_of": AS_OF, "model_version": "m7", "loyalty_score": 61.5,
        "tier": "loyal", "tier_reason": "regular", "component_recency": 0.9, "component_frequency": 0.8,
        "component_monetary": 0.7, "component_breadth": 0.6, "component_relationship_quality": 0.5,
        "component_price_independence": 0.4, "component_recognition": 0.3, "churn_risk": 0.125, "horizon_days": 90,
        "p_alive": 0.95, "expected_purchases": 2.5, "expected_next_purchase_at": AS_OF + DAY,
        "days_since_last_purchase": 1.5, "purchase_gap_days": 12.0, "purchase_gap_source": "own", "purchases": 4,
        "spend_365d_minor": 4200, "last_purchase_at": AS_OF - DAY, "last_purchase_categories": ["tea"],
        "last_purchase_skus": ["T-1"], "last_purchase_channel": "web", "last_purchase_location_id": None,
        "favourite_category": "tea", "preferred_channel": "web", "open_issues": 1, "greeting_hint": "welcome back",
        "suggested_categories": ["cups"], "suggestion_reasons": ["bought with tea"], "suggestion_scores": [0.75],
        "params_source": "default", "churn_model": "learned", "churn_driver_features": ["gap", "calls"],
        "churn_driver_contributions": [0.25, -0.5], "updated_at": 777,
    }


def test_a_signal_of_an_older_writer_gets_the_defaults() -> None:
    older = {k: v for k, v in SIGNAL.items() if k not in ("churn_model", "churn_drivers", "suggested_categories")}
    row = dict(zip(SIGNAL_COLUMNS, signal_values(older, 5, 4200, 777), strict=True))
    assert (row["churn_model"], row["churn_driver_features"], row["churn_driver_contributions"]) == ("bgnbd", [], [])
    assert (row["suggested_categories"], row["suggestion_reasons"], row["suggestion_scores"]) == ([], [], [])


def test_a_signal_gives_its_own_day_and_the_days_it_closed() -> None:
    rows = [dict(zip(TIER_DAY_COLUMNS, r, strict=True)) for r in tier_day_values(SIGNAL, 5, 4200, 777)]
    assert rows == [
        {"customer_id": "c1", "day": date(2026, 1, 15), "as_of": 20_468 * DAY + 500, "version": 3, "tier": "new",
         "loyalty_score": 40.0, "churn_risk": 0.5, "spend_365d_minor": 900, "updated_at": 777},
        {"customer_id": "c1", "day": date(2026, 1, 17), "as_of": AS_OF, "version": 5, "tier": "loyal",
         "loyalty_score": 61.5, "churn_risk": 0.125, "spend_365d_minor": 4200, "updated_at": 777},
    ]
    assert len(tier_day_values({**SIGNAL, "day_ends": None}, 5, 4200, 777)) == 1


PURCHASE = PurchaseEvent("e1", "c1", 1000, "web", "o1", 2500, "EUR", 100, "SPRING",
                         (PurchaseItem("T-1", "tea", 2, 1000), PurchaseItem("C-9", "cups", 1, 600)),
                         False, "s3", "pseudo-mail", None)
CALL = CallEvent("e2", "c1", 2000, "inbound", "billing", 30, 240, True, agent_id="a7", sentiment=0.5, effort_score=2,
                 nps=9)
VISIT = VisitEvent("e3", "c1", 3000, "store", "s3", 600, True, ("tea", "cups"))


@pytest.mark.parametrize(("event", "columns", "expected"), [
    (PURCHASE, PURCHASE_COLUMNS, ("e1", "c1", 1000, "web", "o1", 2500, "EUR", 100, "SPRING", ["T-1", "C-9"],
                                  ["tea", "cups"], [2, 1], [1000, 600], False, "s3", "pseudo-mail", None)),
    (CALL, CALL_COLUMNS, ("e2", "c1", 2000, "inbound", "billing", 30, 240, True, 0.5, 2, 9, "a7", None)),
    (VISIT, VISIT_COLUMNS, ("e3", "c1", 3000, "store", "s3", 600, True, ["tea", "cups"])),
], ids=["purchase", "call", "visit"])
def test_an_event_gives_its_raw_row_in_column_order(event: Any, columns: tuple[str, ...], expected: tuple) -> None:
    assert len(columns) == len(expected)
    assert raw_values(event) == expected


# -- the service's batch ----------------------------------------------------------------------


def _record(topic: str, partition: int, offset: int, key: bytes, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=1_767_225_600_000, key=key,
                           value=value)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ClickHouseSinkService]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path,
                        clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}")
    service = ClickHouseSinkService(settings, b"k", ClickHouseSink(settings.clickhouse_url, "unused"))
    yield service
    service.runner.shutdown()


def _signal(customer: str, events: list[PurchaseEvent]) -> tuple[dict[str, Any], bytes]:
    state = RelationshipState(customer)
    for event in events:
        apply_event(state, event, 0)
    datum = signal_to_dict(score_customer(state, state.last_seen_at, DEFAULT_PARAMS))
    datum["relationship"] = relationship_facts(state)
    datum["day_ends"] = []
    return datum, codec("loyalty_signal").encode(datum)


def test_the_batch_has_one_table_per_destination_and_no_history_insert(service: ClickHouseSinkService) -> None:
    topics = Topics(service.settings.topic_prefix)
    at = 1_767_225_600_000  # 2026-01-01
    bought = PurchaseEvent("e1", "c1", at, "web", "o1", 2500, "EUR")
    datum, value = _signal("c1", [bought])
    without_facts = codec("loyalty_signal").encode({**datum, "customer_id": "c2", "relationship": None})
    parts = [0, 1, 2, 3]
    home = DefaultPartitioner()(b"c1", parts, parts)
    service.consumer = SimpleNamespace(partitions_for_topic=lambda topic: set(parts))  # type: ignore[assignment]
    fetched = {
        TopicPartition(topics.signals, 0): [_record(topics.signals, 0, 7, b"c1", value),
                                            _record(topics.signals, 0, 8, b"c2", without_facts)],
        TopicPartition(topics.purchases, home): [_record(topics.purchases, home, 3, b"c1", encode_event(bought))],
        # the same record on another partition: the state worker forwards it home, the copy there is stored
        TopicPartition(topics.purchases, (home + 1) % 4): [_record(topics.purchases, (home + 1) % 4, 0, b"c1",
                                                                   encode_event(bought))],
    }
    batch = service.rows(fetched, 999)
    # the signals go to ClickHouse in an Avro container; their rows as the Python path builds them
    # (for a container ClickHouse refuses, tests/unit/test_sink_avro.py) replace it here
    assert (sorted(batch.tables), sorted(batch.avro)) == (["purchases"], ["signals_avro"])
    assert len(batch.avro["signals_avro"].container) == 2
    batch.fall_back("signals_avro")
    assert (sorted(batch.tables), batch.avro) == (["purchases", "relationships", "signals_current", "tier_days"], {})
    assert {t: len(r) for t, r in batch.tables.items()} == {"signals_current": 1, "relationships": 1,
                                                            "tier_days": 1, "purchases": 1}
    assert service.totals["skipped_misplaced"] == 1
    purchase = dict(zip(batch.tables["purchases"].columns, [c[0] for c in batch.tables["purchases"].data], strict=True))
    assert (purchase["event_id"], purchase["amount_minor"], purchase["source_topic"], purchase["source_partition"],
            purchase["source_offset"], purchase["ingested_at"]) == ("e1", 2500, topics.purchases, home, 3, 999)
    facts = datum["relationship"]
    relationships = batch.tables["relationships"]
    assert relationships.columns == (*facts, "customer_id", "updated_at")
    assert [c[0] for c in relationships.data] == [*facts.values(), "c1", 999]
    current = dict(zip(SIGNAL_COLUMNS, [c[0] for c in batch.tables["signals_current"].data], strict=True))
    # one purchase applied: version 1, a trailing-year spend of 2500
    assert (current["customer_id"], current["version"], current["spend_365d_minor"], current["updated_at"]) == (
        "c1", 1, 2500, 999)


# -- signals_history from the signals_current insert, on chDB ---------------------------------


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path_factory.mktemp('rows') / 'clickhouse'}", f"t_{uuid.uuid4().hex[:12]}")
    sink.migrate()
    yield sink
    sink.client.command(f"DROP DATABASE {sink.database}")
    sink.close()


def _signals_batch(offset: int, customers: list[str]) -> SinkBatch:
    batch = SinkBatch()
    rows = batch.rows("signals_current", SIGNAL_COLUMNS)
    for n, customer in enumerate(customers):
        batch.cover("loyalty.signals", 0, offset + n)
        rows.add(signal_values({**SIGNAL, "customer_id": customer}, 5, 4200, AS_OF))
    return batch


def _history(sink: ClickHouseSink) -> list[tuple]:
    """Every row of signals_history, unmerged (no FINAL: a duplicate would show)."""
    return sink.query(f"SELECT customer_id, version FROM {sink.database}.signals_history ORDER BY customer_id")[1]


def test_history_is_written_once_per_batch_even_when_the_view_failed_the_first_time(sink: ClickHouseSink) -> None:
    db = sink.database
    sink.write(_signals_batch(0, ["a", "b"]))
    sink.write(_signals_batch(0, ["a", "b"]))  # the same batch again (an acknowledgement lost): nothing new
    assert _history(sink) == [("a", 5), ("b", 5)]
    # An insert that reached signals_current but not its view (here: the view detached meanwhile) ...
    sink.client.command(f"DETACH TABLE {db}.signals_history_mv")
    try:
        sink.write(_signals_batch(10, ["c", "d"]))
    finally:
        sink.client.command(f"ATTACH TABLE {db}.signals_history_mv")
    assert _history(sink) == [("a", 5), ("b", 5)]
    # ... is retried with the same token: signals_current deduplicates it, the view writes the missing
    # rows once, and a further retry writes nothing
    sink.write(_signals_batch(10, ["c", "d"]))
    sink.write(_signals_batch(10, ["c", "d"]))
    assert _history(sink) == [("a", 5), ("b", 5), ("c", 5), ("d", 5)]
    assert sink.query(f"SELECT count() FROM {db}.signals_current")[1] == [(4,)]
