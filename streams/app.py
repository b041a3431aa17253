"""The worker: the Faust state application, the ClickHouse sink, and their HTTP API.

Roles (``loyalty worker --role``): ``state`` runs the Faust application only: one agent,
``track_customers``, reads the three input topics and the gone-quiet topic, folds, scores and
stores each customer once per batch, and produces signals, alerts and dead letters. ``sink``
runs the ClickHouse sink only (:mod:`streams.sink`). ``all`` runs both in one process.

A batch is taken when it is full, when the worker has caught up with its input partitions, or
at the end of its window (:mod:`streams.take`). The order of a batch's effects in the state worker:

1. records are decoded and folded (where a partition's records in the batch skip an offset from
   its next offset to fold on, those past the hole are held back unacknowledged and the partition
   sought back to it: :mod:`streams.offsets`); each changed customer is scored, its alert rules
   evaluated and its record (state and what the rules remember) kept in memory, nothing sent yet;
2. the fence of each input partition the batch read is confirmed: one transaction of the
   partition's fence producer, all partitions concurrently (:mod:`streams.fencing`). A partition
   whose fence fails is another worker's now: the batch's share of it is dropped (its outputs,
   its table records, its cached states and due times) and its records are left unacknowledged,
   so that their partition's owner reads them again. A batch whose epoch has passed (a rebalance
   began since it did, or the process stood still: :meth:`Pipeline.rebalance_epoch`) drops all
   of it the same way, and a batch taken during a rebalance is not processed;
3. the batch's forwarded records, dead letters, signals and alerts are handed to the worker's
   output producer, a batch per partition (:mod:`streams.batches`), and their acknowledgements
   awaited;
4. only then, if the batch's epoch still holds, the changelog records of the ``relationships``
   and ``due_times`` tables (which remember the batch's events and its alert episodes) are sent
   and their acknowledgements awaited; the acknowledged records are applied to the local RocksDB
   store. A revocation waits for this step (:meth:`Pipeline.before_revoke`);
5. the agent returns from its loop body, which acks the batch's events (those of lost partitions
   excepted); Faust commits the input offsets on its commit interval.

A crash before 4 has completed re-reads the batch against the state before it: the rules are
evaluated again and raise the same alerts (ids are deterministic), so an alert is on the topic at
least once and in the ``alerts`` table once by ``alert_id``. A crash between 4 and 5 re-reads a
batch the state already holds: the remembered event ids make the repeats count once, and the
remembered episodes raise nothing new (their alerts were acknowledged in 3). Signals may be
produced twice; the sink's keys collapse them. Webhooks are delivered from the alerts topic by the
sink process (:mod:`streams.webhooks`), so an alert on the topic is delivered whatever happens to
the state worker.

A worker frozen (or cut off) longer than the session timeout before 2 finds its fences taken by
the partitions' new owner and writes nothing for them. Frozen after 2 and before 4, it notices the
stall when it resumes and sends no changelog record. Frozen while a step's records are in flight,
it still writes them late, after the new owner's (docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import secrets
import ssl
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, NamedTuple, cast

import faust
import faust.web
from aiokafka import AIOKafkaProducer
from faust.types import TP, EventT, StoreT, TableT
from faust.types import Message as FaustMessage
from mode.supervisors import CrashingSupervisor

from config.settings import Settings
from config.topics import Topics
from domain.alerts import AlertRules
from domain.model import KNOW_ME_FIELDS, score_customer, signal_to_dict
from domain.relationship import facts
from schemas import codec
from sinks.clickhouse import ClickHouseSink, now_ms
from sinks.readonly import QueryRefused, check_bearer
from streams.alerting import Alerting
from streams.batches import KeyPartitions, PartitionBatches, output_producer
from streams.churn_params import churn_from_bytes
from streams.copurchase import COPURCHASE_KEY, table_from_bytes
from streams.decoding import EventDecoder
from streams.fencing import Fences, StallWatch
from streams.messages import Message
from streams.offsets import CommittedSeekingConsumer, offset_spans, partition_offsets
from streams.offsets import install as install_committed_seeking
from streams.processor import CustomerProcessor, Effects, ModelParams
from streams.sink import ClickHouseSinkService, latest_published, params_from_bytes
from streams.state import customer_cache, decode_record
from streams.take import HandoverStream
from streams.webhooks import WebhookConsumer, webhook_config

logger = logging.getLogger(__name__)

#: How long a revocation waits for the batch being written, in session timeouts.
REVOKE_WAIT_SESSIONS = 3
#: The sink process's interpreter switch interval (:func:`serve_sink`), seconds.
SINK_SWITCH_INTERVAL_SECONDS = 0.001
#: How often the state worker looks for partitions whose last records on the broker never reached
#: its stream (:meth:`streams.offsets.CommittedSeekingConsumer.stranded`), seconds.
STRANDED_CHECK_SECONDS = 1.0

Role = Literal["state", "sink", "all"]


def tune_garbage_collector() -> None:
    """Set the collector up for a long-running worker; call once everything is built.

    Everything built so far (modules, schemas, the app) lives for the whole run, so it is frozen
    out of the collector's generations. The worker allocates many short-lived objects per event
    and keeps many long-lived ones (cached states), so young collections run every 50,000
    allocations instead of every 700: by the processor benchmark that cuts the time per event by
    about a quarter (bench/processor.py --gc default vs --gc worker).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def message_of(event: EventT) -> Message:
    """A Faust event as the framework-free :class:`Message` the processors take (ms timestamps)."""
    m = event.message
    return Message(m.topic, m.partition, m.offset, m.key, m.value or b"", round(m.timestamp * 1000), event)


