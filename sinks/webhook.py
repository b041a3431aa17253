"""Alert delivery to a webhook, signed per Standard Webhooks. No Faust.

:class:`WebhookDelivery` runs beside the worker: ``submit`` puts an alert datum on a bounded
queue and returns at once (event processing never waits for HTTP); background tasks POST each
alert as JSON with ``webhook-id`` (the alert id, the same on every attempt and after a restart),
``webhook-timestamp`` and ``webhook-signature`` (see :mod:`sinks.webhook_verify`).

Outcomes of one attempt:

* 2xx: delivered.
* 408, 429, 5xx, connection errors, timeouts: retried with capped exponential back-off with
  jitter (``Retry-After`` honoured, capped), up to ``max_attempts`` in all.
* any other status (4xx, and 1xx/3xx: redirects are not followed): the receiver refuses this
  alert and retrying cannot help, so it is given up at once.

A given-up alert goes to the async ``on_give_up(alert, reason)`` callback (the worker
dead-letters it), as does one still queued or in flight when :meth:`WebhookDelivery.stop` runs
out of time, and one that finds the queue full.

Delivery guarantee: at-least-once for every alert submitted while the service runs; a receiver
deduplicates on ``webhook-id``. Alerts live in memory only: alerts lost in a crash are recovered
only if the caller re-submits them. The worker does exactly that: it calls :meth:`WebhookDelivery.deliver`
from a consumer of the alerts topic (``streams/webhooks.py``) that commits its offsets only after
each alert was delivered or given up, so a crash re-reads the alerts instead of losing them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from sinks.webhook_verify import secret_key, sign

logger = logging.getLogger(__name__)

GiveUpCallback = Callable[[dict[str, Any], str], Awaitable[None]]
RETRY_STATUSES = frozenset({408, 429})
REASON_BODY_CHARS = 200


@dataclass(frozen=True)
class WebhookConfig:
    """Where and how to deliver. The secret never appears in ``repr`` or logs."""

    url: str
    secret: str | bytes = field(repr=False)
    timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 5.0
    max_attempts: int = 10
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    retry_after_cap_seconds: float = 300.0
    queue_size: int = 10_000
    concurrency: int = 4
    user_agent: str = "loyalty-stream-webhook/1"

    def __post_init__(self) -> None:
        secret = self.secret
        if hasattr(secret, "get_secret_value"):  # a pydantic SecretStr from the settings
            object.__setattr__(self, "secret", secret.get_secret_value())
        secret_key(self.secret)  # fails early on an empty or malformed secret
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("webhook url must be http(s)")
        if self.max_attempts < 1 or self.queue_size < 1 or self.concurrency < 1:
            raise ValueError("max_attempts, queue_size and concurrency must be at least 1")

    def __repr__(self) -> str:
        return (f"WebhookConfig(url={self.safe_url!r}, secret='***', timeout_seconds={self.timeout_seconds}, "
                f"max_attempts={self.max_attempts}, backoff_base_seconds={self.backoff_base_seconds}, "
                f"backoff_cap_seconds={self.backoff_cap_seconds})")

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        """The url without credentials or query (either may carry a token): safe to log."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class AttemptOutcome:
    status: str  # "delivered", "retry" or "give_up"
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    reason: str  # last attempt's outcome, e.g. "HTTP 204" or "HTTP 400: bad payload"


