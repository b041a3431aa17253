"""The state agent through ``agent.test_context()`` (memory table store), and the sink's rows
and refit against a real chDB without Kafka."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.types import Message as FaustMessage

from config.settings import Settings
from config.topics import Topics
from domain.relationship import RelationshipState, apply_event
from ops.simulate import encode_event, expected_by_customer, generate
from schemas import codec
from streams.app import Pipeline, make_sink_service
from streams.processor import Effects
from streams.state import decode_record

TOPIC_OF_KIND = {"purchase": "purchases", "call": "calls", "visit": "visits"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
                    batch_max_seconds=0.01, kafka_bootstrap="127.0.0.1:1")


@pytest.fixture
def pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings, store="memory://", role="state")


def broker_stand_in(pipeline: Pipeline, produced: list[Effects]) -> Any:
    """Stands in for ``Pipeline.produce``: keeps the batch's records and acknowledges its table
    writes (at made-up changelog offsets), as the broker would."""
    produce_changelog = changelog_stand_in(pipeline)

    async def produce(effects: Effects, epoch: tuple[int, int] | None) -> set[int]:
        produced.append(effects)
        await produce_changelog()
        return set()  # no partition lost

    return produce


def changelog_stand_in(pipeline: Pipeline) -> Any:
    """Stands in for ``Pipeline.produce_changelog``: acknowledges the batch's table writes (at
    made-up changelog offsets) and applies them, as the broker and the real step would."""
    offsets = iter(range(1_000_000))

    async def produce_changelog() -> bool:
        for store in (pipeline.relationship_store, pipeline.due_time_store):
            store.apply([(record, SimpleNamespace(partition=record[2], offset=next(offsets))) for record in store.take()])
        return True

    return produce_changelog


def _events():
    return generate(customers=30, days=2, seed=5, end_ms=int(time.time() * 1000) - 60_000)


async def put_on(agent: Any, topic: str, key: bytes, value: bytes) -> None:
    """``agent.put`` for an agent over several topics: the record names the topic it came from."""
    stream = agent.stream()
    message = agent.to_message(key, value, offset=agent.sent_offset)
    message = FaustMessage(topic=topic, partition=0, offset=message.offset, timestamp=message.timestamp,
                           timestamp_type=0, headers=None, key=key, value=value, checksum=b"",
                           generation_id=message.generation_id)
    event = await stream.channel.decode(message)
    await stream.channel.put(event)
    agent.sent_offset += 1
    async with agent.new_value_processed:
        await agent.new_value_processed.wait()


def test_one_agent_folds_every_kind_and_emits_one_signal_per_customer_and_batch(pipeline: Pipeline):
    events = _events()
    assert {e.kind for e in events} == {"purchase", "call", "visit"}
    expected = expected_by_customer(events)
    produced: list[Effects] = []
    pipeline.produce = broker_stand_in(pipeline, produced)  # type: ignore[method-assign]
    topics = Topics(pipeline.settings.topic_prefix)

    async def run() -> None:
        async with pipeline.app.agents["track_customers"].test_context() as agent:
            for event in events:
                await put_on(agent, topics.for_kind(event.kind), event.customer_id.encode(), encode_event(event))
            # a resend of the first event: counted once
            await put_on(agent, topics.for_kind(events[0].kind), events[0].customer_id.encode(), encode_event(events[0]))

    asyncio.run(run())
    totals = pipeline.processor.totals
    assert (totals["applied"], totals["duplicate"], totals["dead_lettered"]) == (len(events), 1, 0)

    states = {k.decode(): decode_record(bytes(v)).state for k, v in pipeline.relationships.items()}
    assert {cid: (s.events_applied, s.lifetime.purchases, s.lifetime.spend_minor, s.lifetime.calls,
                  s.lifetime.visits) for cid, s in states.items()} == {
        cid: (x.events, x.purchases, x.spend_minor, x.calls, x.visits) for cid, x in expected.items()}

    # One signal per touched customer and batch (one record a batch here), carrying its facts;
    # the last one per customer is the newest version.
    signal_codec = codec("loyalty_signal")
    signals = [(key.decode(), signal_codec.decode(value)) for e in produced for key, value in e.signals]
    assert len(signals) == len(events) + 1
    latest: dict[str, dict[str, Any]] = {}
    for cid, signal in signals:
        assert signal["relationship"]["version"] >= latest.get(cid, {"relationship": {"version": 0}})["relationship"]["version"]
        latest[cid] = signal
    assert {cid: s["relationship"]["events"] for cid, s in latest.items()} == {cid: x.events for cid, x in expected.items()}
    assert {cid: s["relationship"]["spend_lifetime_minor"] for cid, s in latest.items()} == {
        cid: x.spend_minor for cid, x in expected.items()}


def test_a_bad_record_is_dead_lettered_and_the_batch_goes_on(pipeline: Pipeline):
    events = [e for e in _events() if e.kind == "purchase"][:3]
    produced: list[Effects] = []
    pipeline.produce = broker_stand_in(pipeline, produced)  # type: ignore[method-assign]
    topics = Topics(pipeline.settings.topic_prefix)

    async def run() -> None:
        async with pipeline.app.agents["track_customers"].test_context() as agent:
            await put_on(agent, topics.purchases, b"C1", b"not avro at all")
            for event in events:
                await put_on(agent, topics.purchases, event.customer_id.encode(), encode_event(event))

    asyncio.run(run())
    letters = [d for e in produced for d in e.dead_letters]
    assert [(d.error_type, d.message.topic, d.message.offset) for d in letters] == [("DecodeError", topics.purchases, 0)]
    assert sum(len(e.signals) for e in produced) == 3


def test_cached_records_are_forgotten_when_partitions_move(pipeline: Pipeline):
    # Another worker may write a customer's record while this one does not own the partition:
    # after a rebalance the next read must come from the table, not from the cache.
    events = [e for e in _events() if e.kind == "purchase"]

    pipeline.produce = broker_stand_in(pipeline, [])  # type: ignore[method-assign]
    topics = Topics(pipeline.settings.topic_prefix)

    async def run() -> None:
        async with pipeline.app.agents["track_customers"].test_context() as agent:
            for event in events:
                await put_on(agent, topics.purchases, event.customer_id.encode(), encode_event(event))
        cached = len(pipeline.states)
        await pipeline.before_revoke(set())  # what the consumer awaits as a rebalance revokes partitions
        assert cached == len({e.customer_id for e in events}) and len(pipeline.states) == 0
        key = events[0].customer_id.encode()
        assert decode_record(bytes(pipeline.relationships[key])).state.events_applied >= 1

    asyncio.run(run())


def _records(topic: str, values: list[tuple[bytes, bytes]], start: int = 0) -> list[ConsumerRecord]:
    return [ConsumerRecord(topic, 0, start + n, int(time.time() * 1000), 0, key, value, None, len(key), len(value), ())
            for n, (key, value) in enumerate(values)]


def test_sink_stores_raw_rows_signals_facts_and_is_replay_safe(settings: Settings):
    """The sink's rows from topic records, written to chDB twice (a replayed batch): stored once."""
    topics = Topics(settings.topic_prefix)
    events = _events()
    expected = expected_by_customer(events)
    states: dict[str, RelationshipState] = {}
    signals = []
    from domain.model import DEFAULT_PARAMS, score_customer, signal_to_dict
    from streams.processor import relationship_facts

    for event in events:
        state = states.setdefault(event.customer_id, RelationshipState(event.customer_id))
        apply_event(state, event, settings.dedup_horizon_ms)
        signal = signal_to_dict(score_customer(state, state.last_seen_at, DEFAULT_PARAMS))
        signal["relationship"] = relationship_facts(state)
        signals.append((event.customer_id.encode(), codec("loyalty_signal").encode(signal)))
    fetched = {TopicPartition(topics.signals, 0): _records(topics.signals, signals)}
    for kind in ("purchase", "call", "visit"):
        mine = [(e.customer_id.encode(), encode_event(e)) for e in events if e.kind == kind]
        fetched[TopicPartition(topics.for_kind(kind), 0)] = _records(topics.for_kind(kind), mine)

    service = make_sink_service(settings)
    service.prepare()
    try:
        for _ in range(2):
            service.sink.write(service.rows(fetched, int(time.time() * 1000)))
        query = service.sink.query
        db = settings.clickhouse_database
        assert query(f"SELECT count() FROM {db}.purchases")[1] == [(sum(e.kind == "purchase" for e in events),)]
        assert query(f"SELECT count() FROM {db}.signals_history")[1] == [(len(events),)]
        rows = query(f"SELECT customer_id, events, spend_lifetime_minor FROM {db}.relationships FINAL ORDER BY customer_id")[1]
        assert rows == sorted((cid, x.events, x.spend_minor) for cid, x in expected.items())
        rows = query(f"SELECT customer_id, version FROM {db}.signals_current FINAL ORDER BY customer_id")[1]
        assert rows == sorted((cid, x.events) for cid, x in expected.items())
    finally:
        service.runner.shutdown()


