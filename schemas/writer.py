"""A writer compiled from a parsed schema: the Avro binary encoding of one record type as one
straight Python function, the same bytes as ``fastavro.schemaless_writer``.

Why: fastavro walks the schema for every datum and tries each branch of a union against the
value, about 0.6 us per plain field and 2.5 us per ``["null", ...]`` union; the signal has some
90 fields, 40 of them such unions, and its encode was the largest single cost of the state
worker's batch. The compiled function knows each field's type in advance, so a field costs a
dictionary lookup and a few byte appends.

What it takes is deliberately narrow: records, enums, arrays, maps and the primitive types, and
unions of ``null`` with at most one other type (the only unions the project's schemas use; a
branch may be named with fastavro's ``(name, datum)`` tuple notation). A schema with anything
else (fixed, logical types, unions of several non-null types, recursive records) gets no compiled
writer, and :class:`schemas.Codec` keeps using fastavro for it. A datum the compiled writer cannot
take raises :class:`NotCompiled` or a plain ``KeyError``/``TypeError``/...; the codec then hands
it to fastavro, which writes it or says what is wrong with it, so errors read as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")

# Varints of the zig-zag values below 2**14 (two bytes at most), prebuilt: most counts and
# lengths are small.
_SMALL = tuple(bytes([z]) if z < 0x80 else bytes([(z & 0x7F) | 0x80, z >> 7]) for z in range(1 << 14))


class Unsupported(ValueError):
    """A schema construct the compiled writer does not take (fastavro writes that schema)."""


class NotCompiled(ValueError):
    """A datum the compiled writer does not take (fastavro writes it, or says why not)."""


# The low 14 bits of a larger value: two 7-bit groups, each with its continuation bit set.
_LOW14 = tuple(bytes([(z & 0x7F) | 0x80, (z >> 7) | 0x80]) for z in range(1 << 14))


def varint(z: int) -> bytes:
    """The Avro variable-length encoding of a non-negative (zig-zagged) integer."""
    if z < 0x4000:
        return _SMALL[z]
    # 14 bits at a time from the tables up to 42 bits: a timestamp in epoch milliseconds
    # (zig-zagged, 41-42 bits) is the commonest large value, in every signal and alert.
    if z < 0x10000000:
        return _LOW14[z & 0x3FFF] + _SMALL[z >> 14]
    if z < 0x40000000000:
        return _LOW14[z & 0x3FFF] + _LOW14[(z >> 14) & 0x3FFF] + _SMALL[z >> 28]
    parts = []
    while z > 0x7F:
        parts.append((z & 0x7F) | 0x80)
        z >>= 7
    parts.append(z)
    return bytes(parts)


def compile_writer(parsed: Any, header: bytes = b"") -> Callable[[Any], bytes]:
    """A function writing ``header`` then a datum of the fastavro-parsed record schema ``parsed``.

    Raises :class:`Unsupported` when the schema uses something the writer does not take.
    """
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise Unsupported("only a record schema is compiled")
    generator = _Generator(parsed.get("__named_schemas", {}))
    generator.line(1, "out = bytearray(HEADER)")
    generator.value(parsed, "datum", 1, set())
    generator.line(1, "return bytes(out)")
    source = "def write(datum):\n" + "\n".join(generator.lines) + "\n"
    namespace: dict[str, Any] = {"HEADER": header, "varint": varint, "SMALL": _SMALL, "NotCompiled": NotCompiled,
                                 "pack_double": struct.Struct("<d").pack, "pack_float": struct.Struct("<f").pack}
    namespace.update(generator.constants)
    # The source is generated above from the schema alone, never from data.
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), namespace)
    write: Callable[[Any], bytes] = namespace["write"]
    return write


class _Generator:
    """Emits the statements that append one value's encoding to ``out``."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = 0

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def fresh(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        name = self.fresh("C")
        self.constants[name] = value
        return name

    def value(self, schema: Any, var: str, indent: int, records: set[str]) -> None:
        """Append the encoding of the value in variable ``var`` (a plain name) per ``schema``."""
        if isinstance(schema, list):
            self.union(schema, var, indent, records)
            return
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                self.primitive(schema, var, indent)
                return
            if schema not in self.named:
                raise Unsupported(f"unknown named type {schema}")
            schema = self.named[schema]
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        if "logicalType" in schema:
            raise Unsupported(f"logical type {schema['logicalType']}")
        kind = schema.get("type")
        if kind in PRIMITIVES:
            self.primitive(kind, var, indent)
        elif kind == "record":
            self.record(schema, var, indent, records)
        elif kind == "enum":
            indexes = {symbol: varint(2 * i) for i, symbol in enumerate(schema["symbols"])}
            self.line(indent, f"out += {self.constant(indexes)}[{var}]")
        elif kind == "array":
            item = self.fresh("i")
            self.line(indent, f"if len({var}) > 0:")
            self.varint(f"len({var}) << 1", indent + 1)
            self.line(indent + 1, f"for {item} in {var}:")
            self.value(schema["items"], item, indent + 2, records)
            self.line(indent, "out += b'\\x00'")
        elif kind == "map":
            key, item = self.fresh("k"), self.fresh("i")
            self.line(indent, f"if len({var}) > 0:")
            self.varint(f"len({var}) << 1", indent + 1)
            self.line(indent + 1, f"for {key}, {item} in {var}.items():")
            self.primitive("string", key, indent + 2)
            self.value(schema["values"], item, indent + 2, records)
            self.line(indent, "out += b'\\x00'")
        else:
            raise Unsupported(f"type {kind!r}")

    def varint(self, expression: str, indent: int) -> None:
        """Append the varint of a non-negative ``expression``; the table lookup of a small one
        inline, as most counts and lengths are (a call per value was a third of the cost)."""
        z = self.fresh("z")
        self.line(indent, f"{z} = {expression}")
        self.line(indent, f"out += SMALL[{z}] if {z} < 0x4000 else varint({z})")

    def primitive(self, kind: str, var: str, indent: int) -> None:
        if kind == "null":
            return  # nothing is written, whatever the value (as fastavro)
        if kind == "boolean":
            self.line(indent, f"out += b'\\x01' if {var} else b'\\x00'")
        elif kind in ("int", "long"):
            self.varint(f"({var} << 1) ^ ({var} >> 63)", indent)
        elif kind == "double":
            self.line(indent, f"out += pack_double({var})")
        elif kind == "float":
            self.line(indent, f"out += pack_float({var})")
        else:  # string or bytes
            encoded = self.fresh("b")
            self.line(indent, f"{encoded} = {var}.encode()" if kind == "string" else f"{encoded} = {var}")
            self.varint(f"len({encoded}) << 1", indent)
            self.line(indent, f"out += {encoded}")

    def record(self, schema: dict[str, Any], var: str, indent: int, records: set[str]) -> None:
        name = schema["name"]
        if name in records:
            raise Unsupported(f"recursive record {name}")
        inner = records | {name}
        for field in schema["fields"]:
            field_var = self.fresh("v")
            if "default" in field:
                self.line(indent, f"{field_var} = {var}.get({field['name']!r}, {self.constant(field['default'])})")
            elif isinstance(field["type"], list) and "null" in field["type"]:
                self.line(indent, f"{field_var} = {var}.get({field['name']!r})")
            else:
                self.line(indent, f"{field_var} = {var}[{field['name']!r}]")
            self.value(field["type"], field_var, indent, inner)

    def union(self, branches: list[Any], var: str, indent: int, records: set[str]) -> None:
        others = [i for i, branch in enumerate(branches) if branch != "null"]
        nulls = [i for i, branch in enumerate(branches) if branch == "null"]
        if len(others) > 1 or len(nulls) > 1:
            raise Unsupported(f"union {branches!r}: null and at most one other type are compiled")
        if nulls:
            self.line(indent, f"if {var} is None:")
            self.line(indent + 1, f"out += {varint(2 * nulls[0])!r}")
        if not others:
            if nulls:
                self.line(indent, "else:")
                self.line(indent + 1, "raise NotCompiled('a value for a null-only union')")
            return
        index, branch = others[0], branches[others[0]]
        if nulls:
            self.line(indent, "else:")
            indent += 1
        # fastavro's tuple notation (full name, datum) picks a branch by name. Not looked for where
        # the branch is a number or a string: a tuple fails there (TypeError, AttributeError,
        # struct.error), so fastavro gets the datum and reads the notation itself.
        if _takes_a_tuple(branch, self.named):
            self.line(indent, f"if {var}.__class__ is tuple:")
            self.line(indent + 1, f"if {var}[0] != {_branch_name(branch, self.named)!r}:")
            self.line(indent + 2, "raise NotCompiled('another union branch named')")
            self.line(indent + 1, f"{var} = {var}[1]")
        self.line(indent, f"out += {varint(2 * index)!r}")
        self.value(branch, var, indent, records)


def _branch_name(branch: Any, named: dict[str, Any]) -> str:
    """The name fastavro's tuple notation gives a union branch: a named type's full name, else the type."""
    if isinstance(branch, str):
        return branch
    if branch.get("type") in ("record", "enum", "fixed", "error"):
        return str(branch["name"])
    return str(branch.get("type"))


def _takes_a_tuple(branch: Any, named: dict[str, Any]) -> bool:
    """Whether a tuple could be written as a value of ``branch`` (not as a primitive that fails on one)."""
    kind = named.get(branch, branch) if isinstance(branch, str) else branch
    kind = kind.get("type") if isinstance(kind, dict) else kind
    return kind not in ("int", "long", "float", "double", "string", "bytes")
