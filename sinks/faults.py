"""Fault injection for the fault-test suite: switch files that make ClickHouse writes fail.

Enabled only when ``LOYALTY_FAULT_INJECTION_DIR`` is set (never in production). While the file
``clickhouse_down`` exists in that directory every write fails before reaching ClickHouse, as
when the server is away. When ``clickhouse_ack_lost`` exists, the next write reaches ClickHouse
and then reports an error, as when an acknowledgement is lost on the way back; the file is
removed so it happens once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clickhouse_connect.driver.exceptions import OperationalError

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


def make_sink(dsn: str, database: str, fault_injection_dir: Path | None, cluster: str | None = None) -> ClickHouseSink:
    if fault_injection_dir is None:
        return ClickHouseSink(dsn, database, cluster)
    logger.warning("fault injection is enabled (switches in %s): for tests only", fault_injection_dir)
    return FaultInjectingSink(dsn, database, fault_injection_dir, cluster)
