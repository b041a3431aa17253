"""Per-customer state in the worker: the record kept per customer, its codec, and a cache of
decoded records in front of the table that stores them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import orjson

from domain.alerts.state import AlertState, alert_state_from_dict, alert_state_to_dict
from domain.relationship import RelationshipState, state_from_dict, state_to_dict
from schemas import codec
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


def encode_record(record: CustomerRecord) -> bytes:
    datum = state_to_dict(record.state)
    datum["alert_state"] = None if record.alerts is None else orjson.dumps(alert_state_to_dict(record.alerts)).decode()
    return codec("relationship_state").encode(datum)


def decode_record(data: bytes) -> CustomerRecord:
    datum = codec("relationship_state").decode(data)
    alerts = datum.get("alert_state")
    return CustomerRecord(state_from_dict(datum), None if alerts is None else alert_state_from_dict(orjson.loads(alerts)))


def customer_cache(store: StateStore, max_entries: int = 100_000) -> StateCache[CustomerRecord]:
    """The cache of customer records (Avro ``RelationshipState`` in the store)."""
    return StateCache(store, decode_record, encode_record, max_entries)
