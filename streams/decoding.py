"""Input records to events: decode, pseudonymise contact details, validate.

The state worker and the ClickHouse sink both read the input topics through one
:class:`EventDecoder`, so the sink stores exactly the events the state worker accepted. A record
that can never become an event comes back as a :class:`DeadLetter` with its reason.
"""

from __future__ import annotations

from config.settings import Settings
from config.topics import Topics
from domain.pseudonymise import pseudonymise_datum
from domain.records import Event, EventKind, event_from_dict
from domain.validation import Limits, ValidationError, validate
from schemas import DecodeError, UnknownSchemaError, codec
from streams.messages import DeadLetter, Message


class EventDecoder:
    """Decodes records of the three input topics (the kind comes from the topic)."""

    def __init__(self, settings: Settings, pseudonymisation_key: bytes) -> None:
        topics = Topics(settings.topic_prefix)
        self.kinds: dict[str, EventKind] = {topics.purchases: "purchase", topics.calls: "call",
                                            topics.visits: "visit"}
        self.codecs = {kind: codec(kind) for kind in self.kinds.values()}
        self.key = pseudonymisation_key
        self.max_event_bytes = settings.max_event_bytes
        self.limits = Limits(currency=settings.currency, future_skew_ms=settings.future_skew_seconds * 1000,
                             earliest_ms=settings.earliest_event_ms)

    def decode(self, message: Message, now: int) -> Event | DeadLetter:
        """The event of ``message`` (a record of an input topic), or why it can never be one.

        "Too far in the future" is judged against the record's Kafka timestamp (when it was
        produced), not against the reader's clock: the worker, the sink and a replay, reading the
        same record at different times, then accept or refuse it alike. ``now`` stamps the dead
        letter and stands in for a record without a timestamp.
        """
        kind = self.kinds[message.topic]
        if not message.value:
            return DeadLetter("decode", message, "EmptyValue", "the record has no value (null or empty)", now,
                              payload=b"")
        if len(message.value) > self.max_event_bytes:
            return DeadLetter("decode", message, "TooLarge",
                              f"{len(message.value)} bytes is over the {self.max_event_bytes}-byte cap", now,
                              payload=b"")
        avro = self.codecs[kind]
        try:
            datum = pseudonymise_datum(self.key, kind, avro.decode(message.value))
        except UnknownSchemaError as exc:
            return DeadLetter("decode", message, "UnknownSchema", str(exc), now)
        except DecodeError as exc:
            return DeadLetter("decode", message, "DecodeError", str(exc), now)
        try:
            event = event_from_dict(kind, datum)
        except (TypeError, ValueError) as exc:
            return DeadLetter("decode", message, "DecodeError", f"{kind}: {exc}", now)
        if message.key is not None and message.key != event.customer_id.encode():
            return DeadLetter("validate", message, "KeyMismatch",
                              "message key is not the event's customer_id (it would break per-customer partitioning)",
                              now, payload=avro.encode(datum))
        try:
            validate(event, self.limits, message.timestamp_ms if message.timestamp_ms > 0 else now)
        except ValidationError as exc:
            return DeadLetter("validate", message, "ValidationError", str(exc), now, payload=avro.encode(datum))
        return event
