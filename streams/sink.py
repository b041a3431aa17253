"""The ClickHouse sink: a plain Kafka consumer group that copies the topics into ClickHouse.

It reads the input topics (raw interaction rows, decoded and validated by the same
:class:`~streams.decoding.EventDecoder` as the state worker, so it stores exactly the events the
worker accepted), the signals topic (``signals_current``, which fills ``signals_history`` through
a materialized view, ``tier_days`` (the signal's own day and the earlier event days it closed)
and, from the facts each signal carries, ``relationships``), the alerts topic and the dead-letter
topic.

One loop, batch after batch:

1. fetch up to ``sink_batch_max_records`` records, waiting at most ``sink_batch_max_seconds``;
2. build one columnar insert per table, each with a deduplication token made of the batch's
   topic/partition/offset ranges (a retried batch inserts nothing new); the signals of the current
   writer schema are not decoded but go as they are into one Avro container, inserted into
   ``signals_avro`` whose materialized views fill their tables (migration 0012);
3. insert, retrying what can succeed later with bounded back-off (the batch, and so its
   offsets, is held meanwhile); the container first, and if ClickHouse refuses it for good (a
   corrupt record), its signals are decoded here into rows that join the batch's inserts;
4. commit the batch's offsets, only after ClickHouse acknowledged every table.

A crash between 3 and 4 replays the batch: the same records in the same ranges give the same
tokens, and records replayed in other boundaries collapse on the ReplacingMergeTree keys.

The sink also owns the embedded engine's reads (BI, the report, ``loyalty query``) and, on a
timer, refits the BG/NBD parameters and counts the co-purchase statistics
(:mod:`streams.copurchase`), publishing both on the model-params topic for the state workers.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.partitioner import DefaultPartitioner

from config.settings import Settings
from config.topics import Topics
from domain.model import BgNbdParams
from domain.model.suggest import CoPurchaseTable
from schemas import HEADER_SIZE, MAGIC, DecodeError, codec
from sinks.avro import SIGNALS_TABLE, container_header, signal_container_schema, signal_suffix
from sinks.clickhouse import AsyncSinkRunner, ClickHouseSink, SinkBatch, TableRows, now_ms
from sinks.readonly import check_read_query, read_settings
from sinks.rows import (
    ALERT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    RAW_COLUMNS,
    RAW_TABLE,
    SIGNAL_COLUMNS,
    SOURCE_COLUMNS,
    TIER_DAY_COLUMNS,
    alert_row,
    dead_letter_row,
    raw_values,
    signal_values,
    tier_day_values,
)
from sinks.threads import NamedExecutor
from streams.churn_params import CHURN_EVENTS_SQL, CHURN_SAMPLE, churn_to_bytes, fit_churn_from_rows
from streams.copurchase import COPURCHASE_KEY, COPURCHASE_SQL, table_from_rows, table_to_bytes
from streams.decoding import EventDecoder
from streams.messages import DeadLetter, Message
from streams.params import REFIT_SAMPLE, REFIT_SQL, fit_from_rows, load_params, store_params

logger = logging.getLogger(__name__)


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Connection settings in aiokafka's names."""
    config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap,
                              "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = (settings.kafka_sasl_password.get_secret_value()
                                         if settings.kafka_sasl_password else None)
    if settings.kafka_security_protocol.endswith("SSL"):
        config["ssl_context"] = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    return config


def params_to_bytes(params: BgNbdParams) -> bytes:
    return orjson.dumps(params.as_dict())


def params_from_bytes(data: bytes) -> BgNbdParams:
    values = orjson.loads(data)
    return BgNbdParams(values["r"], values["alpha"], values["a"], values["b"], source=values["source"],
                       buyers=int(values["buyers"]), log_likelihood=values.get("log_likelihood"),
                       population_gap_days=values["population_gap_days"])


PUBLISHED_LOOKBACK = 200
"""Records read back from the end of the model-params topic to find the newest of each key (the
sink publishes each key once per refit, so every key's newest record is among the last few)."""


