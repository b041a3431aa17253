"""Events that arrive out of order, by days, give the same state as sorted ones.

Reference: the same events folded in time order with :func:`domain.relationship.apply_event`
(whose order independence is what is being shown), checked in turn against the ledger's totals.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import defaultdict

import pytest

from domain.relationship import RelationshipState, apply_event, facts, state_to_dict
from ops.simulate import expected_by_customer, generate, publish, to_outgoing
from tests.harness import (
    changelog_states,
    direct,
    direct_query,
    expected_totals,
    measure_figures,
    relationship_totals,
    state_totals,
    wait_drained,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

DAY_MS = 86_400_000
# remembered ids carry arrival times; the alert rules' memory follows the order signals were scored in
ARRIVAL_DEPENDENT = ("seen_event_ids", "seen_received_at", "last_received_at", "alert_state")


def _shuffled_within_customers(events, rng):
    """The same global interleaving of customers, each customer's own events in a random order."""
    by_customer = defaultdict(list)
    for event in events:
        by_customer[event.customer_id].append(event)
    for evs in by_customer.values():
        rng.shuffle(evs)
    cursor = defaultdict(int)
    out = []
    for event in events:
        cid = event.customer_id
        out.append(by_customer[cid][cursor[cid]])
        cursor[cid] += 1
    return out


def _max_lateness_days(order) -> dict[str, float]:
    """Per customer, how many days older than the newest event before it an event arrived."""
    newest: dict[str, int] = {}
    late: dict[str, float] = defaultdict(float)
    for event in order:
        top = newest.get(event.customer_id, event.occurred_at)
        late[event.customer_id] = max(late[event.customer_id], (top - event.occurred_at) / DAY_MS)
        newest[event.customer_id] = max(top, event.occurred_at)
    return late


def test_out_of_order_events_give_the_same_state_as_sorted_ones(make_worker, figures):
    worker = make_worker()
    settings = worker.settings
    db = settings.clickhouse_database
    events = generate(customers=150, days=1, seed=91, end_ms=int(time.time() * 1000) - 60_000, history_days=30)
    rng = random.Random(91)
    # A few events from more than a year before the customer's newest, arriving last: lifetime only.
    ancient = [dataclasses.replace(e, event_id=f"{e.event_id}-old", occurred_at=e.occurred_at - 400 * DAY_MS)
               for e in rng.sample(events, 5)]
    shuffled = _shuffled_within_customers(events, rng) + ancient
    ordered = sorted(events + ancient, key=lambda e: (e.occurred_at, e.event_id))
    lateness = _max_lateness_days(shuffled)
    assert sum(days >= 3 for days in lateness.values()) >= len(lateness) // 2, "not shuffled by days"

    worker.start()
    publish(settings, to_outgoing(shuffled, seed=91))
    valid = {(e.customer_id, e.event_id) for e in ordered}
    wait_drained(worker, len(valid))
    worker.stop()

    # The reference: the sorted events, folded in time order.
    reference: dict[str, RelationshipState] = {}
    for event in ordered:
        state = reference.setdefault(event.customer_id, RelationshipState(event.customer_id))
        apply_event(state, event, settings.dedup_horizon_ms)
    want_rows = {cid: facts(state) for cid, state in reference.items()}
    got_rows = _relationship_facts(settings, next(iter(want_rows.values())).keys())
    assert got_rows == want_rows

    def comparable(data):
        return {k: v for k, v in data.items() if k not in ARRIVAL_DEPENDENT}

    states = changelog_states(settings)
    assert {cid: comparable(s) for cid, s in states.items()} == {
        cid: comparable(state_to_dict(state)) for cid, state in reference.items()}

    query = direct(settings)
    row = figures(measure_figures(
        "out of order by days", settings, query, len(shuffled), valid,
        note=f"max lateness {max(lateness.values()):.0f} days; {len(ancient)} events 400 days old arriving last",
    ))
    assert (row.lost, row.duplicates) == (0, 0)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    expected = expected_totals(expected_by_customer(ordered))
    assert relationship_totals(query, db) == expected
    assert state_totals(states) == expected


def _relationship_facts(settings, names) -> dict[str, dict]:
    """relationships FINAL as facts() dicts: the same columns, times in epoch milliseconds."""
    db = settings.clickhouse_database
    types = dict(direct_query(settings, f"SELECT name, type FROM system.columns "
                                        f"WHERE database = '{db}' AND table = 'relationships'"))
    names = list(names)
    select = ", ".join(f"toUnixTimestamp64Milli({n})" if "DateTime64" in types[n] else n for n in names)
    return {r[0]: dict(zip(names, (list(v) if isinstance(v, tuple) else v for v in r), strict=True))
            for r in direct_query(settings, f"SELECT {select} FROM {db}.relationships FINAL")}
