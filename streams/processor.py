"""What the state worker does with one batch of records, with Faust kept at arm's length.

The one agent reads the three input topics and the gone-quiet topic together, so each
customer has one ordered writer. A batch is worked at three grains:

* per record: find the customer's home partition (forward a misplaced record there), decode,
  pseudonymise, validate (or dead-letter with the reason);
* per customer: fold every new event into the state, then score once, evaluate the alert rules
  once, write the record once (table and changelog) and emit one signal that carries the
  relationship facts and, when the batch spans several event days, the tier at the end of each
  earlier day (:mod:`domain.model.days`);
* per batch: the produced records (signals, alerts, dead letters, forwards) are handed to the
  producer together and their acknowledgements awaited once, by the caller, before the
  changelog records that remember them (see :mod:`streams.app`); the share of a partition the
  worker turns out to have lost is dropped first (:meth:`Effects.drop`).

Nothing here writes ClickHouse: the sink process stores what the worker produces.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from domain.model import DEFAULT_PARAMS, BgNbdParams, score_customer, signal_to_dict
from domain.model.churn_learned import LearnedChurnModel
from domain.model.days import day_end_to_dict, fold_batch
from domain.model.suggest import CoPurchaseTable
from domain.pseudonymise import scrub_text
from domain.records import Event
from domain.relationship import RelationshipState, facts
from schemas import codec, record_branch
from streams.alerting import Alerting
from streams.decoding import EventDecoder
from streams.messages import DeadLetter, Message
from streams.state import CustomerRecord, StateCache

logger = logging.getLogger(__name__)

# The full name of the signal's facts record: a union branch given as (name, datum) is written
# without trying the datum against each branch (fastavro's tuple notation; the same bytes).
RELATIONSHIP_FACTS = record_branch("loyalty_signal", "relationship")

# Between customers the batch loop lets the event loop serve HTTP requests, heartbeats and fetches.
YIELD_EVERY_CUSTOMERS = 50


class ModelParams:
    """The BG/NBD parameters, the learned churn model and the co-purchase table in use; each
    replaced as a whole when a new one arrives. Without a learned model (or with one of another
    horizon) the churn risk is BG/NBD's; without a co-purchase table nothing is suggested."""

    def __init__(self, params: BgNbdParams = DEFAULT_PARAMS, horizon_days: int = 90,
                 churn: LearnedChurnModel | None = None, copurchase: CoPurchaseTable | None = None) -> None:
        self.current = params
        self.horizon_days = horizon_days
        self.churn = churn
        self.copurchase = copurchase

    def status(self) -> dict[str, object]:
        """What is in use, for ``GET /status``."""
        return {"params_source": self.current.source, "churn_model": "learned" if self.churn else "bgnbd",
                "copurchase_orders": self.copurchase.orders if self.copurchase else 0}


