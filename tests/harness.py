"""Test harness: the real local broker, a worker in a subprocess, and readers of what it wrote.

Every test gets its own topic prefix, consumer group, state directory and ClickHouse database,
so tests never see each other's data.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from config.settings import Settings
from domain.alerts.state import alert_state_to_dict
from domain.relationship import state_to_dict
from ops import ports, workers
from sinks.clickhouse import ClickHouseSink
from streams.sink import sink_group_id
from streams.state import decode_record

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free port below the ephemeral range (see :mod:`ops.ports`)."""
    return ports.free_ports(1)


def another_process(settings: Settings, data_dir: Path) -> Settings:
    """Settings of one more process of the same deployment (same app, topics, ClickHouse and
    pseudonymisation key; its own data directory and web port)."""
    key = settings.pseudonymisation_key
    return settings.model_copy(update={"data_dir": data_dir, "web_port": free_port(),
                                       "clickhouse_dsn": settings.clickhouse_url,
                                       "pseudonymisation_key": key})


def isolated_settings(tmp_path: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings isolated to one test."""
    tag = uuid.uuid4().hex[:10]
    clickhouse_url = os.environ.get("CLICKHOUSE_URL")
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"t{tag}.",
        "app_id": f"test-{tag}",
        "data_dir": tmp_path / "data",
        "web_port": free_port(),
        "partitions": 3,
        "batch_max_seconds": 0.2,
        "clickhouse_dsn": clickhouse_url or f"chdb://{tmp_path / 'data' / 'clickhouse'}",
        "clickhouse_database": f"test_{tag}" if clickhouse_url else "loyalty",
        # one key for every process of the test's deployment (state workers and sink)
        "pseudonymisation_key": f"test-key-{tag}",
    }
    values.update(overrides)
    return Settings(**values)


class WorkerProcess(workers.WorkerProcess):
    """A worker process of a test's deployment, run from the repository root."""

    def __init__(self, settings: Settings, log_path: Path, role: str = "all") -> None:
        super().__init__(settings, log_path, role=role, cwd=REPO)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = "condition",
               show: Callable[[], object] | None = None) -> float:
    """Poll until ``predicate`` holds; return the seconds it took. On a timeout the error says
    what ``show`` returns then (what was reached instead)."""
    start = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except (urllib.error.URLError, OSError, KeyError, IndexError) as exc:
            last_error = exc
        time.sleep(interval)
    seen = ""
    if show is not None:
        try:
            seen = f"; instead: {show()!r}"
        except Exception as exc:  # noqa: BLE001 - the timeout is the error to raise
            seen = f"; showing it failed: {exc!r}"
    raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last_error}){seen}")


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on a topic, from the beginning to its current end."""
    return [(r.key, r.value) for r in read_records(settings, topic)]


def stored_datum(value: bytes) -> dict[str, Any]:
    """A stored customer record (either layout) as the plain dict of ``RelationshipState``."""
    record = decode_record(value)
    datum = state_to_dict(record.state)
    datum["alert_state"] = None if record.alerts is None else alert_state_to_dict(record.alerts)
    return datum


def changelog_states(settings: Settings) -> dict[str, dict[str, Any]]:
    """The relationships table as its changelog topic holds it: latest value per key, decoded."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in read_topic(settings, f"{settings.app_id}-relationships-changelog"):
        if key is not None:
            latest[key] = value
    return {k.decode(): stored_datum(v) for k, v in latest.items() if v is not None}


def direct_query(settings: Settings, sql: str) -> list[tuple]:
    """Query ClickHouse directly (only when no worker holds the embedded engine)."""
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        return sink.query(sql)[1]
    finally:
        sink.close()


def drop_database(settings: Settings) -> None:
    if settings.embedded_clickhouse:
        return  # the directory goes with tmp_path
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database)
    try:
        sink.client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    finally:
        sink.close()


