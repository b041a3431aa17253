"""The synthetic customer base: deterministic, realistic enough, and a correct oracle. No Kafka."""

from __future__ import annotations

import hashlib
import io
import itertools
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict

import pytest

from config.settings import Settings
from config.topics import Topics
from domain.model.replay import fold_events, score_states
from domain.records import (
    CALL_REASONS,
    CallEvent,
    PurchaseEvent,
    PurchaseItem,
    VisitEvent,
    event_from_dict,
)
from domain.validation import Limits, validate
from ops import simulate
from ops.simulate import (
    DAY_MS,
    DEFAULT_MIX,
    DUPLICATE_MAX_DELAY,
    MALFORMED_NOTES,
    PERSONAS,
    BrokerUnavailableError,
    Expected,
    Outgoing,
    expected_by_customer,
    generate,
    ledger_entries,
    load_personas,
    personas,
    read_ledger,
    send_outgoing,
    simulate_main,
    to_outgoing,
    write_ledger,
)
from ops.simulate.publisher import PACE_SECONDS
from schemas import DecodeError, codec

END = 1_750_000_000_000  # 2025-06-15T15:06:40Z


@pytest.fixture(scope="module")
def day_run() -> list:
    """The standard small run: 2,000 customers, one day."""
    return generate(2000, 1, seed=7, end_ms=END)


@pytest.fixture(scope="module")
def history_run() -> list:
    """1,200 customers, 120 days of history and 7 live days: enough for behaviour to show."""
    return generate(1200, 7, seed=11, end_ms=END, history_days=120)


# -- determinism and shape ----------------------------------------------------------------------


def test_same_arguments_give_identical_events() -> None:
    first = generate(300, 5, seed=3, end_ms=END, history_days=10)
    second = generate(300, 5, seed=3, end_ms=END, history_days=10)
    assert first == second
    assert [simulate.encode_event(ev) for ev in first] == [simulate.encode_event(ev) for ev in second]


def _digest(values: list[bytes]) -> str:
    h = hashlib.sha256()
    for value in values:
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


# Pinned from the generator as it was: a change here changes every benchmark and fault-test input.
# Re-pinned when favourite categories got their co-purchase structure (catalogue.AFFINITY): the
# live window's events keep their times and kinds; categories, SKUs and amounts changed, and in
# the history a return's draw (units of another line) shifts that customer's later draws. Re-pinned
# again with the captive persona (10 % of the base, taken from loyal and transactional).
PINNED = {
    "events": (54, "aac9b47be9b72ee0025bb3caf7835595216690e90728d848dfb84f90ea6320d8"),
    "outgoing": (64, "34d1848619552754455bb4d0a43102301227f22e3322f826b8ec503c57ec8f9b"),
    "history": (401, "e1e904424ea90abe88d189f5fb36908bbc3e703cc8d41b4392ed34f00b355db9"),
}


def test_a_fixed_seed_gives_the_pinned_events_and_messages() -> None:
    events = generate(customers=50, days=2, seed=7, end_ms=END)
    outgoing = to_outgoing(events, seed=7, duplicate_rate=0.1, malformed_rate=0.1)
    history = generate(customers=50, days=2, seed=7, end_ms=END, history_days=30)
    got = {
        "events": (len(events), _digest([simulate.encode_event(ev) for ev in events])),
        "outgoing": (len(outgoing), _digest([o.topic_kind.encode() + o.key + o.value + o.note.encode() for o in outgoing])),
        "history": (len(history), _digest([simulate.encode_event(ev) for ev in history])),
    }
    assert got == PINNED


def test_another_seed_gives_other_events() -> None:
    first = generate(300, 5, seed=3, end_ms=END)
    other = generate(300, 5, seed=4, end_ms=END)
    assert {ev.event_id for ev in first}.isdisjoint(ev.event_id for ev in other)
    assert [ev.occurred_at for ev in first] != [ev.occurred_at for ev in other]


