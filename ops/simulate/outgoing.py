"""What is published for a list of events: every event once, some resent, bad payloads mixed in."""

from __future__ import annotations

import random
from collections.abc import Sequence

from domain.records import Event
from ops.simulate.malformed import malformed
from ops.simulate.message import Outgoing, encode_event

DUPLICATE_MAX_DELAY = 100
"""A resend follows its original within this many messages: late enough to interleave with other
events, early enough to stay inside the dedup horizon of arrival time, so it is recognised as a
duplicate rather than refused as too late."""


def to_outgoing(
    events: Sequence[Event], seed: int, duplicate_rate: float = 0.0, malformed_rate: float = 0.0
) -> list[Outgoing]:
    """The messages to publish for ``events``, in order, with resends and bad payloads mixed in.

    ``round(duplicate_rate * len(events))`` events are sent a second time (same key, event id and
    bytes) 1 to :data:`DUPLICATE_MAX_DELAY` messages later; ``round(malformed_rate *
    len(events))`` payloads that no codec accepts are put at random places. Deterministic.
    """
    for name, rate in (("duplicate_rate", duplicate_rate), ("malformed_rate", malformed_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must be between 0 and 1, not {rate}")
    rng = random.Random(f"outgoing|{seed}")
    base = [Outgoing(ev.kind, ev.customer_id.encode(), encode_event(ev), ev, "event") for ev in events]
    n = len(base)
    after: dict[int, list[Outgoing]] = {}  # index of a base message -> what follows it
    for i in sorted(rng.sample(range(n), round(duplicate_rate * n))):
        position = min(n - 1, i + rng.randrange(DUPLICATE_MAX_DELAY))
        original = base[i]
        after.setdefault(position, []).append(
            Outgoing(original.topic_kind, original.key, original.value, original.event, "duplicate")
        )
    bad = [malformed(rng, events) for _ in range(round(malformed_rate * n))]
    for message in bad:
        after.setdefault(rng.randrange(n) if n else -1, []).append(message)
    out = list(after.get(-1, []))
    for i, message in enumerate(base):
        out.append(message)
        out.extend(after.get(i, []))
    return out