def delete_topics(settings: Settings) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**settings.kafka_python_config(), client_id="test-cleanup")
    try:
        ours = [t for t in admin.list_topics()
                if t.startswith(settings.topic_prefix) or t.startswith(settings.app_id)]
        if ours:
            admin.delete_topics(ours)
    except Exception:  # noqa: BLE001 - best-effort cleanup; the broker's data dir is scratch
        pass
    finally:
        admin.close()


# -- fault-suite helpers (appended; nothing above changes) --------------------------------------

RAW_TABLES = ("purchases", "calls", "visits")
Query = Callable[[str], Any]  # SQL -> rows (a worker's HTTP query, or direct_query bound to settings)


def free_port_pair() -> int:
    """A free port P whose neighbour P+1 is free too (a local broker's client and controller ports)."""
    return ports.free_ports(2)


def direct(settings: Settings) -> Query:
    """A query function over ClickHouse itself (only while no worker holds the embedded engine)."""
    return lambda sql: direct_query(settings, sql)


def stored_identities(query: Query, db: str) -> set[tuple[str, str]]:
    """(customer_id, event_id) of every row in the raw interaction tables, read FINAL."""
    return {(str(r[0]), str(r[1])) for t in RAW_TABLES
            for r in query(f"SELECT customer_id, event_id FROM {db}.{t} FINAL")}


def raw_rows_without_final(query: Query, db: str) -> int:
    """Rows in the raw tables as stored, duplicates included (no FINAL)."""
    return sum(int(query(f"SELECT count() FROM {db}.{t}")[0][0]) for t in RAW_TABLES)


def rows_inserted(query: Query, db: str, tables: tuple[str, ...] = RAW_TABLES) -> int:
    """Rows every INSERT created, whether merged away since or not.

    Each insert makes parts of one block number each (min_block_number = max_block_number; their
    level may be 1 when the engine merged the block on insert); a merge replaces them with a part
    spanning several block numbers, but the old parts stay listed (inactive) for minutes. So, within
    one engine session, the rows of the single-block parts are exactly the rows inserted: a
    background merge cannot hide a duplicate.
    """
    names = ", ".join(f"'{t}'" for t in tables)
    return int(query(f"SELECT sum(rows) FROM system.parts WHERE database = '{db}' AND table IN ({names})"
                     " AND min_block_number = max_block_number")[0][0] or 0)


def landed_events(query: Query, db: str) -> int:
    """Unique events in the raw tables (FINAL)."""
    return sum(int(query(f"SELECT count() FROM {db}.{t} FINAL")[0][0]) for t in RAW_TABLES)


def relationship_event_sum(query: Query, db: str) -> int:
    return int(query(f"SELECT sum(events) FROM {db}.relationships FINAL")[0][0] or 0)


def dead_letter_count(query: Query, db: str) -> int:
    return int(query(f"SELECT count() FROM {db}.dead_letters FINAL")[0][0])


RELATIONSHIP_TOTALS_SQL = """
    SELECT customer_id, events, purchases_lifetime, spend_lifetime_minor, discounted_purchases_lifetime,
           discounted_spend_lifetime_minor, returns_lifetime, refund_lifetime_minor, calls_lifetime,
           complaints_lifetime, unresolved_calls_lifetime, visits_lifetime, recognized_visits_lifetime,
           toUnixTimestamp64Milli(first_seen_at), toUnixTimestamp64Milli(last_seen_at)
    FROM {db}.relationships FINAL"""


def relationship_totals(query: Query, db: str) -> dict[str, tuple]:
    """Per customer, the ClickHouse relationship row's counts and sums (as in the oracle)."""
    return {str(r[0]): tuple(int(v) if v is not None else None for v in r[1:])
            for r in query(RELATIONSHIP_TOTALS_SQL.format(db=db))}


