"""DueIndex: the gone-quiet timers."""

from __future__ import annotations

import json
import random

import pytest

from domain.alerts import DueIndex


def test_pop_due_returns_only_due_ones_earliest_first() -> None:
    index = DueIndex()
    index.schedule("b", 200)
    index.schedule("a", 100)
    index.schedule("c", 300)
    index.schedule("d", 200)
    assert index.next_due() == 100
    assert index.pop_due(99) == []
    assert index.pop_due(200) == [("a", 100), ("b", 200), ("d", 200)]  # ties by customer id
    assert index.pop_due(200) == []
    assert len(index) == 1 and index.to_dict() == {"c": 300}


def test_reschedule_moves_the_due_time_both_ways() -> None:
    index = DueIndex()
    index.schedule("a", 100)
    index.schedule("a", 500)  # later: the old entry is stale
    assert index.pop_due(400) == []
    index.schedule("a", 50)  # earlier again
    assert index.due_at("a") == 50
    assert index.pop_due(60) == [("a", 50)]
    assert index.pop_due(1_000) == []  # neither stale entry comes back
    assert len(index) == 0 and index.next_due() is None


def test_cancel_and_update() -> None:
    index = DueIndex([("a", 100), ("b", 200)])
    assert index.cancel("a") is True
    assert index.cancel("a") is False
    assert "a" not in index and "b" in index
    index.update("b", None)
    index.update("c", 300)
    assert index.pop_due(10_000) == [("c", 300)]


def test_pop_due_limit_leaves_the_rest() -> None:
    index = DueIndex((f"c{i}", i) for i in range(10))
    assert index.pop_due(100, limit=3) == [("c0", 0), ("c1", 1), ("c2", 2)]
    assert [c for c, _ in index.pop_due(100)] == [f"c{i}" for i in range(3, 10)]


def test_many_customers_against_a_plain_dict() -> None:
    """Random schedules, reschedules and cancels; pop_due must match a brute-force model."""
    rng = random.Random(7)
    index = DueIndex()
    model: dict[str, int] = {}
    now = 0
    for step in range(20_000):
        customer = f"c{rng.randrange(2_000)}"
        action = rng.random()
        if action < 0.6:
            due = now + rng.randrange(1, 10_000)
            index.schedule(customer, due)
            model[customer] = due
        elif action < 0.8:
            index.cancel(customer)
            model.pop(customer, None)
        else:
            now += rng.randrange(0, 2_000)
            expected = sorted(((d, c) for c, d in model.items() if d <= now))
            assert index.pop_due(now) == [(c, d) for d, c in expected], f"step {step}"
            for _, c in expected:
                del model[c]
        assert len(index) == len(model)
    assert index.to_dict() == dict(sorted(model.items()))
    # lazy deletion is bounded: stale heap entries never outnumber live ones by much
    assert len(index._heap) <= 2 * len(model) + 64


def test_pop_due_does_not_scan_every_customer() -> None:
    index = DueIndex((f"c{i}", 1_000 + i) for i in range(100_000))
    index.schedule("early", 5)

    class CountingDict(dict):  # counts the customers pop_due looks up
        lookups = 0

        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            CountingDict.lookups += 1
            return super().get(key, default)

    index._due = CountingDict(index._due)
    assert index.pop_due(10) == [("early", 5)]
    assert CountingDict.lookups == 1
    assert len(index) == 100_000


@pytest.mark.parametrize("form", ["dict", "list"])
def test_round_trip_through_json(form: str) -> None:
    index = DueIndex()
    for i in range(50):
        index.schedule(f"c{i}", 1_000 - i * 10)
    index.schedule("c3", 5)  # rescheduled
    index.cancel("c7")
    if form == "dict":
        again = DueIndex.from_dict(json.loads(json.dumps(index.to_dict())))
    else:
        again = DueIndex.from_list(json.loads(json.dumps(index.to_list())))
    assert again.to_dict() == index.to_dict()
    assert index.to_list()[:3] == [["c3", 5], ["c49", 510], ["c48", 520]]
    expected = [("c3", 5)] + [(f"c{i}", 1_000 - i * 10) for i in range(49, 39, -1)]
    assert again.pop_due(600) == index.pop_due(600) == expected


def test_remove_where_drops_revoked_customers() -> None:
    index = DueIndex([("keep-1", 10), ("drop-1", 5), ("keep-2", 20)])
    assert index.remove_where(lambda c: c.startswith("keep")) == 1
    assert index.pop_due(100) == [("keep-1", 10), ("keep-2", 20)]
