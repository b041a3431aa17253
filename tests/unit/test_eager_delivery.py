"""EagerDelivery: a delivery that does not wait finishes in place; one that waits races the flow's
suspension, the consumer's stop and its crash exactly as mode's ``wait_first`` does."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
from mode import Service

from streams.delivery import EagerDelivery, resume, start_eagerly


class Consumer(EagerDelivery, Service):
    """The shape of Faust's consumer that the mixin relies on."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.delivered: list[str] = []
        self.tasks_created = 0

    async def callback(self, message: str, gate: asyncio.Future[None] | None = None) -> str:
        if gate is not None:
            try:
                await gate
            except asyncio.CancelledError:
                self.delivered.append(f"cancelled {message}")
                raise
        self.delivered.append(message)
        return message.upper()

    async def deliver(self, message: str, gate: asyncio.Future[None] | None = None) -> Any:
        # As Faust's consumer calls it for every record it fetched.
        return await self.wait_first(self.callback(message, gate), self.suspend_flow.wait())


def run(scenario: Any) -> Any:
    """Run ``scenario(consumer)``, failing on any coroutine left never awaited."""
    async def main() -> Any:
        consumer = Consumer()
        created = 0
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        try:
            result = await scenario(consumer)
        finally:
            loop.set_task_factory(factory)
        consumer.tasks_created = created
        return consumer, result

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        outcome = asyncio.run(main())
        gc.collect()  # a coroutine never awaited warns when collected
    return outcome


def test_a_delivery_that_does_not_wait_finishes_in_place_without_a_task() -> None:
    async def scenario(consumer: Consumer) -> Any:
        return await consumer.deliver("a")

    consumer, result = run(scenario)
    assert consumer.delivered == ["a"]
    assert result.done == [result.done[0]] and result.results == ["A"] and not result.stopped
    assert consumer.tasks_created == 0


def test_a_delivery_that_waits_goes_on_in_a_task_to_its_result() -> None:
    async def scenario(consumer: Consumer) -> Any:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = asyncio.ensure_future(consumer.deliver("b", gate))
        await asyncio.sleep(0.01)
        assert consumer.delivered == [] and not pending.done()
        gate.set_result(None)
        return await pending

    consumer, result = run(scenario)
    assert consumer.delivered == ["b"]
    assert result.results == ["B"] and not result.stopped


def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended() -> None:
    async def scenario(consumer: Consumer) -> Any:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = asyncio.ensure_future(consumer.deliver("c", gate))
        await asyncio.sleep(0.01)
        consumer.suspend_flow.set()  # a rebalance began
        result = await pending
        await asyncio.sleep(0)  # the cancelled delivery runs its handler
        return result

    consumer, result = run(scenario)
    assert consumer.delivered == ["cancelled c"]
    assert result.results == [True]  # the suspension's wait won, as with mode's wait_first


def test_a_waiting_delivery_is_cancelled_when_the_consumer_stops() -> None:
    async def scenario(consumer: Consumer) -> Any:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = asyncio.ensure_future(consumer.deliver("d", gate))
        await asyncio.sleep(0.01)
        consumer._stopped.set()
        result = await pending
        await asyncio.sleep(0)
        return result

    consumer, result = run(scenario)
    assert consumer.delivered == ["cancelled d"]
    assert result.stopped


def test_a_delivery_while_the_flow_is_suspended_is_left_to_mode() -> None:
    async def scenario(consumer: Consumer) -> Any:
        consumer.suspend_flow.set()
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        result = await consumer.deliver("e", gate)
        await asyncio.sleep(0)
        return result

    consumer, result = run(scenario)
    assert consumer.tasks_created >= 2  # mode's wait_first: a task per wait
    assert consumer.delivered in ([], ["cancelled e"])  # never delivered
    assert result.results == [True]


def test_an_error_in_a_delivery_propagates() -> None:
    class Broken(Consumer):
        async def callback(self, message: str, gate: asyncio.Future[None] | None = None) -> str:
            raise ValueError(f"cannot decode {message}")

    async def main() -> None:
        consumer = Broken()
        await consumer.deliver("f")

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="cannot decode f"):
            asyncio.run(main())
        gc.collect()


def test_other_calls_of_wait_first_are_mode_s() -> None:
    async def scenario(consumer: Consumer) -> Any:
        other = asyncio.Event()
        other.set()
        return await consumer.wait_first(consumer.callback("g"), other.wait())

    consumer, result = run(scenario)
    assert consumer.tasks_created >= 2
    assert "G" in result.results


def test_start_eagerly_and_resume_run_a_coroutine_across_its_waits() -> None:
    async def steps(first: asyncio.Future[int], second: asyncio.Future[int]) -> int:
        await asyncio.sleep(0)  # a bare yield
        return await first + await second

    async def main() -> int:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        finished, started = start_eagerly(steps(first, second))
        assert not finished
        task = asyncio.ensure_future(resume(started))
        loop.call_later(0.01, first.set_result, 2)
        loop.call_later(0.02, second.set_result, 3)
        return await task

    assert asyncio.run(main()) == 5


def test_a_resumed_coroutine_sees_its_cancellation() -> None:
    seen: list[str] = []

    async def waits(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        finally:
            seen.append("finally")

    async def main() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        finished, started = start_eagerly(waits(gate))
        assert not finished
        task = asyncio.ensure_future(resume(started))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["finally"]


class Record:
    def __init__(self, topic: str) -> None:
        self.topic = topic


class StreamOnlyConsumer(Consumer):
    """Eager for the records of one topic only, as the state worker's consumer is for its inputs."""

    eager_topics = frozenset({"purchases"})

    async def on_message(self, message: Record) -> str:
        self.delivered.append(message.topic)
        return message.topic

    async def deliver_record(self, topic: str) -> Any:
        return await self.wait_first(self.on_message(Record(topic)), self.suspend_flow.wait())


def test_records_of_other_topics_are_delivered_as_mode_does() -> None:
    async def main() -> tuple[list[str], list[int]]:
        consumer = StreamOnlyConsumer()
        loop = asyncio.get_running_loop()
        created = 0

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        tasks = []
        for topic in ("purchases", "relationships-changelog"):
            before = created
            result = await consumer.deliver_record(topic)
            assert result.results == [topic]
            tasks.append(created - before)
        return consumer.delivered, tasks

    delivered, tasks = asyncio.run(main())
    assert delivered == ["purchases", "relationships-changelog"]
    assert tasks[0] == 0  # in place
    assert tasks[1] >= 2  # mode's race: a task for the delivery and one for the flow's suspension
