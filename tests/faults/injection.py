"""Fault injection for the fault-test suite: switch files that make ClickHouse writes fail.

A worker uses it when ``LOYALTY_SINK_FACTORY=tests.faults.injection:make_sink`` (the worker runs
from the repository); the switches live in ``<data_dir>/faults``. While the file
``clickhouse_down`` exists there every write fails before reaching ClickHouse, as
when the server is away. When ``clickhouse_ack_lost`` exists, the next write reaches ClickHouse
and then reports an error, as when an acknowledgement is lost on the way back; the file is
removed so it happens once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clickhouse_connect.driver.exceptions import OperationalError

from config.settings import Settings
from sinks.clickhouse import ClickHouseSink, SinkBatch

logger = logging.getLogger(__name__)


class FaultInjectingSink(ClickHouseSink):
    def __init__(self, dsn: str, database: str, switches: Path, cluster: str | None = None) -> None:
        super().__init__(dsn, database, cluster)
        self.switches = switches
        self.injected = 0

    def write(self, batch: SinkBatch) -> int:
        if (self.switches / "clickhouse_down").exists():
            self.injected += 1
            raise OperationalError("injected fault: ClickHouse is down")
        written = super().write(batch)
        ack_lost = self.switches / "clickhouse_ack_lost"
        if ack_lost.exists():
            ack_lost.unlink(missing_ok=True)
            self.injected += 1
            logger.warning("injected fault: %d rows written, acknowledgement lost", written)
            raise OperationalError("injected fault: acknowledgement lost after a successful insert")
        return written


def switches_of(settings: Settings) -> Path:
    return settings.data_dir / "faults"


def make_sink(settings: Settings) -> ClickHouseSink:
    """The sink factory of the fault tests (``LOYALTY_SINK_FACTORY``)."""
    switches = switches_of(settings)
    switches.mkdir(parents=True, exist_ok=True)
    logger.warning("fault injection is enabled (switches in %s): for tests only", switches)
    return FaultInjectingSink(settings.clickhouse_url, settings.clickhouse_database, switches, settings.clickhouse_cluster)
