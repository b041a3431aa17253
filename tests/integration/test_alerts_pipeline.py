"""Alerts end to end: the real broker, the worker, chDB and a signed webhook to a loopback receiver;
a backfill of old history raises historical alerts that are stored flagged and never POSTed."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from typing import Any

import pytest

from domain.records import CallEvent, PurchaseEvent, PurchaseItem
from domain.relationship import DAY_MS
from ops.simulate import to_outgoing
from schemas import codec
from sinks.webhook_verify import WebhookVerificationError, verify
from tests.harness import WorkerProcess, direct_query, isolated_settings, read_topic, wait_until

pytestmark = pytest.mark.kafka

SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTAxMjM0NTY3"


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []
    rejected: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            verify(SECRET, {k.lower(): v for k, v in self.headers.items()}, body)
        except WebhookVerificationError as exc:
            Receiver.rejected.append(str(exc))
            self.send_response(400)
            self.end_headers()
            return
        Receiver.received.append((self.headers["webhook-id"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def buy(customer: str, at: int, n: int) -> PurchaseEvent:
    return PurchaseEvent(f"{customer}-{n}", customer, at, "store", f"o-{customer}-{n}", 4_000, "EUR",
                         items=(PurchaseItem("sku-7", "shoes", 1, 4_000),), location_id="S01")


def receiver_and_settings(kafka_bootstrap: str, tmp_path: Any) -> tuple[http.server.ThreadingHTTPServer, Any]:
    """A webhook receiver on a free port (its records emptied) and settings that POST alerts to it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received, Receiver.rejected = [], []
    settings = isolated_settings(tmp_path, kafka_bootstrap, alert_check_seconds=1.0,
                                 webhook_url=f"http://127.0.0.1:{server.server_port}/alerts",
                                 webhook_secret=SECRET, webhook_backoff_cap_seconds=1.0)
    return server, settings


def test_gone_quiet_fires_once_without_input_for_the_customer_across_a_restart(kafka_bootstrap, tmp_path):
    server, settings = receiver_and_settings(kafka_bootstrap, tmp_path)
    from ops.admin import create_topics
    from ops.simulate import publish

    create_topics(settings)
    began = int(time.time() * 1000)
    # Day 130 is a day before now, so the alert is live (within the 48-hour window) and is POSTed.
    start = began - 131 * DAY_MS
    quiet = [buy("CQUIET", start + d * DAY_MS, d) for d in range(0, 101, 10)]       # stops at day 100
    regular = [buy("CREGULAR", start + d * DAY_MS, d) for d in range(0, 131, 10)]   # keeps its rhythm
    before = [e for e in quiet + regular if e.occurred_at <= start + 125 * DAY_MS]
    after = [e for e in regular if e.occurred_at > start + 125 * DAY_MS]
    # CQUIET: mean gap 10 days, expected at day 110, tolerance max(3, 2 x 10) days: due at day 130,
    # which CREGULAR's purchase on day 130 brings stream time to.

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        publish(settings, to_outgoing(sorted(before, key=lambda e: e.occurred_at), seed=1))
        db = settings.clickhouse_database
        wait_until(lambda: int(worker.scalar(f"SELECT sum(events) FROM {db}.relationships FINAL")) == len(before),
                   timeout=120, what="history folded")
        time.sleep(3)  # several timer ticks: stream time (day 120) is before the due time, nothing fires
        assert int(worker.scalar(f"SELECT count() FROM {db}.alerts FINAL WHERE kind = 'gone_quiet'")) == 0
        worker.stop()

        worker.start()  # the due time must survive the restart (due_times table + changelog)
        publish(settings, to_outgoing(after, seed=2))  # only the other customer's events move time on
        wait_until(lambda: int(worker.scalar(
            f"SELECT count() FROM {db}.alerts FINAL WHERE kind = 'gone_quiet'")) >= 1, timeout=120,
            what="gone_quiet alert")
        wait_until(lambda: any(body["kind"] == "gone_quiet" for _, body in Receiver.received), timeout=60,
                   what="webhook delivery")
        time.sleep(3)  # more ticks: no repeat
        rows = worker.query(f"SELECT customer_id, kind, toUnixTimestamp64Milli(raised_at) FROM {db}.alerts FINAL "
                            "WHERE kind = 'gone_quiet'")
        worker.stop()
    finally:
        worker.kill()
        server.shutdown()

    assert rows == [["CQUIET", "gone_quiet", start + 130 * DAY_MS]]
    alerts = [codec("alert").decode(v) for _, v in read_topic(settings, settings.topic_prefix + "alerts")]
    quiet_alerts = [a for a in alerts if a["kind"] == "gone_quiet"]
    assert len({a["alert_id"] for a in quiet_alerts}) == 1 and quiet_alerts[0]["customer_id"] == "CQUIET"
    assert quiet_alerts[0]["context"]["last_purchase_at"] == start + 100 * DAY_MS
    assert quiet_alerts[0]["historical"] is False
    assert began <= quiet_alerts[0]["processed_at"] <= int(time.time() * 1000)
    delivered = [(wid, body) for wid, body in Receiver.received if body["kind"] == "gone_quiet"]
    assert {wid for wid, _ in delivered} == {quiet_alerts[0]["alert_id"]}
    assert Receiver.rejected == []
    assert not [a for a in alerts if a["customer_id"] == "CREGULAR"]
    assert direct_query(settings, f"SELECT count() FROM {settings.clickhouse_database}.alerts FINAL "
                                  "WHERE customer_id = 'CREGULAR'") == [(0,)]


