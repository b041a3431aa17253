"""A deterministic synthetic customer base, and the tools to publish it and check the result.

What it is for: the benchmark, the integration tests and the fault tests need event streams whose
right answer is known. :func:`generate` builds purchases, calls and visits for a population of
customers drawn from a few documented :data:`PERSONAS`; :func:`expected_by_customer` computes, by
its own simple arithmetic (never through :mod:`domain.relationship`), what the pipeline
should end up with for each customer; :func:`to_outgoing` adds resends and malformed payloads;
:func:`publish` sends it all to Kafka and :func:`write_ledger` records what was sent.

The parts, each its own module:

- ``personas.toml`` and :mod:`~ops.simulate.persona`: the personas, as data, and their loader;
- :mod:`~ops.simulate.catalogue`: categories, SKU prices, stores, agents, promo codes, busy hours;
- :mod:`~ops.simulate.population`: customer ids and the persona of each;
- :mod:`~ops.simulate.generator`: each customer's history, merged into one sorted stream;
- :mod:`~ops.simulate.message`, :mod:`~ops.simulate.malformed`, :mod:`~ops.simulate.outgoing`:
  the messages to send, with resends and payloads decoding must refuse;
- :mod:`~ops.simulate.oracle`: the expected per-customer totals;
- :mod:`~ops.simulate.ledger`, :mod:`~ops.simulate.replay`: the files written beside a run;
- :mod:`~ops.simulate.publisher` and :mod:`~ops.simulate.main`: sending to Kafka, the CLI's work.

Determinism: everything random comes from ``random.Random`` instances seeded from the arguments
(one per customer, so a customer's history does not depend on how many others there are). Nothing
reads the clock or the global ``random`` state, except :func:`simulate_main`, which takes "now" as
the end of the window when none is given, and :func:`publish`, which paces and times sending.
"""

from ops.simulate.catalogue import (
    AGENTS,
    CATEGORIES,
    ONLINE_LOCATIONS,
    PROMOS,
    SKUS_PER_CATEGORY,
    STORES,
    WELCOME_PROMO,
    sku_price,
)
from ops.simulate.generator import DAY_MS, HOUR_MS, Window, generate
from ops.simulate.ledger import LedgerEntry, ledger_entries, read_ledger, write_ledger
from ops.simulate.main import simulate_main
from ops.simulate.malformed import KINDS, MALFORMED_NOTES, MalformedNote
from ops.simulate.message import Outgoing, encode_event
from ops.simulate.oracle import Expected, expected_by_customer
from ops.simulate.outgoing import DUPLICATE_MAX_DELAY, to_outgoing
from ops.simulate.persona import DEFAULT_MIX, PERSONAS, Persona, Shape, load_personas
from ops.simulate.population import customer_id, personas
from ops.simulate.publisher import (
    BrokerUnavailableError,
    ProducerLike,
    Progress,
    PublishError,
    PublishReport,
    publish,
    send_outgoing,
)
from ops.simulate.replay import replay_line, write_replay_file

__all__ = [
    "AGENTS",
    "CATEGORIES",
    "DAY_MS",
    "DEFAULT_MIX",
    "DUPLICATE_MAX_DELAY",
    "HOUR_MS",
    "KINDS",
    "MALFORMED_NOTES",
    "ONLINE_LOCATIONS",
    "PERSONAS",
    "PROMOS",
    "SKUS_PER_CATEGORY",
    "STORES",
    "WELCOME_PROMO",
    "BrokerUnavailableError",
    "Expected",
    "LedgerEntry",
    "MalformedNote",
    "Outgoing",
    "Persona",
    "ProducerLike",
    "Progress",
    "PublishError",
    "PublishReport",
    "Shape",
    "Window",
    "customer_id",
    "encode_event",
    "expected_by_customer",
    "generate",
    "ledger_entries",
    "load_personas",
    "personas",
    "publish",
    "read_ledger",
    "replay_line",
    "send_outgoing",
    "simulate_main",
    "sku_price",
    "to_outgoing",
    "write_ledger",
    "write_replay_file",
]
