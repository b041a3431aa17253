"""The Faust application: topics, the relationships table, thin agents and the HTTP API.

Agents take raw bytes in batches (``Stream.take_events``), hand them to
:class:`~streams.processing.BatchProcessor`, and return; Faust acks the batch
after the loop body has run, so offsets never pass what ClickHouse acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import ssl
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import faust
import faust.streams
import faust.web
from aiokafka.partitioner import murmur2
from faust.types import EventT
from mode.supervisors import CrashingSupervisor

from config.settings import Settings
from config.topics import Topics
from domain.alerts import AlertRules
from domain.model import BgNbdParams, score_customer, signal_to_dict
from domain.records import EventKind
from domain.relationship import facts
from schemas import codec
from sinks.clickhouse import AsyncSinkRunner, ClickHouseSink, SinkBatch, now_ms
from sinks.faults import make_sink
from sinks.webhook import WebhookConfig, WebhookDelivery
from streams.alerting import Alerting
from streams.params import REFIT_SAMPLE, REFIT_SQL, fit_from_rows, load_params, store_params
from streams.processing import (
    BatchProcessor,
    DeadLetter,
    Message,
    ModelParams,
    customer_cache,
    decode_record,
)

logger = logging.getLogger(__name__)

READ_ONLY_PREFIXES = ("select", "with", "show", "describe", "desc", "exists")


@contextlib.contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event while the body runs.

    Faust picks the table partition (RocksDB shard and changelog partition) from the current
    event. In a batch taken with ``take_events`` that is whatever came last, possibly another
    partition's event, so each state write names the event it is done for.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


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
    return Message(m.topic, m.partition, m.offset, m.key, m.value, round(m.timestamp * 1000), event)


class TableStore:
    """:class:`StateStore` over a Faust table."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: bytes, message: Message) -> bytes | None:
        with acting_for(message.handle):
            value = self.table.get(key)
        return value if value is None else bytes(value)

    def put(self, key: bytes, value: bytes, message: Message) -> None:
        with acting_for(message.handle):
            self.table[key] = value


def pseudonymisation_key(settings: Settings) -> bytes:
    """The HMAC key for contact details: configured, or a random one kept in the data directory."""
    if settings.pseudonymisation_key is not None:
        return settings.pseudonymisation_key.get_secret_value().encode()
    path = settings.data_dir / "pseudonymisation.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
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