def leave_unacknowledged(events: list[EventT], lost: set[int], why: str) -> None:
    """Keep the records of ``lost`` partitions from being acknowledged when the agent's loop body
    returns: their partition's owner reads them again from the committed offsets (Faust seeks there
    after every rebalance). Acknowledged, Faust could commit them should the partition come back
    to this worker, and they would never be folded by anyone."""
    spans: dict[str, list[int]] = {}
    for event in events:
        message = event.message
        if message.partition in lost:
            message.incref()  # one reference more than the take buffer's ack releases
            span = spans.setdefault(f"{message.topic}[{message.partition}]", [message.offset, message.offset])
            span[0], span[1] = min(span[0], message.offset), max(span[1], message.offset)
    logger.warning("partitions %s may be another worker's now (%s): their records are left unacknowledged: %s",
                   sorted(lost), why,
                   ", ".join(f"{where}@{low}-{high}" for where, (low, high) in sorted(spans.items())))


class ChangelogApplied(NamedTuple):
    """A changelog record the broker acknowledged, shaped as a store's ``apply_changelog_batch``
    reads one (the call Faust's recovery makes for the records it reads back)."""

    key: bytes
    value: bytes
    message: FaustMessage


class BatchedChangelogStore:
    """:class:`StateStore` over a Faust table (created with ``use_partitioner``) whose changelog
    records leave with the batch's other records.

    ``put`` keeps the record; :meth:`Pipeline.produce` hands the batch's records to the producer
    once its signals and alerts are acknowledged, awaits their acknowledgements once, and then
    applies them to the table's local store with the store's ``apply_changelog_batch`` (one RocksDB write
    batch per partition, persisted changelog offsets included), as Faust's recovery does. Faust's
    per-write path (``send_soon`` through its buffer, one produce request per record, a stall
    whenever more than 100 are pending) cost the worker about 200 us per write; this one costs a
    record's share of a partition batch (:mod:`streams.batches`). Reads come from the local store
    (which searches the table's partitions by key), and a record written in this batch is read
    from the state cache.
    """

    def __init__(self, table: TableT) -> None:
        self.table = table
        self.topic = table.changelog_topic.get_topic_name()
        self.pending: list[tuple[bytes, bytes, int]] = []

    def get(self, key: bytes, message: Message) -> bytes | None:
        value = self.table.get(key)
        return value if value is None else bytes(value)

    def put(self, key: bytes, value: bytes, message: Message) -> None:
        self.pending.append((key, value, message.partition))

    def discard(self, partitions: set[int]) -> None:
        """Forget the records written for ``partitions`` since the last :meth:`take` (a lost partition's)."""
        self.pending = [record for record in self.pending if record[2] not in partitions]

    def take(self) -> list[tuple[bytes, bytes, int]]:
        """The records written since the last call, in order."""
        pending, self.pending = self.pending, []
        return pending

    def apply(self, written: list[tuple[tuple[bytes, bytes, int], Any]]) -> None:
        """Apply acknowledged records ((key, value, partition), record metadata) to the local store."""
        if written:
            applied = [ChangelogApplied(key, value, FaustMessage(self.topic, meta.partition, meta.offset, 0.0, 0, None,
                                                                 key, value, None))
                       for (key, value, _), meta in written]
            cast(StoreT, self.table.data).apply_changelog_batch(cast(list[EventT], applied), to_key=_same, to_value=_same)


def _same(value: Any) -> Any:
    return value


def pseudonymisation_key(settings: Settings) -> bytes:
    """The HMAC key for contact details: configured, or a random one kept in the data directory."""
    if settings.pseudonymisation_key is not None:
        return settings.pseudonymisation_key.get_secret_value().encode()
    path = settings.data_dir / "pseudonymisation.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: a state worker and a sink starting together
        # both end up with the one key that won, never with a half-written file.
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
        logger.warning("LOYALTY_PSEUDONYMISATION_KEY is not set: generated a random key in %s "
                       "(set the variable in production, or pseudonyms change with the data directory)", path)
    return path.read_bytes()