async def latest_published(settings: Settings, tail: int = PUBLISHED_LOOKBACK) -> dict[bytes, bytes]:
    """The newest value of each key among the last ``tail`` records of the model-params topic."""
    topic = Topics(settings.topic_prefix).model_params
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), group_id=None, enable_auto_commit=False,
                                client_id=f"{settings.app_id}-params")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = max(end - tail, (await consumer.beginning_offsets([tp]))[tp])  # retention may have deleted older ones
        latest: dict[bytes, bytes] = {}
        if end == 0:
            return latest
        consumer.seek(tp, start)
        position = start
        while position < end:
            records = (await consumer.getmany(tp, timeout_ms=5000)).get(tp, [])
            if not records:
                break
            for record in records:
                if record.key is not None and record.value:
                    latest[record.key] = record.value
            position = records[-1].offset + 1
        return latest
    finally:
        await consumer.stop()


HOMES_KEPT = 500_000
"""Keys whose partition the sink remembers (about 50 MB at most) before it starts afresh."""


def sink_group_id(settings: Settings) -> str:
    """The consumer group of the ClickHouse sinks (the state workers' group is the app id)."""
    return f"{settings.app_id}-clickhouse-sink"


FETCH_MIN_BYTES = 256 * 1024


def fetch_batching(batch_seconds: float) -> dict[str, int]:
    """The sink consumer's fetch settings: the broker answers once it has ``FETCH_MIN_BYTES`` or
    after half the batch time. aiokafka's default (one byte) makes live traffic arrive a few
    records per fetch, each fetch paid for by the broker and by this process, though the records
    wait for the batch's insert anyway."""
    return {"fetch_min_bytes": FETCH_MIN_BYTES, "fetch_max_wait_ms": max(1, int(batch_seconds * 500))}


