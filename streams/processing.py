"""What an agent does with one batch of raw messages, with Faust kept at arm's length.

decode -> validate -> group by customer -> fold into state (pure) -> store state -> write
ClickHouse (awaited, retried) -> dead-letter what failed. The agent acks the batch only after
:meth:`BatchProcessor.process` returns, so Kafka offsets are committed only for messages whose
rows ClickHouse has acknowledged (Faust flushes the changelog producer before it commits).

Errors are routed, not swallowed: a message that cannot be decoded or breaks a limit becomes a
dead letter with its topic, partition, offset and reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from config.settings import Settings
from domain.alerts.state import AlertState, alert_state_from_dict, alert_state_to_dict
from domain.model import DEFAULT_PARAMS, BgNbdParams, score_customer, signal_to_dict
from domain.pseudonymise import pseudonymise_datum, scrub_bytes, scrub_text
from domain.records import CallEvent, Event, EventKind, PurchaseEvent, VisitEvent, event_from_dict
from domain.relationship import RelationshipState, apply_event, facts, state_from_dict, state_to_dict
from domain.validation import Limits, ValidationError, validate
from schemas import DecodeError, UnknownSchemaError, codec
from sinks.clickhouse import AsyncSinkRunner, SinkBatch, now_ms

logger = logging.getLogger(__name__)

YIELD_EVERY_CUSTOMERS = 25


@dataclass(frozen=True)
class Message:
    """One raw Kafka record, plus the framework's handle for it (a Faust event)."""

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


class StateStore(Protocol):
    """Customer state by key, written on behalf of a message (which fixes the partition)."""

    def get(self, key: bytes, message: Message) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, message: Message) -> None: ...


T = TypeVar("T")


class StateCache(Generic[T]):
    """Decoded values in front of a :class:`StateStore`: read once, then kept as objects.

    Decoding a customer's state costs more than scoring it, and a busy customer comes back in
    batch after batch, so the objects stay in memory (least recently used first out, at most
    ``max_entries``). Writes go through to the store at once (the table and its changelog stay
    the truth); only reads are saved. The worker clears the cache when partitions move, because
    another worker may have written those keys meanwhile.
    """

    def __init__(self, store: StateStore, decode: Callable[[bytes], T], encode: Callable[[T], bytes],
                 max_entries: int = 100_000) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        self.store = store
        self.decode = decode
        self.encode = encode
        self.max_entries = max_entries
        self._values: OrderedDict[bytes, T] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, message: Message) -> T | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
            self.hits += 1
            return value
        self.misses += 1
        stored = self.store.get(key, message)
        if stored is None:
            return None
        value = self.decode(stored)
        self._keep(key, value)
        return value

    def put(self, key: bytes, value: T, message: Message) -> None:
        """Write ``value`` to the store (on behalf of ``message``) and keep it."""
        self.store.put(key, self.encode(value), message)
        self._keep(key, value)

    def _keep(self, key: bytes, value: T) -> None:
        if self.max_entries == 0:
            return
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.max_entries:
            self._values.popitem(last=False)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


@dataclass(slots=True)
class CustomerRecord:
    """What the relationships table keeps per customer: the relationship state and what the alert
    rules remember (None until the first evaluation), stored together in one write."""

    state: RelationshipState
    alerts: AlertState | None = None


def encode_record(record: CustomerRecord) -> bytes:
    datum = state_to_dict(record.state)
    datum["alert_state"] = None if record.alerts is None else orjson.dumps(alert_state_to_dict(record.alerts)).decode()
    return codec("relationship_state").encode(datum)


def decode_record(data: bytes) -> CustomerRecord:
    datum = codec("relationship_state").decode(data)
    alerts = datum.get("alert_state")
    return CustomerRecord(state_from_dict(datum), None if alerts is None else alert_state_from_dict(orjson.loads(alerts)))


def customer_cache(store: StateStore, max_entries: int = 100_000) -> StateCache[CustomerRecord]:
    """The cache of customer records (Avro ``RelationshipState`` in the store)."""
    return StateCache(store, decode_record, encode_record, max_entries)


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