def broker_credentials(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    context = None
    if settings.kafka_security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=password,
                                     ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
    return faust.SSLCredentials(context)


UNAUTHORIZED = {"error": "missing or wrong bearer token (Authorization: Bearer <LOYALTY_API_TOKEN>)"}


def check_web_exposure(settings: Settings) -> None:
    """Refuse to serve the HTTP API beyond this machine without a token."""
    if not settings.web_is_loopback and settings.api_token is None:
        raise ValueError(f"LOYALTY_WEB_HOST={settings.web_host} is not a loopback address: set LOYALTY_API_TOKEN, "
                         "which every route but /health then requires")


def authorized(settings: Settings, header: str | None) -> bool:
    """Whether a request may use a route other than /health (always, when no token is set)."""
    return settings.api_token is None or check_bearer(header, settings.api_token.get_secret_value())


def make_sink_service(settings: Settings) -> ClickHouseSinkService:
    """The ClickHouse sink of these settings (with the test-only fault switches when configured)."""
    if settings.sink_factory is None:
        sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, settings.clickhouse_cluster)
    else:
        module, _, name = settings.sink_factory.partition(":")
        sink = getattr(importlib.import_module(module), name)(settings)
    return ClickHouseSinkService(settings, pseudonymisation_key(settings), sink)


def make_webhook_consumer(settings: Settings) -> WebhookConsumer | None:
    """The webhook delivery of these settings (hosted by the sink process), or None without a URL."""
    config = webhook_config(settings)
    return None if config is None else WebhookConsumer(settings, config)


def make_pipeline(settings: Settings, role: Role = "all") -> Pipeline:
    """The state pipeline of these settings: :class:`Pipeline`, or the class ``pipeline_factory`` names."""
    cls: type[Pipeline] = Pipeline
    if settings.pipeline_factory is not None:
        module, _, name = settings.pipeline_factory.partition(":")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            raise TypeError(f"LOYALTY_PIPELINE_FACTORY={settings.pipeline_factory} is not a subclass of Pipeline")
    return cls(settings, role=role)