@dataclass
class Effects:
    """What one batch produces, in the order it is to be sent."""

    forwards: list[tuple[Message, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    signals: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    customers: int = 0
    # The input partition each changed customer's records were read from, and every partition the
    # batch read: a batch's effects are produced only for partitions whose fence holds
    # (streams.fencing), so a lost partition's share can be dropped.
    homes: dict[bytes, int] = field(default_factory=dict)
    partitions: set[int] = field(default_factory=set)
    # Stopped part way (CustomerProcessor.process's ``current``): not to be written at all.
    abandoned: bool = False

    def drop(self, partitions: set[int]) -> list[bytes]:
        """Remove the effects of the records read from ``partitions``; return the keys of the
        customers whose signals or alerts went with them."""
        homes = self.homes
        self.forwards = [(m, home) for m, home in self.forwards if m.partition not in partitions]
        self.dead_letters = [d for d in self.dead_letters if d.message.partition not in partitions]
        self.signals = [(k, v) for k, v in self.signals if homes[k] not in partitions]
        self.alerts = [(k, a) for k, a in self.alerts if homes[k] not in partitions]
        return [k for k, p in homes.items() if p in partitions]


# A customer's items in a batch: (message, event) for an input record, (message, None) for a
# gone-quiet check (its value is the due time, epoch ms as ASCII digits).
Item = tuple[Message, Event | None]


class CustomerProcessor:
    """Folds batches of mixed input records into customer records and derives their signals."""

    def __init__(
        self,
        settings: Settings,
        states: StateCache[CustomerRecord],
        decoder: EventDecoder,
        due_topic: str,
        model: ModelParams | None = None,
        alerting: Alerting | None = None,
        partition_of: Callable[[str, bytes], int | None] | None = None,
    ) -> None:
        self.states = states
        self.decoder = decoder
        self.due_topic = due_topic
        self.model = model or ModelParams(horizon_days=settings.churn_horizon_days)
        self.alerting = alerting
        # Where a key belongs (the default partitioner's choice): a record on another partition
        # is forwarded there, so one customer's state lives in one place.
        self.partition_of = partition_of
        self.dedup_horizon_ms = settings.dedup_horizon_ms
        self.signal_codec = codec("loyalty_signal")
        self.totals: Counter[str] = Counter()

    def group(self, messages: Sequence[Message], now: int, effects: Effects) -> dict[tuple[bytes, int], list[Item]]:
        """Route every record: forwarded, dead-lettered, or grouped under its customer (in order)."""
        by_customer: dict[tuple[bytes, int], list[Item]] = {}
        for message in messages:
            key = message.key
            if key is not None and self.partition_of is not None:
                home = self.partition_of(message.topic, key)
                if home is not None and home != message.partition:
                    effects.forwards.append((message, home))
                    continue
            if message.topic == self.due_topic:
                if key is not None:
                    by_customer.setdefault((key, message.partition), []).append((message, None))
                continue
            decoded = self.decoder.decode(message, now)
            if isinstance(decoded, DeadLetter):
                logger.warning("dead-lettering %s: %s: %s", message.where, decoded.error_type, scrub_text(decoded.reason))
                effects.dead_letters.append(decoded)
                continue
            by_customer.setdefault((decoded.customer_id.encode(), message.partition), []).append((message, decoded))
        return by_customer

    async def process(self, messages: Sequence[Message], now: int,
                      current: Callable[[], bool] | None = None) -> Effects:
        """Fold, score and store one batch; return what is to be produced.

        ``current`` is asked each time the batch yields to the event loop whether the batch may
        still be written. Once it says no (the worker's partitions changed hands, or it stood
        still), the batch stops there and says so (``effects.abandoned``): it would be dropped
        whole anyway, and the worker turns to its new assignment a batch's processing sooner."""
        effects = Effects()
        by_customer = self.group(messages, now, effects)
        for done, ((key, _), items) in enumerate(by_customer.items()):
            if done % YIELD_EVERY_CUSTOMERS == YIELD_EVERY_CUSTOMERS - 1:
                await asyncio.sleep(0)  # between customers: each one's read, fold and write stay together
                if current is not None and not current():
                    effects.abandoned = True
                    effects.outcomes["batches_abandoned"] += 1  # GET /status counts them
                    break
            self.customer(key, items, effects, now)
        effects.customers = len(by_customer)
        effects.partitions = ({p for _, p in by_customer} | {m.partition for m, _ in effects.forwards}
                              | {d.message.partition for d in effects.dead_letters})
        effects.outcomes["dead_lettered"] = len(effects.dead_letters)
        effects.outcomes["forwarded"] = len(effects.forwards)
        effects.outcomes["alerts"] = len(effects.alerts)
        self.totals.update(effects.outcomes)
        self.totals["messages"] += len(messages)
        self.totals["batches"] += 1
        return effects

    def customer(self, key: bytes, items: list[Item], effects: Effects, now: int) -> None:
        """One customer's share of a batch: fold, score once, evaluate once, write once, one signal.

        ``now`` is the worker's clock, which tells live alerts from historical ones."""
        first, last = items[0][0], items[-1][0]
        effects.homes[key] = first.partition
        record = self.states.get(key, first)
        events = [(m, e) for m, e in items if e is not None]
        if record is None:
            if not events:
                return  # a gone-quiet check for a customer this worker has no state for
            record = CustomerRecord(RelationshipState(events[0][1].customer_id))
        state = record.state
        params, horizon, learned = self.model.current, self.model.horizon_days, self.model.churn
        copurchase = self.model.copurchase
        # Folded in arrival order; a batch spanning several event days also closes its earlier
        # days (scored as of each day's last event), so daily tiers follow event time.
        outcomes, day_ends = fold_batch(state, [(e, m.timestamp_ms) for m, e in events], self.dedup_horizon_ms,
                                        params, horizon, learned)
        for outcome in outcomes:
            effects.outcomes[outcome.value] += 1
        if day_ends:
            effects.outcomes["days_closed"] += len(day_ends)
        checks = [int(m.value) for m, e in items if e is None]
        newest = state.last_seen_at or 0  # set by the first event folded
        if events:
            # Scored as of the customer's newest event: deterministic, so a replay of the same
            # events (loyalty replay --as-of latest) gives the same signal. It is also the end of
            # the newest event day, which the sink stores from the signal itself.
            scored = score_customer(state, newest, params, horizon, learned, copurchase)
            signal = signal_to_dict(scored)
            # The union's branch named, so the writer does not validate 52 fields to choose it.
            signal["relationship"] = (RELATIONSHIP_FACTS, relationship_facts(state))
            signal["day_ends"] = [day_end_to_dict(end) for end in day_ends]
            effects.signals.append((key, self.signal_codec.encode(signal)))
        else:
            scored = score_customer(state, max(max(checks), newest), params, horizon, learned, copurchase)
        if self.alerting is not None:
            if events:
                self.alerting.observe(newest)
            effects.alerts.extend((key, a) for a in self.alerting.evaluate(key, last, record, scored, now,
                                                                          store_due_time=bool(checks)))
        self.states.put(key, record, last)


def relationship_facts(state: RelationshipState) -> dict[str, Any]:
    """The facts a signal carries (``RelationshipFacts`` in ``schemas/loyalty_signal.avsc``)."""
    row = facts(state)
    del row["customer_id"]
    return row
