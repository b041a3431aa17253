"""Handing each fetched record to its stream without four asyncio tasks per record.

The state worker's consumer delivers its input records this way (``LOYALTY_EAGER_DELIVERY``,
on by default), its tables' changelog records Faust's way. Records that a delivery skips or drops
around a rebalance are found and read again by :mod:`streams.offsets` (docs/guarantees.md,
"Rebalances"). ``bench/faust_ceiling.py --eager`` measures it against Faust's own delivery.

Faust's consumer delivers every record it fetches with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: the delivery, unless the
consumer's flow is suspended (a rebalance began), it stops or it crashes first. mode's
``wait_first`` wraps each of those four waits in a task, waits for the first with
``asyncio.wait``, then cancels the other three. For a record that costs about 90 us of CPU on the
two-core machine of ``docs/performance.md``: half of what a Faust agent doing nothing costs per
record (``bench/faust_ceiling.py --eager`` measures both).

Almost every delivery never waits: the flow control is active, the stream's queue has room, and
the callback decodes the record and puts it on the queue without yielding to the event loop.
:class:`EagerDelivery` therefore starts the callback at once, as Python 3.12's eager tasks do.
A callback that finishes without yielding is done: nothing could have happened in between, so
the result is the one ``wait_first`` would give. A callback that yields (it waits for the flow
control, the producer's buffer or a full queue) goes on as a task under ``wait_first`` itself,
with the same four-way race as before. Every other call, and any delivery made while the flow
is already suspended or the consumer stopping, goes to ``wait_first`` unchanged.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Coroutine, Generator
from typing import Any, ClassVar

from mode.services import WaitResults


class Yielded:
    """What a coroutine started by :func:`start_eagerly` awaits at its first suspension."""

    __slots__ = ("coro", "awaited")

    def __init__(self, coro: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self.coro = coro
        self.awaited = awaited


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` up to its first suspension, in the caller's context.

    Returns ``(True, result)`` when it finished without suspending (an exception it raised
    propagates), else ``(False, Yielded)``: hand that to :func:`resume` to await the rest.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        return True, done.value
    return False, Yielded(coro, awaited)


async def resume(started: Yielded) -> Any:
    """The rest of a coroutine :func:`start_eagerly` suspended, as a coroutine (a task can run
    it): first the future it is waiting for, then whatever it awaits next, to its result."""
    return await _rest(started)


@types.coroutine
def _rest(started: Yielded) -> Generator[Any, Any, Any]:
    coro, awaited = started.coro, started.awaited
    while True:
        try:
            sent = yield awaited
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation or an error thrown in: the coroutine's to handle
            try:
                awaited = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                awaited = coro.send(sent)
            except StopIteration as done:
                return done.value


def _waits_for(coro: Any, event: Any) -> bool:
    """Whether ``coro`` is a not yet started ``event.wait()``."""
    if not (isinstance(coro, types.CoroutineType) and coro.__qualname__ == "Event.wait"
            and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED):
        return False
    frame = coro.cr_frame
    return frame is not None and frame.f_locals.get("self") is event


def _delivered_topic(coro: Any) -> str | None:
    """The topic of the message a not yet started delivery ``callback(message)`` carries."""
    frame = coro.cr_frame if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED else None
    message = frame.f_locals.get("message") if frame is not None else None
    topic = getattr(message, "topic", None)
    return topic if isinstance(topic, str) else None


class EagerDelivery:
    """A mixin for Faust's consumer (a mode ``Service`` with ``suspend_flow``): its per-record
    ``wait_first(callback(message), self.suspend_flow.wait())`` starts the delivery eagerly, for
    the records of ``eager_topics`` (None: every topic)."""

    suspend_flow: Any
    should_stop: bool  # mode's: the service is stopping or crashed
    eager_topics: ClassVar[frozenset[str] | None] = None

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if (len(coros) == 2 and timeout is None and isinstance(coros[0], types.CoroutineType)
                and _waits_for(coros[1], self.suspend_flow) and not self.suspend_flow.is_set()
                and not self.should_stop
                and (self.eager_topics is None or _delivered_topic(coros[0]) in self.eager_topics)):
            delivery, suspended = coros
            try:
                finished, outcome = start_eagerly(delivery)
            except BaseException:
                suspended.close()
                raise
            if finished:
                suspended.close()  # never started: closing it awaits nothing
                return WaitResults([delivery], [outcome], False)
            coros = (resume(outcome), suspended)
        return await super().wait_first(*coros, timeout=timeout)  # type: ignore[misc]