def test_refit_uses_the_buyers_in_clickhouse_and_survives_a_restart(settings: Settings):
    from domain.model import fit_bgnbd
    from domain.relationship import facts
    from sinks.clickhouse import SinkBatch
    from streams.params import load_params

    topics = Topics(settings.topic_prefix)
    service = make_sink_service(settings)
    service.prepare()
    end_ms = int(time.time() * 1000) - 60_000
    states: dict[str, RelationshipState] = {}
    events = generate(customers=300, days=1, seed=8, end_ms=end_ms, history_days=180)
    for event in events:
        state = states.setdefault(event.customer_id, RelationshipState(event.customer_id))
        apply_event(state, event, 7 * 86_400_000)
    try:
        purchases = [(e.customer_id.encode(), encode_event(e)) for e in events if e.kind == "purchase"]
        service.sink.write(service.rows({TopicPartition(topics.purchases, 0): _records(topics.purchases, purchases)},
                                        end_ms))
        batch = SinkBatch()
        for n, state in enumerate(states.values()):
            row = {**facts(state), "updated_at": end_ms}
            batch.rows("relationships", tuple(row)).append(row)
            batch.cover("test", 0, n)
        service.sink.write(batch)

        params = asyncio.run(service.refit_model())
        buyers = [s for s in states.values() if s.lifetime.purchases > 0]
        assert params.source == "fitted" and params.buyers == len(buyers)
        # Independently: the same fit from the folded states as of (about) now.
        direct = fit_bgnbd(states.values(), int(time.time() * 1000))
        # (1e-4: the two fits stop their search at slightly different points; x is the same days count)
        assert params.r == pytest.approx(direct.r, rel=1e-4) and params.b == pytest.approx(direct.b, rel=1e-4)
    finally:
        service.runner.shutdown()

    again = make_sink_service(settings)
    try:
        stored = load_params(again.sink)
        assert stored is not None and (stored.r, stored.source) == (params.r, "fitted")
    finally:
        again.runner.shutdown()