@dataclass
class BatchReport:
    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    customers: int = 0
    rows_written: int = 0


DeadLetterPublisher = Callable[[DeadLetter], Awaitable[None]]
SignalPublisher = Callable[[bytes, dict[str, Any]], Awaitable[None]]
# Publishes many (key, datum) pairs and returns once the broker has them all.
BulkPublisher = Callable[[Sequence[tuple[bytes, dict[str, Any]]]], Awaitable[None]]

PURCHASE_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "channel", "order_id", "amount_minor", "currency",
    "discount_minor", "promo_code", "item_skus", "item_categories", "item_quantities",
    "item_unit_prices_minor", "is_return", "location_id", "contact_email", "contact_phone",
)
CALL_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "direction", "reason", "wait_seconds", "duration_seconds",
    "resolved", "sentiment", "effort_score", "nps", "agent_id", "caller_phone",
)
VISIT_COLUMNS = (
    "event_id", "customer_id", "occurred_at", "channel", "location_id", "duration_seconds", "recognized",
    "categories_viewed",
)
SOURCE_COLUMNS = ("source_topic", "source_partition", "source_offset", "ingested_at")
DEAD_LETTER_COLUMNS = (
    "stage", "source_topic", "partition", "offset", "error_type", "reason", "payload_bytes", "failed_at",
)
SIGNAL_COMPONENTS = ("recency", "frequency", "monetary", "breadth", "relationship_quality",
                     "price_independence", "recognition")
SIGNAL_COLUMNS = (
    "customer_id", "version", "as_of", "model_version", "loyalty_score", "tier", "tier_reason",
    *(f"component_{name}" for name in SIGNAL_COMPONENTS),
    "churn_risk", "horizon_days", "p_alive", "expected_purchases", "expected_next_purchase_at",
    "days_since_last_purchase", "purchase_gap_days", "purchase_gap_source", "purchases", "spend_365d_minor",
    "last_purchase_at", "last_purchase_categories", "last_purchase_skus", "last_purchase_channel",
    "last_purchase_location_id", "favourite_category", "preferred_channel", "open_issues", "greeting_hint",
    "params_source", "updated_at",
)
RAW_TABLE = {"purchase": "purchases", "call": "calls", "visit": "visits"}
RAW_COLUMNS = {"purchase": PURCHASE_COLUMNS, "call": CALL_COLUMNS, "visit": VISIT_COLUMNS}


def raw_row(event: Event) -> dict[str, Any]:
    """The raw-interaction table row of an event (without the source columns)."""
    if isinstance(event, PurchaseEvent):
        return {
            "event_id": event.event_id, "customer_id": event.customer_id, "occurred_at": event.occurred_at,
            "channel": event.channel, "order_id": event.order_id, "amount_minor": event.amount_minor,
            "currency": event.currency, "discount_minor": event.discount_minor, "promo_code": event.promo_code,
            "item_skus": [i.sku for i in event.items], "item_categories": [i.category for i in event.items],
            "item_quantities": [i.quantity for i in event.items],
            "item_unit_prices_minor": [i.unit_price_minor for i in event.items],
            "is_return": event.is_return, "location_id": event.location_id,
            "contact_email": event.contact_email, "contact_phone": event.contact_phone,
        }
    if isinstance(event, CallEvent):
        return {name: getattr(event, name) for name in CALL_COLUMNS}
    if isinstance(event, VisitEvent):
        row = {name: getattr(event, name) for name in VISIT_COLUMNS}
        row["categories_viewed"] = list(event.categories_viewed)
        return row
    raise TypeError(f"not an event: {type(event).__name__}")


def signal_row(signal: dict[str, Any], version: int, spend_365d_minor: int, now: int) -> dict[str, Any]:
    """The signals_current / signals_history row of a signal datum."""
    row = {k: v for k, v in signal.items() if k != "components"}
    for name in SIGNAL_COMPONENTS:
        row[f"component_{name}"] = signal["components"][name]
    row.update(version=version, spend_365d_minor=spend_365d_minor, updated_at=now)
    return row


