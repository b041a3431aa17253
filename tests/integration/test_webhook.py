"""Webhook delivery against a real HTTP receiver on loopback that verifies every signature.

No broker needed. The receiver-down test keeps the receiver away for
``LOYALTY_TEST_WEBHOOK_DOWN_SECONDS`` (default 3 s, so the suite stays quick; the issue's
scenario is 30 s: ``LOYALTY_TEST_WEBHOOK_DOWN_SECONDS=30``) with short back-off settings.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from domain.alerts import AlertFacts, alert_to_dict, evaluate
from domain.model import MODEL_VERSION, LoyaltySignal
from domain.relationship import DAY_MS
from ops.ports import free_ports
from sinks.webhook import WebhookConfig, WebhookDelivery, encode_body
from sinks.webhook_verify import WebhookVerificationError, sign, verify

KEY = b"integration-test-key-0123456789ab"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
DOWN_SECONDS = float(os.environ.get("LOYALTY_TEST_WEBHOOK_DOWN_SECONDS", "3"))
T0 = 1_704_067_200_000
CALM = AlertFacts(0, 0, 0, 0, None, 5, 10_000, 0, 20_000, 0)


def _signal(customer: str, day: int, score: float) -> LoyaltySignal:
    at = T0 + day * DAY_MS
    return LoyaltySignal(
        customer_id=customer, as_of=at, model_version=MODEL_VERSION, loyalty_score=score, tier="loyal",
        tier_reason="score 70, mostly buys at full price",
        components={"recency": score, "frequency": 60.0, "monetary": 50.0, "breadth": 50.0,
                    "relationship_quality": 50.0, "price_independence": 90.0, "recognition": 50.0},
        churn_risk=0.3, horizon_days=90, p_alive=0.9, expected_purchases=2.0,
        expected_next_purchase_at=at + 20 * DAY_MS, days_since_last_purchase=0.0, purchase_gap_days=20.0,
        purchase_gap_source="own", purchases=4, last_purchase_at=at, last_purchase_categories=["shoes"],
        last_purchase_skus=["sku-1"], last_purchase_channel="store", last_purchase_location_id="S01",
        favourite_category="shoes", preferred_channel="store", open_issues=0,
        greeting_hint="Welcome back! Last time (today) you bought shoes in store S01.",
    )


def make_alerts(n: int) -> list[dict[str, Any]]:
    """n real score-drop alert datums, one per customer, through the alert rules."""
    out = []
    for i in range(n):
        state = evaluate(_signal(f"cust-{i:03d}", 0, 80.0), CALM, None).state
        (alert,) = evaluate(_signal(f"cust-{i:03d}", 1, 60.0), CALM, state).alerts
        out.append(alert_to_dict(alert))
    return out


class Receiver:
    """A webhook receiver: verifies, deduplicates by webhook-id, can be scripted to fail."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: Counter[str] = Counter()  # verified requests per webhook-id
        self.arrivals: list[float] = []
        self.alerts: dict[str, Any] = {}  # first body per webhook-id (the deduplicated view)
        self.rejected: list[str] = []
        # (status, headers, delay_seconds) for the next requests; then 204
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            alert = verify(self.secret, request.headers, body)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=401, text=str(exc))
        msg_id = request.headers["webhook-id"]
        assert alert["alert_id"] == msg_id
        self.received[msg_id] += 1
        self.arrivals.append(time.monotonic())
        if self.script:
            status, headers, delay = self.script.pop(0)
            await asyncio.sleep(delay)
            if status != 204:
                return web.Response(status=status, headers=headers, text="unknown customer" if status == 400 else "")
        self.alerts.setdefault(msg_id, alert)
        return web.Response(status=204)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


GaveUp = list[tuple[str, str]]


def give_up_recorder() -> tuple[GaveUp, Callable[[dict[str, Any], str], Awaitable[None]]]:
    gave_up: GaveUp = []

    async def on_give_up(alert: dict[str, Any], reason: str) -> None:
        gave_up.append((alert["alert_id"], reason))

    return gave_up, on_give_up


def config(port: int, **overrides: Any) -> WebhookConfig:
    settings: dict[str, Any] = dict(timeout_seconds=2.0, connect_timeout_seconds=1.0, max_attempts=5,
                                    backoff_base_seconds=0.05, backoff_cap_seconds=0.5, concurrency=4)
    settings.update(overrides)
    return WebhookConfig(f"http://127.0.0.1:{port}/hooks?token=url-token-xyz", SECRET, **settings)


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