def test_events_are_sorted_and_inside_the_window(history_run: list) -> None:
    start = END - (7 + 120) * DAY_MS
    keys = [(ev.occurred_at, ev.event_id) for ev in history_run]
    assert keys == sorted(keys)
    assert all(start <= ev.occurred_at < END for ev in history_run)
    assert len({ev.event_id for ev in history_run}) == len(history_run)
    assert min(keys)[0] < start + DAY_MS  # the history is used from its first day


def test_customer_ids_are_numbered_from_one() -> None:
    assert sorted(personas(3, seed=1)) == ["C0000001", "C0000002", "C0000003"]


# -- personas -----------------------------------------------------------------------------------


def test_persona_counts_follow_the_default_mix() -> None:
    counts = Counter(personas(1000, seed=5).values())
    assert counts == {name: round(share * 1000) for name, share in DEFAULT_MIX.items()}
    assert set(counts) == set(PERSONAS)


@pytest.mark.parametrize(
    ("customers", "mix", "expected"),
    [
        (10, {"loyal": 1, "lapsing": 1}, {"loyal": 5, "lapsing": 5}),
        (7, {"new": 0.5, "transactional": 0.5, "loyal": 0}, {"new": 4, "transactional": 3}),
        (3, {"complaint_prone": 2, "fiercely_loyal": 1}, {"complaint_prone": 2, "fiercely_loyal": 1}),
        (0, None, {}),
    ],
)
def test_persona_counts_follow_a_requested_mix(customers: int, mix: dict | None, expected: dict) -> None:
    assert Counter(personas(customers, seed=1, mix=mix).values()) == expected


def test_generated_customers_have_the_requested_personas() -> None:
    mix = {"fiercely_loyal": 1, "complaint_prone": 3}
    events = generate(40, 1, seed=2, end_ms=END, mix=mix)
    truth = personas(40, seed=2, mix=mix)
    assert Counter(truth.values()) == {"fiercely_loyal": 10, "complaint_prone": 30}
    assert {ev.customer_id for ev in events} == set(truth)


def test_unknown_persona_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown personas"):
        personas(10, seed=1, mix={"vip": 1})


PERSONA_FILE_ENTRY = """
[personas.occasional]
description = "Buys now and then."
purchase_every_days = [20, 40]
rhythm_sigma = 0.5
visits_per_day = 0.1
calls_per_day = 0.01
purchase_channels = { web = 0.7, store = 0.3 }
visit_channels = { web = 1.0 }
discounted_share = 0.2
return_share = 0.05
max_lines = 2
recognized_share = 0.2
call_reasons = { billing = 0.5, other = 0.5 }
resolved_share = 0.9
sentiment_mean = 0.0
effort_mean = 3.0
nps_range = [5, 9]
anchor = "visit"
"""


def test_a_personas_file_is_read_in_order_with_defaults() -> None:
    found, mix = load_personas("[mix]\noccasional = 2\n" + PERSONA_FILE_ENTRY)
    (occasional,) = found.values()
    assert occasional.name == "occasional" and mix == {"occasional": 2.0}
    assert occasional.purchase_every_days == (20, 40) and occasional.nps_range == (5, 9)
    assert list(occasional.purchase_channels) == ["web", "store"]  # drawn in the order written
    assert (occasional.shape, occasional.dropout_per_year, occasional.expected_tier) == ("steady", 0.0, None)
    assert list(PERSONAS) == list(DEFAULT_MIX) == [
        "fiercely_loyal", "loyal", "transactional", "lapsing", "new", "complaint_prone", "captive",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_lines = 2", "max_lines = 2\nfavourite_colour = 'red'"), r"unknown fields \['favourite_colour'\]"),
        (("max_lines = 2\n", ""), r"missing fields \['max_lines'\]"),
        (('anchor = "visit"', 'anchor = "email"'), "anchor must be one of"),
        (('anchor = "visit"', 'anchor = "visit"\nshape = "seasonal"'), "shape must be one of"),
        (("nps_range = [5, 9]", "nps_range = [5]"), r"nps_range must be \[low, high\]"),
        (('anchor = "visit"', 'anchor = "visit"\nexpected_tier = "vip"'), "expected_tier must be one of"),
        (("[personas.", "[mix]\nvip = 1\n[personas."), r"mix names unknown personas \['vip'\]"),
    ],
)
def test_a_personas_file_with_a_mistake_is_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_personas(PERSONA_FILE_ENTRY.replace(*change))


