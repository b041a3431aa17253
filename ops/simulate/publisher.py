"""Publishing to the input topics: paced sending, a report of what was acknowledged, clear errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from config.settings import Settings
from config.topics import Topics
from ops.simulate.message import Outgoing

logger = logging.getLogger(__name__)


class BrokerUnavailableError(ConnectionError):
    """Kafka could not be reached (retrying later may help)."""


class PublishError(RuntimeError):
    """Some messages were not acknowledged by the broker."""

    def __init__(self, message: str, report: PublishReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PublishReport:
    """What :func:`publish` sent."""

    total: int = 0
    sent: int = 0  # acknowledged by the broker
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # messages per topic kind
    by_note: dict[str, int] = field(default_factory=dict)  # event, duplicate, truncated_avro, ...
    elapsed_seconds: float = 0.0
    first_error: str | None = None

    @property
    def per_second(self) -> float:
        return self.sent / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.by_kind.items()))
        notes = ", ".join(f"{note} {n:,}" for note, n in sorted(self.by_note.items()))
        return (
            f"sent {self.sent:,}/{self.total:,} messages in {self.elapsed_seconds:.1f}s "
            f"({self.per_second:,.0f}/s); by kind: {kinds}; by note: {notes}"
            + (f"; {self.failed:,} failed, first: {self.first_error}" if self.failed else "")
        )


class _Future(Protocol):
    def add_callback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def add_errback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


class ProducerLike(Protocol):
    """The part of kafka-python's ``KafkaProducer`` that publishing uses."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> _Future: ...

    def flush(self, timeout: float | None = None) -> None: ...


Progress = Callable[[int, int], None]

PACE_SECONDS = 0.002
"""A paced send sleeps only once it is this far ahead of its rate. A sleep before nearly every
message cost about 40 us of CPU each: at 2,400 messages a second (the pipeline benchmark's
freshness load) kafka-python's producer used 177-182 us of CPU per message with it, 135-138
without, on the two cores the pipeline runs on. The rate holds; messages leave in bursts of at
most ``rate * PACE_SECONDS``."""


def send_outgoing(
    producer: ProducerLike,
    outgoing: Sequence[Outgoing],
    topics: Topics,
    rate: float | None = None,
    progress: Progress | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishReport:
    """Send every message through ``producer`` at up to ``rate`` per second, then flush.

    ``progress(sent, total)`` is called about once a second and once at the end. Delivery
    failures are counted in the report, not raised (see :func:`publish`).
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    report = PublishReport(total=len(outgoing))

    def delivered(_metadata: object) -> None:
        report.sent += 1

    def failed(exc: BaseException) -> None:
        report.failed += 1
        report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"

    started = last_progress = clock()
    for i, message in enumerate(outgoing):
        if rate is not None:
            ahead = started + i / rate - clock()  # pace against the start, so delays do not add up
            if ahead >= PACE_SECONDS:
                sleep(ahead)
        future = producer.send(topics.for_kind(message.topic_kind), key=message.key, value=message.value)
        future.add_callback(delivered)
        future.add_errback(failed)
        report.by_kind[message.topic_kind] = report.by_kind.get(message.topic_kind, 0) + 1
        report.by_note[message.note] = report.by_note.get(message.note, 0) + 1
        if progress is not None and clock() - last_progress >= 1.0:
            last_progress = clock()
            progress(i + 1, len(outgoing))
    producer.flush()
    report.elapsed_seconds = clock() - started
    if progress is not None:
        progress(len(outgoing), len(outgoing))
    return report


def publish(
    settings: Settings,
    outgoing: Sequence[Outgoing],
    rate: float | None = None,
    progress: Progress | None = None,
    *,
    connect_timeout_s: float = 10.0,
    linger_ms: int = 20,
    batch_bytes: int = 16_384,
) -> PublishReport:
    """Publish to the input topics, keyed by customer id so a customer's events share a partition.

    ``linger_ms`` and ``batch_bytes`` are the producer's batching (kafka-python's ``linger_ms`` and
    ``batch_size``); a bulk load such as a year of history goes faster with larger batches.
    Returns once every message is acknowledged by all in-sync replicas. Raises
    :class:`BrokerUnavailableError` when the broker cannot be reached and :class:`PublishError`
    when some messages were refused.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    where = settings.bootstrap
    try:
        producer = KafkaProducer(
            **settings.kafka_python_config(),
            acks="all",
            linger_ms=linger_ms,
            batch_size=batch_bytes,
            max_request_size=settings.max_message_bytes,
            enable_idempotence=True,  # a retried batch is not written twice
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            max_block_ms=int(max(connect_timeout_s, 15) * 1000),
        )
    except KafkaError as exc:
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {where} within {connect_timeout_s:g}s ({exc}); start the local "
            "broker or set LOYALTY_KAFKA_BOOTSTRAP"
        ) from exc
    try:
        report = send_outgoing(producer, outgoing, Topics(settings.topic_prefix), rate, progress)
    except KafkaTimeoutError as exc:
        raise BrokerUnavailableError(
            f"Kafka at {where} stopped answering or a topic is missing ({exc}); do the topics "
            f"{', '.join(Topics(settings.topic_prefix).inputs)} exist?"
        ) from exc
    finally:
        producer.close(timeout=10)
    logger.info("published to %s: %s", where, report.summary())
    if report.failed or report.sent != report.total:
        raise PublishError(f"not every message was acknowledged: {report.summary()}", report)
    return report
