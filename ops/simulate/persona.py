"""The personas: kinds of customer and how each behaves, read from ``personas.toml`` beside this module.

The behaviour is data so that a persona can be tuned or added without touching the generator;
:func:`load_personas` checks the file against :class:`Persona` and refuses anything it does not know.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Literal, get_args

from domain.model.tiers import TIERS
from domain.records import EventKind

Shape = Literal["steady", "lapsing", "new"]
DATA_FILE = "personas.toml"


@dataclass(frozen=True)
class Persona:
    """How one kind of customer behaves. Rates are per customer; shares are probabilities."""

    name: str
    description: str
    purchase_every_days: tuple[float, float]  # each customer's mean gap is drawn from this range
    rhythm_sigma: float  # spread of the gaps (lognormal sigma): 0.15 is clockwork, 1.0 erratic
    visits_per_day: float
    calls_per_day: float
    purchase_channels: Mapping[str, float]
    visit_channels: Mapping[str, float]
    discounted_share: float  # purchases with a discount or a promo code
    return_share: float  # purchases later returned (in part)
    max_lines: int
    recognized_share: float  # visits where the customer is recognised
    call_reasons: Mapping[str, float]
    resolved_share: float  # calls resolved on the call (complaints and cancellations: less)
    sentiment_mean: float  # -1..1
    effort_mean: float  # 1..7
    nps_range: tuple[int, int]
    anchor: EventKind  # kind of the guaranteed interaction in the live window
    shape: Shape = "steady"
    # Chance per year that the customer stops buying for good (they may still visit or call):
    # churn spread over the whole history, so a backtest at any cut-off has churners to find.
    dropout_per_year: float = 0.0
    # The tier the model should give such a customer while they behave as described (the oracle
    # of the persona table); None where it changes on purpose (lapsing customers slow down).
    expected_tier: str | None = None


_PAIRS = ("purchase_every_days", "nps_range")
_OPTIONAL = ("shape", "dropout_per_year", "expected_tier")
_REQUIRED = {f.name for f in fields(Persona) if f.name != "name" and f.name not in _OPTIONAL}
_KNOWN = {f.name for f in fields(Persona)} - {"name"}


def _persona(name: str, entry: Mapping[str, Any]) -> Persona:
    unknown, missing = set(entry) - _KNOWN, _REQUIRED - set(entry)
    if unknown or missing:
        raise ValueError(f"persona {name!r}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
    values = dict(entry)
    for pair in _PAIRS:
        if len(values[pair]) != 2:
            raise ValueError(f"persona {name!r}: {pair} must be [low, high]")
        values[pair] = tuple(values[pair])
    if values["anchor"] not in get_args(EventKind):
        raise ValueError(f"persona {name!r}: anchor must be one of {get_args(EventKind)}")
    if values.get("shape", "steady") not in get_args(Shape):
        raise ValueError(f"persona {name!r}: shape must be one of {get_args(Shape)}")
    if values.get("expected_tier", TIERS[0]) not in TIERS:
        raise ValueError(f"persona {name!r}: expected_tier must be one of {TIERS}")
    return Persona(name=name, **values)


def load_personas(text: str) -> tuple[dict[str, Persona], dict[str, float]]:
    """The personas and the default mix from the text of a personas file, in the file's order."""
    data = tomllib.loads(text)
    personas = {name: _persona(name, entry) for name, entry in data.get("personas", {}).items()}
    mix = {name: float(share) for name, share in data.get("mix", {}).items()}
    if set(mix) - set(personas):
        raise ValueError(f"mix names unknown personas {sorted(set(mix) - set(personas))}")
    return personas, mix


PERSONAS, DEFAULT_MIX = load_personas(resources.files("ops.simulate").joinpath(DATA_FILE).read_text(encoding="utf-8"))
"""``PERSONAS``: every persona by name. ``DEFAULT_MIX``: share of each persona in the population
(normalised if it does not sum to 1)."""