def test_a_one_day_run_reaches_every_customer(day_run: list) -> None:
    customers = {ev.customer_id for ev in day_run}
    assert len(customers) == 2000  # the brief asks for well over 1,000; anchors give all of them
    assert all(END - DAY_MS <= ev.occurred_at < END for ev in day_run)
    assert Counter(ev.kind for ev in day_run).keys() == {"purchase", "call", "visit"}


def test_every_customer_appears_in_the_live_days_even_after_long_history(history_run: list) -> None:
    live = {ev.customer_id for ev in history_run if ev.occurred_at >= END - 7 * DAY_MS}
    assert live == set(personas(1200, seed=11))


def _by_persona(events: list, customers: int, seed: int) -> dict[str, list]:
    truth = personas(customers, seed)
    grouped: dict[str, list] = defaultdict(list)
    for ev in events:
        grouped[truth[ev.customer_id]].append(ev)
    return grouped


def test_personas_behave_as_documented(history_run: list) -> None:
    grouped = _by_persona(history_run, 1200, 11)

    def share(events: list, kind: type, test) -> float:
        chosen = [ev for ev in events if isinstance(ev, kind) and not getattr(ev, "is_return", False)]
        return sum(bool(test(ev)) for ev in chosen) / len(chosen)

    discounted = {name: share(evs, PurchaseEvent, lambda ev: ev.discounted) for name, evs in grouped.items()}
    assert discounted["transactional"] > 0.7 and discounted["fiercely_loyal"] < 0.1
    recognised = {name: share(evs, VisitEvent, lambda ev: ev.recognized) for name, evs in grouped.items()}
    assert recognised["fiercely_loyal"] > 0.8 and recognised["transactional"] < 0.2
    complaints = {name: share(evs, CallEvent, lambda ev: ev.reason == "complaint") for name, evs in grouped.items()}
    assert complaints["complaint_prone"] > 0.25 and complaints["fiercely_loyal"] < 0.1
    unresolved = share(grouped["complaint_prone"], CallEvent, lambda ev: not ev.resolved)
    assert unresolved > 0.4
    cancels = sum(ev.reason == "cancel_request" for ev in grouped["complaint_prone"] if isinstance(ev, CallEvent))
    assert cancels > 0
    sentiment = {
        name: statistics.mean(ev.sentiment for ev in evs if isinstance(ev, CallEvent) and ev.sentiment is not None)
        for name, evs in grouped.items()
    }
    assert sentiment["complaint_prone"] < -0.2 and sentiment["fiercely_loyal"] > 0.4
    channels = Counter(ev.channel for ev in grouped["fiercely_loyal"] if isinstance(ev, PurchaseEvent))
    assert len(channels) >= 3


def test_captive_customers_buy_regularly_at_full_price_and_complain(history_run: list) -> None:
    grouped = _by_persona(history_run, 1200, 11)
    captive = grouped["captive"]
    purchases = [ev for ev in captive if isinstance(ev, PurchaseEvent) and not ev.is_return]
    assert sum(ev.discounted for ev in purchases) / len(purchases) < 0.15
    assert _gap_variation(captive) < 0.45
    calls = [ev for ev in captive if isinstance(ev, CallEvent)]
    assert sum(ev.reason == "complaint" for ev in calls) / len(calls) > 0.3
    assert sum(not ev.resolved for ev in calls) / len(calls) > 0.5
    assert statistics.mean(ev.sentiment for ev in calls if ev.sentiment is not None) < -0.3
    assert not any(ev.reason == "cancel_request" for ev in calls)  # no alternative to leave for


