"""Avro codec micro-benchmark: the ``avro`` package against ``fastavro`` (the project's Codec).

Usage (from the repository root)::

    .venv/bin/python bench/codec.py                 # default: 20,000 round trips x 7 repeats
    .venv/bin/python bench/codec.py --number 5000 --repeat 5 --json var/bench-codec.json

What it measures: encoding and decoding of one representative purchase event (three lines, a
promo code, a store) in Avro single-object encoding (``C3 01``, the 8-byte schema fingerprint,
the datum), microseconds per operation, for

* ``fastavro``: :func:`schemas.codec` ``("purchase").encode/decode``, exactly what
  the worker does per event;
* ``avro``: the Apache reference implementation, ``avro.io.DatumWriter``/``BinaryEncoder`` and
  ``DatumReader``/``BinaryDecoder``, behind the same 10-byte header.

Both write the same bytes: the script asserts that the body after the header is identical (and
that each side decodes the other's bytes to the same datum) before it times anything. Each figure
is the median of ``--repeat`` runs of ``--number`` operations; the headline is the avro/fastavro
ratio of encode+decode, measured in the same process, so machine load cancels out to first order.
Prints a table and writes the figures as JSON (default ``var/bench-codec.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro

from domain.records import PurchaseEvent, PurchaseItem, event_to_dict
from schemas import HEADER_SIZE, MAGIC, codec, load_schema

REPO = Path(__file__).resolve().parents[1]


def sample_purchase() -> dict[str, Any]:
    """The Avro datum of a typical purchase: three lines, a promo code, bought in a store."""
    event = PurchaseEvent(
        event_id="0b9f6c2e-1d3a-5e8f-9a4b-7c6d5e4f3a2b",
        customer_id="C0042017",
        occurred_at=1_763_890_000_000,
        channel="store",
        order_id="ORD-0B9F6C2E1D3A",
        amount_minor=8_541,
        currency="EUR",
        discount_minor=949,
        promo_code="SPRING15",
        items=(
            PurchaseItem("GROCERIES-0017", "groceries", 3, 499),
            PurchaseItem("APPAREL-0042", "apparel", 1, 5_999),
            PurchaseItem("BOOKS-0003", "books", 1, 1_495),
        ),
        location_id="STORE-007",
    )
    return event_to_dict(event)


def _without_logical_types(schema: Any) -> Any:
    # The project's Codec reads timestamps as plain epoch-millisecond ints (same bytes); give the
    # avro package the same view so both sides handle the same Python datum.
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(v) for v in schema]
    return schema


class ApacheAvroCodec:
    """Single-object encoding with the ``avro`` package, header identical to the project's Codec."""

    def __init__(self, name: str) -> None:
        self.schema = avro.schema.parse(json.dumps(_without_logical_types(load_schema(name))))
        self.header = MAGIC + codec(name).fingerprint
        self.writer = avro.io.DatumWriter(self.schema)
        self.reader = avro.io.DatumReader(self.schema, self.schema)

    def encode(self, datum: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        self.writer.write(datum, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if data[:HEADER_SIZE] != self.header:
            raise ValueError("not a single-object record of this schema")
        datum = self.reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:])))
        if not isinstance(datum, dict):
            raise ValueError("not a record")
        return datum


def check_same_bytes(datum: dict[str, Any], apache: ApacheAvroCodec) -> int:
    """Assert both libraries put the same bytes on the wire and read each other; return the size."""
    fast_bytes = codec("purchase").encode(datum)
    apache_bytes = apache.encode(datum)
    assert fast_bytes[:HEADER_SIZE] == apache_bytes[:HEADER_SIZE], "headers differ"
    assert fast_bytes[HEADER_SIZE:] == apache_bytes[HEADER_SIZE:], "bodies differ"
    assert codec("purchase").decode(apache_bytes) == datum, "fastavro misreads avro's bytes"
    assert apache.decode(fast_bytes) == datum, "avro misreads fastavro's bytes"
    return len(fast_bytes)


def median_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the microseconds one call of ``fn`` takes."""
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def measure(number: int, repeat: int) -> dict[str, Any]:
    datum = sample_purchase()
    apache = ApacheAvroCodec("purchase")
    size = check_same_bytes(datum, apache)
    fast = codec("purchase")
    data = fast.encode(datum)
    figures: dict[str, dict[str, float]] = {}
    for name, enc, dec in (("fastavro", fast.encode, fast.decode), ("avro", apache.encode, apache.decode)):
        encode_us = median_us(lambda enc=enc: enc(datum), number, repeat)  # type: ignore[misc]
        decode_us = median_us(lambda dec=dec: dec(data), number, repeat)  # type: ignore[misc]
        figures[name] = {"encode_us": encode_us, "decode_us": decode_us, "roundtrip_us": encode_us + decode_us}
    ratio = {key: figures["avro"][key] / figures["fastavro"][key] for key in figures["fastavro"]}
    return {
        "event": "purchase (3 items, promo code, store)",
        "bytes_on_wire": size,
        "same_body_bytes": True,
        "number": number,
        "repeat": repeat,
        "fastavro": figures["fastavro"],
        "avro": figures["avro"],
        "ratio_avro_over_fastavro": ratio,
        "versions": {"python": platform.python_version(), "fastavro": fastavro.__version__,
                     "avro": _avro_version(), "fastavro_compiled": _fastavro_compiled()},
    }


def _avro_version() -> str:
    from importlib.metadata import version

    return version("avro")


def _fastavro_compiled() -> bool:
    # fastavro falls back to pure Python when its Cython extension is missing: say which ran.
    try:
        import fastavro._read  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(result: dict[str, Any]) -> None:
    fast, apache, ratio = result["fastavro"], result["avro"], result["ratio_avro_over_fastavro"]
    print(f"Avro codec, one {result['event']}, {result['bytes_on_wire']} bytes on the wire "
          f"(bodies identical), median of {result['repeat']} x {result['number']:,}")
    print(f"{'':12} {'fastavro':>10} {'avro':>10} {'avro/fastavro':>14}")
    for key, label in (("encode_us", "encode"), ("decode_us", "decode"), ("roundtrip_us", "enc+dec")):
        print(f"{label + ' (us)':12} {fast[key]:10.2f} {apache[key]:10.2f} {ratio[key]:13.1f}x")
    versions = result["versions"]
    print(f"python {versions['python']}, fastavro {versions['fastavro']} "
          f"({'compiled' if versions['fastavro_compiled'] else 'pure Python'}), avro {versions['avro']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20_000, help="operations per timed run")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench-codec.json", help="where to write figures")
    args = parser.parse_args(argv)
    result = measure(args.number, args.repeat)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
