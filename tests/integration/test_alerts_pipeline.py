"""Alerts end to end: the real broker, the worker, chDB and a signed webhook to a loopback receiver."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from domain.records import PurchaseEvent, PurchaseItem
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


def test_gone_quiet_fires_once_without_input_for_the_customer_across_a_restart(kafka_bootstrap, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received, Receiver.rejected = [], []
    settings = isolated_settings(tmp_path, kafka_bootstrap, alert_check_seconds=1.0,
                                 webhook_url=f"http://127.0.0.1:{server.server_port}/alerts",
                                 webhook_secret=SECRET, webhook_backoff_cap_seconds=1.0)
    from ops.admin import create_topics
    from ops.simulate import publish

    create_topics(settings)
    end = int(time.time() * 1000) - 3_600_000
    start = end - 200 * DAY_MS
    quiet = [buy("CQUIET", start + d * DAY_MS, d) for d in range(0, 101, 10)]       # stops at day 100
    regular = [buy("CREGULAR", start + d * DAY_MS, d) for d in range(0, 196, 10)]   # keeps its rhythm
    before = [e for e in quiet + regular if e.occurred_at <= start + 125 * DAY_MS]
    after = [e for e in regular if e.occurred_at > start + 125 * DAY_MS]
    # CQUIET: mean gap 10 days, expected at day 110, tolerance max(3, 2 x 10) days: due at day 130.

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
    delivered = [(wid, body) for wid, body in Receiver.received if body["kind"] == "gone_quiet"]
    assert {wid for wid, _ in delivered} == {quiet_alerts[0]["alert_id"]}
    assert Receiver.rejected == []
    assert not [a for a in alerts if a["customer_id"] == "CREGULAR"]
    assert direct_query(settings, f"SELECT count() FROM {settings.clickhouse_database}.alerts FINAL "
                                  "WHERE customer_id = 'CREGULAR'") == [(0,)]
