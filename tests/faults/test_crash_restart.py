"""The worker dies or loses its disk: nothing lost, nothing counted twice.

The simulator's ledger is the oracle: :func:`ops.simulate.expected_by_customer`
computes each customer's totals by plain arithmetic, never through the pipeline's own code.
"""

from __future__ import annotations

import random
import shutil
import threading
import time

import pytest

from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from tests.harness import (
    changelog_states,
    committed_offsets,
    direct,
    direct_query,
    end_offsets,
    expected_totals,
    measure_figures,
    raw_rows_without_final,
    relationship_totals,
    rocksdb_states,
    state_totals,
    wait_drained,
    wait_until,
    worker_processed,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

DAY_MS = 86_400_000
KILLS = 3
KILL_SEED = 20261123


def test_kill_9_at_random_points_mid_stream_three_times(make_worker, figures):
    worker = make_worker()
    settings = worker.settings
    events = generate(customers=400, days=1, seed=7, end_ms=int(time.time() * 1000) - 60_000, history_days=30)
    outgoing = to_outgoing(events, seed=7, duplicate_rate=0.02)
    expected = expected_by_customer(events)
    valid = {(e.customer_id, e.event_id) for e in events}

    worker.start()
    # A steady stream (1/60 of the messages a second) while the kills go on; the rest at once after.
    kills_done = threading.Event()
    publisher = threading.Thread(target=_feed, args=(settings, outgoing, kills_done), daemon=True)
    publisher.start()
    rng = random.Random(KILL_SEED)
    kills = []
    try:
        for _ in range(KILLS):
            # This incarnation is consuming; let it run a random while, then pull the plug while
            # records are in flight (published but not committed).
            wait_until(lambda: worker_processed(worker) > 0, timeout=90, what="the worker consuming")
            time.sleep(rng.uniform(0.05, 0.6))
            seen: list[int] = []
            wait_until(lambda: seen.append(_lag(settings)) or seen[-1] > 0, timeout=30, interval=0.05,  # noqa: B023
                       what="records in flight")
            worker.kill()
            killed_at, lag = time.monotonic(), seen[-1]
            worker.start()
            wait_until(lambda: worker_processed(worker) > 0, timeout=90, what="the restarted worker consuming")
            kills.append((lag, time.monotonic() - killed_at))
    finally:
        kills_done.set()
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    wait_drained(worker, len(valid), timeout=180)
    worker.stop()

    query = direct(settings)
    db = settings.clickhouse_database
    row = figures(measure_figures(
        "kill -9 x3 mid-stream", settings, query, len(outgoing), valid,
        recovery_seconds=max(seconds for _, seconds in kills),
        note=f"lag at kills {[lag for lag, _ in kills]}; raw rows w/o FINAL {raw_rows_without_final(query, db)}",
    ))
    # Every kill hit a worker with records not yet committed (measured just before the kill).
    assert all(lag > 0 for lag, _ in kills), kills
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == row.valid_in == len(valid)
    assert relationship_totals(query, db) == expected_totals(expected)
    assert state_totals(changelog_states(settings)) == expected_totals(expected)


def _feed(settings, outgoing, kills_done: threading.Event) -> None:
    step = max(1, len(outgoing) // 60)
    sent = 0
    while sent < len(outgoing):
        n = step if not kills_done.is_set() else len(outgoing) - sent
        publish(settings, outgoing[sent:sent + n])
        sent += n
        kills_done.wait(1.0)


def _lag(settings) -> int:
    return sum(end_offsets(settings).values()) - sum(committed_offsets(settings).values())


def test_graceful_restart_then_deleted_state_dir_is_rebuilt_from_the_changelog(make_worker, figures):
    worker = make_worker()
    settings = worker.settings
    db = settings.clickhouse_database
    now = int(time.time() * 1000)
    # The same 200 customers (C0000001..) in both parts; the second part is newer, with new ids.
    first = generate(customers=200, days=1, seed=21, end_ms=now - 3 * DAY_MS, history_days=20)
    second = generate(customers=200, days=1, seed=22, end_ms=now - 60_000)
    assert not {e.event_id for e in first} & {e.event_id for e in second}
    first_out = to_outgoing(first, seed=21, duplicate_rate=0.02)
    # After the rebuild, 5% of the first part is sent again: the rebuilt state must remember their ids.
    resent = random.Random(23).sample([o for o in first_out if o.note == "event"], len(first) // 20)
    second_out = to_outgoing(second, seed=22) + resent

    worker.start()
    publish(settings, first_out)
    wait_drained(worker, len(first))
    worker.stop()
    rows_before = _relationship_rows(settings)
    states_before = changelog_states(settings)
    local_before = rocksdb_states(settings)
    assert state_totals(states_before) == expected_totals(expected_by_customer(first))
    assert len(local_before) == 200

    # Graceful restart: nothing to redo, the state and the rows stay exactly as they were.
    worker.start()
    wait_until(lambda: worker.get("/status")["assignment"], timeout=60, what="partitions assigned")
    wait_drained(worker, len(first))
    worker.stop()
    assert _relationship_rows(settings) == rows_before
    assert rocksdb_states(settings) == local_before

    # The disk is lost: the worker rebuilds its table from the changelog topic alone. RocksDB
    # opens read-only beside the running worker, so the rebuilt table can be watched directly.
    shutil.rmtree(settings.state_dir)
    started = time.monotonic()
    worker.start()
    wait_until(lambda: _local_state_or_none(settings) == local_before, timeout=60,
               what="the table rebuilt from the changelog equal to the state before")
    assert changelog_states(settings) == states_before

    # And it goes on from there: new events for the same customers continue the totals exactly,
    # and the resent ids are recognised by the rebuilt state.
    publish(settings, second_out)
    wait_drained(worker, len(first) + len(second))
    recovery = time.monotonic() - started
    worker.stop()

    query = direct(settings)
    valid = {(e.customer_id, e.event_id) for e in first + second}
    row = figures(measure_figures("graceful restart + state dir deleted", settings, query,
                                  len(first_out) + len(second_out), valid, recovery_seconds=recovery,
                                  note=f"{len(resent)} first-part events resent after the rebuild"))
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    expected = expected_totals(expected_by_customer(first + second))
    assert relationship_totals(query, db) == expected
    assert state_totals(changelog_states(settings)) == expected


def _relationship_rows(settings) -> dict[str, tuple]:
    rows = direct_query(settings, f"SELECT * EXCEPT updated_at FROM {settings.clickhouse_database}.relationships FINAL")
    return {r[0]: tuple(r) for r in rows}


def _local_state_or_none(settings) -> dict | None:
    try:
        return rocksdb_states(settings)
    except Exception:  # noqa: BLE001 - rocksdict raises plain Exception while the worker is still creating the files
        return None
