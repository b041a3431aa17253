"""Fault suite fixtures: workers to start, kill and restart, a broker of a test's own, and the figures.

Every test reports one line of figures (see :class:`tests.harness.FaultFigures`) through the
``figures`` fixture. They are collected for the session, printed as a table at the end of the run
(whatever ``-s`` says) and appended as JSON lines to ``var/fault-figures.jsonl``.

The workers leave a dead member's partitions after ``LOYALTY_KAFKA_SESSION_TIMEOUT_SECONDS``
(10 s by default), so several crashes fit the time budget; correctness does not depend on it,
only the recovery time does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from ops import broker
from ops.admin import create_topics
from tests.harness import (
    REPO,
    FaultFigures,
    WorkerProcess,
    another_process,
    delete_topics,
    drop_database,
    free_port_pair,
    isolated_settings,
)

FIGURES = pytest.StashKey[list[FaultFigures]]()
FIGURES_FILE = REPO / "var" / "fault-figures.jsonl"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[FaultFigures], FaultFigures]:
    """Record a test's figures: kept for the summary table and appended to var/fault-figures.jsonl."""

    def record(row: FaultFigures) -> FaultFigures:
        request.config.stash.setdefault(FIGURES, []).append(row)
        FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nodeid": request.node.nodeid,
                **row.as_dict()}
        with FIGURES_FILE.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        return row

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(FIGURES, [])
    if not rows:
        return
    terminalreporter.section("fault figures (also appended to var/fault-figures.jsonl)")
    cells = [list(FaultFigures.COLUMNS)] + [
        ["" if v is None else str(v) for v in (getattr(r, c) for c in FaultFigures.COLUMNS)] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(FaultFigures.COLUMNS))]
    for n, row in enumerate(cells):
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))


@pytest.fixture
def make_worker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of isolated workers: ``make_worker(name, bootstrap=None, **setting_overrides)``.

    Each has its own topics, consumer group, data directory and database; the topics are created
    here, and everything is stopped and cleaned up after the test.
    """
    made: list[WorkerProcess] = []

    def make(name: str = "w", bootstrap: str | None = None, role: str = "all", like: WorkerProcess | None = None,
             **overrides: Any) -> WorkerProcess:
        """A new deployment, or with ``like`` one more process of that one's deployment."""
        if like is None:
            settings = isolated_settings(tmp_path / name, bootstrap or kafka_bootstrap, **overrides)
            create_topics(settings)
        else:
            settings = another_process(like.settings, tmp_path / name / "data")
        process = WorkerProcess(settings, tmp_path / name / "worker.log", role=role)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()
    for process in made:
        delete_topics(process.settings)
        drop_database(process.settings)


@pytest.fixture
def own_broker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Settings]:
    """A local broker of this test's own (own data dir and ports), for tests that stop or kill it.

    Depends on ``kafka_bootstrap`` only to skip where no broker can run. Killed at the end.
    """
    port = free_port_pair()
    settings = Settings(data_dir=tmp_path / "broker", local_kafka_port=port)
    try:
        broker.start(settings)
    except broker.BrokerError as exc:
        pytest.fail(f"could not start the test's own broker on port {port}: {exc}")
    yield settings
    broker.stop(settings, force=True)
