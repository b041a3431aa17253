"""The state worker's consumer fetches live traffic in batches (streams.fetching)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from config.settings import Settings
from streams.app import Pipeline
from streams.offsets import CommittedSeekingConsumer


def built_consumer(settings: Settings) -> tuple[object, int, int]:
    """The Faust consumer of a state worker, and the fetch sizes of the aiokafka consumer its
    thread builds (built, never started: nothing connects)."""
    async def build() -> tuple[object, int, int]:
        pipeline = Pipeline(settings, role="state")
        consumer = pipeline.app.consumer
        built = consumer._thread._create_worker_consumer(pipeline.app.transport)  # type: ignore[attr-defined]
        try:
            return consumer, built._fetch_min_bytes, built._fetch_max_wait_ms
        finally:
            await built.stop()

    return asyncio.run(build())


def test_the_worker_s_fetches_wait_for_the_configured_bytes_or_time(tmp_path: Path) -> None:
    consumer, min_bytes, max_wait_ms = built_consumer(Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path))
    assert (min_bytes, max_wait_ms) == (65_536, 100)
    assert isinstance(consumer, CommittedSeekingConsumer)  # the offset rules stay underneath

    _, min_bytes, max_wait_ms = built_consumer(Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path / "b",
                                                        consumer_fetch_min_bytes=1,
                                                        consumer_fetch_max_wait_seconds=0.5))
    assert (min_bytes, max_wait_ms) == (1, 500)
