"""StateCache: decoded values in front of a table, writes through, least recently used out."""

from __future__ import annotations

import pytest

from streams.messages import Message
from streams.state import StateCache

MSG = Message("t", 0, 0, b"k", b"v", 0)


class CountingStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.reads = 0
        self.writes = 0

    def get(self, key: bytes, message: Message) -> bytes | None:
        self.reads += 1
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, message: Message) -> None:
        self.writes += 1
        self.data[key] = value


def _cache(store: CountingStore, max_entries: int = 2) -> StateCache[list[int]]:
    return StateCache(store, lambda b: [int(x) for x in b.split(b",")],
                      lambda v: b",".join(str(x).encode() for x in v), max_entries)


def test_reads_the_store_once_then_serves_the_object():
    store = CountingStore()
    store.data[b"a"] = b"1,2"
    cache = _cache(store)
    first = cache.get(b"a", MSG)
    assert first == [1, 2] and cache.get(b"a", MSG) is first
    assert (store.reads, cache.hits, cache.misses) == (1, 1, 1)
    assert cache.get(b"missing", MSG) is None and store.reads == 2


def test_writes_go_through_at_once_and_are_kept():
    store = CountingStore()
    cache = _cache(store)
    value = [3]
    cache.put(b"a", value, MSG)
    assert store.data == {b"a": b"3"} and store.writes == 1
    assert cache.get(b"a", MSG) is value and store.reads == 0


def test_least_recently_used_goes_first_when_full():
    store = CountingStore()
    cache = _cache(store, max_entries=2)
    cache.put(b"a", [1], MSG)
    cache.put(b"b", [2], MSG)
    cache.get(b"a", MSG)  # a is now the most recent
    cache.put(b"c", [3], MSG)
    assert len(cache) == 2
    reads = store.reads
    assert cache.get(b"a", MSG) == [1] and cache.get(b"c", MSG) == [3] and store.reads == reads
    assert cache.get(b"b", MSG) == [2] and store.reads == reads + 1  # evicted, read back from the store


def test_clear_forgets_everything_and_zero_keeps_nothing():
    store = CountingStore()
    cache = _cache(store)
    cache.put(b"a", [1], MSG)
    store.data[b"a"] = b"9"  # written meanwhile by another worker
    cache.clear()
    assert cache.get(b"a", MSG) == [9]
    uncached = _cache(store, max_entries=0)
    uncached.put(b"x", [5], MSG)
    assert len(uncached) == 0 and uncached.get(b"x", MSG) == [5] and store.reads == 2
    with pytest.raises(ValueError):
        _cache(store, max_entries=-1)
