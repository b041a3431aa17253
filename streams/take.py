"""The state worker's batches: handed over when full, when the worker has caught up, or at the
end of their window.

Faust's ``Stream.take_events(max_, within)`` waits ``within`` seconds for its buffer, whatever
arrives, and ends the wait early only when the buffer is full. Under live traffic a batch cycle
is then that wait plus the batch's processing and writes, and the records that arrive during the
processing wait for the next cycle's full window before they are even taken: with ``r`` events a
second arriving, ``c`` seconds of the worker per event and ``f`` per batch, a cycle lasts
``(within + f) / (1 - r c)``, and an event waits up to two of them (docs/performance.md,
"Freshness: the state worker's batch cycle").

:meth:`HandoverStream.take_batches` buffers the records as Faust's take does (acknowledged once
the batch's processing is over), with two differences. The buffer stays open while a batch is
out: the records Faust delivers while the batch is processed and its writes are acknowledged
fill the next batch, instead of waiting in Faust's queues (and its flow control) until the batch
is done, so the worker's waits on the broker overlap the delivery of the next records. And it
ends its wait in one more case: the buffer holds records, every input partition the worker
holds has had its records up to the broker's high watermark delivered (``caught_up``), and at
least ``min_cycle`` seconds have passed since the previous batch was handed over. A backlog is
still taken in full batches (the worker is not caught up); live traffic is taken as soon as the
worker has all of it, so a batch holds what arrived while the one before was processed, and a
quiet stream's events are taken within ``min_cycle`` instead of ``within``. ``min_cycle`` bounds
the batches per second, and so the per-batch work, when events trickle in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, cast

import faust
from faust.types import TP, ChannelT, EventT
from mode.utils.locks import Event

#: Seconds between two looks at the consumer's positions while a batch's buffer fills.
CATCH_UP_POLL_SECONDS = 0.005


class HandoverStream(faust.Stream):  # type: ignore[misc]
    """Faust's stream with :meth:`take_batches` (the app's ``Stream`` setting)."""

    def take_batches(self, max_: int, within: float, min_cycle: float,
                     caught_up: Callable[[Mapping[TP, int]], bool] | None = None) -> AsyncGenerator[list[EventT], None]:
        """Batches of at most ``max_`` events: each handed over when full, after ``within`` seconds
        of waiting, or once ``caught_up`` (given the last offset delivered of each partition) says
        the worker has every record on the broker and ``min_cycle`` seconds have passed since the
        previous batch. ``caught_up`` None: Faust's take (full or ``within``)."""
        batches = self._take(max_, within, min_cycle, caught_up)
        self._active_agens.add(batches)  # closed by the stream's stop, as Faust's own takes are
        return batches

    async def _take(self, max_: int, within: float, min_cycle: float,
                    caught_up: Callable[[Mapping[TP, int]], bool] | None) -> AsyncGenerator[list[EventT], None]:
        loop = asyncio.get_running_loop()
        buffer: list[EventT] = []
        delivered: dict[TP, int] = {}  # the last offset delivered of each partition, across batches
        wake = Event()  # the buffer got its first record, or is full
        room = Event()  # clear while the buffer is full
        room.set()

        async def add_to_buffer(value: Any) -> Any:
            while not room.is_set():
                await self.wait(room)  # returns early if the stream stops
                if self.should_stop:
                    return value
            event = self.current_event
            if event is None:
                raise RuntimeError("a record reached the batch buffer without its event")
            buffer.append(event)
            message = event.message
            delivered[message.tp] = message.offset
            if len(buffer) == 1 or len(buffer) >= max_:
                wake.set()
            if len(buffer) >= max_:
                room.clear()
            return value

        acks = self.enable_acks
        self.enable_acks = False  # acknowledged below, once the batch is processed
        self.add_processor(add_to_buffer)
        self._enable_passive(cast(ChannelT, aiter(self.channel)))
        handed_over = loop.time() - min_cycle
        try:
            while not self.should_stop:
                deadline = loop.time() + within
                while len(buffer) < max_ and not self.should_stop:
                    now = loop.time()
                    if now >= deadline:
                        break
                    wait = deadline - now
                    if buffer and caught_up is not None:
                        if now - handed_over >= min_cycle and caught_up(delivered):
                            break
                        wait = min(wait, max(CATCH_UP_POLL_SECONDS, handed_over + min_cycle - now))
                    wake.clear()
                    await self.wait_for_stopped(wake, timeout=wait)
                if not buffer:
                    continue
                # The next batch fills while this one is out: records delivered while it is
                # processed and written (its acknowledgements are awaited) wait in the buffer
                # instead of in Faust's queues, and are acknowledged only with their own batch.
                batch = list(buffer)
                buffer.clear()
                room.set()
                handed_over = loop.time()
                try:
                    yield batch
                finally:
                    for event in batch:
                        await self.ack(event)
        finally:
            self.enable_acks = acks
            self._processors.remove(add_to_buffer)
