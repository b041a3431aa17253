"""The ``loyalty simulate`` command's work: generate, write the ledger, publish with progress."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from config.settings import Settings
from config.topics import Topics
from ops.simulate.generator import generate
from ops.simulate.ledger import write_ledger
from ops.simulate.outgoing import to_outgoing
from ops.simulate.publisher import PublishReport, publish


def simulate_main(
    settings: Settings,
    customers: int,
    days: float,
    seed: int,
    rate: float | None,
    ledger_path: str | Path | None,
    history_days: float = 0,
    duplicate_rate: float = 0.0,
    malformed_rate: float = 0.0,
    *,
    end_ms: int | None = None,
    stream: TextIO | None = None,
) -> PublishReport:
    """Generate, write the ledger, publish with a progress line on stderr (the CLI's work).

    The window ends now unless ``end_ms`` is given; the currency is ``settings.currency``.
    """
    out = stream or sys.stderr
    end = end_ms if end_ms is not None else int(time.time() * 1000)
    events = generate(customers, days, seed, end, history_days, currency=settings.currency)
    outgoing = to_outgoing(events, seed, duplicate_rate, malformed_rate)
    if ledger_path is not None:
        write_ledger(ledger_path, outgoing, Topics(settings.topic_prefix))
    distinct = len({ev.customer_id for ev in events})
    print(f"{len(events):,} events for {distinct:,} customers, {len(outgoing):,} messages", file=out)

    def show(sent: int, total: int) -> None:
        percent = 100 * sent / total if total else 100
        print(f"\rsent {sent:,}/{total:,} ({percent:.0f}%)", end="", file=out, flush=True)

    report = publish(settings, outgoing, rate, show)
    print(file=out)
    print(report.summary(), file=out)
    return report