class Pipeline:
    """The worker's parts, built from settings."""

    def __init__(self, settings: Settings, store: str = "rocksdb://") -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.app = faust.App(
            settings.app_id,
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
            consumer_max_fetch_size=settings.max_message_bytes,
            broker_commit_interval=1.0,
            # Changelog writes and signals of a batch arrive one record at a time: a short linger
            # lets them share produce requests (a longer one, 0.05 s, measured no better).
            producer_linger=settings.producer_linger_seconds,
            broker_session_timeout=settings.kafka_session_timeout_seconds,
            broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_seconds / 3),
            stream_wait_empty=False,
            table_standby_replicas=0,
            logging_config=None,
        )
        self.sink = make_sink(settings.clickhouse_url, settings.clickhouse_database, settings.fault_injection_dir)
        self.runner = AsyncSinkRunner(self.sink, max_backoff=settings.sink_retry_max_seconds,
                                      reader=ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database))
        self.relationships = self.app.Table(
            "relationships", default=None, partitions=settings.partitions,
            key_type=bytes, value_type=bytes,
            help="Per-customer relationship state (Avro RelationshipState), changelog-backed.",
        )
        self.dead_letter_topic = self.app.topic(
            self.topics.dead_letters, key_type=bytes, value_type=bytes, partitions=settings.partitions,
            key_serializer="raw", value_serializer="raw",
        )
        self.alert_topic = self.app.topic(
            self.topics.alerts, key_type=bytes, value_type=bytes, partitions=settings.partitions,
            key_serializer="raw", value_serializer="raw",
        )
        self.due_times = self.app.Table(
            "due_times", default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes,
            help="Per-customer gone-quiet due time (epoch ms as ASCII digits; empty: nothing scheduled).",
        )
        self.states = customer_cache(TableStore(self.relationships), settings.state_cache_customers)
        self.alerting = Alerting(TableStore(self.due_times), AlertRules(
            score_drop_points=settings.alert_score_drop_points, cooldown_days=settings.alert_cooldown_days,
            quiet_tolerance_gap_share=settings.alert_quiet_tolerance_gaps))
        self.webhook: WebhookDelivery | None = None
        if settings.webhook_url:
            if settings.webhook_secret is None:
                raise ValueError("LOYALTY_WEBHOOK_URL is set but LOYALTY_WEBHOOK_SECRET is not")
            self.webhook = WebhookDelivery(WebhookConfig(
                url=settings.webhook_url, secret=settings.webhook_secret.get_secret_value(),
                timeout_seconds=settings.webhook_timeout_seconds, max_attempts=settings.webhook_max_attempts,
                backoff_cap_seconds=settings.webhook_backoff_cap_seconds,
            ), on_give_up=self.webhook_gave_up)
        self.dead_letter_codec = codec("dead_letter")
        self.signal_codec = codec("loyalty_signal")
        self.alert_codec = codec("alert")
        self.model = ModelParams(horizon_days=settings.churn_horizon_days)
        self.processors: dict[EventKind, BatchProcessor] = {}
        key = pseudonymisation_key(settings)
        for kind in ("purchase", "call", "visit"):
            self.processors[kind] = BatchProcessor(settings, kind, self.states, self.runner, self.publish_dead_letter,
                                                   pseudonymisation_key=key,
                                                   partition_of=self.partition_of, forward=self.forward,
                                                   model=self.model, publish_signals=self.publish_signals,
                                                   alerting=self.alerting, publish_alert=self.publish_alert)
            self._add_agent(kind)
        self._add_quiet_check()
        self._forget_cached_states_on_rebalance()
        self._add_pages()
        self.app.service(self._startup_service())

        @self.app.timer(interval=settings.model_refit_minutes * 60.0)
        async def refit_model_parameters() -> None:
            await self.refit_model()

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        value = self.dead_letter_codec.encode(letter.envelope(self.settings.max_event_bytes))
        await self.dead_letter_topic.send(key=letter.message.key, value=value)

    def partition_of(self, topic: str, key: bytes) -> int | None:
        """The partition Kafka's default partitioner (murmur2) gives ``key`` in ``topic``."""
        count = self.app.consumer.topic_partitions(topic) if self.app.consumer else None
        if not count:
            return None
        return (murmur2(key) & 0x7FFFFFFF) % count

    async def forward(self, message: Message, partition: int) -> None:
        """Re-send a record to the partition of its key; waits for the broker's acknowledgement."""
        await self.app.producer.send_and_wait(message.topic, message.key, message.value, partition,
                                              None, None)

    async def publish_signals(self, signals: Sequence[tuple[bytes, dict[str, Any]]]) -> None:
        """Send a batch's signals straight to the producer, then wait for the broker's
        acknowledgements once for all of them (not once per record)."""
        producer, topic, encode = self.app.producer, self.topics.signals, self.signal_codec.encode
        pending = [await producer.send(topic, key, encode(signal), None, None, None) for key, signal in signals]
        await asyncio.gather(*pending)

    def _forget_cached_states_on_rebalance(self) -> None:
        pipeline = self

        async def forget_cached_states(sender: Any = None, *args: Any, **kwargs: Any) -> None:
            # Partitions may have been written by another worker while this one did not own
            # them: from now on read their states from the tables again.
            pipeline.states.clear()

        self.app.on_partitions_revoked.connect(forget_cached_states)
        self.app.on_partitions_assigned.connect(forget_cached_states)

    async def publish_alert(self, key: bytes, alert: dict[str, Any]) -> None:
        await self.alert_topic.send(key=key, value=self.alert_codec.encode(alert))
        if self.webhook is not None:
            self.webhook.submit(alert)  # never waits: delivery runs in the background

    async def webhook_gave_up(self, alert: dict[str, Any], reason: str) -> None:
        message = Message(self.topics.alerts, -1, -1, str(alert["customer_id"]).encode(),
                          self.alert_codec.encode(alert), now_ms())
        await self.publish_dead_letter(DeadLetter("deliver", message, "WebhookGaveUp", reason, now_ms(),
                                                  payload=message.value))

    def _add_quiet_check(self) -> None:
        """The gone-quiet timers: a timer finds due customers, an agent on their partition scores them."""
        app, pipeline, settings = self.app, self, self.settings
        due_topic = app.topic(self.topics.alert_due, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=settings.partitions)

        @app.timer(interval=settings.alert_check_seconds)
        async def find_quiet_customers() -> None:
            for customer_id, due in pipeline.alerting.due_now():
                await due_topic.send(key=customer_id.encode(), value=str(due).encode())

        @app.on_rebalance_complete.connect
        async def rebuild_quiet_timers(sender: Any = None, **kwargs: Any) -> None:
            pipeline.alerting.rebuild(pipeline.due_times.items())

        async def check_quiet_customers(stream: faust.StreamT) -> AsyncIterator[None]:
            async for events in stream.take_events(settings.batch_max_events, within=settings.batch_max_seconds):
                batch = SinkBatch()
                alerts: list[tuple[bytes, dict[str, Any]]] = []
                now = now_ms()
                for e in events:
                    message = message_of(e)
                    batch.cover(message.topic, message.partition, message.offset)
                    record = pipeline.states.get(message.key, message)
                    if record is None:
                        continue
                    as_of = max(int(message.value), record.state.last_seen_at or 0)
                    scored = score_customer(record.state, as_of, pipeline.model.current, pipeline.model.horizon_days)
                    alerts += [(message.key, a) for a in pipeline.alerting.evaluate(
                        message.key, message, record, scored, batch, now, store_due_time=True)]
                    pipeline.states.put(message.key, record, message)
                await pipeline.runner.write(batch)
                for key, alert in alerts:
                    await pipeline.publish_alert(key, alert)
                yield None

        check_quiet_customers.__name__ = check_quiet_customers.__qualname__ = "check_quiet_customers"
        app.agent(due_topic, name="check_quiet_customers", supervisor_strategy=CrashingSupervisor)(check_quiet_customers)

    def _add_agent(self, kind: EventKind) -> None:
        topic = self.app.topic(self.topics.for_kind(kind), key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw", partitions=self.settings.partitions)
        processor = self.processors[kind]
        settings = self.settings

        async def agent(stream: faust.StreamT) -> AsyncIterator[None]:
            async for events in stream.take_events(settings.batch_max_events, within=settings.batch_max_seconds):
                messages = [message_of(e) for e in events]
                report = await processor.process(messages)
                logger.debug("%s batch: %d messages, %s", kind, report.messages, dict(report.outcomes))
                yield None

        name = {"purchase": "track_purchases", "call": "track_calls", "visit": "track_visits"}[kind]
        agent.__name__ = agent.__qualname__ = name
        # A crashed agent stops the worker (it exits non-zero) so a supervisor restarts it from the
        # last committed offsets, instead of a live process whose partitions no longer move.
        self.app.agent(topic, name=name, supervisor_strategy=CrashingSupervisor)(agent)

    def _startup_service(self) -> Any:
        pipeline = self

        class SinkSetup(faust.Service):
            """Closes the ClickHouse client when the worker stops."""

            async def on_start(self) -> None:
                if pipeline.webhook is not None:
                    await pipeline.webhook.start()

            async def on_stop(self) -> None:
                if pipeline.webhook is not None:
                    await pipeline.webhook.stop(10.0)
                await asyncio.get_running_loop().run_in_executor(None, pipeline.runner.shutdown)

        return SinkSetup()

    def prepare(self) -> None:
        """Apply ClickHouse migrations and load the newest model parameters; called before the
        worker starts, so agents find their tables and score with the fitted population."""
        applied = self.sink.migrate()
        if applied:
            logger.info("ClickHouse schema migrated: %s", ", ".join(applied))
        latest = load_params(self.sink)
        if latest is not None:
            self.model.current = latest
            logger.info("model parameters from %s: %s", latest.source, latest.as_dict())

    async def refit_model(self) -> BgNbdParams:
        """Refit BG/NBD on (a sample of) the buyers in ClickHouse and use the result from now on."""
        now = now_ms()
        _, rows = await self.runner.query(REFIT_SQL.format(db=self.settings.clickhouse_database, now=now,
                                                           sample=REFIT_SAMPLE))
        loop = asyncio.get_running_loop()
        params = await loop.run_in_executor(None, fit_from_rows, rows)
        self.model.current = params
        await self.runner.call(store_params, self.sink, params, now)
        logger.info("refitted BG/NBD on %d buyers: %s", params.buyers, params.as_dict())
        return params

    def profile(self, stored: bytes, now: int) -> dict[str, Any]:
        """What staff or an IVR needs to recognise a returning customer, with the signal behind it."""
        state = decode_record(stored).state
        signal = signal_to_dict(score_customer(state, max(now, state.last_seen_at or 0), self.model.current,
                                               self.model.horizon_days))
        know_me = {k: signal[k] for k in (
            "greeting_hint", "last_purchase_at", "last_purchase_categories", "last_purchase_skus",
            "last_purchase_channel", "last_purchase_location_id", "favourite_category", "preferred_channel",
            "open_issues")}
        return {"customer_id": state.customer_id, "know_me": know_me, "signal": signal, "facts": facts(state)}

    def totals(self) -> dict[str, dict[str, int]]:
        return {kind: dict(p.totals) for kind, p in self.processors.items()}

    def _add_pages(self) -> None:
        app = self.app
        pipeline = self

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            crashed = sorted(name for name, agent in app.agents.items()
                             if agent.crashed or any(actor.crashed for actor in getattr(agent, "_actors", ())))
            if crashed:
                return web.json({"status": "crashed", "agents": crashed}, status=503)
            return web.json({"status": "ok", "app_id": pipeline.settings.app_id})

        @app.page("/status")
        async def status(web: Any, request: Any) -> Any:
            return web.json({
                "app_id": pipeline.settings.app_id,
                "processed": pipeline.totals(),
                "sink_retries": pipeline.runner.retries,
                "assignment": sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
                if app.consumer else [],
            })

        @app.page("/customers/{customer_id}")
        class Customer(faust.web.View):
            """The know-me profile and loyalty signal of one customer, as of now.

            Answered by whichever worker owns the customer's partition: others forward it there.
            """

            @app.table_route(table=pipeline.relationships, match_info="customer_id")
            async def get(self, request: Any, customer_id: str) -> Any:
                stored = pipeline.relationships.get(customer_id.encode())
                if stored is None:
                    return self.json({"error": f"unknown customer {customer_id}"}, status=404)
                return self.json(pipeline.profile(bytes(stored), now_ms()))

        @app.page("/clickhouse/query")
        class ClickHouseQuery(faust.web.View):
            """Read queries for other processes: the worker owns the embedded engine's directory."""

            async def post(self, request: Any) -> Any:
                body = await request.json()
                sql = str(body.get("sql", "")).strip().rstrip(";")
                if not sql.lower().startswith(READ_ONLY_PREFIXES):
                    return self.json({"error": "only read queries (SELECT, WITH, SHOW, DESCRIBE, EXISTS)"}, status=400)
                try:
                    columns, rows = await pipeline.runner.query(sql)
                except Exception as exc:  # noqa: BLE001 - reported to the caller, who sent the SQL
                    return self.json({"error": f"{type(exc).__name__}: {exc}"}, status=400)
                return self.json({"columns": columns, "rows": [list(map(_jsonable, r)) for r in rows]})


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