class ClickHouseSinkService:
    """Consumes the topics into ClickHouse; see the module docstring for the order of effects."""

    def __init__(self, settings: Settings, pseudonymisation_key: bytes, sink: ClickHouseSink,
                 signals_in_avro: bool = True) -> None:
        """``signals_in_avro``: signals of the current schema go to ClickHouse as they travel, in
        one Avro container per batch (False: every signal is decoded and its rows built here)."""
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.sink = sink
        self.runner = AsyncSinkRunner(sink, max_backoff=settings.sink_retry_max_seconds,
                                      reader=ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database))
        self.decoder = EventDecoder(settings, pseudonymisation_key)
        self.partitioner = DefaultPartitioner()
        self._homes_by_count: dict[tuple[int, ...], dict[bytes, int]] = {}
        self.signal_codec = codec("loyalty_signal")
        self.signals_in_avro = signals_in_avro
        self._signal_header = MAGIC + self.signal_codec.fingerprint
        self._signal_container = container_header(signal_container_schema(self.signal_codec.schema))
        self.alert_codec = codec("alert")
        self.dead_letter_codec = codec("dead_letter")
        self.group_id = sink_group_id(settings)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.totals: Counter[str] = Counter()
        self.batches = 0
        self.last_committed_at = 0.0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # A batch's rows are built on a thread of their own, so the event loop answers reads
        # (BI, /status) meanwhile instead of after the whole batch.
        self._rows_executor = NamedExecutor("sink-rows")

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Apply the ClickHouse migrations (before anything is consumed)."""
        applied = self.sink.migrate()
        if applied:
            logger.info("ClickHouse schema migrated: %s", ", ".join(applied))
        self.sink.refresh_tiers_now_every(self.settings.clickhouse_tiers_now_refresh_seconds)

    async def start(self) -> None:
        config = aiokafka_config(self.settings)
        self.consumer = AIOKafkaConsumer(
            *self.topics.inputs, self.topics.signals, self.topics.alerts, self.topics.dead_letters,
            **config, group_id=self.group_id, client_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=self.settings.max_message_bytes,
            fetch_max_bytes=max(self.settings.max_message_bytes, 52_428_800),
            session_timeout_ms=int(self.settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(max(1.0, self.settings.kafka_session_timeout_seconds / 3) * 1000),
            max_poll_interval_ms=600_000, **fetch_batching(self.settings.sink_batch_max_seconds),
        )
        self.producer = AIOKafkaProducer(**config, client_id=f"{self.group_id}-params")
        await self.producer.start()
        await self.consumer.start()
        self._tasks = [asyncio.ensure_future(self._consume_forever()), asyncio.ensure_future(self._refit_forever())]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; errors were logged
                pass
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.runner.shutdown)
        self._rows_executor.shutdown(wait=True)

    @property
    def crashed(self) -> BaseException | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    # -- the copy loop ------------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        try:
            while not self._stopping.is_set():
                await self.copy_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the ClickHouse sink stopped")
            raise

    async def fetch(self) -> dict[TopicPartition, list[Any]]:
        """Records for one batch: as many as arrive within the batch time of the first, up to the
        batch size; none when nothing arrives within a batch time.

        The batch's clock starts at its first record, not when the fetch began: a burst (the
        signals of one state-worker batch) then lands in one batch instead of being cut wherever
        an empty window happened to end, and no record waits longer than the batch time."""
        assert self.consumer is not None
        limit, wait = self.settings.sink_batch_max_records, self.settings.sink_batch_max_seconds
        deadline: float | None = None
        fetched: dict[TopicPartition, list[Any]] = {}
        count = 0
        while count < limit:
            left = wait if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            more = await self.consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=limit - count)
            if not more:
                if deadline is None:
                    break  # nothing for a whole batch time
                continue
            if deadline is None:
                deadline = time.monotonic() + wait
            for tp, records in more.items():
                fetched.setdefault(tp, []).extend(records)
                count += len(records)
        return fetched

    async def copy_once(self) -> int:
        """Fetch, insert and commit one batch; return its record count."""
        assert self.consumer is not None
        fetched = await self.fetch()
        if not fetched:
            return 0
        partitions = {tp.topic: self.consumer.partitions_for_topic(tp.topic) for tp in fetched}
        batch = await asyncio.get_running_loop().run_in_executor(
            self._rows_executor, self.rows, fetched, now_ms(), partitions)
        await self.runner.write(batch)
        try:
            await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
        except CommitFailedError as exc:
            # The group rebalanced while the batch was written: its partitions' new owners copy
            # the records again, and ClickHouse's keys collapse the rows written twice.
            logger.warning("batch written but its offsets not committed (%s); it will be copied again", exc)
            self.totals["uncommitted_batches"] += 1
            return 0
        self.batches += 1
        self.last_committed_at = time.time()
        count = sum(len(records) for records in fetched.values())
        self.totals["records"] += count
        return count

    def rows(self, fetched: dict[TopicPartition, list[Any]], now: int,
             partitions: dict[str, set[int] | None] | None = None) -> SinkBatch:
        """The batch's rows, table by table; ``partitions``: each topic's partitions, read from
        the consumer before (this may run off the event loop), else read here."""
        batch = SinkBatch()
        topics = self.topics
        for tp, records in fetched.items():
            if not records:
                continue
            # a partition's records come in offset order: its first and last give its range
            batch.cover(tp.topic, tp.partition, records[0].offset)
            batch.cover(tp.topic, tp.partition, records[-1].offset)
            if tp.topic in self.decoder.kinds:
                self._raw_rows(batch, tp, records, now, partitions)
            elif tp.topic == topics.signals:
                self._signal_rows(batch, records, now)
            elif tp.topic == topics.alerts:
                rows = batch.rows("alerts", ALERT_COLUMNS)
                for record in self._decoded(self.alert_codec, records):
                    rows.append(alert_row(record, now))
            elif tp.topic == topics.dead_letters:
                rows = batch.rows("dead_letters", DEAD_LETTER_COLUMNS)
                for record in self._decoded(self.dead_letter_codec, records):
                    rows.append(dead_letter_row(record))
        return batch

    def _raw_rows(self, batch: SinkBatch, tp: TopicPartition, records: list[Any], now: int,
                  known: dict[str, set[int] | None] | None = None) -> None:
        kind = self.decoder.kinds[tp.topic]
        rows = batch.rows(RAW_TABLE[kind], RAW_COLUMNS[kind] + SOURCE_COLUMNS)
        if known is not None:
            partitions = known.get(tp.topic)
        else:
            partitions = self.consumer.partitions_for_topic(tp.topic) if self.consumer else None
        all_partitions = sorted(partitions) if partitions else None
        homes = self._homes(all_partitions) if all_partitions is not None else None
        topic, partition = tp.topic, tp.partition
        for record in records:
            key = record.key
            if key is not None and homes is not None and all_partitions is not None:
                # The state worker forwards a misplaced record to its key's partition; the copy
                # that arrives there is the one stored.
                home = homes.get(key)
                if home is None:
                    home = homes[key] = self.partitioner(key, all_partitions, all_partitions)
                if home != partition:
                    self.totals["skipped_misplaced"] += 1
                    continue
            message = Message(topic, partition, record.offset, key, record.value or b"", record.timestamp)
            event = self.decoder.decode(message, now)
            if isinstance(event, DeadLetter):
                self.totals["skipped_invalid"] += 1  # the state worker dead-letters it, with its reason
                continue
            rows.add((*raw_values(event), topic, partition, record.offset, now))

    def _homes(self, all_partitions: list[int]) -> dict[bytes, int]:
        """The partition of each key seen, for this partition count (a key's hash is the same
        every time; customers come back). Bounded: forgotten at :data:`HOMES_KEPT` keys."""
        homes = self._homes_by_count.setdefault(tuple(all_partitions), {})
        if len(homes) > HOMES_KEPT:
            homes.clear()
        return homes

    def _signal_rows(self, batch: SinkBatch, records: list[Any], now: int) -> None:
        """Signals of the current writer schema go as they are into the batch's Avro container
        (migration 0012's views build the rows in ClickHouse); the rest, and all of them should
        ClickHouse refuse the container, are decoded here (:meth:`_decoded_signal_rows`)."""
        if not self.signals_in_avro:
            self._decoded_signal_rows(records, now, batch)
            return
        header, size = self._signal_header, HEADER_SIZE
        current: list[Any] = []
        bodies: list[bytes] = []
        others: list[Any] = []
        for record in records:
            value = record.value or b""
            if value[:size] == header:
                current.append(record)
                bodies.append(value[size:])
            else:
                others.append(record)  # an older writer's, or a wrong header: decoded (or skipped) here
        if others:
            self._decoded_signal_rows(others, now, batch)
        if current:
            insert = batch.avro_insert(SIGNALS_TABLE, self._signal_container)
            insert.container.add(bodies, signal_suffix(now))
            insert.fallbacks.append(lambda into: self._decoded_signal_rows(current, now, into))

    def _decoded_signal_rows(self, records: list[Any], now: int, batch: SinkBatch) -> None:
        # signals_history is filled from this insert by signals_history_mv (migration 0011);
        # each table's values are taken from the datum in column order, with no row dict between
        current = batch.rows("signals_current", SIGNAL_COLUMNS)
        days = batch.rows("tier_days", TIER_DAY_COLUMNS)
        relationships: TableRows | None = None
        pick_facts: Callable[[dict[str, Any]], Any] = tuple
        for signal in self._decoded(self.signal_codec, records):
            facts = signal.get("relationship")
            if facts is None:
                continue  # written before signals carried their facts: nothing to version it by
            version, spend = facts["version"], facts["spend_365d_minor"]
            current.add(signal_values(signal, version, spend, now))
            if relationships is None:
                relationships = batch.rows("relationships", (*facts, "customer_id", "updated_at"))
                pick_facts = operator.itemgetter(*relationships.columns[:-2])
            relationships.add((*pick_facts(facts), signal["customer_id"], now))
            for day in tier_day_values(signal, version, spend, now):
                days.add(day)

    def _decoded(self, avro: Any, records: list[Any]) -> list[dict[str, Any]]:
        out = []
        for record in records:
            try:
                out.append(avro.decode(record.value or b""))
            except DecodeError as exc:
                # Written by this project's own workers: a record that does not decode is a bug
                # or a foreign producer; it is logged and skipped, never retried forever.
                logger.error("skipping %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc)
                self.totals["skipped_undecodable"] += 1
        return out

    # -- the model refit ----------------------------------------------------------------------

    async def _refit_forever(self) -> None:
        latest = await self.runner.call(load_params, self.sink)
        if latest is not None:
            await self.publish_params(latest)
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.model_refit_minutes * 60.0)
            await self.refit_all()

    async def refit_all(self) -> dict[str, Any]:
        """Refit BG/NBD, train the churn model and count the co-purchases, publishing each on the
        model-params topic; one failing leaves the others (and the workers keep its old version).
        Returns what was published, for ``POST /model/refit``."""
        done: dict[str, Any] = {}
        try:
            done["bgnbd_buyers"] = (params := await self.refit_model()).buyers
            await self.publish_params(params)
        except Exception:  # noqa: BLE001 - the next refit tries again; the old parameters stay in use
            logger.exception("BG/NBD refit failed")
        try:
            done["churn_buyers"] = await self.refit_churn_model()
        except Exception:  # noqa: BLE001 - the next refit tries again; the old model stays in use
            logger.exception("churn model refit failed")
        try:
            done["copurchase_orders"] = (table := await self.count_copurchases()).orders
            await self.publish_copurchase(table)
        except Exception:  # noqa: BLE001 - the next refit tries again; the old table stays in use
            logger.exception("co-purchase statistics failed")
        return done

    async def refit_model(self) -> BgNbdParams:
        """Refit BG/NBD on (a sample of) the buyers in ClickHouse and store the result."""
        now = now_ms()
        _, rows = await self.runner.query(REFIT_SQL.format(db=self.settings.clickhouse_database, now=now,
                                                           sample=REFIT_SAMPLE))
        params = await asyncio.get_running_loop().run_in_executor(None, fit_from_rows, rows)
        await self.runner.call(store_params, self.sink, params, now)
        logger.info("refitted BG/NBD on %d buyers: %s", params.buyers, params.as_dict())
        return params

    async def refit_churn_model(self) -> int:
        """Train the learned churn model on a sample of the raw events and publish it (key ``churn``);
        return the buyers it was trained on.

        Too short a history gives no model and nothing is published (0): the workers keep BG/NBD.
        """
        now = now_ms()
        rows: dict[str, Any] = {}
        for kind, sql in CHURN_EVENTS_SQL.items():
            _, rows[kind] = await self.runner.query(sql.format(db=self.settings.clickhouse_database, now=now,
                                                               sample=CHURN_SAMPLE))
        model = await asyncio.get_running_loop().run_in_executor(
            None, fit_churn_from_rows, rows, now, self.settings.churn_horizon_days)
        if model is None:
            logger.info("churn model not refitted: too little history; the workers keep BG/NBD")
            return 0
        assert self.producer is not None
        await self.producer.send_and_wait(self.topics.model_params, churn_to_bytes(model), key=b"churn", partition=0)
        logger.info("refitted the churn model on %d buyers (churned %.4f)", model.buyers, model.base_rate)
        return model.buyers

    async def publish_params(self, params: BgNbdParams) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.topics.model_params, params_to_bytes(params), key=b"bgnbd",
                                          partition=0)

    async def count_copurchases(self) -> CoPurchaseTable:
        """The co-purchase statistics of every order in ClickHouse (streams.copurchase)."""
        now = now_ms()
        _, rows = await self.runner.query(COPURCHASE_SQL.format(db=self.settings.clickhouse_database))
        table = table_from_rows(rows, now)
        logger.info("co-purchase statistics of %d orders, %d categories", table.orders, len(table.orders_with))
        return table

    async def publish_copurchase(self, table: CoPurchaseTable) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.topics.model_params, table_to_bytes(table), key=COPURCHASE_KEY,
                                          partition=0)

    # -- reads --------------------------------------------------------------------------------

    async def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """A read query from outside: checked (one read statement of this database's tables, no
        table functions) and run with ClickHouse's read-only settings; :class:`QueryRefused` else."""
        statement = check_read_query(sql, self.settings.clickhouse_database)
        return await self.runner.query(statement, settings=read_settings())

    def status(self) -> dict[str, Any]:
        assignment = sorted(f"{tp.topic}[{tp.partition}]" for tp in self.consumer.assignment()) if self.consumer else []
        return {"role": "sink", "group": self.group_id, "batches": self.batches, "copied": dict(self.totals),
                "sink_retries": self.runner.retries, "avro_fallbacks": getattr(self.sink, "avro_fallbacks", 0),
                "assignment": assignment,
                "last_committed_at": self.last_committed_at}
