"""The state worker's take (streams/take.py) over an in-memory Faust channel: when a batch is
handed over. The consumer's side of ``caught_up`` is in tests/unit/test_read_offsets.py; the
take under the real broker runs in every integration and fault test of the state worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import faust
from faust.types import TP

from streams.take import HandoverStream

WINDOW = 60.0  # far longer than any test waits: a batch handed over came early


def collect(values: list[int], max_: int, min_cycle: float, caught_up: Callable[[Mapping[TP, int]], bool] | None,
            feed: Callable[[Any, asyncio.Event], Any], batches_wanted: int) -> list[tuple[list[int], float]]:
    """The batches (values, seconds since the first put) a take hands over while ``feed`` puts
    ``values`` on the stream's channel."""
    app = faust.App("take-test", Stream=HandoverStream, store="memory://", web_enabled=False)
    out: list[tuple[list[int], float]] = []

    async def run() -> None:
        app.flow_control.resume()  # as a started worker's is
        channel = app.channel()
        stream = app.stream(channel)
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        began = [0.0]

        async def take() -> None:
            async for batch in stream.take_batches(max_, WINDOW, min_cycle, caught_up):  # type: ignore[attr-defined]
                out.append(([e.value for e in batch], loop.time() - began[0]))
                if len(out) == batches_wanted:
                    break

        taker = asyncio.ensure_future(take())
        began[0] = loop.time()
        await asyncio.wait_for(asyncio.gather(taker, feed(channel, started)), timeout=20)
        await stream.stop()

    asyncio.run(run())
    return out


def put_all(values: list[int], pause: float = 0.0) -> Callable[[Any, asyncio.Event], Any]:
    async def feed(channel: Any, started: asyncio.Event) -> None:
        for value in values:
            await channel.send(value=value)  # an event with its message, as a topic delivers
            if pause:
                await asyncio.sleep(pause)
    return feed


def test_without_caught_up_a_batch_waits_until_it_is_full():
    values = list(range(6))
    batches = collect(values, 3, 0.0, None, put_all(values), batches_wanted=2)
    assert [b for b, _ in batches] == [[0, 1, 2], [3, 4, 5]]


def test_a_batch_is_handed_over_once_caught_up_long_before_its_window():
    values = [1, 2, 3]
    batches = collect(values, 1000, 0.0, lambda delivered: True, put_all(values), batches_wanted=1)
    (batch, at), = batches
    assert batch and set(batch) <= set(values)
    assert at < WINDOW / 2


def test_not_caught_up_the_batch_keeps_filling():
    values = list(range(5))
    batches = collect(values, 5, 0.0, lambda delivered: False, put_all(values, pause=0.01), batches_wanted=1)
    assert batches[0][0] == values  # handed over full, not at the first record


def test_caught_up_batches_are_at_least_min_cycle_apart():
    values = list(range(12))
    min_cycle = 0.2
    batches = collect(values, 1000, min_cycle, lambda delivered: True, put_all(values, pause=0.02),
                      batches_wanted=2)
    (first, at_first), (second, at_second) = batches
    assert first + second == values[:len(first) + len(second)]
    assert at_second - at_first >= min_cycle * 0.9
    assert len(second) > 1  # what arrived during the cycle came together


def test_the_next_batch_fills_while_one_is_out():
    # Faust's take closes its buffer while a batch is processed: the records delivered meanwhile
    # stop at the buffer's door. Here they enter the next batch, which is full and handed over
    # as soon as the first one is done.
    app = faust.App("take-test-fill", Stream=HandoverStream, store="memory://", web_enabled=False)
    passed: list[int] = []  # values the stream's processors got to, in order
    out: list[list[int]] = []
    seen_while_out: list[int] = []

    async def run() -> None:
        app.flow_control.resume()
        channel = app.channel()
        stream = app.stream(channel)
        stream.add_processor(lambda value: passed.append(value) or value)  # runs before the buffer's

        async def take() -> None:
            async for batch in stream.take_batches(3, WINDOW, 0.0, None):  # type: ignore[attr-defined]
                out.append([e.value for e in batch])
                if len(out) == 1:
                    for _ in range(100):  # the first batch is out: the other records are delivered meanwhile
                        if len(passed) == 6:
                            break
                        await asyncio.sleep(0.01)
                    seen_while_out.extend(passed)
                if len(out) == 2:
                    break

        taker = asyncio.ensure_future(take())
        await asyncio.wait_for(asyncio.gather(taker, put_all(list(range(6)))(channel, asyncio.Event())), timeout=20)
        await stream.stop()

    asyncio.run(run())
    assert out == [[0, 1, 2], [3, 4, 5]]
    assert seen_while_out == list(range(6))
