"""Due times of the gone-quiet timers: which customers to look at when. Pure.

A customer who stops buying sends no event, so nothing would ever evaluate them: the worker keeps
their due times in a :class:`DueIndex` and, on a timer, pops the ones that are due and evaluates
those customers only.

The index is a min-heap of ``(due_ms, customer_id)`` plus a dict of each customer's *current*
due time. Rescheduling or cancelling only touches the dict; a heap entry that no longer matches
the dict is stale and is dropped when it reaches the top (lazy deletion). When stale entries
outnumber live ones the heap is rebuilt, so memory stays proportional to the customers scheduled.

Costs: ``schedule`` and ``cancel`` O(log n) amortised; ``pop_due`` O(k log n) for k due entries
(plus the stale ones it skips), never a scan of every customer.

The index holds no time of its own: ``now_ms`` is an argument (the worker passes its stream time).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable


class DueIndex:
    """Customers keyed by their due time (epoch milliseconds), earliest first."""

    __slots__ = ("_due", "_heap")

    def __init__(self, items: Iterable[tuple[str, int]] = ()) -> None:
        self._due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        for customer_id, due_ms in items:
            self.schedule(customer_id, due_ms)

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self._due

    def due_at(self, customer_id: str) -> int | None:
        """The customer's current due time, or None when not scheduled."""
        return self._due.get(customer_id)

    def schedule(self, customer_id: str, due_ms: int) -> None:
        """Set (or move) the customer's due time; an earlier schedule is replaced."""
        due_ms = int(due_ms)
        if self._due.get(customer_id) == due_ms:
            return
        self._due[customer_id] = due_ms
        heapq.heappush(self._heap, (due_ms, customer_id))
        self._compact_if_stale()

    def cancel(self, customer_id: str) -> bool:
        """Forget the customer's due time; True if there was one."""
        existed = self._due.pop(customer_id, None) is not None
        if existed:
            self._compact_if_stale()
        return existed

    def update(self, customer_id: str, due_ms: int | None) -> None:
        """``schedule`` for a time, ``cancel`` for None (what :func:`evaluate` returns)."""
        if due_ms is None:
            self.cancel(customer_id)
        else:
            self.schedule(customer_id, due_ms)

    def next_due(self) -> int | None:
        """The earliest due time, or None when empty (how long a timer may sleep)."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[tuple[str, int]]:
        """Remove and return ``(customer_id, due_ms)`` of every customer due at or before ``now_ms``.

        Earliest first, ties by customer id. ``limit`` caps how many one call returns (the rest
        stay for the next call), so one timer tick does bounded work.
        """
        out: list[tuple[str, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and (limit is None or len(out) < limit):
            due_ms, customer_id = heapq.heappop(heap)
            if self._due.get(customer_id) == due_ms:
                del self._due[customer_id]
                out.append((customer_id, due_ms))
        return out

    def remove_where(self, keep: Callable[[str], bool]) -> int:
        """Drop every customer for whom ``keep(customer_id)`` is false (e.g. partitions revoked)."""
        gone = [c for c in self._due if not keep(c)]
        for customer_id in gone:
            del self._due[customer_id]
        self._rebuild()
        return len(gone)

    def to_dict(self) -> dict[str, int]:
        """``{customer_id: due_ms}``, sorted by customer id: plain and JSON-able."""
        return dict(sorted(self._due.items()))

    def to_list(self) -> list[list[object]]:
        """``[[customer_id, due_ms], ...]`` earliest first, ties by customer id."""
        return [[c, d] for d, c in sorted((d, c) for c, d in self._due.items())]

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> DueIndex:
        return cls(data.items())

    @classmethod
    def from_list(cls, data: Iterable[Iterable[object]]) -> DueIndex:
        return cls((str(c), int(d)) for c, d in data)  # type: ignore[call-overload]

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def _compact_if_stale(self) -> None:
        if len(self._heap) > 2 * len(self._due) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(d, c) for c, d in self._due.items()]
        heapq.heapify(self._heap)
