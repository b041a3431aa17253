"""AsyncSinkRunner: batches handed in during an insert go together as one; each caller waits for its own rows.
And how the sink gathers a batch: its consumer's fetch settings, and a batch's clock from its first record."""

from __future__ import annotations

import asyncio
import threading

import pytest
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from config.settings import Settings
from sinks.clickhouse import AsyncSinkRunner, ClickHouseSink, SinkBatch
from streams.sink import FETCH_MIN_BYTES, ClickHouseSinkService, fetch_batching


class RecordingSink:
    """Stands in for ClickHouseSink.write: records what each insert carried."""

    def __init__(self, fail_first: BaseException | None = None) -> None:
        self.inserts: list[dict[str, object]] = []
        self.release_first = threading.Event()
        self.fail_first = fail_first

    def write(self, batch: SinkBatch) -> int:
        if not self.inserts and not self.release_first.wait(5):
            raise TimeoutError("the test never released the first insert")
        first = not self.inserts
        self.inserts.append({"rows": {t: r.data for t, r in batch.tables.items()},
                             "tokens": {t: batch.dedup_token(t) for t in batch.tables}})
        if first and self.fail_first is not None:
            raise self.fail_first
        return len(batch)

    def close(self) -> None:
        pass


def _batch(partition: int, offset: int, customer: str, n: int = 1) -> SinkBatch:
    batch = SinkBatch()
    batch.cover("purchases", partition, offset)
    rows = batch.rows("signals_current", ("customer_id", "version"))
    for v in range(n):
        rows.append({"customer_id": customer, "version": v})
    return batch


def test_batches_waiting_during_an_insert_go_together_and_each_caller_gets_its_rows():
    sink = RecordingSink()
    runner = AsyncSinkRunner(sink)  # type: ignore[arg-type]

    async def run() -> list[int]:
        first = asyncio.ensure_future(runner.write(_batch(0, 10, "A")))
        await asyncio.sleep(0.05)  # the first insert is now running (and held)
        rest = [asyncio.ensure_future(runner.write(_batch(p, 20 + p, c, n=2))) for p, c in ((1, "B"), (2, "C"))]
        await asyncio.sleep(0.05)
        sink.release_first.set()
        return [await first] + [await r for r in rest]

    try:
        assert asyncio.run(run()) == [1, 2, 2]
    finally:
        runner.shutdown()
    assert [i["rows"] for i in sink.inserts] == [
        {"signals_current": [["A"], [0]]},
        {"signals_current": [["B", "B", "C", "C"], [0, 1, 0, 1]]},
    ]
    assert sink.inserts[1]["tokens"] == {"signals_current": "signals_current|purchases/1:21-21,purchases/2:22-22"}


def test_a_retried_combined_insert_keeps_its_token():
    sink = RecordingSink(fail_first=OperationalError("server away"))
    sink.release_first.set()
    runner = AsyncSinkRunner(sink, max_backoff=0.01)  # type: ignore[arg-type]
    try:
        assert asyncio.run(runner.write(_batch(3, 7, "A"))) == 1
    finally:
        runner.shutdown()
    assert len(sink.inserts) == 2 and sink.inserts[0] == sink.inserts[1] and runner.retries == 1


def test_an_error_that_cannot_succeed_later_reaches_every_caller_of_that_insert():
    sink = RecordingSink(fail_first=ProgrammingError("bad column"))
    runner = AsyncSinkRunner(sink)  # type: ignore[arg-type]

    async def run() -> list[BaseException | int]:
        # handed in within one turn of the event loop: they go as one insert
        together = [asyncio.ensure_future(runner.write(_batch(p, 1, c))) for p, c in ((0, "A"), (1, "B"))]
        await asyncio.sleep(0.05)
        sink.release_first.set()
        results = await asyncio.gather(*together, return_exceptions=True)
        return [*results, await runner.write(_batch(2, 1, "C"))]

    try:
        first, second, later = asyncio.run(run())
    finally:
        runner.shutdown()
    assert isinstance(first, ProgrammingError) and isinstance(second, ProgrammingError)
    assert later == 1 and len(sink.inserts) == 2  # the next insert still goes through


def test_combining_rows_of_different_columns_is_refused():
    a, b = SinkBatch(), SinkBatch()
    a.rows("t", ("x",)).append({"x": 1})
    b.rows("t", ("y",)).append({"y": 1})
    with pytest.raises(ValueError):
        SinkBatch.combine([a, b])


@pytest.mark.parametrize(("batch_seconds", "wait_ms"), [(0.25, 125), (2.0, 1000), (0.001, 1)])
def test_the_sink_s_fetches_wait_for_a_share_of_a_batch_at_most(batch_seconds: float, wait_ms: int) -> None:
    """A fetch waits for FETCH_MIN_BYTES or half the batch time (never zero: the broker would
    answer at once with nothing, and the consumer would spin)."""
    assert fetch_batching(batch_seconds) == {"fetch_min_bytes": FETCH_MIN_BYTES, "fetch_max_wait_ms": wait_ms}



class ScriptedConsumer:
    """Stands in for the sink's aiokafka consumer: each record becomes available at its time
    (seconds after the consumer was made); getmany returns what is available, waiting for the
    next record at most its timeout."""

    def __init__(self, arrivals: list[float]) -> None:
        self.start = asyncio.get_running_loop().time()
        self.arrivals = sorted(arrivals)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        now = loop.time() - self.start
        if not self.arrivals or self.arrivals[0] > now:
            wait = min(timeout_ms / 1000, (self.arrivals[0] - now) if self.arrivals else timeout_ms / 1000)
            await asyncio.sleep(max(0.0, wait))
            now = loop.time() - self.start
        ready = [at for at in self.arrivals if at <= now][:max_records]
        self.arrivals = self.arrivals[len(ready):]
        return {"topic-0": ready} if ready else {}


def test_a_sink_batch_runs_from_its_first_record_for_the_batch_time(tmp_path) -> None:
    """Batch time 0.5 s. Nothing comes for the first 0.5 s: an empty batch. Records then come at
    0.8, 1.0 and 1.1 s, and one at 1.6 s: the second batch starts its clock at 0.8 s and takes
    the three up to 1.3 s (a clock started when the fetch began, at 0.5 s, would have cut the
    burst at 1.0 s); the last record makes a batch of its own."""
    settings = Settings(data_dir=tmp_path, sink_batch_max_seconds=0.5)

    async def batches() -> list[list[float]]:
        service = ClickHouseSinkService(settings, b"k", ClickHouseSink("chdb://unused", "unused"))
        service.consumer = ScriptedConsumer([0.8, 1.0, 1.1, 1.6])  # type: ignore[assignment]
        try:
            return [sum((await service.fetch()).values(), []) for _ in range(3)]
        finally:
            service.runner.shutdown()

    assert asyncio.run(batches()) == [[], [0.8, 1.0, 1.1], [1.6]]
