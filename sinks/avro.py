"""Avro object containers for ClickHouse's ``Avro`` input format, made from records as they travel.

A record in single-object encoding (:mod:`schemas`) is a 10-byte header (marker and writer
fingerprint) then the binary datum; an object container file is one header naming the writer
schema, then blocks of datums back to back (count, byte size, the datums, the sync marker). So
the datums of records written with one schema go into a container as they are, without being
decoded: ClickHouse decodes them, column by column, far faster than Python does one by one.

Each datum can be followed by bytes of the caller's (``suffix``): the binary encoding of a record
is its fields' encodings in order, so a datum followed by the encoding of one more value is a
datum of the schema with one more field at the end. The sink appends the batch's time that way.

The format is the Avro specification's "Object Container Files" (uncompressed, codec null).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"Obj\x01"
SYNC = b"loyalty-stream:\x00"
"""The 16-byte marker after the header and each block; a reader takes it from the header, so a
fixed one does (the specification picks it at random only to make a corrupt file likely to show)."""


def long_bytes(value: int) -> bytes:
    """The Avro binary encoding of a long (zig-zag, then 7 bits a byte, low first)."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes(value: bytes) -> bytes:
    return long_bytes(len(value)) + value


def container_header(schema: dict[str, Any]) -> bytes:
    """The header of an uncompressed container of ``schema``'s records."""
    meta = {b"avro.schema": json.dumps(schema, separators=(",", ":")).encode(), b"avro.codec": b"null"}
    entries = b"".join(_bytes(key) + _bytes(value) for key, value in meta.items())
    return MAGIC + long_bytes(len(meta)) + entries + long_bytes(0) + SYNC


def container_block(bodies: list[bytes], suffix: bytes = b"") -> bytes:
    """One block of the datums ``bodies``, each followed by ``suffix``."""
    data = suffix.join(bodies) + suffix
    return long_bytes(len(bodies)) + long_bytes(len(data)) + data + SYNC


def with_field(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the field ``extra`` appended: the schema of its datums followed by ``extra``'s value."""
    return {**schema, "fields": [*schema["fields"], extra]}


@dataclass
class Container:
    """The records of one table's insert in Avro: one header, then a block per batch."""

    header: bytes
    blocks: list[bytes] = field(default_factory=list)
    records: int = 0

    def add(self, bodies: list[bytes], suffix: bytes = b"") -> None:
        if bodies:
            self.blocks.append(container_block(bodies, suffix))
            self.records += len(bodies)

    def extend(self, other: Container) -> None:
        """Append ``other``'s blocks (a container of the same header)."""
        if other.header != self.header:
            raise ValueError("cannot join containers of different headers")
        self.blocks.extend(other.blocks)
        self.records += other.records

    @property
    def data(self) -> bytes:
        return self.header + b"".join(self.blocks)

    def __len__(self) -> int:
        return self.records


SIGNALS_TABLE = "signals_avro"
"""The Null-engine table the signals are inserted into (migration 0012); its views fill
signals_current, tier_days and relationships."""

RECORD_END = int.from_bytes(b"#signal#", "big")
"""Written after each signal datum (and its ``updated_at``), as a long: the table's constraint
refuses an insert where a datum was misread, which then reads something else here. (A long, not
8 fixed bytes: ClickHouse's error names the value read, and as a number it is printable.)"""

SIGNAL_EXTRA_FIELDS: list[dict[str, Any]] = [
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "record_end", "type": "long"},
]


def signal_container_schema(signal_schema: dict[str, Any]) -> dict[str, Any]:
    """The container's schema: the signal's, then ``updated_at`` and ``record_end``."""
    schema = signal_schema
    for extra in SIGNAL_EXTRA_FIELDS:
        schema = with_field(schema, extra)
    return schema


def signal_suffix(updated_at: int) -> bytes:
    """What follows each signal datum in the container: the batch's time, then :data:`RECORD_END`."""
    return long_bytes(updated_at) + _RECORD_END_BYTES


_RECORD_END_BYTES = long_bytes(RECORD_END)