def cancel_call(customer: str, at: int) -> CallEvent:
    return CallEvent(f"{customer}-cancel", customer, at, "inbound", "cancel_request", 30, 300, False, "agent-1")


def expected_id(customer: str, kind: str, raised_at: int) -> str:
    """The documented alert id: uuid5 of customer|kind|raised_at in the project's namespace."""
    return str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty-stream:alert"), f"{customer}|{kind}|{raised_at}"))


def test_a_backfill_of_old_history_is_stored_as_historical_and_never_posted(kafka_bootstrap, tmp_path):
    server, settings = receiver_and_settings(kafka_bootstrap, tmp_path)
    from ops.admin import create_topics
    from ops.simulate import publish

    create_topics(settings)
    began = int(time.time() * 1000)
    year_ago = began - 365 * DAY_MS
    # A year of history published at once, as `loyalty demo --history-days 365` does, plus one
    # customer whose trouble is an hour old:
    #  * HQUIET bought every 10 days from a year ago to day 100, then stopped: gone_quiet due on
    #    day 130 (expected day 110, tolerance max(3, 2 x 10) days), 235 days ago; the live
    #    customer's call brings stream time past it. Scored as of day 130 (30 days quiet, three
    #    usual gaps) the tier is at_risk, down from loyal: a tier_downgrade at the same time;
    #  * H30, H100, H200 each asked to cancel 30, 100 and 200 days ago, LNOW an hour ago: a critical
    #    relationship_strain at the call (nothing else: one call, no purchases, no ranked tier).
    history = [buy("HQUIET", year_ago + d * DAY_MS, d) for d in range(0, 101, 10)]
    calls = {"H30": began - 30 * DAY_MS, "H100": began - 100 * DAY_MS, "H200": began - 200 * DAY_MS,
             "LNOW": began - 3_600_000}
    events = history + [cancel_call(c, at) for c, at in calls.items()]
    expected = {expected_id("HQUIET", kind, year_ago + 130 * DAY_MS): ("HQUIET", kind, True)
                for kind in ("gone_quiet", "tier_downgrade")}
    expected |= {expected_id(c, "relationship_strain", at): (c, "relationship_strain", c != "LNOW")
                 for c, at in calls.items()}
    live_id = expected_id("LNOW", "relationship_strain", calls["LNOW"])

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    db = settings.clickhouse_database
    try:
        worker.start()
        publish(settings, to_outgoing(sorted(events, key=lambda e: e.occurred_at), seed=3))
        wait_until(lambda: int(worker.scalar(f"SELECT count() FROM {db}.alerts FINAL")) >= len(expected),
                   timeout=120, what="the six alerts stored")
        # the webhook consumer has looked at every alert on the topic: one POSTed, five skipped
        wait_until(lambda: worker.get("/status")["webhook"].get("skipped_historical", 0)
                   + worker.get("/status")["webhook"].get("handled", 0) >= len(expected), timeout=60,
                   what="the webhook consumer through the six alerts")
        status = worker.get("/status")["webhook"]
        stored = worker.query(f"SELECT alert_id, customer_id, kind, historical FROM {db}.alerts FINAL ORDER BY alert_id")
        by_origin = worker.query(f"SELECT origin, sum(alerts) FROM {db}.v_alerts_daily_by_origin "
                                 "GROUP BY origin ORDER BY origin")
        live = worker.query(f"SELECT alert_id, customer_id FROM {db}.v_alerts_live")
        worker.stop()
    finally:
        worker.kill()
        server.shutdown()

    assert {r[0]: (r[1], r[2], r[3]) for r in stored} == expected
    assert len(stored) == len(expected)
    assert by_origin == [["historical", 5], ["live", 1]]
    assert live == [[live_id, "LNOW"]]
    assert (status["skipped_historical"], status["handled"], status["delivered"]) == (5, 1, 1)
    on_topic = [codec("alert").decode(v) for _, v in read_topic(settings, settings.topic_prefix + "alerts")]
    assert {a["alert_id"]: (a["customer_id"], a["kind"], a["historical"]) for a in on_topic} == expected
    assert all(began <= a["processed_at"] <= int(time.time() * 1000) for a in on_topic)
    # the receiver got the live alert, signed, exactly as before, and nothing about the past
    assert [wid for wid, _ in Receiver.received] == [live_id]
    body = Receiver.received[0][1]
    assert (body["customer_id"], body["kind"], body["severity"], body["raised_at"], body["historical"]) == (
        "LNOW", "relationship_strain", "critical", calls["LNOW"], False)
    assert Receiver.rejected == []