def test_refit_counts_purchase_days_from_the_raw_purchases(settings: Settings):
    """BG/NBD's (x, t_x, T) in the sink's refit: distinct UTC purchase days from the purchases table,
    as ``churn.summarise`` counts them for replay, backtest and the worker."""
    from domain.model import churn
    from domain.records import PurchaseEvent
    from domain.relationship import DAY_MS, facts
    from streams.params import REFIT_SAMPLE, REFIT_SQL, fit_from_rows

    topics = Topics(settings.topic_prefix)
    hour = 3_600_000
    base = (int(time.time() * 1000) // DAY_MS - 40) * DAY_MS  # midnight UTC, 40 days ago
    now = base + 30 * DAY_MS

    def buy(eid: str, cid: str, at: int, is_return: bool = False) -> PurchaseEvent:
        return PurchaseEvent(eid, cid, at, "store", f"o-{eid}", 1_000, "EUR", is_return=is_return)

    events = [
        # a: three purchases on day 0, one on day 10, a return on day 12: 2 purchase days, x = 1
        buy("a1", "a", base + 9 * hour), buy("a2", "a", base + 13 * hour), buy("a3", "a", base + 20 * hour),
        buy("a4", "a", base + 10 * DAY_MS + 12 * hour), buy("a5", "a", base + 12 * DAY_MS, is_return=True),
        # b: a single purchase (x = 0), sent twice (a replay): one row after FINAL
        buy("b1", "b", base + 5 * DAY_MS + 6 * hour), buy("b1", "b", base + 5 * DAY_MS + 6 * hour),
        # c: two hours apart but either side of midnight UTC: two days, x = 1
        buy("c1", "c", base + 23 * hour), buy("c2", "c", base + 25 * hour),
        # d: returns only: not a buyer
        buy("d1", "d", base + 3 * DAY_MS, is_return=True),
    ]
    states: dict[str, RelationshipState] = {}
    for event in events:
        apply_event(states.setdefault(event.customer_id, RelationshipState(event.customer_id)), event,
                    settings.dedup_horizon_ms)
    service = make_sink_service(settings)
    service.prepare()
    try:
        records = [(e.customer_id.encode(), encode_event(e)) for e in events]
        batch = service.rows({TopicPartition(topics.purchases, 0): _records(topics.purchases, records)}, now)
        for n, cid in enumerate(("a", "c")):  # b has no relationships row: its gap is NULL
            row = {**facts(states[cid]), "updated_at": now}
            batch.rows("relationships", tuple(row)).append(row)
            batch.cover("relationships-test", 0, n)
        service.sink.write(batch)
        _, rows = service.sink.query(REFIT_SQL.format(db=settings.clickhouse_database, now=now, sample=REFIT_SAMPLE))
    finally:
        service.runner.shutdown()
    rows = sorted(rows, key=lambda r: r[2])  # by T: b, c, a
    # By hand: a first bought at 09:00 of day 0, last at 12:00 of day 10: t_x = 10 + 3/24 days, T =
    # 30 - 9/24; its mean gap between four purchase times = (10 days + 3 h) / 3. b: x = 0, t_x = 0,
    # T = 30 - 5 - 6/24, no relationships row. c: t_x = 2 h = 2/24 days, T = 30 - 23/24, gap 2/24 days.
    assert [int(r[0]) for r in rows] == [0, 1, 1]
    assert [r[1] for r in rows] == pytest.approx([0.0, 2 / 24, 10 + 3 / 24], abs=1e-12)
    assert [r[2] for r in rows] == pytest.approx([30 - 5 - 6 / 24, 30 - 23 / 24, 30 - 9 / 24], abs=1e-12)
    assert rows[0][3] is None  # kept to six decimals in relationships
    assert [r[3] for r in rows[1:]] == pytest.approx([2 / 24, (10 + 3 / 24) / 3], abs=1e-6)
    # the same (x, t_x, T) as replay, backtest and the worker take from the state
    by_state = [churn.summarise(states[cid], now) for cid in ("b", "c", "a")]
    assert [(int(x), t_x, T) for x, t_x, T, _ in rows] == [(s.x, pytest.approx(s.t_x), pytest.approx(s.T))
                                                          for s in by_state if s is not None]
    assert fit_from_rows(rows).population_gap_days == pytest.approx(((10 + 3 / 24) / 3 + 2 / 24) / 2)


def test_faust_environment_variables_do_not_override_the_settings(settings: Settings, monkeypatch):
    monkeypatch.setenv("WEB_PORT", "1")
    monkeypatch.setenv("APP_DATADIR", "/nonexistent")
    monkeypatch.setenv("BROKER_URL", "kafka://192.0.2.1:9")
    pipeline = Pipeline(settings, store="memory://", role="state")
    assert pipeline.app.conf.web_port == settings.web_port
    assert str(pipeline.app.conf.datadir) == str(settings.state_dir.resolve())
    assert [str(url) for url in pipeline.app.conf.broker] == ["kafka://127.0.0.1:1"]


def test_the_api_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path):
    exposed = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", web_host="0.0.0.0")
    with pytest.raises(ValueError, match="LOYALTY_API_TOKEN"):
        Pipeline(exposed, store="memory://", role="state")
    Pipeline(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", web_host="0.0.0.0", api_token="s3cret"),
             store="memory://", role="state")