def test_the_model_gives_each_persona_its_expected_tier(history_run: list) -> None:
    """The persona table's oracle: scored as of the end, the tier each persona expects is the one
    its customers get most; captive customers land in captive, and captive holds little else."""
    truth = personas(1200, seed=11)
    _, signals = score_states(fold_events(history_run, END).states, END)
    table = Counter((truth[s.customer_id], s.tier) for s in signals)
    for name, persona in PERSONAS.items():
        got = Counter({tier: n for (p, tier), n in table.items() if p == name})
        if persona.expected_tier is not None:
            assert got.most_common(1)[0][0] == persona.expected_tier, (name, got)
    captive_persona = sum(n for (p, _), n in table.items() if p == "captive")
    captive_tier = sum(n for (_, tier), n in table.items() if tier == "captive")
    assert table[("captive", "captive")] >= 0.75 * captive_persona
    assert table[("captive", "captive")] >= 0.9 * captive_tier


def _gap_variation(events: list) -> float:
    """Median over customers of the coefficient of variation of their purchase gaps."""
    times: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, PurchaseEvent) and not ev.is_return:
            times[ev.customer_id].append(ev.occurred_at)
    cvs = []
    for ts in times.values():
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        if len(gaps) >= 4:
            cvs.append(statistics.pstdev(gaps) / statistics.mean(gaps))
    return statistics.median(cvs)


def test_fiercely_loyal_buy_on_a_rhythm_transactional_do_not(history_run: list) -> None:
    grouped = _by_persona(history_run, 1200, 11)
    assert _gap_variation(grouped["fiercely_loyal"]) < 0.35
    assert _gap_variation(grouped["transactional"]) > 0.6


def test_lapsing_customers_slow_down_and_new_ones_are_recent(history_run: list) -> None:
    grouped = _by_persona(history_run, 1200, 11)
    lapsing = [ev for ev in grouped["lapsing"] if isinstance(ev, PurchaseEvent) and not ev.is_return]
    early = sum(END - 127 * DAY_MS <= ev.occurred_at < END - 97 * DAY_MS for ev in lapsing) / 30
    late = sum(ev.occurred_at >= END - 10 * DAY_MS for ev in lapsing) / 10
    assert late < 0.25 * early
    first_seen = expected_by_customer(grouped["new"])
    assert all(exp.first_seen_at >= END - 30 * DAY_MS for exp in first_seen.values())
    others = expected_by_customer(grouped["loyal"])
    assert min(exp.first_seen_at for exp in others.values()) < END - 120 * DAY_MS


# -- event content ------------------------------------------------------------------------------


def test_purchase_amounts_add_up(history_run: list) -> None:
    purchases = [ev for ev in history_run if isinstance(ev, PurchaseEvent)]
    assert any(ev.is_return for ev in purchases) and any(ev.promo_code for ev in purchases)
    assert any(ev.promo_code and ev.discount_minor == 0 for ev in purchases)  # free shipping
    assert len({item.category for ev in purchases for item in ev.items}) == len(simulate.CATEGORIES)
    for ev in purchases:
        lines = sum(item.quantity * item.unit_price_minor for item in ev.items)
        assert ev.items and ev.amount_minor == lines - ev.discount_minor, ev
        assert 0 <= ev.discount_minor <= lines and ev.amount_minor >= 0
        assert ev.currency == "EUR"
        assert (ev.location_id is not None) == (ev.channel == "store")


