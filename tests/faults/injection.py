"""Fault injection for the fault-test suite: switch files that make ClickHouse writes fail, and
a state pipeline that stops a batch between two steps of its written order.

A worker uses the sink when ``LOYALTY_SINK_FACTORY=tests.faults.injection:make_sink`` (the worker
runs from the repository); the switches live in ``<data_dir>/faults``. While the file
``clickhouse_down`` exists there every write fails before reaching ClickHouse, as
when the server is away. When ``clickhouse_ack_lost`` exists, the next write reaches ClickHouse
and then reports an error, as when an acknowledgement is lost on the way back; the file is
removed so it happens once.

A state worker uses :class:`PausingPipeline` when
``LOYALTY_PIPELINE_FACTORY=tests.faults.injection:PausingPipeline``. When the switch
``pause_before_changelog`` exists, the next batch that raised alerts stops as its changelog step
begins, i.e. after its alerts were acknowledged (step 3 of ``streams/app.py``) and before the
changelog records that remember them and the batch's offsets (steps 4 and 5). The switch is
removed and ``paused_before_changelog`` written with the batch's alert ids; the batch then waits
for ever, for the test to ``kill -9`` the process.

A state worker uses :class:`HoldingPipeline` when
``LOYALTY_PIPELINE_FACTORY=tests.faults.injection:HoldingPipeline``. When the switch
``hold_before_effects`` exists, the next batch that changed customers is held before its first
effect (folded, nothing sent, its fences not yet confirmed: step 2 of ``streams/app.py``); when
``hold_before_changelog`` exists, it is held as its changelog step begins (fences confirmed, its
signals and alerts acknowledged, nothing of its changelog sent). The switch is removed,
``held_before_changelog`` written with the batch's customer ids, and the batch waits until the
file ``release_changelog`` exists. The test freezes the process there (SIGSTOP) to make a zombie
of it, writes the release file, and resumes it later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from config.settings import Settings
from sinks.clickhouse import ClickHouseSink, SinkBatch
from streams.app import Pipeline
from streams.processor import Effects

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


PAUSE_SWITCH = "pause_before_changelog"
PAUSED_MARKER = "paused_before_changelog"


class PausingPipeline(Pipeline):
    """The standard pipeline, stopping a batch at the start of its changelog step on request."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.switches = switches_of(self.settings)
        self.switches.mkdir(parents=True, exist_ok=True)
        self.batch_alert_ids: list[str] = []
        logger.warning("fault injection is enabled (switches in %s): for tests only", self.switches)

    async def produce_outputs(self, effects: Effects) -> None:
        self.batch_alert_ids = sorted(str(alert["alert_id"]) for _, alert in effects.alerts)
        await super().produce_outputs(effects)

    async def produce_changelog(self) -> bool:
        switch = self.switches / PAUSE_SWITCH
        if self.batch_alert_ids and switch.exists():
            switch.unlink()
            (self.switches / PAUSED_MARKER).write_text(json.dumps(self.batch_alert_ids))
            logger.warning("injected pause before the changelog step: %d alerts acknowledged, waiting to be killed",
                           len(self.batch_alert_ids))
            await asyncio.Event().wait()
        return await super().produce_changelog()


HOLD_SWITCH = "hold_before_changelog"
HOLD_BEFORE_EFFECTS_SWITCH = "hold_before_effects"
HELD_MARKER = "held_before_changelog"
RELEASE_FILE = "release_changelog"


class HoldingPipeline(Pipeline):
    """The standard pipeline, holding one batch before its effects or at the start of its changelog
    step until released."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.switches = switches_of(self.settings)
        self.switches.mkdir(parents=True, exist_ok=True)
        self.batch_customers: list[str] = []
        self.holding = False
        logger.warning("fault injection is enabled (switches in %s): for tests only", self.switches)

    async def produce(self, effects: Effects, epoch: tuple[int, int] | None) -> Any:
        self.batch_customers = sorted({key.decode() for key, _ in effects.signals})
        await self._hold_on(HOLD_BEFORE_EFFECTS_SWITCH)
        return await super().produce(effects, epoch)

    async def produce_changelog(self, *args: Any, **kwargs: Any) -> Any:
        await self._hold_on(HOLD_SWITCH)
        return await super().produce_changelog(*args, **kwargs)

    async def _hold_on(self, name: str) -> None:
        switch = self.switches / name
        if not self.holding and self.batch_customers and switch.exists():
            switch.unlink()
            self.holding = True
            (self.switches / HELD_MARKER).write_text(json.dumps(self.batch_customers))
            logger.warning("injected hold (%s): %d customers", name, len(self.batch_customers))
        # Every step of the held batch waits (a batch may send it in parts).
        while self.holding and not (self.switches / RELEASE_FILE).exists():
            await asyncio.sleep(0.05)