class FencesStandIn:
    """Stands in for :class:`streams.fencing.Fences`: every partition but ``lost`` holds."""

    def __init__(self, lost: set[int]) -> None:
        self.lost = lost
        self.asked: list[set[int]] = []

    async def confirm(self, partitions: set[int]) -> set[int]:
        self.asked.append(set(partitions))
        return set(partitions) - self.lost


def test_a_lost_partitions_share_of_a_batch_is_dropped_and_left_unacknowledged(pipeline: Pipeline):
    # Customers alternate between partitions 0 and 1, and the records go in together so that
    # batches mix both. Partition 1's fence fails: its customers' signals, alerts and table
    # records must not leave, their cached states must go, and their records must stay
    # unacknowledged; partition 0 goes on as if nothing happened.
    events = [e for e in _events() if e.kind == "purchase"]
    customers = sorted({e.customer_id for e in events})
    home = {cid: n % 2 for n, cid in enumerate(customers)}
    kept = {cid for cid in customers if home[cid] == 0}
    expected = expected_by_customer([e for e in events if e.customer_id in kept])
    fences = FencesStandIn(lost={1})
    pipeline.fences = fences  # type: ignore[assignment]
    sent: list[Effects] = []

    async def produce_outputs(effects: Effects) -> None:
        sent.append(effects)

    pipeline.produce_outputs = produce_outputs  # type: ignore[method-assign]
    pipeline.produce_changelog = changelog_stand_in(pipeline)  # type: ignore[method-assign]
    topics = Topics(pipeline.settings.topic_prefix)
    messages: dict[int, list[FaustMessage]] = {0: [], 1: []}

    async def run() -> None:
        async with pipeline.app.agents["track_customers"].test_context() as agent:
            stream = agent.stream()
            for n, event in enumerate(events):
                partition = home[event.customer_id]
                message = FaustMessage(topic=topics.purchases, partition=partition, offset=n, timestamp=time.time(),
                                       timestamp_type=0, headers=None, key=event.customer_id.encode(),
                                       value=encode_event(event), checksum=b"",
                                       generation_id=agent.to_message(None, None).generation_id)
                message.incref()  # what the consumer's conductor does for the one channel reading the topic
                messages[partition].append(message)
                await stream.channel.put(await stream.channel.decode(message))
            for _ in range(200):
                if pipeline.processor.totals["messages"] == len(events):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)  # the last batch's loop body returns and its records are acked

    asyncio.run(run())
    assert pipeline.processor.totals["messages"] == len(events)
    # Some batch read both partitions (else the drop inside a batch went untried).
    assert {0, 1} in fences.asked
    assert {key.decode() for e in sent for key, _ in e.signals} == kept
    assert not [a for e in sent for _, a in e.alerts if a["customer_id"] not in kept]
    stored = {bytes(k).decode(): decode_record(bytes(v)).state for k, v in pipeline.relationships.items()}
    assert {cid: (s.events_applied, s.lifetime.purchases, s.lifetime.spend_minor) for cid, s in stored.items()} == {
        cid: (x.events, x.purchases, x.spend_minor) for cid, x in expected.items()}
    assert not {bytes(k).decode() for k, _ in pipeline.due_times.items()} - kept
    assert len(pipeline.states) == len(kept)  # partition 1's cached states forgotten
    assert [m.acked for m in messages[0]] == [True] * len(messages[0])
    assert [(m.acked, m.refcount) for m in messages[1]] == [(False, 1)] * len(messages[1])


