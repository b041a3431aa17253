"""Fetch requests that wait for a batch's worth of records.

aiokafka's consumer asks the broker for records with ``fetch_min_bytes=1``: the broker answers
as soon as one record is there. A stream of live traffic (a few thousand records a second over a
dozen partitions) then arrives in fetches of a handful of records each, and Faust's consumer pays
its per-fetch work for every handful. A Faust agent doing nothing, fed 2,800 records a second by
a paced producer (the freshness load of ``bench/pipeline.py``), used 142 us of CPU per record with
aiokafka's defaults and 86 us with fetches that wait for 64 KB or 100 ms; on a backlog, where
every fetch is full, it uses about 72 us either way.

Faust creates its aiokafka consumer with a fixed ``fetch_max_wait_ms`` and no
``fetch_min_bytes``. :func:`install` makes the app's consumer thread build it with
``LOYALTY_CONSUMER_FETCH_MIN_BYTES`` and ``LOYALTY_CONSUMER_FETCH_MAX_WAIT_SECONDS``: both are
aiokafka's constructor arguments, stored as given and first read when the consumer starts (its
fetcher is created then), so they are set on the consumer Faust has just built. The sink's
consumer takes them as arguments.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread


class SizedFetchThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer fetches at least ``fetch_min_bytes`` per
    request, waiting at most ``fetch_max_wait_ms`` for them."""

    fetch_min_bytes: ClassVar[int] = 1
    fetch_max_wait_ms: ClassVar[int] = 1500

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_min_bytes = self.fetch_min_bytes
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def install(app: faust.App, min_bytes: int, max_wait_seconds: float) -> None:
    """Make ``app`` (not started yet) fetch at least ``min_bytes`` per request, waiting at most
    ``max_wait_seconds``; on top of whatever consumer class it has already."""
    thread_class = type("SizedFetchThread", (SizedFetchThread,),
                        {"fetch_min_bytes": min_bytes, "fetch_max_wait_ms": round(max_wait_seconds * 1000),
                         "__module__": __name__})

    def new_consumer_thread(consumer: Any) -> AIOKafkaConsumerThread:
        return thread_class(consumer, loop=consumer.loop, beacon=consumer.beacon)  # type: ignore[no-any-return]

    transport: Any = app.transport
    transport.Consumer = type(transport.Consumer.__name__, (transport.Consumer,),
                              {"_new_consumer_thread": new_consumer_thread, "__module__": transport.Consumer.__module__})
