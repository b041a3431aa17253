"""One message to publish, and the bytes a valid event is sent as."""

from __future__ import annotations

from dataclasses import dataclass

from domain.records import Event, EventKind, event_to_dict
from schemas import codec


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: a valid event (``note`` "event" or "duplicate"), or bad bytes
    (``event`` None, ``note`` one of :data:`ops.simulate.malformed.MALFORMED_NOTES`)."""

    topic_kind: EventKind
    key: bytes
    value: bytes
    event: Event | None
    note: str

    @property
    def valid(self) -> bool:
        return self.event is not None


def encode_event(event: Event) -> bytes:
    """The Kafka message value of an event: Avro single-object encoding of its schema."""
    return codec(event.kind).encode(event_to_dict(event))
