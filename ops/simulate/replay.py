"""The ``loyalty replay`` / ``loyalty backtest`` input format: one JSON line per event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.records import Event, event_to_dict


def replay_line(event: Event) -> str:
    """One line of the ``loyalty replay`` / ``loyalty backtest`` input format for an event."""
    data: dict[str, Any] = {"type": event.kind, **event_to_dict(event)}
    data["occurred_at"] = (datetime.fromtimestamp(event.occurred_at / 1000, tz=UTC)
                           .isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return json.dumps(data, separators=(",", ":"))


def write_replay_file(path: str | Path, events: Iterable[Event]) -> int:
    """Write events as JSON lines for ``loyalty replay``; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(replay_line(event) + "\n")
            n += 1
    return n
