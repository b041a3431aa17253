"""Webhook delivery from the alerts topic: a plain consumer group that POSTs each live alert.

It runs in the sink process (``loyalty worker --role sink`` or ``all``), in its own consumer
group, ``<app id>-webhook``, so its offsets are its own. One loop, batch after batch:

1. fetch the alerts that arrived (up to ``WEBHOOK_BATCH_RECORDS``);
2. skip historical alerts (``historical`` is true: an alert about the past, raised by a backfill
   or a replay; see :func:`domain.alerts.is_historical`) and records that do not decode (logged);
3. deliver the others, signed, with retries (:class:`sinks.webhook.WebhookDelivery`, up to
   ``webhook_concurrency`` at once); an alert given up after the configured attempts, or refused
   by the receiver, is dead-lettered with its reason, its topic, partition and offset, and the
   dead letter's acknowledgement is awaited;
4. commit the batch's offsets, only when every alert of it was delivered or dead-lettered.

A crash anywhere before 4 delivers the batch's alerts again: delivery is at least once, and a
receiver deduplicates on ``webhook-id`` (the alert id). A dead letter that cannot be written stops
the loop without committing (the process then exits, or reports itself crashed on ``/health``),
so no alert is passed over silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError

from config.settings import Settings
from config.topics import Topics
from schemas import DecodeError, codec
from sinks.clickhouse import now_ms
from sinks.webhook import WebhookConfig, WebhookDelivery
from streams.messages import DeadLetter, Message
from streams.sink import aiokafka_config

logger = logging.getLogger(__name__)

WEBHOOK_BATCH_RECORDS = 500
FETCH_WAIT_MS = 1000


def webhook_group_id(settings: Settings) -> str:
    """The consumer group of the webhook delivery."""
    return f"{settings.app_id}-webhook"


def webhook_config(settings: Settings) -> WebhookConfig | None:
    """The webhook of these settings, or None when no URL is set."""
    if not settings.webhook_url:
        return None
    if settings.webhook_secret is None:
        raise ValueError("LOYALTY_WEBHOOK_URL is set but LOYALTY_WEBHOOK_SECRET is not")
    return WebhookConfig(url=settings.webhook_url, secret=settings.webhook_secret.get_secret_value(),
                         timeout_seconds=settings.webhook_timeout_seconds, max_attempts=settings.webhook_max_attempts,
                         backoff_cap_seconds=settings.webhook_backoff_cap_seconds)


class DeadLetterFailed(RuntimeError):
    """An alert could be neither delivered nor dead-lettered: its offset must not be committed."""


class WebhookConsumer:
    """Delivers the live alerts of the alerts topic; see the module docstring for the order."""

    def __init__(self, settings: Settings, config: WebhookConfig) -> None:
        self.settings = settings
        self.config = config
        self.topics = Topics(settings.topic_prefix)
        self.group_id = webhook_group_id(settings)
        self.alert_codec = codec("alert")
        self.dead_letter_codec = codec("dead_letter")
        self.delivery = WebhookDelivery(config, on_give_up=self._give_up)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.totals: Counter[str] = Counter()
        self._sources: dict[str, Message] = {}  # alert id -> the record it came from (for its dead letter)
        self._dead_letter_errors: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = aiokafka_config(self.settings)
        # One alert may take every attempt with back-off before the next fetch: the poll interval
        # allows for a whole batch of such alerts delivered ``concurrency`` at a time.
        worst = self.config.max_attempts * (self.config.timeout_seconds + self.config.backoff_cap_seconds)
        self.consumer = AIOKafkaConsumer(
            self.topics.alerts, **config, group_id=self.group_id, client_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_message_bytes,
            session_timeout_ms=int(self.settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(max(1.0, self.settings.kafka_session_timeout_seconds / 3) * 1000),
            max_poll_interval_ms=int(max(300.0, worst * WEBHOOK_BATCH_RECORDS / self.config.concurrency + 60) * 1000),
        )
        self.producer = AIOKafkaProducer(**config, client_id=f"{self.group_id}-dead-letters")
        await self.producer.start()
        await self.consumer.start()
        await self.delivery.start()
        self._task = asyncio.ensure_future(self._deliver_forever())
        logger.info("webhook delivery from %s (group %s) to %s", self.topics.alerts, self.group_id,
                    self.config.safe_url)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; errors were logged
                pass
        # Alerts in flight were cancelled with the task: their offsets are not committed, so the
        # next start delivers them again (nothing is handed to the give-up path for stopping).
        await self.delivery.stop(1.0)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    @property
    def crashed(self) -> BaseException | None:
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            return task.exception()
        return None

    def status(self) -> dict[str, Any]:
        return {"group": self.group_id, "url": self.config.safe_url, **self.totals, **self.delivery.counters}

    async def _deliver_forever(self) -> None:
        try:
            while True:
                await self.deliver_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("webhook delivery stopped")
            raise

    async def deliver_once(self) -> int:
        """Fetch, deliver and commit one batch; return how many alerts were delivered or dead-lettered."""
        assert self.consumer is not None
        fetched = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=WEBHOOK_BATCH_RECORDS)
        if not fetched:
            return 0
        live = []
        for tp, records in fetched.items():
            for record in records:
                alert = self._decode(record)
                if alert is None:
                    continue
                if alert.get("historical"):
                    self.totals["skipped_historical"] += 1
                    continue
                self._sources[str(alert["alert_id"])] = Message(tp.topic, tp.partition, record.offset, record.key,
                                                                record.value or b"", record.timestamp)
                live.append(alert)
        limit = asyncio.Semaphore(self.config.concurrency)

        async def deliver(alert: dict[str, Any]) -> None:
            async with limit:
                await self.delivery.deliver(alert)

        self._dead_letter_errors = []
        try:
            await asyncio.gather(*(deliver(alert) for alert in live))
        finally:
            self._sources.clear()
        if self._dead_letter_errors:
            raise DeadLetterFailed(f"{len(self._dead_letter_errors)} alert(s) neither delivered nor dead-lettered, "
                                   f"offsets not committed: {self._dead_letter_errors[0]}")
        try:
            await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
        except CommitFailedError as exc:
            # The group rebalanced meanwhile: the partitions' next owner delivers these again.
            logger.warning("webhook batch delivered but its offsets not committed (%s); it will be delivered again", exc)
            self.totals["uncommitted_batches"] += 1
        self.totals["handled"] += len(live)
        return len(live)

    def _decode(self, record: Any) -> dict[str, Any] | None:
        try:
            alert: dict[str, Any] = self.alert_codec.decode(record.value or b"")
        except DecodeError as exc:
            # Written by this project's own workers: the sink logs and skips it the same way.
            logger.error("webhook: skipping %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc)
            self.totals["skipped_undecodable"] += 1
            return None
        return alert

    async def _give_up(self, alert: dict[str, Any], reason: str) -> None:
        """Dead-letter an alert the webhook did not take (the delivery's give-up path)."""
        assert self.producer is not None
        alert_id = str(alert.get("alert_id"))
        source = self._sources.get(alert_id) or Message(self.topics.alerts, -1, -1, str(alert["customer_id"]).encode(),
                                                        self.alert_codec.encode(alert), now_ms())
        letter = DeadLetter("deliver", source, "WebhookGaveUp", reason, now_ms(), payload=source.value)
        try:
            await self.producer.send_and_wait(self.topics.dead_letters,
                                              self.dead_letter_codec.encode(letter.envelope(self.settings.max_event_bytes)),
                                              key=source.key)
        except Exception as exc:
            self._dead_letter_errors.append(f"{alert_id}: {type(exc).__name__}: {exc}")
            raise
        self.totals["dead_lettered"] += 1