class ModelParams:
    """The BG/NBD parameters in use; replaced as a whole when the worker refits them."""

    def __init__(self, params: BgNbdParams = DEFAULT_PARAMS, horizon_days: int = 90) -> None:
        self.current = params
        self.horizon_days = horizon_days


class BatchProcessor:
    """Processes batches of one input kind. One instance per agent."""

    def __init__(
        self,
        settings: Settings,
        kind: EventKind,
        states: StateCache[CustomerRecord],
        sink: AsyncSinkRunner,
        publish_dead_letter: DeadLetterPublisher,
        pseudonymisation_key: bytes,
        clock: Callable[[], int] = now_ms,
        relationship_columns: Sequence[str] | None = None,
        model: ModelParams | None = None,
        publish_signals: BulkPublisher | None = None,
        alerting: Any = None,
        publish_alert: SignalPublisher | None = None,
        partition_of: Callable[[str, bytes], int | None] | None = None,
        forward: Callable[[Message, int], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.states = states
        self.sink = sink
        self.publish_dead_letter = publish_dead_letter
        self.clock = clock
        self.pseudonymisation_key = pseudonymisation_key
        self.codec = codec(kind)
        self.limits = Limits(currency=settings.currency, future_skew_ms=settings.future_skew_seconds * 1000)
        self.relationship_columns = relationship_columns
        self.model = model or ModelParams()
        self.publish_signals = publish_signals
        self.alerting = alerting  # streams.alerting.Alerting, or None for no alerts
        self.publish_alert = publish_alert
        # Where a key belongs (the default partitioner's choice), and how to send a record there:
        # a record on another partition is forwarded, so one customer's state lives in one place.
        self.partition_of = partition_of
        self.forward = forward
        self.totals: Counter[str] = Counter()

    def _decode(self, message: Message, now: int) -> Event | DeadLetter:
        if not message.value:
            return DeadLetter("decode", message, "EmptyValue", "the record has no value (null or empty)", now,
                              payload=b"")
        if len(message.value) > self.settings.max_event_bytes:
            return DeadLetter("decode", message, "TooLarge",
                              f"{len(message.value)} bytes is over the {self.settings.max_event_bytes}-byte cap", now,
                              payload=b"")
        try:
            datum = pseudonymise_datum(self.pseudonymisation_key, self.kind, self.codec.decode(message.value))
        except UnknownSchemaError as exc:
            return DeadLetter("decode", message, "UnknownSchema", str(exc), now)
        except DecodeError as exc:
            return DeadLetter("decode", message, "DecodeError", str(exc), now)
        try:
            event = event_from_dict(self.kind, datum)
        except (TypeError, ValueError) as exc:
            return DeadLetter("decode", message, "DecodeError", f"{self.kind}: {exc}", now)
        if message.key is not None and message.key != event.customer_id.encode():
            return DeadLetter("validate", message, "KeyMismatch",
                              "message key is not the event's customer_id (it would break per-customer partitioning)",
                              now, payload=self.codec.encode(datum))
        try:
            validate(event, self.limits, now)
        except ValidationError as exc:
            return DeadLetter("validate", message, "ValidationError", str(exc), now, payload=self.codec.encode(datum))
        return event

    async def process(self, messages: Sequence[Message]) -> BatchReport:
        now = self.clock()
        report = BatchReport(messages=len(messages))
        batch = SinkBatch()
        dead: list[DeadLetter] = []
        # By customer and partition: a state is read from and written to the partition its
        # records arrive on. (A producer that sends one customer's records to two partitions
        # splits that customer's state in two; see docs/guarantees.md.)
        by_customer: dict[tuple[str, int], list[tuple[Message, Event]]] = {}
        signals: list[tuple[bytes, dict[str, Any]]] = []
        alerts: list[tuple[bytes, dict[str, Any]]] = []
        misplaced: list[tuple[Message, int]] = []
        for message in messages:
            batch.cover(message.topic, message.partition, message.offset)
            if message.key is not None and self.partition_of is not None and self.forward is not None:
                home = self.partition_of(message.topic, message.key)
                if home is not None and home != message.partition:
                    misplaced.append((message, home))
                    continue
            decoded = self._decode(message, now)
            if isinstance(decoded, DeadLetter):
                dead.append(decoded)
                continue
            by_customer.setdefault((decoded.customer_id, message.partition), []).append((message, decoded))

        raw = batch.rows(RAW_TABLE[self.kind], RAW_COLUMNS[self.kind] + SOURCE_COLUMNS)
        horizon = self.settings.dedup_horizon_ms
        for done, ((customer_id, _), items) in enumerate(by_customer.items()):
            if done % YIELD_EVERY_CUSTOMERS == YIELD_EVERY_CUSTOMERS - 1:
                # Between customers (each one's read, fold and write stay together), let the
                # event loop serve HTTP requests, heartbeats and fetches: a batch takes a while.
                await asyncio.sleep(0)
            key = customer_id.encode()
            record = self.states.get(key, items[0][0]) or CustomerRecord(RelationshipState(customer_id))
            state = record.state
            for message, event in items:
                outcome = apply_event(state, event, horizon, message.timestamp_ms)
                report.outcomes[outcome.value] += 1
                # Duplicates are written again on purpose: after a crash the state may already
                # hold an event whose row never reached ClickHouse. The table's key drops repeats.
                row = raw_row(event)
                row.update(source_topic=message.topic, source_partition=message.partition,
                           source_offset=message.offset, ingested_at=now)
                raw.append(row)
            row = facts(state)
            row["updated_at"] = now
            batch.rows("relationships", self.relationship_columns or tuple(row)).append(row)
            # Scored as of the customer's newest event: deterministic, so a replay of the same
            # events (loyalty replay --as-of latest) gives the same signal.
            scored = score_customer(state, state.last_seen_at, self.model.current, self.model.horizon_days)
            signal = signal_to_dict(scored)
            if self.alerting is not None:
                self.alerting.observe(state.last_seen_at)
                alerts.extend((key, a) for a in self.alerting.evaluate(key, items[-1][0], record, scored, batch, now))
            self.states.put(key, record, items[-1][0])
            srow = signal_row(signal, state.version, row["spend_365d_minor"], now)
            batch.rows("signals_current", SIGNAL_COLUMNS).append(srow)
            batch.rows("signals_history", SIGNAL_COLUMNS).append(srow)
            signals.append((key, signal))
        report.customers = len(by_customer)

        if dead:
            rows = batch.rows("dead_letters", DEAD_LETTER_COLUMNS)
            for letter in dead:
                logger.warning("dead-lettering %s: %s: %s", letter.message.where, letter.error_type,
                               scrub_text(letter.reason))
                rows.append({
                    "stage": letter.stage, "source_topic": letter.message.topic,
                    "partition": letter.message.partition, "offset": letter.message.offset,
                    "error_type": letter.error_type, "reason": scrub_text(letter.reason),
                    "payload_bytes": len(letter.message.value or b""), "failed_at": letter.failed_at,
                })
        report.outcomes["dead_lettered"] = len(dead)
        report.outcomes["forwarded"] = len(misplaced)
        report.rows_written = await self.sink.write(batch)
        for message, home in misplaced:
            logger.info("forwarding %s to partition %d, where its key belongs", message.where, home)
            await self.forward(message, home)  # type: ignore[misc]
        for letter in dead:
            await self.publish_dead_letter(letter)
        if self.publish_signals is not None and signals:
            await self.publish_signals(signals)
        if self.publish_alert is not None:
            for key, alert in alerts:
                await self.publish_alert(key, alert)
        report.outcomes["alerts"] = len(alerts)
        self.totals.update(report.outcomes)
        self.totals["messages"] += report.messages
        return report
