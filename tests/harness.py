"""Test harness: the real local broker, a worker in a subprocess, and readers of what it wrote.

Every test gets its own topic prefix, consumer group, state directory and ClickHouse database,
so tests never see each other's data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from loyalty_stream.schemas import codec
from loyalty_stream.settings import Settings
from loyalty_stream.sinks.clickhouse import ClickHouseSink

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_settings(tmp_path: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings isolated to one test."""
    tag = uuid.uuid4().hex[:10]
    clickhouse_url = os.environ.get("CLICKHOUSE_URL")
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"t{tag}.",
        "app_id": f"test-{tag}",
        "data_dir": tmp_path / "data",
        "web_port": free_port(),
        "partitions": 3,
        "batch_max_seconds": 0.2,
        "clickhouse_dsn": clickhouse_url or f"chdb://{tmp_path / 'data' / 'clickhouse'}",
        "clickhouse_database": f"test_{tag}" if clickhouse_url else "loyalty",
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"LOYALTY_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``loyalty worker`` as a child process that tests can start, stop and kill."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loyalty_stream.cli", "worker"],
            env=settings_env(self.settings), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.get("/health", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"worker not healthy after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def get(self, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.settings.web_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"worker answered {exc.code} to {path}: {exc.read().decode(errors='replace')}") from exc

    def query(self, sql: str) -> list[list[Any]]:
        return self.get("/clickhouse/query", {"sql": sql})["rows"]

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = "condition") -> float:
    """Poll until ``predicate`` holds; return the seconds it took."""
    start = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except (urllib.error.URLError, OSError, KeyError, IndexError) as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last_error})")


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on a topic, from the beginning to its current end."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        consumer.close()


def changelog_states(settings: Settings) -> dict[str, dict[str, Any]]:
    """The relationships table as its changelog topic holds it: latest value per key, decoded."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in read_topic(settings, f"{settings.app_id}-relationships-changelog"):
        if key is not None:
            latest[key] = value
    state_codec = codec("relationship_state")
    return {k.decode(): state_codec.decode(v) for k, v in latest.items() if v is not None}


def direct_query(settings: Settings, sql: str) -> list[tuple]:
    """Query ClickHouse directly (only when no worker holds the embedded engine)."""
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        return sink.query(sql)[1]
    finally:
        sink.close()


def drop_database(settings: Settings) -> None:
    if settings.embedded_clickhouse:
        return  # the directory goes with tmp_path
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        sink.client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    finally:
        sink.close()


def delete_topics(settings: Settings) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**settings.kafka_python_config(), client_id="test-cleanup")
    try:
        ours = [t for t in admin.list_topics()
                if t.startswith(settings.topic_prefix) or t.startswith(settings.app_id)]
        if ours:
            admin.delete_topics(ours)
    except Exception:  # noqa: BLE001 - best-effort cleanup; the broker's data dir is scratch
        pass
    finally:
        admin.close()
