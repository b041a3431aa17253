"""The Avro schemas (the ``.avsc`` files beside this module) and their wire codec.

Wire format: Avro *single-object encoding* from the Avro specification: the two marker bytes
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing
canonical form, then the binary datum. The fingerprint tells a reader which schema wrote the
bytes, so a reader holding a newer schema still reads data written with an older one (schema
evolution), and bytes written with a schema it has never seen are refused with a clear reason
instead of being misread.

Earlier versions of a schema live in ``history/<name>/*.avsc``; a reader accepts any of them.

Records are written by a function compiled from the schema (:mod:`schemas.writer`, the same bytes
as fastavro's writer, several times faster), falling back to fastavro for what it does not take.
The hot path uses ``fastavro`` with parsed schemas (7-9x faster than the ``avro`` package
for encode plus decode, see ``bench/codec.py``); the ``avro`` package checks that every
historical version can still be read by the current one (:func:`check_compatibility`).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.writer import Unsupported, compile_writer

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

SCHEMA_NAMES = ("purchase", "call", "visit", "relationship_state", "dead_letter", "loyalty_signal")


class DecodeError(ValueError):
    """Bytes that cannot be read as a record of the expected schema (never retryable)."""


class UnknownSchemaError(DecodeError):
    """Bytes written with a schema version this reader does not know."""


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.avsc"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The current schema ``name`` as a JSON dict."""
    path = schema_path(name)
    if not path.exists():
        raise FileNotFoundError(f"no schema {name!r}: {path} does not exist")
    return json.loads(path.read_text())


def record_branch(name: str, field: str) -> str:
    """The full name of the record in the union of schema ``name``'s ``field``: given with the
    datum as ``(full name, datum)`` (fastavro's tuple notation), the writer takes that branch
    without trying the datum against each."""
    schema = load_schema(name)
    union = next(f["type"] for f in schema["fields"] if f["name"] == field)
    (branch,) = [t for t in union if isinstance(t, dict) and t.get("type") == "record"]
    namespace = branch.get("namespace", schema.get("namespace"))
    return f"{namespace}.{branch['name']}" if namespace else branch["name"]


def history_paths(name: str) -> list[Path]:
    """Files of the earlier versions of schema ``name``, oldest first."""
    return sorted((SCHEMA_DIR / "history" / name).glob("*.avsc"))


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema, _write_hint=False))
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


class Codec:
    """Encode and decode one record type in single-object encoding."""

    def __init__(self, name: str, schema: dict[str, Any] | None = None) -> None:
        self.name = name
        self.schema = schema if schema is not None else load_schema(name)
        self._parsed = fastavro.parse_schema(_plain(self.schema))
        self._header = MAGIC + schema_fingerprint(self.schema)
        # The header and the datum written by one generated function (schemas/writer.py), the same
        # bytes as fastavro's writer at a fraction of the cost; None for a schema it does not take.
        self._write: Callable[[Any], bytes] | None
        try:
            self._write = compile_writer(self._parsed, self._header)
        except Unsupported:
            self._write = None
        # writer fingerprint -> parsed writer schema (None means: it is the current one)
        self._writers: dict[bytes, Any] = {self._header[2:]: None}
        if schema is None:
            for path in history_paths(name):
                old = json.loads(path.read_text())
                self._writers.setdefault(schema_fingerprint(old), fastavro.parse_schema(_plain(old)))

    @property
    def fingerprint(self) -> bytes:
        return self._header[2:]

    def encode(self, datum: dict[str, Any]) -> bytes:
        if self._write is not None:
            try:
                return self._write(datum)
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError, struct.error):  # NotCompiled too
                pass  # not a datum the compiled writer takes: fastavro writes it, or says what is wrong
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, datum)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Read bytes written with the current schema or any known earlier version."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError(f"not an Avro single-object {self.name} record (bad or missing header)")
        fp = data[2:HEADER_SIZE]
        if fp not in self._writers:
            raise UnknownSchemaError(
                f"{self.name}: unknown writer schema fingerprint {fp.hex()} (not the current schema "
                f"nor any in schemas/history/{self.name}/)"
            )
        writer = self._writers[fp]
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            if writer is None:
                datum = fastavro.schemaless_reader(buf, self._parsed, None)
            else:
                datum = fastavro.schemaless_reader(buf, writer, self._parsed)
        except (EOFError, ValueError, IndexError, TypeError, UnicodeDecodeError, OverflowError) as exc:
            raise DecodeError(f"{self.name}: corrupt Avro body: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{self.name}: {len(data) - buf.tell()} trailing bytes after the record")
        if not isinstance(datum, dict):
            raise DecodeError(f"{self.name}: decoded to {type(datum).__name__}, not a record")
        return datum


def _plain(schema: Any) -> Any:
    """The schema without logical-type annotations.

    The bytes are the same; records just carry plain ints (epoch milliseconds) instead of
    ``datetime`` objects, which is what the pure logic works in, and it decodes faster.
    """
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


@cache
def codec(name: str) -> Codec:
    """The shared codec for schema ``name``."""
    return Codec(name)


def check_compatibility(name: str) -> list[str]:
    """Problems reading each historical version of ``name`` with the current one (empty: none).

    Uses the ``avro`` package's reader/writer compatibility checker, the reference
    implementation of the specification's schema resolution rules.
    """
    import avro.schema
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    reader = avro.schema.parse(json.dumps(load_schema(name)))
    problems = []
    for path in history_paths(name):
        writer = avro.schema.parse(path.read_text())
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            problems.append(f"{path.name}: {result.messages}")
    return problems