class Pipeline:
    """The worker's parts, built from settings, for the ``state`` or ``all`` role."""

    def __init__(self, settings: Settings, store: str = "rocksdb://", role: Role = "all") -> None:
        if role not in ("state", "all"):
            raise ValueError(f"a Faust pipeline runs the 'state' or 'all' role, not {role!r}")
        check_web_exposure(settings)
        self.settings = settings
        self.role = role
        self.topics = Topics(settings.topic_prefix)
        self.app = faust.App(
            settings.app_id,
            # Faust would let its own variables (WEB_PORT, APP_DATADIR, BROKER_URL, ...) override
            # what is passed here: an empty environment makes the project's settings the only source.
            env={},
            broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
            broker_credentials=broker_credentials(settings),
            store=store,
            datadir=str(settings.state_dir.resolve()),
            web_enabled=True,
            web_bind=settings.web_host,
            web_port=settings.web_port,
            web_host=settings.web_host,
            canonical_url=f"http://{settings.web_host}:{settings.web_port}",
            topic_partitions=settings.partitions,
            topic_replication_factor=1,
            topic_allow_declare=True,
            key_serializer="raw",
            value_serializer="raw",
            producer_max_request_size=settings.max_message_bytes,
            producer_max_batch_size=min(settings.producer_batch_bytes, settings.max_message_bytes),
            consumer_max_fetch_size=settings.max_message_bytes,
            broker_commit_interval=1.0,
            # Changelog writes and signals of a batch arrive one record at a time: a short linger
            # lets them share produce requests (a longer one, 0.05 s, measured no better).
            producer_linger=settings.producer_linger_seconds,
            broker_session_timeout=settings.kafka_session_timeout_seconds,
            broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_seconds / 3),
            stream_wait_empty=False,
            Stream=HandoverStream,
            table_standby_replicas=0,
            logging_config=None,
        )
        # Every input partition starts at its committed offset after a rebalance, 0 included; and
        # no batch writes across a revocation (:meth:`before_revoke`).
        install_committed_seeking(self.app, (*self.topics.inputs, self.topics.alert_due), self.before_revoke,
                                  eager=settings.eager_delivery)
        #: Set while no batch is writing (between its rebalance check and its last acknowledgement).
        self.not_writing = asyncio.Event()
        self.not_writing.set()
        #: The epoch of the batch being written (:meth:`rebalance_epoch`).
        self.batch_epoch: tuple[int, int] | None = None
        #: The producer of the batches' outputs and table records (:meth:`batches`).
        self.outputs: AIOKafkaProducer | None = None
        self.sink = make_sink_service(settings) if role == "all" else None
        self.webhooks = make_webhook_consumer(settings) if role == "all" else None
        # use_partitioner: a key's partition comes from the key (the default partitioner, as
        # for the input topics), never from whichever event the stream handled last.
        self.relationships = self.app.Table(
            "relationships", default=None, partitions=settings.partitions, use_partitioner=True,
            key_type=bytes, value_type=bytes,
            help="Per-customer relationship state (Avro RelationshipState), changelog-backed.",
        )
        self.due_times = self.app.Table(
            "due_times", default=None, partitions=settings.partitions, use_partitioner=True,
            key_type=bytes, value_type=bytes,
            help="Per-customer gone-quiet due time (epoch ms as ASCII digits; empty: nothing scheduled).",
        )
        self.relationship_store = BatchedChangelogStore(self.relationships)
        self.states = customer_cache(self.relationship_store, settings.state_cache_customers)
        self.due_time_store = BatchedChangelogStore(self.due_times)
        self.alerting = Alerting(self.due_time_store, AlertRules(
            score_drop_points=settings.alert_score_drop_points, cooldown_days=settings.alert_cooldown_days,
            quiet_tolerance_gap_share=settings.alert_quiet_tolerance_gaps), settings.alert_live_window_ms)
        self.dead_letter_codec = codec("dead_letter")
        self.alert_codec = codec("alert")
        self.model = ModelParams(horizon_days=settings.churn_horizon_days)
        self.homes = KeyPartitions()  # the partition of each key, for the inputs and the outputs alike
        self.fences = Fences(settings, self.topics.state_fences)
        self.stall_watch = StallWatch(limit=settings.kafka_session_timeout_seconds / 2)
        #: Wall seconds the agent spent in each step of its batches, for ``GET /status``: waiting
        #: for Faust to deliver a batch, processing it, confirming its fences, producing its
        #: outputs and its changelog records (each until acknowledged).
        self.batch_seconds: defaultdict[str, float] = defaultdict(float)
        #: Whether the last batch drained the stream's buffer (fewer events than a batch holds).
        self.keeping_up = False
        self.processor = CustomerProcessor(
            settings, self.states, EventDecoder(settings, pseudonymisation_key(settings)), self.topics.alert_due,
            model=self.model, alerting=self.alerting, partition_of=self.partition_of)
        self.due_topic = self.app.topic(self.topics.alert_due, key_type=bytes, value_type=bytes,
                                        key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
        self._add_agent()
        self._add_timers()
        self._forget_cached_states_on_rebalance()
        self._fence_assigned_partitions()
        self._add_pages()
        self.app.service(self._lifecycle_service())

    # -- producing ----------------------------------------------------------------------------

    def rebalance_epoch(self) -> tuple[int, int] | None:
        """Which rebalance the worker's partitions and stores come from, and how many times the
        process stood still since it started (:class:`StallWatch`); None during a rebalance (from
        its first revocation until its tables are recovered). A batch writes only in the epoch it
        began in."""
        return None if self.app.rebalancing else (self.app.rebalancing_count, self.stall_watch.epoch())

    async def produce(self, effects: Effects, epoch: tuple[int, int] | None) -> set[int]:
        """Make a batch's effects durable in the written order (module docstring, steps 2 to 4):
        the fences of the partitions it read first, then its outputs, then the changelog records
        that remember them. Returns the partitions found lost, whose share was dropped.

        A batch whose ``epoch`` (:meth:`rebalance_epoch`) has passed writes nothing more: before
        its outputs, it read states while the worker's partitions and stores were changing hands;
        before its changelog, the process stood still and its partitions may be another worker's."""
        if effects.abandoned:  # stopped part way once the epoch had passed: nothing of it is written
            logger.warning("a rebalance or a stall came during the batch: it stopped part way, writes nothing, "
                           "and its records are read again")
            self.drop(effects, set(effects.partitions))
            self.states.clear()
            return set(effects.partitions)
        started = time.monotonic()
        owned = await self.fences.confirm(effects.partitions)
        self.batch_seconds["fences"] += time.monotonic() - started
        passed = self.rebalance_epoch() != epoch
        if owned and passed:
            logger.warning("a rebalance or a stall came during the batch: it writes nothing and its records are "
                           "read again")
            owned = set()
        lost = effects.partitions - owned
        if lost:
            self.drop(effects, lost)
        if passed:
            # Its reads may have cached states of stores that were changing hands, changed or not.
            self.states.clear()
        # From here to the last acknowledgement the batch is writing: a revocation waits for it.
        self.not_writing.clear()
        self.batch_epoch = epoch
        try:
            started = time.monotonic()
            await self.produce_outputs(effects)
            outputs_done = time.monotonic()
            self.batch_seconds["outputs"] += outputs_done - started
            written = await self.produce_changelog()
            self.batch_seconds["changelog"] += time.monotonic() - outputs_done
            if not written:
                lost = set(effects.partitions)
                self.drop(effects, lost)
                self.states.clear()
        finally:
            self.not_writing.set()
        return lost

    async def before_revoke(self, revoked: set[TP]) -> None:
        """Called as a rebalance takes partitions away, before Faust closes their stores: no batch
        writes across it. A batch still before its rebalance check finds the fences gone or the
        epoch changed (:meth:`produce`) and writes nothing; a batch already writing is awaited, so
        that its changelog records are acknowledged and applied to the local stores while this
        worker still owns their partitions, and before the partitions' next owner reads the
        changelog to recover them. Then the cached states are forgotten: another worker may write
        those keys before they come back."""
        inputs = {*self.topics.inputs, self.topics.alert_due}
        self.fences.revoke({tp.partition for tp in revoked if tp.topic in inputs})
        if not self.not_writing.is_set():
            limit = REVOKE_WAIT_SESSIONS * self.settings.kafka_session_timeout_seconds
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.not_writing.wait(), limit)
                logger.info("revocation waited %.3f s for the batch being written", time.monotonic() - started)
            except TimeoutError:
                logger.error("the batch being written was not acknowledged within %.0f s of a revocation: "
                             "its late changelog records may be older than the partitions' next owner's", limit)
        self.states.clear()

    def drop(self, effects: Effects, lost: set[int]) -> None:
        """Drop the share of ``lost`` partitions of a batch: its outputs, its table records (never
        sent nor applied to RocksDB), and the cached states and gone-quiet times it changed."""
        keys = effects.drop(lost)
        for store in (self.relationship_store, self.due_time_store):
            store.discard(lost)
        self.states.forget(keys)
        self.alerting.forget(keys)

    async def batches(self) -> PartitionBatches:
        """An empty set of partition batches (:mod:`streams.batches`) on the worker's output
        producer, started at its first use."""
        if self.outputs is None:
            producer = output_producer(self.settings, float(self.app.conf.producer_request_timeout))
            await producer.start()
            self.outputs = producer
        return PartitionBatches(self.outputs, self.homes)

    async def produce_outputs(self, effects: Effects) -> None:
        """Hand the batch's forwards, dead letters, signals and alerts to the producer, a batch per
        partition, and await their acknowledgements once."""
        topics = self.topics
        out = await self.batches()
        for message, home in effects.forwards:
            logger.info("forwarding %s to partition %d, where its key belongs", message.where, home)
            out.add(message.topic, message.key, message.value, home)
        for letter in effects.dead_letters:
            out.add(topics.dead_letters, letter.message.key,
                    self.dead_letter_codec.encode(letter.envelope(self.settings.max_event_bytes)))
        for key, signal in effects.signals:
            out.add(topics.signals, key, signal)
        for key, alert in effects.alerts:
            out.add(topics.alerts, key, self.alert_codec.encode(alert))
        if len(out):
            await out.send()

    async def produce_changelog(self) -> bool:
        """Hand the records the batch wrote to its tables to the producer (their changelogs), await
        their acknowledgements once, and apply them to the local stores (moving the persisted
        changelog offsets forward). Sends nothing and returns False when the batch's epoch has
        passed since its outputs were confirmed (the process stood still, or a rebalance began)."""
        if self.rebalance_epoch() != self.batch_epoch:
            logger.warning("a rebalance or a stall came while the batch's outputs were written: its changelog "
                           "records are not sent and its records are read again")
            return False
        stores = (self.relationship_store, self.due_time_store)
        records = [store.take() for store in stores]
        out = await self.batches()
        for store, mine in zip(stores, records):
            for key, value, partition in mine:
                out.add(store.topic, key, value, partition)
        acknowledged = iter(await out.send() if len(out) else ())
        for store, mine in zip(stores, records):
            store.apply([(record, next(acknowledged)) for record in mine])
        return True

    async def read_again(self, events: list[EventT], holes: dict[TP, tuple[int, int]]) -> list[EventT]:
        """Leave out (unacknowledged) the records from each hole on (:meth:`CommittedSeekingConsumer.check`:
        a partition's records skip an offset at or after its next offset to fold), and seek those
        partitions back to the first offset missing: the records skipped never reached the stream
        (:mod:`streams.offsets`), and none past them may be folded, nor their offsets committed,
        before them. Returns the batch's other records."""
        reads = cast(CommittedSeekingConsumer, self.app.consumer)
        kept = []
        for event in events:
            hole = holes.get(event.message.tp)
            if hole is not None and event.message.offset >= hole[0]:
                event.message.incref()  # one reference more than the take buffer's ack releases
            else:
                kept.append(event)
        positions = await reads.read_again(holes)
        logger.warning("records skipped, reading them again: %s (%d records of the batch held back)",
                       ", ".join(f"{tp.topic}[{tp.partition}] from {offset} (next delivered {holes[tp][1]})"
                                 for tp, offset in sorted(positions.items())),
                       len(events) - len(kept))
        return kept

    def partition_of(self, topic: str, key: bytes) -> int | None:
        """The partition Kafka's default partitioner (murmur2) gives ``key`` in ``topic``."""
        count = self.app.consumer.topic_partitions(topic) if self.app.consumer else None
        if not count:
            return None
        return self.homes(key, count)

    # -- the agent and timers -----------------------------------------------------------------

    def _add_agent(self) -> None:
        topics, settings, pipeline = self.topics, self.settings, self
        channel = self.app.topic(*topics.inputs, topics.alert_due, key_type=bytes, value_type=bytes,
                                 key_serializer="raw", value_serializer="raw", partitions=settings.partitions)

        async def track_customers(stream: faust.StreamT) -> AsyncIterator[None]:
            inputs = frozenset(topics.inputs)

            def caught_up(delivered: Mapping[TP, int]) -> bool:
                return cast(CommittedSeekingConsumer, pipeline.app.consumer).caught_up(inputs, delivered)

            batches = cast(HandoverStream, stream).take_batches(
                settings.batch_max_events, settings.batch_max_seconds, settings.batch_min_cycle_seconds,
                caught_up if settings.batch_when_caught_up else None)
            waiting_since = time.monotonic()
            async for events in batches:
                pipeline.batch_seconds["waiting"] += time.monotonic() - waiting_since
                pipeline.keeping_up = len(events) < settings.batch_max_events  # the buffer drained within the window
                epoch = pipeline.rebalance_epoch()
                generation = pipeline.app.consumer_generation_id
                # Records the take buffer got before the last rebalance (Faust skips those only as
                # they enter the stream), or a batch delivered during one while the stores change
                # hands: left unfolded, and read again from the next offsets to fold (rewind).
                stale = events if epoch is None else [e for e in events if e.message.generation_id != generation]
                if stale:
                    leave_unacknowledged(stale, {e.message.partition for e in stale},
                                         "a rebalance is under way" if epoch is None else "read before a rebalance")
                    # The consumer has moved past them: partitions still held are sought back now.
                    rewound = await cast(CommittedSeekingConsumer, pipeline.app.consumer).rewind(
                        {e.message.tp for e in stale})
                    if rewound:
                        logger.info("read again from their next offsets to fold: %s",
                                    ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(rewound.items())))
                    events = [] if epoch is None else [e for e in events if e.message.generation_id == generation]
                    if not events:
                        yield None
                        waiting_since = time.monotonic()
                        continue
                reads = cast(CommittedSeekingConsumer, pipeline.app.consumer)
                holes = reads.check(partition_offsets(e.message for e in events))
                if holes:
                    events = await pipeline.read_again(events, holes)
                spans = offset_spans(e.message for e in events)
                started = time.monotonic()

                def current(begun: tuple[int, int] | None = epoch) -> bool:
                    return pipeline.rebalance_epoch() == begun  # else the batch stops part way

                effects = await pipeline.processor.process([message_of(e) for e in events], now_ms(), current)
                pipeline.batch_seconds["processing"] += time.monotonic() - started
                lost = await pipeline.produce(effects, epoch)
                if lost:
                    leave_unacknowledged(events, lost, "the batch's effects for them were dropped")
                reads.folded({tp: span for tp, span in spans.items() if tp.partition not in lost})
                logger.debug("batch: %d records, %d customers, %s", len(events), effects.customers,
                             dict(effects.outcomes))
                yield None
                waiting_since = time.monotonic()

        # A crashed agent stops the worker (it exits non-zero) so a supervisor restarts it from the
        # last committed offsets, instead of a live process whose partitions no longer move.
        self.app.agent(channel, name="track_customers", supervisor_strategy=CrashingSupervisor)(track_customers)

    def _fence_assigned_partitions(self) -> None:
        pipeline = self
        inputs = {*self.topics.inputs, self.topics.alert_due}

        async def assign_fences(sender: Any, assigned: Any = None, *args: Any, signal: Any = None,
                                **kwargs: Any) -> None:
            # Started in the background: a batch's fence waits for its partition's producer, so
            # the rebalance itself is not held up by the broker round trips.
            pipeline.fences.assign({tp.partition for tp in assigned or () if tp.topic in inputs})

        self.app.on_partitions_assigned.connect(assign_fences)  # type: ignore[arg-type]

    def _add_timers(self) -> None:
        app, pipeline, settings = self.app, self, self.settings

        @app.timer(interval=settings.alert_check_seconds)
        async def find_quiet_customers() -> None:
            for customer_id, due in pipeline.alerting.due_now():
                await pipeline.due_topic.send(key=customer_id.encode(), value=str(due).encode())

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def rebuild_quiet_timers(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
            pipeline.alerting.rebuild(pipeline.due_times.items())

        @app.timer(interval=settings.model_params_check_seconds)
        async def follow_model_params() -> None:
            await pipeline.load_model_params()

        @app.timer(interval=STRANDED_CHECK_SECONDS)
        async def read_stranded_tails() -> None:
            # A partition's last records fetched and never delivered: no later record comes to
            # show the hole (CommittedSeekingConsumer.stranded). Judged only while the worker
            # keeps up with its stream and no rebalance is under way.
            consumer = app.consumer
            if not pipeline.keeping_up or pipeline.rebalance_epoch() is None or consumer is None:
                return
            sought = await cast(CommittedSeekingConsumer, consumer).read_tails_again(time.monotonic())
            if sought:
                logger.warning("records on the broker never delivered, reading them again: %s",
                               ", ".join(f"{tp.topic}[{tp.partition}] from {offset}" for tp, offset in sorted(sought.items())))

    async def load_model_params(self) -> None:
        """Use the newest BG/NBD parameters, churn model and co-purchase table the sink published,
        each if it differs from the one in use."""
        try:
            published = await latest_published(self.settings)
            latest = params_from_bytes(published[b"bgnbd"]) if b"bgnbd" in published else None
            learned = churn_from_bytes(published[b"churn"]) if b"churn" in published else None
            table = table_from_bytes(published[COPURCHASE_KEY]) if COPURCHASE_KEY in published else None
        except Exception as exc:  # noqa: BLE001 - the next check tries again; the old parameters stay
            logger.warning("could not read the model parameters topic: %s: %s", type(exc).__name__, exc)
            return
        if latest is not None and latest != self.model.current:
            self.model.current = latest
            logger.info("model parameters from %s: %s", latest.source, latest.as_dict())
        if learned is not None and learned != self.model.churn:
            self.model.churn = learned
            logger.info("churn model trained on %d buyers as of %s", learned.buyers, learned.trained_cutoff)
        if table is not None and table != self.model.copurchase:
            self.model.copurchase = table
            logger.info("co-purchase statistics of %d orders, computed at %d", table.orders, table.computed_at)

    def _forget_cached_states_on_rebalance(self) -> None:
        pipeline = self

        async def forget_cached_states(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
            # Partitions may have been written by another worker while this one did not own
            # them: from now on read their states from the tables again (also done on revocation,
            # by before_revoke).
            pipeline.states.clear()

        self.app.on_partitions_assigned.connect(forget_cached_states)  # type: ignore[arg-type]

    def _lifecycle_service(self) -> Any:
        pipeline = self

        class Lifecycle(faust.Service):
            """Starts and stops what lives beside the agents in ``all``: the sink and the webhook delivery."""

            async def on_start(self) -> None:
                if pipeline.sink is not None:
                    await pipeline.sink.start()
                if pipeline.webhooks is not None:
                    await pipeline.webhooks.start()
                await pipeline.load_model_params()

            @faust.Service.task
            async def _watch_for_stalls(self) -> None:
                await pipeline.stall_watch.run()

            @faust.Service.task
            async def _commit_fence_transactions(self) -> None:
                await pipeline.fences.run()

            async def on_stop(self) -> None:
                await pipeline.fences.stop()
                if pipeline.outputs is not None:
                    await pipeline.outputs.stop()
                if pipeline.webhooks is not None:
                    await pipeline.webhooks.stop()
                if pipeline.sink is not None:
                    await pipeline.sink.stop()

        return Lifecycle()

    def prepare(self) -> None:
        """Apply the ClickHouse migrations when this process owns the sink (before the worker starts)."""
        if self.sink is not None:
            self.sink.prepare()

    # -- HTTP ---------------------------------------------------------------------------------

    def profile(self, stored: bytes, now: int) -> dict[str, Any]:
        """What staff or an IVR needs to recognise a returning customer, with the signal behind it."""
        state = decode_record(stored).state
        signal = signal_to_dict(score_customer(state, max(now, state.last_seen_at or 0), self.model.current,
                                               self.model.horizon_days, learned=self.model.churn,
                                               copurchase=self.model.copurchase))
        know_me = {k: signal[k] for k in KNOW_ME_FIELDS}
        return {"customer_id": state.customer_id, "know_me": know_me, "signal": signal, "facts": facts(state)}

    def status(self) -> dict[str, Any]:
        app = self.app
        status = {
            "app_id": self.settings.app_id,
            "role": self.role,
            "processed": dict(self.processor.totals),
            "fences": self.fences.status(),
            "batch_seconds": {step: round(seconds, 3) for step, seconds in self.batch_seconds.items()},
            "read_again": getattr(app.consumer, "rereads", 0) if app.consumer else 0,
            # each owned input partition's next offset to fold, and those sought back for records
            # a batch skipped (offset sought, first offset of the batch that found the hole, times)
            "next_offsets": {f"{tp.topic}[{tp.partition}]": offset
                             for tp, offset in sorted(getattr(app.consumer, "next_offsets", {}).items())},
            "reading_again": {f"{tp.topic}[{tp.partition}]": list(where)
                              for tp, where in sorted(getattr(app.consumer, "reread_from", {}).items())},
            "model": self.model.status(),
            "assignment": sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
            if app.consumer else [],
        }
        if self.sink is not None:
            status["sink"] = self.sink.status()
        if self.webhooks is not None:
            status["webhook"] = self.webhooks.status()
        return status

    def crashed(self) -> list[str]:
        crashed = sorted(name for name, agent in self.app.agents.items() if agent.crashed)
        if self.sink is not None and self.sink.crashed is not None:
            crashed.append("clickhouse_sink")
        if self.webhooks is not None and self.webhooks.crashed is not None:
            crashed.append("webhook_delivery")
        return crashed

    def _add_pages(self) -> None:
        app = self.app
        pipeline = self

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            crashed = pipeline.crashed()
            if crashed:
                return web.json({"status": "crashed", "agents": crashed}, status=503)
            return web.json({"status": "ok", "app_id": pipeline.settings.app_id, "role": pipeline.role})

        @app.page("/status")
        async def status(web: Any, request: Any) -> Any:
            if not authorized(pipeline.settings, request.headers.get("Authorization")):
                return web.json(UNAUTHORIZED, status=401)
            return web.json(pipeline.status())

        @app.page("/customers/{customer_id}")
        class Customer(faust.web.View):
            """The know-me profile and loyalty signal of one customer, as of now.

            Answered by whichever worker owns the customer's partition: others forward it there.
            """

            async def get(self, request: Any, customer_id: str) -> Any:
                if not authorized(pipeline.settings, request.headers.get("Authorization")):
                    return self.json(UNAUTHORIZED, status=401)
                return await self.profile(request, customer_id=customer_id)  # type: ignore[call-arg]

            @app.table_route(table=pipeline.relationships, match_info="customer_id")  # type: ignore[arg-type]
            async def profile(self, request: Any, customer_id: str) -> Any:
                stored = pipeline.relationships.get(customer_id.encode())
                if stored is None:
                    return self.json({"error": f"unknown customer {customer_id}"}, status=404)
                return self.json(pipeline.profile(bytes(stored), now_ms()))

        if self.sink is None:
            return
        sink = self.sink

        @app.page("/clickhouse/query")
        class ClickHouseQuery(faust.web.View):
            """Read queries for other processes: this process owns the embedded engine's directory."""

            async def post(self, request: Any) -> Any:
                if not authorized(pipeline.settings, request.headers.get("Authorization")):
                    return self.json(UNAUTHORIZED, status=401)
                payload, code = await answer_query(sink, await request.json())
                return self.json(payload, status=code)

        @app.page("/model/refit")
        class ModelRefit(faust.web.View):
            """Refit the model now (as the refit timer does) and publish it to the state workers."""

            async def post(self, request: Any) -> Any:
                if not authorized(pipeline.settings, request.headers.get("Authorization")):
                    return self.json(UNAUTHORIZED, status=401)
                return self.json(await sink.refit_all())


async def answer_query(sink: ClickHouseSinkService, body: Any) -> tuple[dict[str, Any], int]:
    """The answer (and HTTP status) to a ``{"sql": ...}`` read query."""
    sql = str(body.get("sql", "") if isinstance(body, dict) else "")
    try:
        columns, rows = await sink.query(sql)
    except QueryRefused as exc:
        return {"error": f"refused: {exc.reason}"}, 400
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who sent the SQL
        return {"error": f"{type(exc).__name__}: {exc}"}, 400
    return {"columns": columns, "rows": [list(map(_jsonable, r)) for r in rows]}, 200


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


async def serve_sink(settings: Settings) -> None:
    """The ``sink`` role: the ClickHouse sink, the webhook delivery when a webhook is configured,
    and their HTTP API (health, status, read queries), until SIGINT or SIGTERM."""
    import signal

    from aiohttp import web

    check_web_exposure(settings)
    # A batch's rows are built on a thread of their own while the event loop answers reads, and a
    # read needs the interpreter lock at each of its steps (the request, the query thread, the
    # answer): a thread waiting for it gets it after the switch interval at most, 5 ms by
    # default, so a BI query behind a batch being built could wait 5 ms per step.
    sys.setswitchinterval(SINK_SWITCH_INTERVAL_SECONDS)
    service = make_sink_service(settings)
    webhooks = make_webhook_consumer(settings)
    await asyncio.get_running_loop().run_in_executor(None, service.prepare)

    def crashed() -> list[str]:
        names = ["clickhouse_sink"] if service.crashed is not None else []
        return names + (["webhook_delivery"] if webhooks is not None and webhooks.crashed is not None else [])

    async def health(request: web.Request) -> web.Response:
        if crashed():
            return web.json_response({"status": "crashed", "agents": crashed()}, status=503)
        return web.json_response({"status": "ok", "app_id": settings.app_id, "role": "sink"})

    async def status(request: web.Request) -> web.Response:
        if not authorized(settings, request.headers.get("Authorization")):
            return web.json_response(UNAUTHORIZED, status=401)
        body = {"app_id": settings.app_id, "role": "sink", "sink": service.status()}
        if webhooks is not None:
            body["webhook"] = webhooks.status()
        return web.json_response(body)

    async def query(request: web.Request) -> web.Response:
        if not authorized(settings, request.headers.get("Authorization")):
            return web.json_response(UNAUTHORIZED, status=401)
        payload, code = await answer_query(service, await request.json())
        return web.json_response(payload, status=code)

    async def refit(request: web.Request) -> web.Response:
        if not authorized(settings, request.headers.get("Authorization")):
            return web.json_response(UNAUTHORIZED, status=401)
        return web.json_response(await service.refit_all())

    web_app = web.Application()
    web_app.add_routes([web.get("/health", health), web.get("/status", status), web.post("/clickhouse/query", query),
                        web.post("/model/refit", refit)])
    runner = web.AppRunner(web_app)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    if webhooks is not None:
        await webhooks.start()
    logger.info("ClickHouse sink running (group %s), HTTP on %s", service.group_id, settings.web_url)
    try:
        while not stop.is_set():
            if service.crashed is not None:
                raise RuntimeError(f"the ClickHouse sink crashed: {service.crashed!r}")
            if webhooks is not None and webhooks.crashed is not None:
                raise RuntimeError(f"the webhook delivery crashed: {webhooks.crashed!r}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        if webhooks is not None:
            await webhooks.stop()
        await service.stop()
        await runner.cleanup()
