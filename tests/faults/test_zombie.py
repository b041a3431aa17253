"""A zombie state worker: frozen with SIGSTOP for longer than the session timeout while its batch is
in flight, its partitions taken by the other worker, then resumed.

Two state workers (``HoldingPipeline``, :mod:`tests.faults.injection`) and a sink run as separate
processes, with a 6 s session timeout. Worker A holds its first batch that changed customers
before its first effect (folded, its fences not yet confirmed, nothing sent) and is frozen there
with SIGSTOP. After the session timeout the group drops A and B takes every partition: B reads A's
batch again (its offsets were never committed) and a second half of every customer's events. Only
then is A resumed (frozen about 2x the session timeout). A resumed worker's late writes must not
overwrite B's: the changelog's latest record per customer, the ClickHouse relationships and the
signals topic's last record per customer must all equal the ledger.
The case runs three times. B takes partitions A never committed: it must read them from their
start (docs/guarantees.md, "Found and closed"; before, B's state of about 180 customers ended about
900 events short in about one run of two on a loaded machine).

The same freeze after A's fences were confirmed and its signals acknowledged, at the start of its
changelog step, is a window the fence does not close: A notices on resuming that it stood still
(``StallWatch``, :mod:`streams.fencing`) and sends no changelog record (docs/guarantees.md).
"""

from __future__ import annotations

import json
import time

import pytest

from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from streams.sink import sink_group_id
from tests.faults.injection import HELD_MARKER, HOLD_BEFORE_EFFECTS_SWITCH, HOLD_SWITCH, RELEASE_FILE, switches_of
from tests.faults.test_roles import _last_signal_versions
from tests.harness import (
    changelog_states,
    committed_offsets,
    direct,
    end_offsets,
    expected_totals,
    landed_events,
    measure_figures,
    relationship_totals,
    state_totals,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

SESSION_TIMEOUT = 6.0
FREEZE = 2 * SESSION_TIMEOUT


HOLDS = {"before_effects": HOLD_BEFORE_EFFECTS_SWITCH, "before_changelog": HOLD_SWITCH}


@pytest.mark.parametrize(("hold", "run"), [
    *(pytest.param("before_effects", n) for n in (1, 2, 3)),
    # Frozen between its fence and its changelog: closed by the stall check, not by the fence.
    pytest.param("before_changelog", 1),
])
def test_zombie_worker_frozen_past_the_session_timeout_writes_nothing_late(make_worker, figures, hold, run):
    sink = make_worker("sink", role="sink", kafka_session_timeout_seconds=SESSION_TIMEOUT,
                       pipeline_factory="tests.faults.injection:HoldingPipeline")
    settings = sink.settings
    zombie = make_worker("a", role="state", like=sink)
    survivor = make_worker("b", role="state", like=sink)
    switches = switches_of(zombie.settings)
    switches.mkdir(parents=True, exist_ok=True)

    events = generate(customers=300, days=1, seed=40 + run, end_ms=int(time.time() * 1000) - 60_000,
                      history_days=30)
    ordered = sorted(events, key=lambda e: e.occurred_at)
    first, second = ordered[:len(ordered) // 2], ordered[len(ordered) // 2:]
    expected = expected_by_customer(events)
    valid = {(e.customer_id, e.event_id) for e in events}
    later = {e.customer_id for e in second}
    sent = 0

    sink.start()
    zombie.start()
    survivor.start()
    wait_until(lambda: zombie.get("/status")["assignment"] and survivor.get("/status")["assignment"], timeout=90,
               what="both state workers holding partitions")
    inputs = {f"{settings.topic_prefix}{name}[{p}]" for name in ("purchases", "calls", "visits")
              for p in range(settings.partitions)}

    # A holds its first batch that changed customers (before its effects, or before its
    # changelog step); freeze it there.
    (switches / HOLDS[hold]).touch()
    outgoing = to_outgoing(first, seed=run, duplicate_rate=0.02)
    publish(settings, outgoing)
    sent += len(outgoing)
    wait_until(lambda: (switches / HELD_MARKER).exists(), timeout=90, interval=0.1,
               what=f"state worker A holding a batch {hold}")
    held = json.loads((switches / HELD_MARKER).read_text())
    zombie.pause()
    frozen_at = time.monotonic()
    (switches / RELEASE_FILE).touch()  # A goes on at once when it is resumed
    try:
        wait_until(lambda: inputs <= set(survivor.get("/status")["assignment"]), timeout=60,
                   what="B taking every partition from the frozen A")
        moved = time.monotonic() - frozen_at
        outgoing = to_outgoing(second, seed=100 + run, duplicate_rate=0.02)
        publish(settings, outgoing)
        sent += len(outgoing)
        ends = end_offsets(settings)
        try:
            wait_until(lambda: committed_offsets(settings) == ends, timeout=120,
                       what="B through every published record while A is frozen")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: committed {committed_offsets(settings)}, ends {ends}") from exc
        time.sleep(max(0.0, FREEZE - (time.monotonic() - frozen_at)))
        frozen = time.monotonic() - frozen_at
    finally:
        zombie.resume()
    # A is back in the group and both groups are through everything (A's late writes, if any, done).
    wait_until(lambda: zombie.get("/status")["assignment"], timeout=90, what="A rejoining the group")
    wait_until(lambda: committed_offsets(settings) == ends == committed_offsets(settings, sink_group_id(settings)),
               timeout=120, what="both groups through every record after A resumed")
    wait_until(lambda: landed_events(sink.query, settings.clickhouse_database) == len(valid), timeout=120,
               what="every event in ClickHouse")
    for process in (zombie, survivor, sink):
        process.stop()

    query = direct(settings)
    db = settings.clickhouse_database
    stale = {cid for cid, state in state_totals(changelog_states(settings)).items()
             if state != expected_totals(expected).get(cid)}
    row = figures(measure_figures(
        f"zombie: state worker frozen {frozen:.0f}s {hold} (run {run})", settings, query, sent, valid,
        recovery_seconds=moved,
        note=f"held batch: {len(held)} customers, {len(set(held) & later)} with later events; "
             f"changelog wrong for {len(stale)} customers"))

    # The held batch had customers whose later events B folded while A was frozen: a late write of
    # A's state would leave them short.
    assert set(held) & later
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    assert state_totals(changelog_states(settings)) == expected_totals(expected)
    assert relationship_totals(query, db) == expected_totals(expected)
    # What a consumer of the signals topic acts on: each customer's newest signal.
    assert _last_signal_versions(settings) == {cid: x.events for cid, x in expected.items()}