def test_receiver_down_then_back_gets_every_alert_exactly_once() -> None:
    alerts = make_alerts(25)
    assert len({a["alert_id"] for a in alerts}) == 25

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        # enough attempts to outlast the outage: each retry waits at most the 0.5 s cap
        delivery = WebhookDelivery(config(port, max_attempts=int(DOWN_SECONDS / 0.25) + 20), on_give_up)
        receiver = Receiver(SECRET)
        await delivery.start()
        for alert in alerts:
            assert delivery.submit(alert) is True
        await asyncio.sleep(DOWN_SECONDS)  # nothing listens on the port
        assert delivery.counters["delivered"] == 0 and delivery.retried >= 4
        await receiver.start(port)
        try:
            await wait_for(lambda: len(receiver.alerts) == len(alerts), timeout=30)
            await delivery.stop(drain_timeout=5)
        finally:
            await receiver.stop()
        assert gave_up == []
        assert receiver.received == Counter({a["alert_id"]: 1 for a in alerts})  # each verified once
        assert len(receiver.alerts) == len(alerts)
        assert receiver.alerts == {a["alert_id"]: a for a in alerts}  # bodies intact
        assert receiver.rejected == []
        assert (delivery.delivered, delivery.given_up) == (25, 0)

    asyncio.run(scenario())


def test_a_4xx_gives_up_at_once_with_the_reason() -> None:
    (alert,) = make_alerts(1)

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        receiver = Receiver(SECRET)
        receiver.script = [(400, {}, 0.0)]
        await receiver.start(port)
        delivery = WebhookDelivery(config(port), on_give_up)
        await delivery.start()
        try:
            delivery.submit(alert)
            await wait_for(lambda: bool(gave_up), timeout=10)
            await delivery.stop(drain_timeout=2)
        finally:
            await receiver.stop()
        assert gave_up == [(alert["alert_id"], "HTTP 400: unknown customer")]
        assert receiver.received == Counter({alert["alert_id"]: 1})  # one attempt, no retry
        assert (delivery.delivered, delivery.retried, delivery.given_up) == (0, 0, 1)

    asyncio.run(scenario())


def test_5xx_is_retried_until_the_attempts_run_out() -> None:
    (alert,) = make_alerts(1)

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        receiver = Receiver(SECRET)
        receiver.script = [(500, {}, 0.0)] * 3
        await receiver.start(port)
        delivery = WebhookDelivery(config(port, max_attempts=3), on_give_up)
        await delivery.start()
        try:
            result = await delivery.deliver(alert)
        finally:
            await delivery.stop(drain_timeout=1)
            await receiver.stop()
        assert (result.delivered, result.attempts) == (False, 3)
        assert gave_up == [(alert["alert_id"], "gave up after 3 attempts: HTTP 500")]
        assert receiver.received == Counter({alert["alert_id"]: 3})
        assert (delivery.delivered, delivery.retried, delivery.given_up) == (0, 2, 1)

    asyncio.run(scenario())


def test_retry_after_is_honoured_and_capped() -> None:
    (alert,) = make_alerts(1)

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        receiver = Receiver(SECRET)
        receiver.script = [(429, {"Retry-After": "1"}, 0.0)]
        await receiver.start(port)
        # without Retry-After the back-off would be 2.5-5 s; uncapped Retry-After would be 1 s
        delivery = WebhookDelivery(config(port, backoff_base_seconds=5.0, backoff_cap_seconds=5.0,
                                          retry_after_cap_seconds=0.3), on_give_up)
        await delivery.start()
        try:
            result = await delivery.deliver(alert)
        finally:
            await delivery.stop(drain_timeout=1)
            await receiver.stop()
        assert (result.delivered, result.attempts, result.reason) == (True, 2, "HTTP 204")
        gap = receiver.arrivals[1] - receiver.arrivals[0]
        assert 0.3 <= gap < 0.9, gap
        assert gave_up == [] and (delivery.delivered, delivery.retried) == (1, 1)

    asyncio.run(scenario())


def test_a_timeout_is_retried_and_the_receiver_deduplicates_by_webhook_id() -> None:
    (alert,) = make_alerts(1)

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        receiver = Receiver(SECRET)
        receiver.script = [(204, {}, 1.0)]  # the first answer comes after the client gave up
        await receiver.start(port)
        delivery = WebhookDelivery(config(port, timeout_seconds=0.3), on_give_up)
        await delivery.start()
        try:
            result = await delivery.deliver(alert)
            await asyncio.sleep(1.0)  # let the slow first handler finish
        finally:
            await delivery.stop(drain_timeout=1)
            await receiver.stop()
        assert (result.delivered, result.attempts) == (True, 2)
        # at-least-once: the receiver saw the same webhook-id twice and kept it once
        assert receiver.received == Counter({alert["alert_id"]: 2})
        assert list(receiver.alerts) == [alert["alert_id"]]
        assert gave_up == []

    asyncio.run(scenario())