def test_returns_refer_to_an_earlier_purchase(history_run: list) -> None:
    orders = {
        ev.order_id: ev for ev in history_run if isinstance(ev, PurchaseEvent) and not ev.is_return
    }
    returns = [ev for ev in history_run if isinstance(ev, PurchaseEvent) and ev.is_return]
    for ret in returns:
        original = orders[ret.order_id]
        assert original.customer_id == ret.customer_id and original.occurred_at < ret.occurred_at
        (item,) = ret.items
        bought = {line.sku: line for line in original.items}
        assert item.quantity <= bought[item.sku].quantity
        assert ret.amount_minor <= item.quantity * item.unit_price_minor


def test_a_sku_always_has_the_same_price(history_run: list) -> None:
    prices = defaultdict(set)
    for ev in history_run:
        if isinstance(ev, PurchaseEvent):
            for item in ev.items:
                prices[item.sku].add(item.unit_price_minor)
    assert all(len(seen) == 1 for seen in prices.values())


def test_the_currency_is_configurable() -> None:
    events = generate(20, 3, seed=1, end_ms=END, currency="SEK")
    assert {ev.currency for ev in events if isinstance(ev, PurchaseEvent)} == {"SEK"}


def test_calls_and_visits_are_plausible(history_run: list) -> None:
    calls = [ev for ev in history_run if isinstance(ev, CallEvent)]
    visits = [ev for ev in history_run if isinstance(ev, VisitEvent)]
    for call in calls:
        assert call.sentiment is None or -1 <= call.sentiment <= 1
        assert call.effort_score is None or 1 <= call.effort_score <= 7
        assert call.nps is None or 0 <= call.nps <= 10
        assert call.agent_id and call.duration_seconds > 0 and call.wait_seconds >= 0
    for field_name in ("sentiment", "effort_score", "nps"):
        present = [getattr(call, field_name) is not None for call in calls]
        assert any(present) and not all(present), field_name
    assert {call.reason for call in calls} == set(CALL_REASONS)
    assert {call.direction for call in calls} == {"inbound", "outbound"}
    assert {visit.channel for visit in visits} == {"store", "web", "app"}
    assert all(visit.location_id and visit.duration_seconds > 0 for visit in visits)
    assert any(visit.categories_viewed for visit in visits)


def test_every_event_passes_validation_and_survives_the_codec(history_run: list) -> None:
    limits = Limits(currency="EUR", future_skew_ms=0)
    for ev in history_run:
        validate(ev, limits, now_ms=END)
        assert event_from_dict(ev.kind, codec(ev.kind).decode(simulate.encode_event(ev))) == ev


# -- what is published --------------------------------------------------------------------------


def test_without_faults_every_event_is_sent_once_keyed_by_customer(day_run: list) -> None:
    outgoing = to_outgoing(day_run, seed=7)
    assert [o.event for o in outgoing] == day_run
    assert all(o.note == "event" and o.key == o.event.customer_id.encode() for o in outgoing)
    assert all(o.topic_kind == o.event.kind for o in outgoing)


def test_duplicates_are_resent_unchanged_a_little_later(day_run: list) -> None:
    outgoing = to_outgoing(day_run, seed=7, duplicate_rate=0.05)
    resends = [(i, o) for i, o in enumerate(outgoing) if o.note == "duplicate"]
    assert len(resends) == round(0.05 * len(day_run))
    first_at = {}
    for i, o in enumerate(outgoing):
        if o.note == "event":
            first_at[o.event.event_id] = i
    for i, dup in resends:
        original = outgoing[first_at[dup.event.event_id]]
        assert (dup.topic_kind, dup.key, dup.value, dup.event) == (
            original.topic_kind, original.key, original.value, original.event
        )
        assert 0 < i - first_at[dup.event.event_id] <= DUPLICATE_MAX_DELAY + len(resends)
    assert [o.event for o in outgoing if o.note == "event"] == day_run


def test_malformed_payloads_fail_to_decode(day_run: list) -> None:
    outgoing = to_outgoing(day_run, seed=7, malformed_rate=0.03)
    bad = [o for o in outgoing if not o.valid]
    assert len(bad) == round(0.03 * len(day_run))
    assert {o.note for o in bad} == set(MALFORMED_NOTES)
    for o in bad:
        assert o.event is None and o.key
        with pytest.raises(DecodeError):
            codec(o.topic_kind).decode(o.value)


