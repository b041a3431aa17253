"""Schemas: round trips, evolution, the wire header, and records that mirror the .avsc files."""

from __future__ import annotations

import json

import pytest

from domain.records import (
    RECORD_FIELDS,
    CallEvent,
    PurchaseEvent,
    PurchaseItem,
    VisitEvent,
    event_from_dict,
    event_to_dict,
)
from schemas import (
    MAGIC,
    SCHEMA_DIR,
    Codec,
    DecodeError,
    UnknownSchemaError,
    check_compatibility,
    codec,
    history_paths,
    load_schema,
    schema_fingerprint,
)

SAMPLES = [
    ("purchase", PurchaseEvent("e1", "C1", 1_767_225_600_000, "web", "o1", 2_499, "EUR", 500, "WELCOME10",
                               (PurchaseItem("sku-1", "shoes", 2, 1_000), PurchaseItem("sku-2", "socks", 1, 999)),
                               False, None)),
    ("purchase", PurchaseEvent("e2", "C1", 1_767_225_600_001, "store", "o2", 999, "EUR", is_return=True,
                               location_id="S7")),
    ("call", CallEvent("e3", "C2", 1_767_225_600_002, "inbound", "complaint", 95, 610, False, "agent-4",
                       -0.75, 6, 2)),
    ("call", CallEvent("e4", "C2", 1_767_225_600_003, "outbound", "other", 0, 60, True, "agent-1")),
    ("visit", VisitEvent("e5", "C3", 1_767_225_600_004, "store", "S1", 1_200, True, ("shoes", "coats"))),
]


@pytest.mark.parametrize("kind, event", SAMPLES)
def test_events_round_trip(kind, event):
    data = codec(kind).encode(event_to_dict(event))
    assert data[:2] == MAGIC
    assert event_from_dict(kind, codec(kind).decode(data)) == event


@pytest.mark.parametrize("kind", ["purchase", "call", "visit"])
def test_records_mirror_the_avsc_fields(kind):
    avsc_fields = {f["name"] for f in load_schema(kind)["fields"]}
    assert avsc_fields == RECORD_FIELDS[kind]


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")) + sorted(SCHEMA_DIR.glob("history/*/*.avsc")),
                         ids=lambda p: p.name)
def test_every_field_has_a_doc(path):
    def walk(schema):
        if isinstance(schema, dict):
            if schema.get("type") == "record":
                assert schema.get("doc"), f"record {schema['name']} has no doc"
                for field in schema["fields"]:
                    assert field.get("doc"), f"{schema['name']}.{field['name']} has no doc"
                    walk(field["type"])
            else:
                for value in schema.values():
                    walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)

    walk(json.loads(path.read_text()))


def test_data_written_with_the_old_schema_is_read_with_the_new_one():
    old_schema = json.loads(history_paths("purchase")[0].read_text())
    assert "location_id" not in {f["name"] for f in old_schema["fields"]}
    old_writer = Codec("purchase", schema=old_schema)
    datum = event_to_dict(SAMPLES[0][1])
    del datum["location_id"]
    data = old_writer.encode(datum)
    assert data[2:10] != codec("purchase").fingerprint
    decoded = codec("purchase").decode(data)
    assert decoded["location_id"] is None  # the new optional field takes its default
    assert decoded["items"][1]["sku"] == "sku-2"


def test_an_alert_written_before_the_live_flag_reads_as_live_without_a_processing_time():
    old_schema = json.loads(history_paths("alert")[0].read_text())
    assert {"processed_at", "historical"}.isdisjoint(f["name"] for f in old_schema["fields"])
    datum = {"alert_id": "a1", "customer_id": "C1", "kind": "gone_quiet", "severity": "info",
             "raised_at": 1_767_225_600_000, "model_version": "m", "summary": "s", "before_score": None,
             "after_score": 50.0, "before_tier": None, "after_tier": "loyal", "tier_reason": "r",
             "measure": "days_since_last_purchase", "measure_before": 10.0, "measure_after": 25.0,
             "threshold": 20.0, "explanation": [], "context": None}
    data = Codec("alert", schema=old_schema).encode(datum)
    assert data[2:10] != codec("alert").fingerprint
    assert codec("alert").decode(data) == {**datum, "processed_at": None, "historical": False}


def test_history_is_compatible_and_an_incompatible_change_is_caught(tmp_path, monkeypatch):
    for name in ("purchase", "call", "visit", "relationship_state", "dead_letter", "alert", "loyalty_signal"):
        assert check_compatibility(name) == [], name
    # A new required field without a default cannot read old data: the checker must say so.
    import schemas

    broken = load_schema("purchase")
    broken = {**broken, "fields": broken["fields"] + [{"name": "loyalty_card", "type": "string", "doc": "x"}]}
    monkeypatch.setattr(schemas, "load_schema", lambda name: broken)
    problems = schemas.check_compatibility("purchase")
    assert [p.split(":")[0] for p in problems] == [p.name for p in history_paths("purchase")]


def test_unknown_schema_version_is_refused_with_its_fingerprint():
    other = {"type": "record", "name": "PurchaseEvent", "namespace": "elsewhere", "doc": "d",
             "fields": [{"name": "x", "type": "int", "doc": "d"}]}
    data = Codec("purchase", schema=other).encode({"x": 1})
    with pytest.raises(UnknownSchemaError, match=schema_fingerprint(other).hex()):
        codec("purchase").decode(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "bad or missing header"),
        (b"garbage bytes that are no avro", "bad or missing header"),
        (codec("purchase").encode(event_to_dict(SAMPLES[0][1]))[:-7], "corrupt Avro body"),
        (codec("purchase").encode(event_to_dict(SAMPLES[0][1])) + b"\x00", "trailing bytes"),
    ],
    ids=["empty", "random", "truncated", "trailing"],
)
def test_malformed_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        codec("purchase").decode(data)


def test_wrong_record_type_is_refused():
    data = codec("visit").encode(event_to_dict(SAMPLES[-1][1]))
    with pytest.raises(UnknownSchemaError):
        codec("purchase").decode(data)
