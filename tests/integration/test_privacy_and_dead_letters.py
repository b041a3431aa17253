"""Contact details never reach ClickHouse, logs or the dead-letter topic in clear; dead letters
can be re-published once their cause is fixed."""

from __future__ import annotations

import time

import pytest

from domain.pseudonymise import pseudonym
from domain.records import CallEvent, PurchaseEvent, PurchaseItem
from ops.deadletters import read_dead_letters, republish
from ops.simulate import Outgoing, encode_event, publish
from tests.harness import WorkerProcess, direct_query, isolated_settings, wait_until

pytestmark = pytest.mark.kafka

KEY = "test-pseudonymisation-key"
CLEAR = ["alice@example.com", "7946", "bob@example.org", "carol@example.net", "5550100"]


def test_contact_details_are_pseudonymised_everywhere_and_dead_letters_republish(kafka_bootstrap, tmp_path):
    from ops.admin import create_topics

    settings = isolated_settings(tmp_path, kafka_bootstrap, pseudonymisation_key=KEY)
    create_topics(settings)
    now = int(time.time() * 1000) - 60_000
    item = (PurchaseItem("sku-1", "shoes", 1, 2_000),)
    good = PurchaseEvent("p-1", "C1", now, "web", "o-1", 2_000, "EUR", items=item,
                         contact_email="Alice@Example.com", contact_phone="+44 20 7946 0958")
    call = CallEvent("c-1", "C1", now + 1, "inbound", "billing", 5, 60, True, "A1", caller_phone="+1 202 555 0100")
    dollars = PurchaseEvent("p-2", "C2", now + 2, "web", "o-2", 1_500, "USD", items=item,
                            contact_email="bob@example.org")
    junk = b"\x00garbage from carol@example.net"
    outgoing = [
        Outgoing("purchase", b"C1", encode_event(good), good, "event"),
        Outgoing("call", b"C1", encode_event(call), call, "event"),
        Outgoing("purchase", b"C2", encode_event(dollars), dollars, "event"),
        Outgoing("purchase", b"C3", junk, None, "random_bytes"),
    ]
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    db = settings.clickhouse_database
    try:
        worker.start()
        publish(settings, outgoing)
        wait_until(lambda: int(worker.scalar(f"SELECT count() FROM {db}.dead_letters FINAL")) == 2
                   and int(worker.scalar(f"SELECT count() FROM {db}.calls FINAL")) == 1, timeout=120,
                   what="events and dead letters landed")
        worker.stop()

        key = KEY.encode()
        assert direct_query(settings, f"SELECT contact_email, contact_phone FROM {db}.purchases FINAL") == [
            (pseudonym(key, "email", "alice@example.com"), pseudonym(key, "phone", "+442079460958"))]
        assert direct_query(settings, f"SELECT caller_phone FROM {db}.calls FINAL") == [
            (pseudonym(key, "phone", "+12025550100"),)]
        everything = "".join(
            str(direct_query(settings, f"SELECT * FROM {db}.{table} FINAL"))
            for table in ("purchases", "calls", "visits", "relationships", "signals_current", "signals_history",
                          "tier_days", "dead_letters", "alerts"))
        letters = read_dead_letters(settings)
        assert sorted(letter["error_type"] for letter in letters) == ["DecodeError", "ValidationError"]
        on_topic = b"".join(letter["payload"] + letter["reason"].encode() for letter in letters)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        for clear in CLEAR:
            assert clear not in everything.lower()
            assert clear.encode() not in on_topic.lower()
            assert clear not in log.lower()

        # The cause is fixed (this deployment now reports in USD): re-publish the validation failure.
        fixed = settings.model_copy(update={"currency": "USD"})
        report = republish(fixed, lambda letter: letter["error_type"] == "ValidationError")
        assert (report.read, report.selected, report.republished) == (2, 1, 1)
        restarted = WorkerProcess(fixed, tmp_path / "worker2.log")
        restarted.start()
        try:
            wait_until(lambda: int(restarted.scalar(f"SELECT count() FROM {db}.purchases FINAL")) == 2,
                       timeout=120, what="re-published purchase landed")
            rows = restarted.query(f"SELECT event_id, contact_email FROM {db}.purchases FINAL WHERE customer_id = 'C2'")
        finally:
            restarted.stop()
        assert rows == [["p-2", pseudonym(key, "email", "bob@example.org")]]
    finally:
        worker.kill()
