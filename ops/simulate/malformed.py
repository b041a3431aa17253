"""Payloads sent to an event topic that decoding must refuse, each checked rather than assumed."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Literal

from domain.records import Event, EventKind, event_to_dict
from ops.simulate.message import Outgoing, encode_event
from ops.simulate.population import customer_id
from schemas import HEADER_SIZE, DecodeError, codec

KINDS: tuple[EventKind, ...] = ("purchase", "call", "visit")
MalformedNote = Literal["truncated_avro", "random_bytes", "json_text", "wrong_schema"]
MALFORMED_NOTES: tuple[MalformedNote, ...] = ("truncated_avro", "random_bytes", "json_text", "wrong_schema")


def malformed(rng: random.Random, events: Sequence[Event]) -> Outgoing:
    """Bytes sent to an event topic that decoding must refuse (checked, not assumed)."""
    note: MalformedNote = rng.choice(MALFORMED_NOTES) if events else "random_bytes"
    source = rng.choice(events) if events else None
    kind: EventKind = source.kind if source else rng.choice(KINDS)
    key = (source.customer_id if source else customer_id(1)).encode()
    if note == "truncated_avro" and source is not None:
        value = encode_event(source)
        cut = len(value)
        while True:  # any strict prefix should fail; shorten further if one ever decodes
            cut = rng.randrange(HEADER_SIZE, cut)
            if not _decodes(kind, value[:cut]):
                return Outgoing(kind, key, value[:cut], None, note)
    if note == "json_text" and source is not None:
        return Outgoing(kind, key, json.dumps(event_to_dict(source)).encode(), None, note)
    if note == "wrong_schema" and source is not None:
        # a valid record of another kind, sent to this kind's topic: its fingerprint is unknown there
        kind = rng.choice([k for k in KINDS if k != source.kind])
        return Outgoing(kind, key, encode_event(source), None, note)
    first = rng.choice([b for b in range(256) if b != 0xC3])  # never the Avro single-object marker
    value = bytes([first]) + rng.randbytes(rng.randrange(0, 200))
    return Outgoing(kind, key, value, None, "random_bytes")


def _decodes(kind: EventKind, value: bytes) -> bool:
    try:
        codec(kind).decode(value)
    except DecodeError:
        return False
    return True
