"""StallWatch: a process that stood still longer than its limit moves to a new epoch."""

from __future__ import annotations

import asyncio

import pytest

from streams.fencing import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _started(watch: StallWatch) -> asyncio.Task[None]:
    task = asyncio.ensure_future(watch.run())
    await asyncio.sleep(0)  # run() takes its first reading
    return task


@pytest.mark.parametrize(("gaps", "stalls"), [
    ([0.1] * 50, 0),          # a live loop ticking
    ([2.9, 2.9, 2.9], 0),     # slow, never longer than the limit
    ([3.1], 1),               # one gap past the limit
    ([0.1, 10.0, 0.1], 1),    # frozen once
    ([4.0, 0.1, 12.0], 2),    # twice
])
def test_gaps_longer_than_the_limit_count_as_stalls(clock: Clock, gaps: list[float], stalls: int) -> None:
    async def scenario() -> int:
        watch = StallWatch(limit=3.0, tick=2.0, clock=clock)  # ticks sleep in real time: the checks are the readings
        task = await _started(watch)
        for gap in gaps:
            clock.now += gap
            watch.epoch()
        task.cancel()
        return watch.stalls

    assert asyncio.run(scenario()) == stalls


def test_a_check_after_a_freeze_sees_it_before_the_next_tick(clock: Clock) -> None:
    async def scenario() -> tuple[int, int]:
        watch = StallWatch(limit=3.0, tick=2.0, clock=clock)
        task = await _started(watch)
        before = watch.epoch()
        clock.now += 12.0  # SIGSTOP: nothing ran, not even a tick
        after = watch.epoch()
        task.cancel()
        return before, after

    before, after = asyncio.run(scenario())
    assert after == before + 1


def test_nothing_counts_before_the_watch_runs(clock: Clock) -> None:
    watch = StallWatch(limit=3.0, clock=clock)
    clock.now += 60.0  # the worker starting up
    assert watch.epoch() == 0


def test_tick_must_be_shorter_than_the_limit() -> None:
    with pytest.raises(ValueError, match="shorter than the limit"):
        StallWatch(limit=1.0, tick=1.0)
