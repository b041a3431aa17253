"""Offline replay: parsing with defaults, exact money, invalid lines, order, as-of, volume."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import pytest

from domain.model import replay
from domain.model.signals import SIGNAL_FIELDS
from domain.records import CallEvent, PurchaseEvent, PurchaseItem, VisitEvent

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY = 86_400_000


def line(**fields: object) -> str:
    return json.dumps(fields)


def test_minimal_purchase_gets_the_documented_defaults() -> None:
    got = replay.parse_event(json.loads(line(type="purchase", event_id="e1", customer_id="c1",
                                             occurred_at="2024-01-01T00:00:00Z", amount="19.99", currency="EUR"),
                                        parse_float=Decimal))
    assert got == PurchaseEvent("e1", "c1", T0, "unknown", "e1", 1999, "EUR")


def test_minimal_call_and_visit_get_the_documented_defaults() -> None:
    base = {"event_id": "e1", "customer_id": "c1", "occurred_at": "2024-01-01T00:00:00Z"}
    assert replay.parse_event({"type": "call", **base}) == CallEvent(
        "e1", "c1", T0, "inbound", "other", 0, 0, True, "unknown", None, None, None)
    assert replay.parse_event({"type": "visit", **base}) == VisitEvent("e1", "c1", T0, "unknown", "unknown", 0, False, ())


def test_full_purchase() -> None:
    data = json.loads(line(
        type="purchase", event_id="e1", customer_id="c1", occurred_at="2024-01-01T02:00:00+02:00",
        amount=120.5, currency="EUR", channel="store", order_id="o1", discount="10", promo_code="SPRING",
        items=[{"sku": "s1", "category": "shoes", "quantity": 2, "unit_price": "65.25"}, {"sku": "s2"}],
        is_return=False, location_id="S01"), parse_float=Decimal)
    assert replay.parse_event(data) == PurchaseEvent(
        "e1", "c1", T0, "store", "o1", 12050, "EUR", discount_minor=1000, promo_code="SPRING",
        items=(PurchaseItem("s1", "shoes", 2, 6525), PurchaseItem("s2", "unknown", 1, 0)), location_id="S01")


@pytest.mark.parametrize("money, currency, minor", [
    ({"amount": "19.99"}, "EUR", 1999),
    ({"amount": 19.99}, "EUR", 1999),        # a JSON number is read as a decimal, not a float
    ({"amount": 0.1}, "EUR", 10),
    ({"amount": 7}, "EUR", 700),
    ({"amount": "1234567.89"}, "EUR", 123456789),
    ({"amount": "500"}, "JPY", 500),          # no minor unit
    ({"amount": "1.234"}, "KWD", 1234),       # three decimals
    ({"amount_minor": 1999}, "EUR", 1999),
])
def test_amounts_convert_exactly(money: dict[str, object], currency: str, minor: int) -> None:
    text = line(type="purchase", event_id="e", customer_id="c", occurred_at=T0, currency=currency, **money)
    assert replay.parse_event(json.loads(text, parse_float=Decimal)).amount_minor == minor  # type: ignore[union-attr]


@pytest.mark.parametrize("money, reason", [
    ({"amount": "19.999"}, "amount: more decimal places than EUR has"),
    ({"amount": "ten"}, "amount: not a decimal number"),
    ({}, "amount: missing (amount or amount_minor)"),
    ({"amount": "1", "amount_minor": 100}, "amount: give amount or amount_minor, not both"),
    ({"amount_minor": 1.5}, "amount_minor: must be an integer"),
    ({"amount": True}, "amount: must be a decimal string or a number"),
])
def test_bad_amounts_are_refused(money: dict[str, object], reason: str) -> None:
    text = line(type="purchase", event_id="e", customer_id="c", occurred_at=T0, currency="EUR", **money)
    with pytest.raises(replay.InvalidEvent) as raised:
        replay.parse_event(json.loads(text, parse_float=Decimal))
    assert str(raised.value) == reason


def test_invalid_lines_are_reported_with_line_numbers_and_skipped() -> None:
    good = line(type="visit", event_id="v1", customer_id="c1", occurred_at="2024-01-01T00:00:00Z")
    lines = [
        good,                                                                        # 1
        "{not json",                                                                 # 2
        line(type="visit", event_id="v2", occurred_at="2024-01-01T00:00:00Z"),       # 3
        line(type="refund", event_id="x", customer_id="c1", occurred_at=T0),         # 4
        line(type="purchase", event_id="p1", customer_id="c1", occurred_at=T0, amount="1.001", currency="EUR"),  # 5
        "   ",                                                                       # 6 blank: skipped
        line(type="purchase", event_id="p2", customer_id="c1", occurred_at=T0, amount="1", currency="EUR"),  # 7
        "[1, 2]",                                                                    # 8
        line(type="purchase", event_id="p3", customer_id="c1", occurred_at=T0, amount="1", currency="USD"),  # 9
        line(type="purchase", event_id="p4", customer_id="c1", occurred_at=T0, amount="1", currency="EUR",
             channel="fax"),                                                         # 10
        line(type="call", event_id="k1", customer_id="c1", occurred_at="yesterday"),  # 11
        line(type="call", event_id="k2", customer_id="c1", occurred_at=T0, sentiment=3),  # 12
    ]
    parsed = replay.read_events(lines)
    assert parsed.lines == 11
    assert [e.event_id for e in parsed.events] == ["v1", "p2"]
    assert parsed.invalid_count == 9
    got = {bad.line_no: bad.reason for bad in parsed.invalid}
    assert list(got) == [2, 3, 4, 5, 8, 9, 10, 11, 12]
    assert got[2].startswith("not JSON")
    assert got[3] == "customer_id: missing"
    assert got[4] == "type: must be purchase, call or visit, not 'refund'"
    assert got[5] == "amount: more decimal places than EUR has"
    assert got[8] == "not a JSON object"
    assert got[9].startswith("currency: only EUR")
    assert got[10] == "channel: unknown"
    assert got[11].startswith("occurred_at: not ISO-8601")
    assert got[12] == "sentiment: must be -1..1"


def test_timestamps() -> None:
    for text, ms in [("2024-01-01T00:00:00Z", T0), ("2024-01-01T00:00:00", T0), ("2024-01-01T01:00:00+01:00", T0),
                     ("2024-01-01T00:00:00.123Z", T0 + 123)]:
        event = replay.parse_event({"type": "visit", "event_id": "v", "customer_id": "c", "occurred_at": text})
        assert event.occurred_at == ms, text


# ---------------------------------------------------------------------------------------------
# Whole runs.


def population_lines(customers: int, per_customer: int, seed: int) -> list[str]:
    """Purchases, calls and visits over a year, in customer order."""
    rng = random.Random(seed)
    lines = []
    for c in range(customers):
        cid = f"C{c:05d}"
        for k in range(per_customer):
            at = T0 + rng.randrange(365 * DAY)
            kind = ("purchase", "purchase", "visit", "call")[k % 4]
            fields: dict[str, object] = {"type": kind, "event_id": f"{cid}-{k}", "customer_id": cid, "occurred_at": at}
            if kind == "purchase":
                fields.update(amount=f"{rng.randrange(100, 30000) / 100:.2f}", currency="EUR",
                              channel=rng.choice(["store", "web", "app"]), location_id="S01",
                              discount=rng.choice([None, "5.00"]),
                              items=[{"sku": f"s{rng.randrange(50)}", "category": rng.choice(["shoes", "bags", "hats"])}])
            elif kind == "visit":
                fields.update(channel="store", location_id="S01", recognized=rng.random() < 0.5)
            else:
                fields.update(resolved=rng.random() < 0.8, sentiment=round(rng.uniform(-1, 1), 3))
            lines.append(json.dumps(fields))
    return lines


def run(tmp_path: Path, lines: list[str], as_of: int, name: str) -> tuple[replay.ReplaySummary, str]:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"{name}.out.jsonl"
    summary = replay.run_replay(src, as_of, out)
    return summary, out.read_text()


def test_replay_does_not_depend_on_line_order_or_duplicates(tmp_path: Path) -> None:
    lines = population_lines(120, 12, seed=1)
    as_of = T0 + 365 * DAY
    first, out_sorted = run(tmp_path, lines, as_of, "a")
    shuffled = lines + lines[:50]  # 50 resends
    random.Random(2).shuffle(shuffled)
    second, out_shuffled = run(tmp_path, shuffled, as_of, "b")
    assert out_shuffled == out_sorted
    assert (first.events_applied, first.duplicates) == (1440, 0)
    assert (second.events_applied, second.duplicates, second.lines) == (1440, 50, 1490)
    assert first.params == second.params and first.params.source == "fitted"


def test_events_after_as_of_are_ignored(tmp_path: Path) -> None:
    lines = population_lines(80, 10, seed=3)
    as_of = T0 + 200 * DAY
    before = [text for text in lines if json.loads(text)["occurred_at"] <= as_of]
    at_cutoff = line(type="visit", event_id="edge", customer_id="C00000", occurred_at=as_of)
    everything, out_all = run(tmp_path, lines + [at_cutoff], as_of, "all")
    _only_before, out_before = run(tmp_path, before + [at_cutoff], as_of, "before")
    assert out_all == out_before
    assert everything.after_as_of == len(lines) - len(before) > 0
    assert everything.events_applied == len(before) + 1  # an event exactly at as_of counts


def test_output_has_one_line_per_customer_with_the_signal_fields(tmp_path: Path) -> None:
    summary, text = run(tmp_path, population_lines(30, 8, seed=4), T0 + 365 * DAY, "out")
    rows = [json.loads(row) for row in text.splitlines()]
    assert [row["customer_id"] for row in rows] == [f"C{c:05d}" for c in range(30)]
    assert all(list(row) == list(SIGNAL_FIELDS) for row in rows)
    assert summary.customers == 30 and sum(summary.tier_counts.values()) == 30
    assert "customers scored  30" in summary.format()


def test_seventy_thousand_events(tmp_path: Path) -> None:
    lines = population_lines(7000, 10, seed=5)
    summary, text = run(tmp_path, lines, T0 + 365 * DAY, "big")
    assert (summary.lines, summary.events_applied, summary.invalid_count) == (70_000, 70_000, 0)
    assert summary.customers == 7000 == len(text.splitlines())
    assert summary.params.source == "fitted"


def test_older_history_is_read_once_the_earliest_time_is_moved() -> None:
    old = line(type="purchase", event_id="p1", customer_id="c1", occurred_at="1995-06-09T00:00:00Z",
               amount="10", currency="EUR")
    refused = replay.read_events([old])
    assert refused.events == [] and refused.invalid[0].reason.startswith("occurred_at: before 2000-01-01")
    accepted = replay.read_events([old], earliest_ms=631_152_000_000)  # 1990-01-01
    assert [e.occurred_at for e in accepted.events] == [802_656_000_000]
