"""The Faust agents through ``agent.test_context()``: memory table store, real chDB sink."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from config.settings import Settings
from domain.relationship import state_from_dict
from ops.simulate import encode_event, expected_by_customer, generate
from schemas import codec
from streams.app import Pipeline
from streams.processing import decode_record


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = Settings(data_dir=tmp_path, clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
                        batch_max_seconds=0.01, kafka_bootstrap="127.0.0.1:1")
    pipeline = Pipeline(settings, store="memory://")
    pipeline.prepare()
    yield pipeline
    pipeline.runner.shutdown()


def _events(kind: str):
    events = generate(customers=30, days=2, seed=5, end_ms=int(time.time() * 1000) - 60_000)
    return [e for e in events if e.kind == kind]


@pytest.mark.parametrize("kind, agent_name, table", [
    ("purchase", "track_purchases", "purchases"),
    ("call", "track_calls", "calls"),
    ("visit", "track_visits", "visits"),
])
def test_agent_folds_state_and_writes_clickhouse(pipeline: Pipeline, kind, agent_name, table):
    events = _events(kind)
    assert len(events) >= 5
    expected = expected_by_customer(events)
    emitted: list[tuple[bytes, dict]] = []

    async def collect(signals) -> None:  # stands in for the signals topic
        emitted.extend(signals)

    raised: list[dict] = []

    async def collect_alert(key: bytes, alert: dict) -> None:  # stands in for the alerts topic
        raised.append(alert)

    pipeline.processors[kind].publish_signals = collect
    pipeline.processors[kind].publish_alert = collect_alert

    async def run() -> None:
        async with pipeline.app.agents[agent_name].test_context() as agent:
            for event in events:
                await agent.put(key=event.customer_id.encode(), value=encode_event(event))
            # a resend of the first event: counted once
            await agent.put(key=events[0].customer_id.encode(), value=encode_event(events[0]))

    asyncio.run(run())
    totals = pipeline.processors[kind].totals
    assert (totals["applied"], totals["duplicate"], totals["dead_lettered"]) == (len(events), 1, 0)

    state_codec = codec("relationship_state")
    states = {k.decode(): state_from_dict(state_codec.decode(v)) for k, v in pipeline.relationships.items()}
    assert {cid: (s.events_applied, s.lifetime.purchases, s.lifetime.spend_minor, s.lifetime.calls,
                  s.lifetime.visits) for cid, s in states.items()} == {
        cid: (x.events, x.purchases, x.spend_minor, x.calls, x.visits) for cid, x in expected.items()}

    _, rows = pipeline.sink.query(f"SELECT count(), uniqExact(event_id) FROM loyalty.{table} FINAL")
    assert rows == [(len(events), len(events))]
    _, rows = pipeline.sink.query("SELECT customer_id, events FROM loyalty.relationships FINAL ORDER BY customer_id")
    assert rows == sorted((cid, x.events) for cid, x in expected.items())

    # One signal per touched customer and batch; the newest per customer is in signals_current.
    assert len(emitted) == len(events) + 1
    latest = {key.decode(): signal for key, signal in emitted}
    _, rows = pipeline.sink.query(
        "SELECT customer_id, version, tier, loyalty_score, churn_risk FROM loyalty.signals_current FINAL ORDER BY customer_id")
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (cid, latest[cid]["tier"], latest[cid]["loyalty_score"], latest[cid]["churn_risk"]) for cid in sorted(latest)]
    assert [r[1] for r in rows] == [expected[cid].events for cid in sorted(latest)]
    _, rows = pipeline.sink.query("SELECT count() FROM loyalty.signals_history FINAL")
    assert rows == [(len(events),)]  # the resend re-emits an existing version, which collapses
    _, rows = pipeline.sink.query("SELECT alert_id FROM loyalty.alerts FINAL ORDER BY alert_id")
    assert [r[0] for r in rows] == sorted(a["alert_id"] for a in raised)


def test_refit_uses_the_buyers_in_clickhouse_and_survives_a_restart(pipeline: Pipeline):
    from domain.model import fit_bgnbd
    from domain.relationship import RelationshipState, apply_event, facts
    from sinks.clickhouse import SinkBatch

    end_ms = int(time.time() * 1000) - 60_000
    states: dict[str, RelationshipState] = {}
    for event in generate(customers=300, days=1, seed=8, end_ms=end_ms, history_days=180):
        state = states.setdefault(event.customer_id, RelationshipState(event.customer_id))
        apply_event(state, event, 7 * 86_400_000)
    batch = SinkBatch()
    for n, state in enumerate(states.values()):
        row = {**facts(state), "updated_at": end_ms}
        batch.rows("relationships", tuple(row)).append(row)
        batch.cover("test", 0, n)
    pipeline.sink.write(batch)

    params = asyncio.run(pipeline.refit_model())
    buyers = [s for s in states.values() if s.lifetime.purchases > 0]
    assert params.source == "fitted" and params.buyers == len(buyers)
    # Independently: the same fit from the folded states as of (about) now agrees closely.
    direct = fit_bgnbd(states.values(), int(time.time() * 1000))
    assert params.r == pytest.approx(direct.r, rel=0.02) and params.b == pytest.approx(direct.b, rel=0.02)
    assert pipeline.model.current is params

    pipeline.runner.shutdown()
    again = Pipeline(pipeline.settings, store="memory://")
    again.prepare()
    assert (again.model.current.r, again.model.current.source) == (params.r, "fitted")
    again.runner.shutdown()


def test_cached_records_are_forgotten_when_partitions_move(pipeline: Pipeline):
    # Another worker may write a customer's record while this one does not own the partition:
    # after a rebalance the next read must come from the table, not from the cache.
    events = _events("purchase")

    async def discard(*args) -> None:  # stands in for the signals and alerts topics
        return None

    pipeline.processors["purchase"].publish_signals = discard
    pipeline.processors["purchase"].publish_alert = discard

    async def run() -> None:
        async with pipeline.app.agents["track_purchases"].test_context() as agent:
            for event in events:
                await agent.put(key=event.customer_id.encode(), value=encode_event(event))
        cached = len(pipeline.states)
        await pipeline.app.on_partitions_revoked.send(set())
        assert cached == len({e.customer_id for e in events}) and len(pipeline.states) == 0
        key = events[0].customer_id.encode()
        assert decode_record(bytes(pipeline.relationships[key])).state.events_applied >= 1

    asyncio.run(run())