def encode_body(alert: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed: compact JSON in the datum's field order."""
    return json.dumps(alert, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(status: int, body: str, retry_after: float | None) -> AttemptOutcome:
    """What one HTTP response means for the delivery."""
    if 200 <= status < 300:
        return AttemptOutcome("delivered", f"HTTP {status}")
    reason = f"HTTP {status}" + (f": {body[:REASON_BODY_CHARS]}" if body else "")
    if status in RETRY_STATUSES or status >= 500:
        return AttemptOutcome("retry", reason, retry_after)
    return AttemptOutcome("give_up", reason)


class WebhookDelivery:
    """Background, retried, signed delivery of alert datums to one webhook."""

    def __init__(
        self,
        config: WebhookConfig,
        on_give_up: GiveUpCallback,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.on_give_up = on_give_up
        self.rng = rng or random.Random()
        self.clock = clock
        self.delivered = 0
        self.retried = 0
        self.given_up = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=config.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[int, dict[str, Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._accepting = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def counters(self) -> dict[str, int]:
        return {"delivered": self.delivered, "retried": self.retried, "given_up": self.given_up,
                "pending": self._queue.qsize() + len(self._in_flight)}

    async def start(self) -> None:
        """Open the HTTP session and start the delivery tasks (call inside the running loop)."""
        if self._tasks:
            return
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds,
                                        sock_connect=self.config.connect_timeout_seconds)
        self._session = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": self.config.user_agent})
        self._accepting = True
        self._tasks = [asyncio.create_task(self._run(i), name=f"webhook-delivery-{i}")
                       for i in range(self.config.concurrency)]
        logger.info("webhook delivery to %s started (%d tasks)", self.config.safe_url, self.config.concurrency)

    def submit(self, alert: dict[str, Any]) -> bool:
        """Queue an alert datum (from ``alert_to_dict``); never blocks.

        False when it could not be queued (not started, stopping, or queue full); it is then
        handed to ``on_give_up`` in the background, so nothing is dropped silently.
        """
        if "alert_id" not in alert:
            raise ValueError("an alert datum needs its alert_id (the webhook-id)")
        if not self._accepting:
            self._give_up_later(alert, "webhook delivery is not running")
            return False
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._give_up_later(alert, f"webhook queue full ({self.config.queue_size} alerts pending)")
            return False
        return True

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, wait up to ``drain_timeout`` s for the queue to drain, then cancel.

        Alerts still queued or in flight then are handed to ``on_give_up``.
        """
        self._accepting = False
        if self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), timeout=drain_timeout)
            except TimeoutError:
                logger.warning("webhook delivery: %d alerts not delivered within %.1f s of stopping",
                               self._queue.qsize() + len(self._in_flight), drain_timeout)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        left = list(self._in_flight.values())
        self._in_flight.clear()
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        for alert in left:
            await self._give_up(alert, "not delivered before the webhook delivery stopped")
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, alert: dict[str, Any]) -> DeliveryResult:
        """Deliver one alert with retries; gives up through ``on_give_up``. Needs :meth:`start`."""
        assert self._session is not None, "start() the delivery first"
        alert_id = str(alert["alert_id"])
        body = encode_body(alert)
        outcome = AttemptOutcome("retry", "not attempted")
        for attempt in range(1, self.config.max_attempts + 1):
            outcome = await self._attempt(alert_id, body)
            if outcome.status == "delivered":
                self.delivered += 1
                logger.debug("webhook %s delivered on attempt %d (%s)", alert_id, attempt, outcome.reason)
                return DeliveryResult(True, attempt, outcome.reason)
            if outcome.status == "give_up" or attempt == self.config.max_attempts:
                break
            delay = self.backoff(attempt, outcome.retry_after)
            logger.warning("webhook %s to %s: attempt %d/%d failed (%s); retrying in %.2f s", alert_id,
                           self.config.safe_url, attempt, self.config.max_attempts, outcome.reason, delay)
            self.retried += 1
            await asyncio.sleep(delay)
        reason = (outcome.reason if outcome.status == "give_up"
                  else f"gave up after {self.config.max_attempts} attempts: {outcome.reason}")
        await self._give_up(alert, reason)
        return DeliveryResult(False, attempt, reason)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt: ``Retry-After`` (capped) if given, else equal jitter.

        Equal jitter: half of ``min(cap, base * 2 ** (attempt - 1))`` fixed plus up to the other
        half at random, so retries spread out but never come back immediately.
        """
        if retry_after is not None:
            return min(retry_after, self.config.retry_after_cap_seconds)
        ceiling = min(self.config.backoff_cap_seconds, self.config.backoff_base_seconds * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    async def _attempt(self, alert_id: str, body: bytes) -> AttemptOutcome:
        assert self._session is not None
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": alert_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.config.secret, alert_id, timestamp, body),
        }
        try:
            async with self._session.post(self.config.url, data=body, headers=headers, allow_redirects=False) as resp:
                text = (await resp.text(errors="replace")).strip()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.clock())
                return classify(resp.status, text, retry_after)
        except TimeoutError:
            return AttemptOutcome("retry", f"timed out after {self.config.timeout_seconds} s")
        except (aiohttp.ClientError, OSError) as exc:
            return AttemptOutcome("retry", f"{type(exc).__name__}: {exc}")

    async def _run(self, index: int) -> None:
        while True:
            alert = await self._queue.get()
            self._in_flight[index] = alert
            try:
                await self.deliver(alert)
            except asyncio.CancelledError:
                self._queue.task_done()
                raise  # the alert stays in _in_flight: stop() hands it to on_give_up
            except Exception as exc:  # a bug must not kill the task and strand the queue
                logger.exception("webhook %s: delivery failed unexpectedly", alert.get("alert_id"))
                await self._give_up(alert, f"delivery failed: {type(exc).__name__}: {exc}")
            self._in_flight.pop(index, None)
            self._queue.task_done()

    async def _give_up(self, alert: dict[str, Any], reason: str) -> None:
        self.given_up += 1
        logger.error("webhook %s to %s given up: %s", alert.get("alert_id"), self.config.safe_url, reason)
        try:
            await self.on_give_up(alert, reason)
        except Exception:  # the callback is the caller's; its failure must not stop delivery
            logger.exception("webhook %s: on_give_up failed", alert.get("alert_id"))

    def _give_up_later(self, alert: dict[str, Any], reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._give_up(alert, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
