"""Per-customer state in the worker: the record kept per customer, its codec, and a cache of
decoded records in front of the table that stores them."""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import orjson

from domain.alerts.state import AlertState, alert_state_from_dict, alert_state_to_dict
from domain.relationship import RelationshipState, state_from_dict, state_from_list, state_to_dict, state_to_list
from schemas import DecodeError, codec
from streams.messages import Message


class StateStore(Protocol):
    """Customer state by key, written on behalf of a message (which fixes the partition)."""

    def get(self, key: bytes, message: Message) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, message: Message) -> None: ...


T = TypeVar("T")


class StateCache(Generic[T]):
    """Decoded values in front of a :class:`StateStore`: read once, then kept as objects.

    Decoding a customer's state costs more than scoring it, and a busy customer comes back in
    batch after batch, so the objects stay in memory (least recently used first out, at most
    ``max_entries``). Writes go through to the store at once (the table and its changelog stay
    the truth); only reads are saved. The worker clears the cache when partitions move, because
    another worker may have written those keys meanwhile.
    """

    def __init__(self, store: StateStore, decode: Callable[[bytes], T], encode: Callable[[T], bytes],
                 max_entries: int = 100_000) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        self.store = store
        self.decode = decode
        self.encode = encode
        self.max_entries = max_entries
        self._values: OrderedDict[bytes, T] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, message: Message) -> T | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
            self.hits += 1
            return value
        self.misses += 1
        stored = self.store.get(key, message)
        if stored is None:
            return None
        value = self.decode(stored)
        self._keep(key, value)
        return value

    def put(self, key: bytes, value: T, message: Message) -> None:
        """Write ``value`` to the store (on behalf of ``message``) and keep it."""
        self.store.put(key, self.encode(value), message)
        self._keep(key, value)

    def _keep(self, key: bytes, value: T) -> None:
        if self.max_entries == 0:
            return
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.max_entries:
            self._values.popitem(last=False)

    def clear(self) -> None:
        self._values.clear()

    def forget(self, keys: list[bytes]) -> None:
        """Drop the cached values of ``keys`` (written in a batch whose writes were dropped)."""
        for key in keys:
            self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(slots=True)
class CustomerRecord:
    """What the relationships table keeps per customer: the relationship state and what the alert
    rules remember (None until the first evaluation), stored together in one write."""

    state: RelationshipState
    alerts: AlertState | None = None


# The stored record's layouts. The changelog is internal, so the current one is compact and
# positional (no field names, no per-value Avro work): a 4-byte marker, then orjson of
# ``[state_to_list(state), alert state dict or null]``, deflated (zlib, level 1) when longer than
# COMPRESS_ABOVE bytes: a year of day buckets is mostly zero counters, which deflate to about a
# quarter, while the short records of most customers skip the cost. The first byte is 0, so it is
# never mistaken for the earlier layout, Avro single-object encoding of ``RelationshipState``
# (``schemas/relationship_state.avsc``, marker ``C3 01``), which is still read.
COMPACT_MARKER = b"\x00LS\x01"
DEFLATED_MARKER = b"\x00LS\x02"
COMPRESS_ABOVE = 2048


def encode_record(record: CustomerRecord) -> bytes:
    alerts = None if record.alerts is None else alert_state_to_dict(record.alerts)
    body = orjson.dumps([state_to_list(record.state), alerts])
    if len(body) > COMPRESS_ABOVE:
        return DEFLATED_MARKER + zlib.compress(body, 1)
    return COMPACT_MARKER + body


def decode_record(data: bytes) -> CustomerRecord:
    """A stored record of any layout (compact, deflated, or the Avro one of earlier releases)."""
    marker = data[:4]
    if marker == COMPACT_MARKER or marker == DEFLATED_MARKER:
        try:
            body = memoryview(data)[4:] if marker == COMPACT_MARKER else zlib.decompress(memoryview(data)[4:])
            values, alerts = orjson.loads(body)
            state = state_from_list(values)
        except (orjson.JSONDecodeError, zlib.error, TypeError, ValueError) as exc:
            raise DecodeError(f"relationship record: corrupt compact body: {type(exc).__name__}: {exc}") from exc
        return CustomerRecord(state, None if alerts is None else alert_state_from_dict(alerts))
    datum = codec("relationship_state").decode(data)
    alerts = datum.get("alert_state")
    return CustomerRecord(state_from_dict(datum), None if alerts is None else alert_state_from_dict(orjson.loads(alerts)))


def encode_record_avro(record: CustomerRecord) -> bytes:
    """The earlier layout (Avro ``RelationshipState``): what a store written by an earlier
    release holds; kept to test that it is still read."""
    datum = state_to_dict(record.state)
    datum["alert_state"] = None if record.alerts is None else orjson.dumps(alert_state_to_dict(record.alerts)).decode()
    return codec("relationship_state").encode(datum)


def customer_cache(store: StateStore, max_entries: int = 100_000) -> StateCache[CustomerRecord]:
    """The cache of customer records (their compact layout in the store)."""
    return StateCache(store, decode_record, encode_record, max_entries)
