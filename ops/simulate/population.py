"""Who the simulated customers are: their ids and, as ground truth, the persona of each."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from ops.simulate.persona import DEFAULT_MIX, PERSONAS


def customer_id(n: int) -> str:
    """The id of the n-th simulated customer (1-based): C0000001, C0000002, ..."""
    return f"C{n:07d}"


def personas(customers: int, seed: int, mix: Mapping[str, float] | None = None) -> dict[str, str]:
    """Ground truth: the persona of every simulated customer, by customer id.

    The counts follow the mix exactly (largest remainder), the assignment is shuffled.
    """
    if customers < 0:
        raise ValueError("customers must not be negative")
    shares = _normalised_mix(mix)
    exact = {name: share * customers for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(shares, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: customers - sum(counts.values())]:
        counts[name] += 1
    names = [name for name in shares for _ in range(counts[name])]
    random.Random(f"personas|{seed}").shuffle(names)
    return {customer_id(i + 1): name for i, name in enumerate(names)}


def _normalised_mix(mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = DEFAULT_MIX if mix is None else mix
    unknown = set(mix) - set(PERSONAS)
    if unknown:
        raise ValueError(f"unknown personas {sorted(unknown)}; known: {sorted(PERSONAS)}")
    if any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError("persona shares must be non-negative and not all zero")
    total = sum(mix.values())
    return {name: mix[name] / total for name in PERSONAS if mix.get(name, 0) > 0}