def expected_totals(expected: dict[str, Any]) -> dict[str, tuple]:
    """The oracle (simulate.expected_by_customer) in the shape of :func:`relationship_totals`."""
    return {
        cid: (x.events, x.purchases, x.spend_minor, x.discounted_purchases, x.discounted_spend_minor, x.returns,
              x.refund_minor, x.calls, x.complaints, x.unresolved_calls, x.visits, x.recognized_visits,
              x.first_seen_at, x.last_seen_at)
        for cid, x in expected.items()
    }


def state_totals(states: dict[str, dict[str, Any]]) -> dict[str, tuple]:
    """Changelog states (decoded RelationshipState data) in the shape of :func:`relationship_totals`."""
    out = {}
    for cid, s in states.items():
        life = s["lifetime"]
        out[cid] = (s["events_applied"], life["purchases"], life["spend_minor"], life["discounted_purchases"],
                    life["discounted_spend_minor"], life["returns"], life["refund_minor"], life["calls"],
                    life["complaints"], life["unresolved_calls"], life["visits"], life["recognized_visits"],
                    s["first_seen_at"], s["last_seen_at"])
    return out


def read_records(settings: Settings, topic: str) -> list[Any]:
    """Every ConsumerRecord on a topic (partition, offset, key, value, timestamp), beginning to end."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def changelog_states_by_partition(settings: Settings) -> dict[tuple[int, str], dict[str, Any]]:
    """The relationships table per changelog partition: latest value per (partition, key), decoded.

    Unlike :func:`changelog_states` this keeps two states of one key that live in different
    partitions apart, so a customer whose events were split over partitions shows twice.
    """
    latest: dict[tuple[int, bytes], bytes | None] = {}
    for record in read_records(settings, f"{settings.app_id}-relationships-changelog"):
        if record.key is not None:
            latest[(record.partition, record.key)] = record.value
    return {(p, k.decode()): stored_datum(v) for (p, k), v in latest.items() if v is not None}


def committed_offsets(settings: Settings, group: str | None = None) -> dict[tuple[str, int], int]:
    """A consumer group's committed offset of every input topic partition (0: none); by default
    the state workers' group."""
    from config.topics import Topics

    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=group or settings.app_id,
                             enable_auto_commit=False, client_id="fault-test-offsets")
    try:
        result: dict[tuple[str, int], int] = {}
        for topic in Topics(settings.topic_prefix).inputs:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                result[(topic, p)] = consumer.committed(TopicPartition(topic, p)) or 0
        return result
    finally:
        consumer.close()


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """The end offset of every input topic partition."""
    from config.topics import Topics

    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in Topics(settings.topic_prefix).inputs
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def send_raw(settings: Settings, records: list[tuple[str, bytes | None, bytes, int | None]],
             max_request_size: int | None = None) -> list[Any]:
    """Send (topic, key, value, partition or None) records in order; return each one's RecordMetadata.

    For tests that need to know where a record landed (partition, offset), or to place a record
    on a partition of their choosing.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka_python_config(), acks="all", linger_ms=5,
                             max_request_size=max_request_size or settings.max_message_bytes)
    try:
        futures = [producer.send(topic, key=key, value=value, partition=partition)
                   for topic, key, value, partition in records]
        producer.flush()
        return [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)


def process_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in kB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@dataclass
class FaultFigures:
    """The figures one fault test reports; computed from Kafka and ClickHouse independently.

    * ``events_in``: messages published (valid, resent and malformed)
    * ``valid_in``: distinct valid events, by (customer_id, event_id): the worker deduplicates per customer
    * ``stored``: distinct (customer_id, event_id) in the raw ClickHouse tables, FINAL
    * ``counted``: events applied in the relationships state, summed over the changelog's latest
      value per (partition, customer); ``counted_ch`` the same from ``relationships FINAL``
    * ``duplicates``: counted - valid_in, when positive; ``lost``: valid events not stored
    * ``dead_lettered``: rows in ``dead_letters FINAL``
    """

    test: str
    events_in: int
    valid_in: int
    stored: int
    counted: int
    counted_ch: int
    duplicates: int
    lost: int
    dead_lettered: int
    recovery_seconds: float | None = None
    note: str = ""

    COLUMNS = ("test", "events_in", "valid_in", "stored", "counted", "counted_ch", "duplicates", "lost",
               "dead_lettered", "recovery_seconds", "note")

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.COLUMNS}


def measure_figures(test: str, settings: Settings, query: Query, events_in: int,
                    valid: set[tuple[str, str]], recovery_seconds: float | None = None,
                    note: str = "") -> FaultFigures:
    """Count what landed (ClickHouse, changelog) against what was sent."""
    db = settings.clickhouse_database
    stored = stored_identities(query, db)
    counted = sum(int(s["events_applied"]) for s in changelog_states_by_partition(settings).values())
    return FaultFigures(
        test=test, events_in=events_in, valid_in=len(valid), stored=len(stored), counted=counted,
        counted_ch=relationship_event_sum(query, db), duplicates=max(0, counted - len(valid)),
        lost=len(valid - stored), dead_lettered=dead_letter_count(query, db),
        recovery_seconds=None if recovery_seconds is None else round(recovery_seconds, 1), note=note,
    )


FAUST_OFFSET_KEY = b"__faust\0offset__"


def rocksdb_states(settings: Settings, table: str = "relationships") -> dict[tuple[int, bytes], bytes]:
    """A stopped worker's local table state: value per (partition, key), read from its RocksDB files.

    Faust's bookkeeping key (the changelog offset the state is at) is left out.
    """
    import rocksdict

    found: dict[tuple[int, bytes], bytes] = {}
    for path in sorted(settings.state_dir.glob(f"**/tables/{table}-*.db")):
        partition = int(path.name.removesuffix(".db").rsplit("-", 1)[1])
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            for key, value in db.items():
                if key != FAUST_OFFSET_KEY:  # raw mode: keys and values are bytes
                    found[(partition, bytes(key))] = bytes(value)  # type: ignore[arg-type]
        finally:
            db.close()
    return found


def wait_drained(worker: WorkerProcess, valid_events: int, dead_letters: int = 0, timeout: float = 180.0) -> float:
    """Wait until the state workers and the sink have committed every input record published so
    far and ClickHouse holds ``valid_events`` distinct events, their relationship state and
    ``dead_letters`` (``worker`` answers read queries: the sink, or an ``all`` worker).
    Returns the seconds it took; the timeout error says what was still missing."""
    settings = worker.settings
    db = settings.clickhouse_database
    ends = end_offsets(settings)

    def progress() -> dict[str, Any]:
        committed = committed_offsets(settings)
        copied = committed_offsets(settings, sink_group_id(settings))
        return {
            "state_behind": {f"{t}[{p}]": end - committed.get((t, p), 0) for (t, p), end in ends.items()
                             if committed.get((t, p), 0) < end},
            "sink_behind": {f"{t}[{p}]": end - copied.get((t, p), 0) for (t, p), end in ends.items()
                            if copied.get((t, p), 0) < end},
            "landed": landed_events(worker.query, db), "counted": relationship_event_sum(worker.query, db),
            "dead_letters": dead_letter_count(worker.query, db),
        }

    def drained() -> bool:
        now = progress()
        return (not now["state_behind"] and not now["sink_behind"] and now["landed"] >= valid_events
                and now["counted"] >= valid_events and now["dead_letters"] >= dead_letters)

    try:
        return wait_until(drained, timeout, what=f"{valid_events} events and {dead_letters} dead letters landed, "
                                                 "every input offset committed")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; still: {progress()}") from None


def worker_processed(worker: WorkerProcess) -> int:
    """Messages this worker process has taken from the input topics since it started."""
    return int(worker.get("/status", timeout=5)["processed"].get("messages", 0))


