"""Raw Kafka records as the framework-free :class:`Message`, and :class:`DeadLetter`, what becomes
of a record that can never be processed (with its topic, partition, offset and reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain.pseudonymise import scrub_bytes, scrub_text


@dataclass(frozen=True, slots=True)
class Message:
    """One raw Kafka record, plus the framework's handle for it (a Faust event, or None)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    handle: Any = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class DeadLetter:
    stage: str
    message: Message
    error_type: str
    reason: str
    failed_at: int
    # What is kept of the record: the pseudonymised re-encoding when it could be decoded, else
    # the original bytes with anything shaped like a contact detail masked.
    payload: bytes | None = None

    def envelope(self, payload_cap: int) -> dict[str, Any]:
        """The ``schemas/dead_letter.avsc`` datum, payload capped at ``payload_cap`` bytes."""
        payload = self.payload if self.payload is not None else scrub_bytes(self.message.value)
        reason = scrub_text(self.reason)
        if len(payload) > payload_cap:
            reason = f"{reason} (payload cut to {payload_cap} of {len(payload)} bytes)"
            payload = payload[:payload_cap]
        return {
            "stage": self.stage,
            "source_topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "error_type": self.error_type,
            "reason": reason,
            "key": self.message.key,
            "payload": payload,
            "failed_at": self.failed_at,
        }
