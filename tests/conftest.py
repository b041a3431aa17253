"""Shared fixtures: the real local Kafka broker (session) and per-test isolated settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from ops import broker
from tests.harness import REPO, WorkerProcess, delete_topics, drop_database, isolated_settings


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker: the configured one, or the project's local one."""
    configured = os.environ.get("LOYALTY_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    settings = Settings(
        data_dir=REPO / "var" / "test-broker",
        local_kafka_port=int(os.environ.get("LOYALTY_TEST_KAFKA_PORT", "19192")),
    )
    elsewhere = Settings(kafka_bootstrap=settings.bootstrap)
    if broker.port_open("127.0.0.1", settings.local_kafka_port) and broker.broker_answers(elsewhere):
        # A broker another checkout started: usable as it is, since every test has its own topics.
        yield settings.bootstrap
        return
    was_running = broker.status(settings).running
    try:
        broker.start(settings)
    except broker.BrokerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the local Kafka broker could not be started in CI: {exc}")
        pytest.skip(f"no Kafka broker: {exc}")
    yield settings.bootstrap
    if not was_running:
        broker.stop(settings)


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Settings]:
    s = isolated_settings(tmp_path, kafka_bootstrap)
    yield s
    delete_topics(s)
    drop_database(s)


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker process for this test's settings (started by the test, stopped here)."""
    from ops.admin import create_topics

    create_topics(settings)
    process = WorkerProcess(settings, tmp_path / "worker.log")
    yield process
    process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of every process log it wrote under its ``tmp_path`` (the
    workers' and the sink's), so a failure in CI can be read without the machine it ran on."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when != "call" or not report.failed or not isinstance(tmp_path, Path):
        return
    for log in sorted(tmp_path.rglob("*.log"))[:4]:
        text = log.read_text(errors="replace")
        report.sections.append((f"end of {log.relative_to(tmp_path)}", text[-6000:]))
