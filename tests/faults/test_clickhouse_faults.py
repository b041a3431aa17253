"""ClickHouse fails under the worker: writes refused for 30 s, and an insert whose acknowledgement is lost.

Faults are injected with the switch files of :mod:`tests.faults.injection` (the worker runs
with ``LOYALTY_FAULT_INJECTION_DIR``): ``clickhouse_down`` makes every write fail while it exists,
``clickhouse_ack_lost`` makes the next write succeed and then report an error.
"""

from __future__ import annotations

import time

import pytest

from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from streams.sink import sink_group_id
from tests.faults.injection import switches_of
from tests.harness import (
    changelog_states,
    committed_offsets,
    direct,
    expected_totals,
    landed_events,
    measure_figures,
    raw_rows_without_final,
    relationship_totals,
    rows_inserted,
    state_totals,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

FAULTY_SINK = "tests.faults.injection:make_sink"

OUTAGE_SECONDS = 30


def test_clickhouse_down_30s_offsets_never_pass_what_clickhouse_acknowledged(make_worker, figures, tmp_path):
    # Back-off capped at 5 s (default 30 s) so the backlog starts draining soon after the outage.
    worker = make_worker(sink_factory=FAULTY_SINK, sink_retry_max_seconds=5.0)
    settings = worker.settings
    switches = switches_of(settings)
    switches.mkdir(parents=True, exist_ok=True)
    db = settings.clickhouse_database
    events = generate(customers=300, days=1, seed=41, end_ms=int(time.time() * 1000) - 60_000, history_days=20)
    outgoing = to_outgoing(events, seed=41, duplicate_rate=0.02)
    before, during = outgoing[: len(outgoing) // 2], outgoing[len(outgoing) // 2:]
    valid_before = {(o.event.customer_id, o.event.event_id) for o in before if o.event is not None}

    worker.start()
    publish(settings, before)
    wait_drained(worker, len(valid_before))
    committed = committed_offsets(settings, sink_group_id(settings))
    stored = landed_events(worker.query, db)
    assert stored == len(valid_before)

    (switches / "clickhouse_down").touch()
    publish(settings, during)
    samples = 0
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < outage_ends:
        # What ClickHouse acknowledged bounds what Kafka may consider consumed.
        assert committed_offsets(settings, sink_group_id(settings)) == committed, \
            "the sink committed offsets past what ClickHouse stored"
        assert landed_events(worker.query, db) == stored
        samples += 1
        time.sleep(1.0)
    status = worker.get("/status")
    assert status["sink"]["sink_retries"] > 0, "the switch was never hit"
    assert worker.proc.poll() is None

    (switches / "clickhouse_down").unlink()
    back = time.monotonic()
    wait_drained(worker, len(expected_by_customer(events)), timeout=120)
    recovery = time.monotonic() - back
    worker.stop()

    query = direct(settings)
    valid = {(e.customer_id, e.event_id) for e in events}
    row = figures(measure_figures(
        "ClickHouse down 30 s", settings, query, len(outgoing), valid, recovery_seconds=recovery,
        note=f"{status['sink']['sink_retries']} write retries; offsets held in {samples} checks during the outage",
    ))
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    expected = expected_totals(expected_by_customer(events))
    assert relationship_totals(query, db) == expected
    assert state_totals(changelog_states(settings)) == expected


def test_lost_insert_acknowledgement_retry_inserts_no_duplicate_rows(make_worker, figures, tmp_path):
    worker = make_worker(sink_factory=FAULTY_SINK)
    settings = worker.settings
    switches = switches_of(settings)
    switches.mkdir(parents=True, exist_ok=True)
    db = settings.clickhouse_database
    events = generate(customers=200, days=1, seed=51, end_ms=int(time.time() * 1000) - 60_000, history_days=20)
    outgoing = to_outgoing(events, seed=51)  # no resends: every raw row inserted twice would be a retry's
    valid = {(e.customer_id, e.event_id) for e in events}
    chunks = [outgoing[i::3] for i in range(3)]

    worker.start()
    landed: set[tuple[str, str]] = set()
    for chunk in chunks:
        switch = switches / "clickhouse_ack_lost"
        switch.touch()
        publish(settings, chunk)
        wait_until(lambda: not switch.exists(), timeout=60, what="the acknowledgement-lost switch used")  # noqa: B023
        landed.update((o.event.customer_id, o.event.event_id) for o in chunk if o.event is not None)
        wait_drained(worker, len(landed))
    retries = worker.get("/status")["sink"]["sink_retries"]
    # Read while the same engine session runs: merged-away insert parts are still listed then.
    inserted = rows_inserted(worker.query, db)
    without_final = raw_rows_without_final(worker.query, db)
    worker.stop()
    injected = worker.log_path.read_text(errors="replace").count("rows written, acknowledgement lost")

    query = direct(settings)
    row = figures(measure_figures(
        "insert ok, ack lost, retried", settings, query, len(outgoing), valid,
        note=f"{injected} acks lost, {retries} retries; rows inserted {inserted}, count() w/o FINAL {without_final}",
    ))
    assert injected >= 3 and retries >= injected
    # The retried inserts carried the same insert_deduplication_token: ClickHouse inserted nothing.
    assert inserted == without_final == len(valid)
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    assert relationship_totals(query, db) == expected_totals(expected_by_customer(events))