def test_tampered_requests_are_rejected_by_the_verify_helper() -> None:
    (alert,) = make_alerts(1)
    body = encode_body(alert)

    async def scenario() -> list[int]:
        port = free_ports(1)
        receiver = Receiver(SECRET)
        await receiver.start(port)
        url = f"http://127.0.0.1:{port}/hooks"
        now = int(time.time())
        good = {"webhook-id": alert["alert_id"], "webhook-timestamp": str(now),
                "webhook-signature": sign(SECRET, alert["alert_id"], now, body)}
        tampered_sig = {**good, "webhook-signature": sign(SECRET, alert["alert_id"], now, body + b" ")}
        old = {**good, "webhook-timestamp": str(now - 600),
               "webhook-signature": sign(SECRET, alert["alert_id"], now - 600, body)}
        statuses = []
        try:
            async with aiohttp.ClientSession() as session:
                for headers, data in [(good, body.replace(b'"severity":"warning"', b'"severity":"info"')),
                                      (tampered_sig, body), (old, body), ({}, body), (good, body)]:
                    async with session.post(url, data=data, headers=headers) as resp:
                        statuses.append(resp.status)
        finally:
            await receiver.stop()
        assert receiver.rejected == ["no matching signature", "no matching signature",
                                     "webhook-timestamp is too old",
                                     "missing webhook-id, webhook-timestamp or webhook-signature header"]
        assert receiver.received == Counter({alert["alert_id"]: 1})
        return statuses

    assert asyncio.run(scenario()) == [401, 401, 401, 401, 204]


def test_undelivered_alerts_go_to_on_give_up_on_stop_and_when_the_queue_is_full() -> None:
    alerts = make_alerts(4)

    async def scenario() -> None:
        port = free_ports(1)  # nothing listens
        gave_up, on_give_up = give_up_recorder()
        delivery = WebhookDelivery(config(port, max_attempts=1000, queue_size=2, concurrency=1), on_give_up)
        await delivery.start()
        results = [delivery.submit(a) for a in alerts]  # no await in between: the queue holds 2
        assert results == [True, True, False, False]
        await asyncio.sleep(0.3)
        await delivery.stop(drain_timeout=0.2)
        reasons = dict(gave_up)
        assert len(gave_up) == 4 and set(reasons) == {a["alert_id"] for a in alerts}
        assert [reasons[a["alert_id"]] for a in alerts] == [
            "not delivered before the webhook delivery stopped",
            "not delivered before the webhook delivery stopped",
            "webhook queue full (2 alerts pending)",
            "webhook queue full (2 alerts pending)",
        ]
        assert (delivery.delivered, delivery.given_up) == (0, 4)
        assert delivery.submit(alerts[0]) is False  # stopped: refused, and handed over too
        await asyncio.sleep(0.05)
        assert gave_up[-1] == (alerts[0]["alert_id"], "webhook delivery is not running")

    asyncio.run(scenario())


def test_the_secret_never_reaches_the_logs(caplog: Any) -> None:
    alerts = make_alerts(3)

    async def scenario() -> None:
        port = free_ports(1)
        gave_up, on_give_up = give_up_recorder()
        receiver = Receiver(SECRET)
        receiver.script = [(503, {}, 0.0), (400, {}, 0.0)]
        await receiver.start(port)
        delivery = WebhookDelivery(config(port, concurrency=1), on_give_up)
        await delivery.start()
        try:
            for alert in alerts:
                delivery.submit(alert)
            await wait_for(lambda: delivery.delivered + delivery.given_up == 3, timeout=10)
            await delivery.stop(drain_timeout=1)
        finally:
            await receiver.stop()
        logging.getLogger("sinks.webhook").info("config in use: %s", delivery.config)

    caplog.set_level(logging.DEBUG, logger="sinks")
    asyncio.run(scenario())
    text = caplog.text
    # the logs did talk about the deliveries: retry, give-up, delivered
    assert f"webhook {alerts[0]['alert_id']}" in text and "given up: HTTP 400: unknown customer" in text
    assert "retrying in" in text and "delivered on attempt" in text
    for secret_form in (SECRET, SECRET.removeprefix("whsec_"), KEY.decode(), "url-token-xyz"):
        assert secret_form not in text
    assert "secret='***'" in text