def test_outgoing_is_deterministic_and_checks_rates(day_run: list) -> None:
    assert to_outgoing(day_run, 7, 0.1, 0.1) == to_outgoing(day_run, 7, 0.1, 0.1)
    with pytest.raises(ValueError, match="duplicate_rate"):
        to_outgoing(day_run, 7, duplicate_rate=1.5)


# -- the oracle ---------------------------------------------------------------------------------


def _purchase(event_id: str, customer: str, at: int, amount: int, **kw) -> PurchaseEvent:
    item = PurchaseItem("BOOKS-0001", "books", 1, amount + kw.get("discount_minor", 0))
    return PurchaseEvent(event_id, customer, at, "web", f"O-{event_id}", amount, "EUR", items=(item,), **kw)


def _call(event_id: str, customer: str, at: int, reason: str, resolved: bool) -> CallEvent:
    return CallEvent(event_id, customer, at, "inbound", reason, 30, 200, resolved, "AG001", 0.5, 3, 8)


def _visit(event_id: str, customer: str, at: int, recognized: bool) -> VisitEvent:
    return VisitEvent(event_id, customer, at, "store", "STORE-001", 600, recognized, ("books",))


def test_expected_by_customer_on_hand_written_events() -> None:
    p2 = _purchase("p2", "C1", 3_000, 500, promo_code="FREESHIP")
    events = [
        _call("c2", "C1", 500, "cancel_request", resolved=True),
        _purchase("p1", "C1", 1_000, 900, discount_minor=100),
        _call("c1", "C1", 2_000, "complaint", resolved=False),
        p2,
        _purchase("r1", "C1", 4_000, 300, is_return=True),
        p2,  # a resend: counted once
        _visit("v1", "C1", 6_000, recognized=True),
        _visit("v2", "C2", 7_000, recognized=False),
        _purchase("p3", "C2", 8_000, 1_000),
        _call("c3", "C2", 9_000, "billing", resolved=True),
    ]
    assert expected_by_customer(events) == {
        "C1": Expected(
            customer_id="C1", events=6, purchases=2, spend_minor=1_400, discounted_purchases=2,
            discounted_spend_minor=1_400, discount_minor=100, returns=1, refund_minor=300, calls=2,
            complaints=1, cancel_requests=1, unresolved_calls=1, visits=1, recognized_visits=1,
            first_seen_at=500, last_seen_at=6_000, first_purchase_at=1_000, last_purchase_at=3_000,
        ),
        "C2": Expected(
            customer_id="C2", events=3, purchases=1, spend_minor=1_000, calls=1, visits=1,
            first_seen_at=7_000, last_seen_at=9_000, first_purchase_at=8_000, last_purchase_at=8_000,
        ),
    }


def test_expected_ignores_resends_in_a_generated_stream(day_run: list) -> None:
    outgoing = to_outgoing(day_run, seed=7, duplicate_rate=0.2, malformed_rate=0.05)
    with_resends = expected_by_customer(o.event for o in outgoing if o.event is not None)
    assert with_resends == expected_by_customer(day_run)
    assert sum(exp.events for exp in with_resends.values()) == len(day_run)


def test_expected_agrees_with_the_relationship_state(history_run: list) -> None:
    """Cross-check of two independent computations (the oracle is not built on this module)."""
    from domain.relationship import RelationshipState, apply_events

    by_customer = defaultdict(list)
    for ev in history_run:
        by_customer[ev.customer_id].append(ev)
    expected = expected_by_customer(history_run)
    for cid, events in list(by_customer.items())[:300]:
        state = RelationshipState(customer_id=cid)
        apply_events(state, events, dedup_horizon_ms=7 * DAY_MS)
        exp = asdict(expected[cid])
        life = asdict(state.lifetime)
        assert {k: life[k] for k in life.keys() & exp.keys()} == {k: exp[k] for k in life.keys() & exp.keys()}
        assert (state.events_applied, state.first_seen_at, state.last_seen_at) == (
            exp["events"], exp["first_seen_at"], exp["last_seen_at"]
        )


