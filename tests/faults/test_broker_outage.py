"""The broker goes away (stopped, then killed) under a running worker.

This test stops and kills a broker, so it runs one of its own (own data directory, own ports):
the session broker the other tests share is never touched.
"""

from __future__ import annotations

import time

import pytest

from ops import broker
from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from tests.harness import (
    changelog_states,
    direct,
    expected_totals,
    measure_figures,
    relationship_totals,
    state_totals,
    wait_drained,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

OUTAGE_SECONDS = 20
RESUME_WITHIN_SECONDS = 60


def test_broker_stopped_then_killed_consumption_resumes_by_itself(own_broker, make_worker, figures):
    worker = make_worker(bootstrap=own_broker.bootstrap)
    settings = worker.settings
    events = generate(customers=300, days=1, seed=31, end_ms=int(time.time() * 1000) - 60_000, history_days=20)
    outgoing = to_outgoing(events, seed=31, duplicate_rate=0.02)
    third = len(outgoing) // 3
    parts = [outgoing[:third], outgoing[third:2 * third], outgoing[2 * third:]]
    sent: set[tuple[str, str]] = set()

    def send(part) -> None:
        publish(settings, part)
        sent.update((o.event.customer_id, o.event.event_id) for o in part if o.event is not None)

    worker.start()
    send(parts[0])
    wait_drained(worker, len(sent))

    # 1. The broker is stopped cleanly and stays away for 20 s.
    broker.stop(own_broker)
    time.sleep(OUTAGE_SECONDS)
    assert worker.proc.poll() is None, f"the worker died while the broker was away:\n{worker.log_tail()}"
    broker.start(own_broker)
    back = time.monotonic()
    send(parts[1])
    wait_drained(worker, len(sent), timeout=RESUME_WITHIN_SECONDS)
    after_stop = time.monotonic() - back

    # 2. The broker is killed (kill -9) and started again at once (its log is recovered).
    broker.stop(own_broker, force=True)
    broker.start(own_broker)
    back = time.monotonic()
    send(parts[2])
    wait_drained(worker, len(sent), timeout=RESUME_WITHIN_SECONDS)
    after_kill = time.monotonic() - back
    assert worker.proc.poll() is None, f"the worker died after the broker was killed:\n{worker.log_tail()}"
    worker.stop()

    query = direct(settings)
    row = figures(measure_figures(
        "broker stopped 20 s, then kill -9", settings, query, len(outgoing), sent,
        recovery_seconds=max(after_stop, after_kill),
        note=f"resumed {after_stop:.1f}s after the clean stop, {after_kill:.1f}s after the kill",
    ))
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len({(e.customer_id, e.event_id) for e in events})
    expected = expected_totals(expected_by_customer(events))
    assert relationship_totals(query, settings.clickhouse_database) == expected
    assert state_totals(changelog_states(settings)) == expected
