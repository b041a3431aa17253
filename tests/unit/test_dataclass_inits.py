"""Dataclasses of the model whose ``__init__`` is written out rather than generated.

Compiled (``loyalty compile``), a class keeps the ``__init__`` that ``@dataclass`` generates as
interpreted Python, several times slower than a compiled one, and some of these are made for every
event. A written-out ``__init__`` must take exactly what the generated one would: the fields'
names, in order, with their defaults (``None`` standing for a default factory, which then gives a
new container), and store each argument in its field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from domain.alerts.state import AlertState, Episode, Peak
from domain.relationship import ChannelSeen, LastPurchase, RelationshipState, Rhythm, Tally

REPO = Path(__file__).resolve().parents[2]

# class -> the arguments its required fields get in these tests
WRITTEN_OUT: dict[type, dict[str, Any]] = {
    Tally: {},
    ChannelSeen: {"first_at": 1, "last_at": 2},
    LastPurchase: {"occurred_at": 1, "event_id": "e", "order_id": "o", "channel": "web", "location_id": None,
                   "amount_minor": 5, "currency": "EUR", "categories": ["a"], "skus": ["s"]},
    RelationshipState: {"customer_id": "C1"},
    Episode: {},
    AlertState: {"customer_id": "C1"},
}

# Run from the sources (the compiled build's __init__ has no signature to read).
SIGNATURES = r"""
import inspect, json, sys
from dataclasses import MISSING, fields
from domain import SourcesFirst
from ops.compile import COMPILED
sys.meta_path.insert(0, SourcesFirst(COMPILED))
from domain.alerts.state import AlertState, Episode, Peak
from domain.relationship import ChannelSeen, LastPurchase, RelationshipState, Rhythm, Tally
out = {}
for cls in (Tally, ChannelSeen, LastPurchase, RelationshipState, Episode, AlertState):
    init = cls.__init__
    params = [(p.name, "<required>" if p.default is p.empty else repr(p.default))
              for p in list(inspect.signature(init).parameters.values())[1:]]
    wanted = [(f.name, "<required>" if f.default is MISSING and f.default_factory is MISSING
               else "None" if f.default is MISSING else repr(f.default)) for f in fields(cls) if f.init]
    out[cls.__name__] = {"params": params, "fields": wanted, "file": init.__code__.co_filename}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def signatures() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", SIGNATURES], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("cls", list(WRITTEN_OUT), ids=lambda cls: cls.__name__)
def test_a_written_out_init_takes_the_fields_in_order_with_their_defaults(signatures, cls):
    found = signatures[cls.__name__]
    assert found["file"].endswith(".py"), f"{cls.__name__}.__init__ is generated, not written out"
    assert [tuple(p) for p in found["params"]] == [tuple(f) for f in found["fields"]]


@pytest.mark.parametrize("cls", list(WRITTEN_OUT), ids=lambda cls: cls.__name__)
def test_a_written_out_init_stores_defaults_and_new_containers(cls):
    required = WRITTEN_OUT[cls]
    made, again = cls(**required), cls(**required)
    for f in fields(cls):
        value = getattr(made, f.name)
        if f.name in required:
            assert value == required[f.name]
        elif f.default is not MISSING:
            assert value == f.default, f.name
        else:
            assert f.default_factory is not MISSING
            assert value == f.default_factory(), f.name
            assert value is not getattr(again, f.name), f"{f.name}: one container shared by two instances"


def every_field(cls: type) -> dict[str, Any]:
    """A value for every field of ``cls``, none of them its default."""
    if cls is Tally:
        return {f.name: index + 1 for index, f in enumerate(fields(Tally))}
    last = LastPurchase(**WRITTEN_OUT[LastPurchase])
    return {
        ChannelSeen: {"first_at": 1, "last_at": 2, "purchases": 3, "visits": 4, "calls": 5},
        LastPurchase: WRITTEN_OUT[LastPurchase],
        RelationshipState: {
            "customer_id": "C1", "events_applied": 2, "first_seen_at": 3, "last_seen_at": 4, "first_purchase_at": 5,
            "lifetime": Tally(purchases=6), "days": {7: Tally(visits=1)}, "channels": {"web": ChannelSeen(1, 2)},
            "categories_bought": {"a": 1}, "categories_viewed": {"b": 2}, "recent_purchase_at": [8],
            "last_purchase": last, "last_received_at": 9, "seen_events": {"e": 10}, "_windows": {(1, 2, 3): Tally()},
            "_rhythm": (11, Rhythm(1, 2.0, 3.0)), "_purchase_days": (12, 13)},
        Episode: {"active": True, "started_at": 1, "last_raised_at": 2},
        AlertState: {"customer_id": "C1", "as_of": 1, "score": 2.5, "tier": "gold", "components": {"x": 1.0},
                     "peaks": [Peak(1, 2.0, {})], "episodes": {"k": Episode()}, "quiet_due_at": 3, "quiet_anchor": 4},
    }[cls]


@pytest.mark.parametrize("cls", list(WRITTEN_OUT), ids=lambda cls: cls.__name__)
def test_a_written_out_init_stores_each_argument_in_its_field(cls):
    values = every_field(cls)
    assert list(values) == [f.name for f in fields(cls) if f.init]
    for made in (cls(*values.values()), cls(**values)):  # by position, by name
        for name, value in values.items():
            stored = getattr(made, name)
            assert stored == value, name
            if isinstance(value, (list, dict, tuple, Tally, ChannelSeen, LastPurchase, Episode)):
                assert stored is value, f"{name}: the argument itself is stored, not a copy"