# -- the ledger ---------------------------------------------------------------------------------


def test_ledger_round_trip(tmp_path, day_run: list) -> None:
    outgoing = to_outgoing(day_run[:300], seed=7, duplicate_rate=0.1, malformed_rate=0.1)
    topics = Topics("test-7.")
    path = tmp_path / "sub" / "ledger.jsonl"
    assert write_ledger(path, outgoing, topics) == len(outgoing)
    entries = read_ledger(path)
    assert entries == ledger_entries(outgoing, topics)
    assert [e.event for e in entries] == [o.event for o in outgoing]
    bad = [e for e in entries if e.event is None]
    assert bad and all(e.note in MALFORMED_NOTES and e.event_id is None for e in bad)
    assert {e.topic for e in entries} <= set(topics.inputs)
    # the ledger alone is enough for the oracle
    assert expected_by_customer(e.event for e in entries if e.event) == expected_by_customer(day_run[:300])


# -- sending (a fake producer and a fake clock) -------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.errbacks: list = []

    def add_callback(self, f, *args, **kwargs) -> FakeFuture:
        self.callbacks.append(f)
        return self

    def add_errback(self, f, *args, **kwargs) -> FakeFuture:
        self.errbacks.append(f)
        return self


class FakeProducer:
    def __init__(self, clock: FakeClock, refuse_topic: str | None = None) -> None:
        self.clock = clock
        self.refuse_topic = refuse_topic
        self.sent: list[tuple[float, str, bytes, bytes]] = []
        self.pending: list[tuple[str, FakeFuture]] = []

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> FakeFuture:
        self.sent.append((self.clock.now, topic, key, value))
        future = FakeFuture()
        self.pending.append((topic, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        for topic, future in self.pending:
            if topic == self.refuse_topic:
                for errback in future.errbacks:
                    errback(RuntimeError("refused"))
            else:
                for callback in future.callbacks:
                    callback(object())
        self.pending.clear()


def test_send_outgoing_paces_reports_and_shows_progress(day_run: list) -> None:
    outgoing = to_outgoing(day_run[:300], seed=7, duplicate_rate=0.1, malformed_rate=0.1)
    clock = FakeClock()
    producer = FakeProducer(clock)
    progress: list[tuple[int, int]] = []
    topics = Topics("t.")
    report = send_outgoing(
        producer, outgoing, topics, rate=100, progress=lambda *a: progress.append(a),
        clock=clock, sleep=clock.sleep,
    )
    total = len(outgoing)
    assert [(topic, key, value) for _, topic, key, value in producer.sent] == [
        (topics.for_kind(o.topic_kind), o.key, o.value) for o in outgoing
    ]
    assert all(at >= i / 100 - 1e-9 for i, (at, *_) in enumerate(producer.sent))
    assert report.elapsed_seconds == pytest.approx((total - 1) / 100)
    assert (report.total, report.sent, report.failed) == (total, total, 0)
    assert report.by_note == dict(Counter(o.note for o in outgoing))
    assert report.by_kind == dict(Counter(o.topic_kind for o in outgoing))
    assert progress[-1] == (total, total)
    assert len(progress) in (total // 100 + 1, total // 100 + 2)  # about once a second, and at the end
    assert f"sent {total:,}/{total:,}" in str(report)



def test_a_fast_paced_send_sleeps_in_steps_and_keeps_its_rate(day_run: list) -> None:
    """At 2,000 a second a message is due every 0.5 ms: the sender sleeps once it is
    PACE_SECONDS ahead, never sends a message more than that early, and keeps the rate."""
    outgoing = to_outgoing(day_run[:300], seed=7)
    clock = FakeClock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    producer = FakeProducer(clock)
    report = send_outgoing(producer, outgoing, Topics("t."), rate=2000, clock=clock, sleep=sleep)
    assert all(at >= i / 2000 - PACE_SECONDS - 1e-9 for i, (at, *_) in enumerate(producer.sent))
    assert min(sleeps) >= PACE_SECONDS
    assert len(sleeps) <= len(outgoing) / (2000 * PACE_SECONDS) + 1
    assert report.elapsed_seconds == pytest.approx((len(outgoing) - 1) / 2000, abs=PACE_SECONDS)

def test_send_outgoing_counts_refused_messages(day_run: list) -> None:
    outgoing = to_outgoing(day_run[:200], seed=7)
    clock = FakeClock()
    topics = Topics("t.")
    report = send_outgoing(FakeProducer(clock, refuse_topic=topics.calls), outgoing, topics, clock=clock)
    calls = sum(o.topic_kind == "call" for o in outgoing)
    assert calls > 0 and report.failed == calls and report.sent == len(outgoing) - calls
    assert report.first_error == "RuntimeError: refused"


def test_publish_says_clearly_when_the_broker_is_unreachable() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(BrokerUnavailableError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        simulate.publish(settings, [], connect_timeout_s=0.3)


def test_simulate_main_generates_writes_the_ledger_and_publishes(tmp_path, monkeypatch) -> None:
    published: list[list[Outgoing]] = []

    def fake_publish(settings, outgoing, rate=None, progress=None):
        published.append(list(outgoing))
        progress(len(outgoing), len(outgoing))
        return simulate.PublishReport(total=len(outgoing), sent=len(outgoing))

    monkeypatch.setattr(simulate.main, "publish", fake_publish)  # where simulate_main looks it up
    stderr = io.StringIO()
    ledger = tmp_path / "ledger.jsonl"
    simulate_main(
        Settings(currency="SEK"), customers=50, days=2, seed=9, rate=None, ledger_path=ledger,
        history_days=3, duplicate_rate=0.1, malformed_rate=0.1, end_ms=END, stream=stderr,
    )
    (outgoing,) = published
    assert outgoing == to_outgoing(generate(50, 2, 9, END, 3, currency="SEK"), 9, 0.1, 0.1)
    assert read_ledger(ledger) == ledger_entries(outgoing, Topics(Settings().topic_prefix))
    assert f"sent {len(outgoing):,}/{len(outgoing):,} (100%)" in stderr.getvalue()


# -- co-purchase structure ----------------------------------------------------------------------


def test_favourites_are_a_category_and_mostly_its_partners() -> None:
    import random

    from ops.simulate.catalogue import AFFINITY, CATEGORIES
    from ops.simulate.generator import _favourites

    assert set(AFFINITY) == set(CATEGORIES) and all(set(p) <= set(CATEGORIES) for p in AFFINITY.values())
    draws = [_favourites("shoes", random.Random(f"t|{n}")) for n in range(2000)]
    assert all(d[0] == "shoes" and len(set(d)) == 3 for d in draws)
    # P(both partners) = 0.8 (2nd a partner) x (0.8 + 0.2/8) (3rd the other one, by affinity or by
    # chance among the 8 left) + 0.2 x 2/9 (2nd a partner by chance) x (0.8 + 0.2/8) = 0.6967;
    # 2,000 draws: sd 1.03 points, so within 4 sd: 0.655-0.738
    both = sum(set(d[1:]) == {"apparel", "sports"} for d in draws) / len(draws)
    assert 0.655 < both < 0.738


def test_orders_with_a_category_hold_its_partners_most_often(history_run: list) -> None:
    from domain.model.suggest import order_sets, table_from_sets

    table = table_from_sets(order_sets(history_run))
    # an order with shoes holds apparel or sports more often than any other category
    assert {p.category for p in table.partners["shoes"][:2]} == {"apparel", "sports"}
