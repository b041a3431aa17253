"""Kafka over SASL_SSL with SCRAM-SHA-512 and a CA file: the worker and the clients, end to end."""

from __future__ import annotations

import time

import pytest

from config.settings import Settings
from ops import broker
from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from tests.harness import WorkerProcess, free_port, isolated_settings, wait_until

pytestmark = pytest.mark.kafka


def _free_block(n: int) -> int:
    import socket

    while True:
        port = free_port()
        try:
            socks = []
            for p in range(port, port + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def test_worker_over_sasl_ssl_scram(tmp_path):
    port = _free_block(3)
    local = Settings(data_dir=tmp_path / "secure-broker", local_kafka_port=port, local_kafka_secure=True,
                     kafka_sasl_username="loyalty", kafka_sasl_password="s3cret-pass")
    try:
        broker.start(local)
    except broker.BrokerError as exc:
        import os

        if os.environ.get("CI"):
            raise
        pytest.skip(f"no local broker: {exc}")
    try:
        settings = isolated_settings(
            tmp_path, f"127.0.0.1:{port + 2}", kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="loyalty",
            kafka_sasl_password="s3cret-pass", kafka_ssl_cafile=broker.certificate_authority(local))
        from ops.admin import create_topics

        created = create_topics(settings)
        assert settings.topic_prefix + "purchases" in created
        events = generate(customers=25, days=1, seed=4, end_ms=int(time.time() * 1000) - 60_000)
        worker = WorkerProcess(settings, tmp_path / "worker.log")
        try:
            worker.start()
            publish(settings, to_outgoing(events, seed=4))
            db = settings.clickhouse_database
            wait_until(lambda: int(worker.scalar(f"SELECT sum(events) FROM {db}.relationships FINAL")) == len(events),
                       timeout=120, what="events over SASL_SSL")
            assert int(worker.scalar(f"SELECT count() FROM {db}.relationships FINAL")) == len(
                expected_by_customer(events))
        finally:
            worker.stop()
        assert "s3cret-pass" not in (tmp_path / "worker.log").read_text(errors="replace")

        # A wrong password is refused by the broker.
        from kafka.errors import KafkaError
        from pydantic import SecretStr

        wrong = settings.model_copy(update={"kafka_sasl_password": SecretStr("not-it")})
        with pytest.raises(KafkaError):
            create_topics(wrong)
    finally:
        broker.stop(local)
