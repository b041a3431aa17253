"""The alert rules on real relationship state and the real model, wired the way the worker wires
them: evaluate per changed customer, keep the due times in a DueIndex, evaluate due customers on
a timer. Pure: no Faust, no clock."""

from __future__ import annotations

from collections.abc import Sequence

from domain.alerts import (
    Alert,
    AlertState,
    DueIndex,
    alert_facts,
    alert_state_from_dict,
    alert_state_to_dict,
    evaluate,
)
from domain.model import DEFAULT_PARAMS, score_customer
from domain.records import CallEvent, Event, PurchaseEvent, PurchaseItem
from domain.relationship import DAY_MS, RelationshipState, apply_event

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, midnight: day windows line up with whole days
HORIZON = 100_000 * DAY_MS


def t(day: float) -> int:
    return T0 + round(day * DAY_MS)


def buy(customer: str, day: float, discounted: bool = False) -> PurchaseEvent:
    eid = f"{customer}-p{day}"
    return PurchaseEvent(eid, customer, t(day), "store", f"o-{eid}", 5_000, "EUR",
                         discount_minor=1_000 if discounted else 0,
                         items=(PurchaseItem("sku-1", "shoes", 1, 5_000),), location_id="S01")


def call(customer: str, day: float, reason: str = "other", resolved: bool = True,
         sentiment: float | None = None) -> CallEvent:
    return CallEvent(f"{customer}-c{day}", customer, t(day), "inbound", reason, 30, 300, resolved, "a1",
                     sentiment=sentiment)


class MiniWorker:
    """What the Faust worker does, minus Faust: the wiring the report describes."""

    def __init__(self) -> None:
        self.states: dict[str, RelationshipState] = {}
        self.alert_states: dict[str, dict] = {}  # stored as plain dicts, as a table would
        self.due = DueIndex()
        self.alerts: list[Alert] = []

    def _evaluate(self, customer: str, as_of: int) -> None:
        state = self.states[customer]
        signal = score_customer(state, as_of, DEFAULT_PARAMS)
        stored = self.alert_states.get(customer)
        result = evaluate(signal, alert_facts(state, as_of), None if stored is None else alert_state_from_dict(stored))
        self.alert_states[customer] = alert_state_to_dict(result.state)
        self.due.update(customer, result.due_at)
        self.alerts += result.alerts

    def on_event(self, event: Event) -> None:
        state = self.states.setdefault(event.customer_id, RelationshipState(event.customer_id))
        apply_event(state, event, HORIZON)
        assert state.last_seen_at is not None
        self._evaluate(event.customer_id, state.last_seen_at)

    def on_timer(self, now_ms: int) -> None:
        for customer, due_ms in self.due.pop_due(now_ms):
            last_seen = self.states[customer].last_seen_at or due_ms
            self._evaluate(customer, max(due_ms, last_seen))

    def run(self, events: Sequence[Event], until_day: int) -> None:
        """Events in time order, with a timer tick at every whole day."""
        pending = sorted(events, key=lambda e: e.occurred_at)
        for day in range(until_day + 1):
            while pending and pending[0].occurred_at <= t(day):
                self.on_event(pending.pop(0))
            self.on_timer(t(day))


def summary(alerts: list[Alert]) -> list[tuple[str, str, float]]:
    return [(a.customer_id, a.kind, (a.raised_at - T0) / DAY_MS) for a in alerts]


def test_gone_quiet_fires_from_the_timer_without_an_event_and_not_for_a_regular() -> None:
    worker = MiniWorker()
    quiet = [buy("quiet", d) for d in range(0, 101, 10)]  # every 10 days, then nothing after day 100
    regular = [buy("regular", d) for d in range(0, 181, 10)]  # keeps the rhythm
    worker.run(quiet + regular, until_day=180)
    # mean gap 10 days: expected day 110, tolerance max(3, 5) = 5 days: due at day 115
    gone = [a for a in worker.alerts if a.kind == "gone_quiet"]
    assert summary(gone) == [("quiet", "gone_quiet", 115.0)]
    (a,) = gone
    assert (a.measure_before, a.measure_after, a.threshold, a.severity) == (10.0, 15.0, 15.0, "warning")
    # scored as of the due time: recency fell from 100 to 75 (1.5 of 3 gaps), x 0.25 weight
    assert (a.before_tier, a.after_tier) == ("loyal", "loyal")
    assert (a.before_score, a.after_score) == (68.12, round(68.12 - 6.25, 2))
    assert [(c.component, c.before, c.after) for c in a.explanation] == [("recency", 100.0, 75.0)]
    assert a.context is not None and a.context.last_purchase_at == t(100)
    assert a.context.expected_next_purchase_at == t(110)
    assert "quiet" not in worker.due and worker.due.due_at("regular") == t(180 + 15)
    assert [x for x in worker.alerts if x.customer_id == "regular"] == []


def test_relationship_strain_from_real_calls() -> None:
    worker = MiniWorker()
    history = [buy("strained", d) for d in range(0, 121, 10)] + [buy("calm", d) for d in range(0, 121, 10)]
    strained = [call("strained", 100.5, "complaint"), call("strained", 110.5, "complaint", resolved=False),
                call("strained", 111.5, "complaint")]
    calm = [call("calm", 100.5, "complaint"), call("calm", 140.5, "complaint")]  # 40 days apart
    worker.run([*history, *strained, *calm], until_day=145)
    strain = [a for a in worker.alerts if a.kind == "relationship_strain"]
    assert summary(strain) == [("strained", "relationship_strain", 110.5)]
    assert (strain[0].measure, strain[0].measure_after, strain[0].severity) == ("complaints", 2.0, "warning")
    assert strain[0].summary == "relationship strain in the last 30 days: 2 complaints"
    assert strain[0].context is not None and strain[0].context.open_issues == 1


def test_a_cancel_request_is_critical_strain() -> None:
    worker = MiniWorker()
    worker.run([*(buy("c", d) for d in range(0, 71, 10)), call("c", 65.5, "cancel_request")], until_day=70)
    strain = [(a.kind, a.severity, a.raised_at) for a in worker.alerts if a.kind == "relationship_strain"]
    assert strain == [("relationship_strain", "critical", t(65.5))]


def test_price_flight_from_real_purchases() -> None:
    worker = MiniWorker()
    full = [buy("flighty", d) for d in range(0, 271, 10)]  # 28 at full price
    discounted = [buy("flighty", d, discounted=True) for d in range(280, 361, 10)]
    control = [buy("steady", d) for d in range(0, 361, 10)]
    worker.run(full + discounted + control, until_day=360)
    flight = [a for a in worker.alerts if a.kind == "price_flight"]
    # day 310: the 90 days 221..310 hold 5 full-price and 4 discounted purchases of equal
    # amount (share 4/9); the 275 days before hold only full-price ones (share 0)
    assert summary(flight) == [("flighty", "price_flight", 310.0)]
    assert (flight[0].measure_before, flight[0].measure_after, flight[0].severity) == (0.0, round(4 / 9, 6), "info")
    assert [a for a in worker.alerts if a.customer_id == "steady"] == []


def test_state_sizes_stay_small() -> None:
    worker = MiniWorker()
    worker.run([buy("c", d) for d in range(0, 361, 3)], until_day=360)
    state: AlertState = alert_state_from_dict(worker.alert_states["c"])
    assert len(state.peaks) <= 31
