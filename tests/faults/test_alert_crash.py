"""The state worker killed between an alert's acknowledgement and the changelog that remembers it.

The state worker runs :class:`tests.faults.injection.PausingPipeline`: on a switch, the next batch
with alerts stops as its changelog step begins (its alerts acknowledged on the topic, its
changelog records and offsets not yet sent), and the test kills it with ``kill -9`` there, three
times, restarting it each time. The sink process (ClickHouse and the webhook delivery) runs apart
and is never killed, so what it gets comes from the topic alone.

The oracle is the scenario: every customer makes exactly one cancel-request call, which raises one
relationship_strain alert at the call's time (one call, no purchases, no ranked tier: no other
rule can fire), so the expected alert ids are the documented uuid5 of ``customer|kind|time``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from domain.records import CallEvent
from ops.simulate import publish, to_outgoing
from schemas import codec
from tests.faults.injection import PAUSE_SWITCH, PAUSED_MARKER, switches_of
from tests.harness import (
    changelog_states,
    committed_offsets,
    direct,
    direct_query,
    end_offsets,
    measure_figures,
    read_topic,
    wait_until,
)
from tests.integration.test_alerts_pipeline import SECRET, Receiver

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

KILLS = 3
LIVE_PER_WAVE = 40
HISTORICAL = 10
DAY_MS = 86_400_000


def cancel_call(customer: str, at: int) -> CallEvent:
    return CallEvent(f"{customer}-cancel", customer, at, "inbound", "cancel_request", 30, 300, False, "agent-1")


def expected_id(customer: str, at: int) -> str:
    return str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty-stream:alert"),
                          f"{customer}|relationship_strain|{at}"))


def test_kill_9_after_alerts_are_acknowledged_before_the_changelog_three_times(make_worker, figures):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received, Receiver.rejected = [], []
    sink = make_worker("sink", role="sink", webhook_url=f"http://127.0.0.1:{server.server_port}/alerts",
                       webhook_secret=SECRET, webhook_backoff_cap_seconds=1.0,
                       pipeline_factory="tests.faults.injection:PausingPipeline")
    state = make_worker("state", role="state", like=sink)
    settings = sink.settings
    db = settings.clickhouse_database
    switches = switches_of(state.settings)
    switches.mkdir(parents=True, exist_ok=True)

    now = int(time.time() * 1000)
    # Three waves of 40 live customers (calls an hour ago, a minute apart), the first wave with 10
    # customers whose call was 10 days ago (historical: older than the 48-hour live window).
    waves = [[cancel_call(f"L{w}-{i:03d}", now - 3_600_000 - (w * LIVE_PER_WAVE + i) * 60_000)
              for i in range(LIVE_PER_WAVE)] for w in range(KILLS)]
    old = [cancel_call(f"H-{i:03d}", now - 10 * DAY_MS - i * 60_000) for i in range(HISTORICAL)]
    waves[0] = old + waves[0]
    live_ids = {expected_id(e.customer_id, e.occurred_at) for wave in waves for e in wave if e not in old}
    historical_ids = {expected_id(e.customer_id, e.occurred_at) for e in old}
    expected = live_ids | historical_ids
    customer_of = {expected_id(e.customer_id, e.occurred_at): e.customer_id for wave in waves for e in wave}
    assert len(expected) == KILLS * LIVE_PER_WAVE + HISTORICAL == 130

    sink.start()
    state.start()
    paused_batches: list[list[str]] = []
    recoveries = []
    try:
        for wave in waves:
            (switches / PAUSE_SWITCH).touch()
            publish(state.settings, to_outgoing(wave, seed=len(paused_batches)))
            wait_until(lambda: (switches / PAUSED_MARKER).exists(), timeout=90, interval=0.1,
                       what="the state worker paused before its changelog step")
            batch = json.loads((switches / PAUSED_MARKER).read_text())
            # The window: the batch's alerts are on the topic, the changelog has none of its customers.
            on_topic = {codec("alert").decode(v)["alert_id"] for _, v in read_topic(settings, settings.topic_prefix + "alerts")}
            assert batch and set(batch) <= on_topic
            assert not {customer_of[a] for a in batch} & set(changelog_states(settings))
            state.kill()
            killed_at = time.monotonic()
            (switches / PAUSED_MARKER).unlink()
            paused_batches.append(batch)
            state.start()
            # The restarted worker reads the killed batch again and gets through it: every input
            # offset committed, the wave's customers in the changelog.
            ends = end_offsets(settings)
            wait_until(lambda: committed_offsets(settings) == ends, timeout=120,  # noqa: B023
                       what="the restarted state worker through the published records")
            recoveries.append(time.monotonic() - killed_at)
            assert {e.customer_id for e in wave} <= set(changelog_states(settings))
            wave_ids = [expected_id(e.customer_id, e.occurred_at) for e in wave]
            wait_until(lambda: int(sink.scalar(  # noqa: B023
                f"SELECT count() FROM {db}.alerts FINAL WHERE alert_id IN {tuple(wave_ids)}")) == len(wave_ids),  # noqa: B023
                timeout=120, what="the wave's alerts stored")
        wait_until(lambda: live_ids <= {wid for wid, _ in Receiver.received}, timeout=120,
                   what="every live alert at the webhook")
        wait_until(lambda: sink.get("/status")["webhook"].get("skipped_historical", 0) >= HISTORICAL, timeout=60,
                   what="the webhook consumer past the historical alerts")
        state.stop()
        sink.stop()
    finally:
        server.shutdown()

    stored = direct_query(settings, f"SELECT alert_id, historical, count() FROM {db}.alerts FINAL "
                                    "GROUP BY alert_id, historical")
    rows_without_final = direct_query(settings, f"SELECT count() FROM {db}.alerts")[0][0]
    topic = Counter(codec("alert").decode(v)["alert_id"] for _, v in read_topic(settings, settings.topic_prefix + "alerts"))
    posted = Counter(wid for wid, _ in Receiver.received)
    events = [e for wave in waves for e in wave]
    row = figures(measure_figures(
        "kill -9 x3 between alerts acked and the changelog", settings, direct(settings), len(events),
        {(e.customer_id, e.event_id) for e in events}, recovery_seconds=max(recoveries),
        note=f"alerts: {len(expected)} expected, {len(stored)} stored (FINAL; {rows_without_final} rows without), "
             f"{sum(topic.values())} on the topic, {sum(posted.values())} POSTs for {len(live_ids)} live; "
             f"paused batches {[len(b) for b in paused_batches]}"))

    # ClickHouse: every expected alert exactly once, flagged as expected.
    assert sorted((a, h, n) for a, h, n in stored) == sorted(
        [(a, False, 1) for a in live_ids] + [(a, True, 1) for a in historical_ids])
    # The topic: every expected alert at least once, nothing else; those of the killed batches twice
    # or more (raised again when the batch was read again).
    assert set(topic) == expected
    assert all(topic[a] >= 2 for batch in paused_batches for a in batch)
    # The webhook: every live alert at least once, nothing historical, every request verified.
    assert set(posted) == live_ids
    assert Receiver.rejected == []
    assert len(paused_batches) == KILLS
    # Every call counted once in the state (changelog) and in ClickHouse: nothing lost, nothing twice.
    assert (row.lost, row.duplicates, row.stored, row.counted, row.counted_ch) == (0, 0, 130, 130, 130)
