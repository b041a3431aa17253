"""The ledger: one JSON line per message sent, enough to recompute the oracle later."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings
from config.topics import Topics
from domain.records import Event, EventKind, event_from_dict, event_to_dict
from ops.simulate.message import Outgoing


@dataclass(frozen=True)
class LedgerEntry:
    """One sent message as recorded in the ledger; ``event`` is None for a malformed payload."""

    kind: EventKind
    topic: str
    note: str
    key: str
    size: int
    event_id: str | None = None
    customer_id: str | None = None
    occurred_at: int | None = None
    event: Event | None = None


def _default_topics() -> Topics:
    # the settings' default prefix, without reading the environment
    return Topics(str(Settings.model_fields["topic_prefix"].default))


def ledger_entries(outgoing: Iterable[Outgoing], topics: Topics | None = None) -> list[LedgerEntry]:
    """The ledger's view of the messages (what :func:`read_ledger` gives back after writing)."""
    topics = topics or _default_topics()
    return [
        LedgerEntry(
            kind=o.topic_kind,
            topic=topics.for_kind(o.topic_kind),
            note=o.note,
            key=o.key.decode("utf-8", "replace"),
            size=len(o.value),
            event_id=o.event.event_id if o.event else None,
            customer_id=o.event.customer_id if o.event else None,
            occurred_at=o.event.occurred_at if o.event else None,
            event=o.event,
        )
        for o in outgoing
    ]


def write_ledger(path: str | Path, outgoing: Iterable[Outgoing], topics: Topics | None = None) -> int:
    """Write one JSON line per message, in sending order; return how many were written.

    Valid events carry their full content, so the ledger alone is enough to compute
    :func:`expected_by_customer` later.
    """
    count = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as fh:
        for entry in ledger_entries(outgoing, topics):
            line: dict[str, Any] = {
                "kind": entry.kind,
                "topic": entry.topic,
                "note": entry.note,
                "key": entry.key,
                "size": entry.size,
                "event_id": entry.event_id,
                "customer_id": entry.customer_id,
                "occurred_at": entry.occurred_at,
                "event": event_to_dict(entry.event) if entry.event else None,
            }
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            count += 1
    return count


def read_ledger(path: str | Path) -> list[LedgerEntry]:
    """The entries of a ledger written by :func:`write_ledger`."""
    entries = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            data = json.loads(line)
            raw = data.pop("event")
            event = event_from_dict(data["kind"], raw) if raw is not None else None
            entries.append(LedgerEntry(event=event, **data))
    return entries