class RebalancingFences(FencesStandIn):
    """Every partition holds, but a rebalance begins while the first batch's fences are confirmed."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(lost=set())
        self.pipeline = pipeline

    async def confirm(self, partitions: set[int]) -> set[int]:
        if not self.asked:
            self.pipeline.app.rebalancing_count += 1  # what Faust's consumer does as a rebalance begins
        return await super().confirm(partitions)


@pytest.mark.parametrize("begins", ["fences", "processing"])
def test_a_batch_whose_rebalance_epoch_passed_writes_nothing_and_stays_unacknowledged(
        pipeline: Pipeline, begins: str, monkeypatch: pytest.MonkeyPatch):
    # The first batch read its states before a rebalance that began during its fences, or during
    # its processing (it then stops part way): it must send nothing (no signal, no table record)
    # and leave every record unacknowledged, to be read again from the committed offsets; the
    # batches after it go on.
    events = [e for e in _events() if e.kind == "purchase"]
    if begins == "fences":
        pipeline.fences = RebalancingFences(pipeline)  # type: ignore[assignment]
    else:
        pipeline.fences = FencesStandIn(lost=set())  # type: ignore[assignment]
        monkeypatch.setattr("streams.processor.YIELD_EVERY_CUSTOMERS", 3)  # asked between customers
    sent: list[Effects] = []
    batches: list[list[int]] = []
    abandoned: list[bool] = []
    process = pipeline.processor.process

    async def process_recording(messages: Any, now: int, current: Any = None) -> Effects:
        batches.append([m.offset for m in messages])
        if begins == "processing" and len(batches) == 1:
            def rebalance_begins() -> bool:
                pipeline.app.rebalancing_count += 1  # what Faust's consumer does as a rebalance begins
                return bool(current())
            effects = await process(messages, now, rebalance_begins)
        else:
            effects = await process(messages, now, current)
        abandoned.append(effects.abandoned)
        return effects

    async def produce_outputs(effects: Effects) -> None:
        sent.append(effects)

    pipeline.processor.process = process_recording  # type: ignore[method-assign]
    pipeline.produce_outputs = produce_outputs  # type: ignore[method-assign]
    pipeline.produce_changelog = changelog_stand_in(pipeline)  # type: ignore[method-assign]
    topics = Topics(pipeline.settings.topic_prefix)
    messages: list[FaustMessage] = []

    async def run() -> None:
        async with pipeline.app.agents["track_customers"].test_context() as agent:
            stream = agent.stream()
            half = len(events) // 2
            for part in (range(half), range(half, len(events))):  # two batches at least
                for n in part:
                    event = events[n]
                    message = FaustMessage(topic=topics.purchases, partition=0, offset=n, timestamp=time.time(),
                                           timestamp_type=0, headers=None, key=event.customer_id.encode(),
                                           value=encode_event(event), checksum=b"",
                                           generation_id=agent.to_message(None, None).generation_id)
                    message.incref()
                    messages.append(message)
                    await stream.channel.put(await stream.channel.decode(message))
                for _ in range(200):
                    if pipeline.processor.totals["messages"] == part.stop:
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)

    asyncio.run(run())
    assert len(batches) >= 2
    dropped = set(batches[0])
    if begins == "processing":
        assert abandoned[0] and not any(abandoned[1:])
        assert len(sent) == len(batches) - 1  # the abandoned batch produced nothing
        sent.insert(0, Effects())
    else:
        assert not any(abandoned)
    assert not sent[0].signals and not sent[0].alerts and not sent[0].dead_letters
    expected = expected_by_customer([e for n, e in enumerate(events) if n not in dropped])
    stored = {bytes(k).decode(): decode_record(bytes(v)).state for k, v in pipeline.relationships.items()}
    assert {cid: s.events_applied for cid, s in stored.items()} == {cid: x.events for cid, x in expected.items()}
    assert [(m.acked, m.refcount) for m in messages if m.offset in dropped] == [(False, 1)] * len(dropped)
    assert all(m.acked for m in messages if m.offset not in dropped)
