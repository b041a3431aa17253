"""The compiled writer (schemas/writer.py) gives fastavro's bytes, for every schema of the project."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
import pytest

from schemas import SCHEMA_DIR, Codec, _plain, codec, load_schema
from schemas.writer import Unsupported, compile_writer

# the varint's boundaries: one and two bytes (zig-zagged below 2**14), the two-group tables
# (below 2**28 and 2**42), then the loop
INTS = [0, 1, -1, 63, -64, 64, 8191, -8192, 8192, -8193, 2**27 - 1, 2**27, -(2**27), -(2**27) - 1, 2**31 - 1,
        -(2**31), 1_780_000_000_000, 2**41 - 1, 2**41, -(2**41), -(2**41) - 1, 2**63 - 1, -(2**63)]
STRINGS = ["", "a", "shoes", "Zoë ☕ 東京", "x" * 300]


def fastavro_bytes(parsed: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


def random_datum(schema: Any, named: dict[str, Any], rng: random.Random, tuples: bool) -> Any:
    """A valid datum of a parsed schema, with nulls, empty and long containers, edge numbers."""
    if isinstance(schema, list):
        branch = rng.choice(schema)
        value = random_datum(branch, named, rng, tuples)
        if tuples and isinstance(branch, dict) and branch.get("type") == "record":
            return (branch["name"], value)
        return value
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([i for i in INTS if -(2**31) <= i < 2**31])
    if kind == "long":
        return rng.choice(INTS + [rng.randrange(-(2**40), 2**40)])
    if kind in ("double", "float"):
        return rng.choice([0.0, -1.5, 0.1, 1e300 if kind == "double" else 1e30, rng.random() * 100, 3])
    if kind == "string":
        return rng.choice(STRINGS)
    if kind == "bytes":
        return rng.choice(STRINGS).encode()
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [random_datum(schema["items"], named, rng, tuples) for _ in range(rng.choice([0, 1, 3, 70]))]
    if kind == "map":
        return {f"k{i}-{rng.choice(STRINGS)}": random_datum(schema["values"], named, rng, tuples)
                for i in range(rng.choice([0, 1, 4]))}
    assert kind == "record", kind
    return {f["name"]: random_datum(f["type"], named, rng, tuples) for f in schema["fields"]}


ALL_SCHEMAS = sorted(SCHEMA_DIR.glob("*.avsc")) + sorted(SCHEMA_DIR.glob("history/*/*.avsc"))


@pytest.mark.parametrize("path", ALL_SCHEMAS, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_every_schema_is_compiled_and_written_as_fastavro_writes_it(path):
    parsed = fastavro.parse_schema(_plain(json.loads(path.read_text())))
    write = compile_writer(parsed, b"H")
    rng = random.Random(path.name)
    for i in range(200):
        datum = random_datum(parsed, parsed["__named_schemas"], rng, tuples=i % 2 == 1)
        assert write(datum) == b"H" + fastavro_bytes(parsed, datum)


@pytest.mark.parametrize("value", INTS)
def test_longs_at_the_varint_boundaries(value):
    parsed = fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]})
    assert compile_writer(parsed)({"n": value}) == fastavro_bytes(parsed, {"n": value})


def test_missing_fields_take_their_defaults():
    parsed = fastavro.parse_schema({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": ["null", "long"], "default": None},
        {"name": "b", "type": {"type": "array", "items": "string"}, "default": ["x", "y"]},
        {"name": "c", "type": ["null", "string"]},
    ]})
    assert compile_writer(parsed)({}) == fastavro_bytes(parsed, {}) == b"\x00\x04\x02x\x02y\x00\x00"


def test_a_schema_with_a_union_of_two_types_is_not_compiled_and_fastavro_writes_it():
    schema = {"type": "record", "name": "R", "fields": [{"name": "v", "type": ["null", "long", "string"]}]}
    with pytest.raises(Unsupported):
        compile_writer(fastavro.parse_schema(schema))
    plain = Codec("r", schema)
    assert plain._write is None
    assert plain.decode(plain.encode({"v": "seven"})) == {"v": "seven"}
    assert plain.decode(plain.encode({"v": 7})) == {"v": 7}


def test_a_datum_the_writer_does_not_take_gets_fastavros_answer():
    signal = codec("loyalty_signal")
    with pytest.raises(ValueError, match="no value and no default for customer_id"):
        signal.encode({})
    # an int where a double goes is written as fastavro writes it (the compiled writer agrees)
    datum = {"customer_id": "C1", "day": 20_000, "tier": "loyal"}
    parsed = fastavro.parse_schema({"type": "record", "name": "D", "fields": [
        {"name": "customer_id", "type": "string"}, {"name": "day", "type": "double"}]})
    assert compile_writer(parsed)(datum) == fastavro_bytes(parsed, datum)


def test_the_tuple_notation_names_the_branch():
    schema = load_schema("loyalty_signal")
    union = next(f["type"] for f in schema["fields"] if f["name"] == "relationship")
    assert union[0] == "null"
    parsed = fastavro.parse_schema({"type": "record", "name": "R", "namespace": "n", "fields": [
        {"name": "v", "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}]}]})
    write = compile_writer(parsed)
    assert write({"v": ("n.Inner", {"x": 3})}) == write({"v": {"x": 3}}) == fastavro_bytes(parsed, {"v": {"x": 3}})
    with pytest.raises(ValueError):
        write({"v": ("n.Other", {"x": 3})})


def test_a_named_number_branch_is_left_to_fastavro():
    schema = {"type": "record", "name": "R", "fields": [{"name": "v", "type": ["null", "long"]}]}
    plain = Codec("r", schema)
    assert plain._write is not None
    assert plain.encode({"v": ("long", 5)}) == plain.encode({"v": 5}) == plain._header + b"\x02\x0a"
