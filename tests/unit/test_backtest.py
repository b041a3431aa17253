"""Backtest metrics by hand, persona confusion, and a backtest on a simulated population."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from domain.model import backtest
from domain.model.backtest import (
    ConfusionMatrix,
    ReliabilityBin,
    auc,
    brier,
    persona_confusion,
    reliability_table,
)
from domain.records import Event, PurchaseEvent, VisitEvent

T0 = 1_704_067_200_000
DAY = 86_400_000


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),   # 3 of 4 positive-negative pairs in order
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.5, 0.5, 0.5], [0, 1, 1], 0.5),             # ties count half
    ([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),   # (1 + 1 + 0.5 + 1) / 4
])
def test_auc(scores: list[float], labels: list[int], expected: float) -> None:
    assert auc(scores, [bool(y) for y in labels]) == pytest.approx(expected)


def test_auc_of_one_class_is_undefined() -> None:
    assert math.isnan(auc([0.1, 0.2], [True, True]))


def test_brier() -> None:
    assert brier([0.2, 0.9], [False, True]) == pytest.approx((0.04 + 0.01) / 2)


def test_reliability_table() -> None:
    got = reliability_table([0.9, 0.1, 0.8, 0.2], [True, False, True, True], bins=2)
    assert got == [ReliabilityBin(2, 0.1, 0.2, pytest.approx(0.15), 0.5),  # type: ignore[arg-type]
                   ReliabilityBin(2, 0.8, 0.9, pytest.approx(0.85), 1.0)]  # type: ignore[arg-type]


def test_persona_confusion() -> None:
    personas = {"a": "loyalist", "b": "loyalist", "c": "bargain_hunter", "d": "bargain_hunter", "e": "ghost"}
    tiers = {"a": "fiercely_loyal", "b": "loyal", "c": "transactional", "d": "transactional", "x": "new"}
    m = persona_confusion(personas, tiers)
    assert m == ConfusionMatrix(
        personas=["bargain_hunter", "ghost", "loyalist"],
        tiers=["fiercely_loyal", "loyal", "transactional", "(unscored)"],
        counts={("loyalist", "fiercely_loyal"): 1, ("loyalist", "loyal"): 1,
                ("bargain_hunter", "transactional"): 2, ("ghost", "(unscored)"): 1},
    )
    assert m.format().splitlines()[1].split() == ["bargain_hunter", "0", "0", "2", "0"]


# ---------------------------------------------------------------------------------------------
# A simulated population.


def simulated_events(seed: int, n: int, cutoff: int, horizon_days: int) -> tuple[list[Event], set[str], set[str]]:
    """BG/NBD buyers joining over two years before the cut-off, simulated past the horizon.

    Returns the events, the customers who bought before the cut-off, and those of them who did not
    buy in the horizon (the truth the backtest must find on its own).
    """
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    buyers: set[str] = set()
    bought_in_horizon: set[str] = set()
    end = cutoff + horizon_days * DAY
    for i in range(n):
        cid = f"C{i:05d}"
        lam, p = rng.gamma(0.7, 1 / 25.0), rng.beta(0.9, 3.0)
        t = cutoff - rng.uniform(1, 730) * DAY
        k = 0
        while t < end:
            at = int(t)
            events.append(PurchaseEvent(f"{cid}-{k}", cid, at, "store", f"o{k}", 1000, "EUR", location_id="S1"))
            if at < cutoff:
                buyers.add(cid)
            else:
                bought_in_horizon.add(cid)
            k += 1
            if k > 1 and rng.random() < p:
                break
            t += rng.exponential(1 / lam) * DAY
        if i % 10 == 0:  # some browsers who never buy
            events.append(VisitEvent(f"V{i}", f"V{i:05d}", cutoff - 5 * DAY, "store", "S1", 60, False))
    return events, buyers, buyers - bought_in_horizon


def test_backtest_on_a_simulated_population_is_calibrated_and_beats_the_baselines() -> None:
    cutoff = T0 + 800 * DAY
    events, buyers, churned = simulated_events(seed=8, n=5000, cutoff=cutoff, horizon_days=90)
    report = backtest.backtest_events(events, cutoff, 90)
    assert report.customers == len(buyers)
    assert report.prospects == 500
    assert report.base_rate == pytest.approx(len(churned) / len(buyers), abs=1e-12)
    assert report.params.source == "fitted"
    assert report.mean_predicted == pytest.approx(report.base_rate, abs=0.03)
    assert sum(b.n for b in report.reliability) == len(buyers)
    for b in report.reliability:
        assert b.mean_predicted == pytest.approx(b.observed, abs=0.08)
    assert report.brier < report.brier_base_rate
    assert report.auc > report.baseline_auc["purchase_count"]
    assert report.auc > 0.75
    assert set(report.baseline_auc) == {"days_since_last_purchase", "purchase_count"}


def test_backtest_uses_nothing_from_after_the_cut_off() -> None:
    cutoff = T0 + 800 * DAY
    events, _, _ = simulated_events(seed=9, n=600, cutoff=cutoff, horizon_days=90)
    with_future = backtest.backtest_events(events, cutoff, 90)
    past_only = backtest.backtest_events([e for e in events if e.occurred_at < cutoff], cutoff, 90)
    assert past_only.params == with_future.params
    assert past_only.tiers == with_future.tiers
    assert past_only.mean_predicted == with_future.mean_predicted
    assert past_only.base_rate == 1.0 and with_future.base_rate < 1.0


def test_run_backtest_reads_a_file_and_formats_a_report(tmp_path: Path) -> None:
    cutoff = T0 + 800 * DAY
    events, buyers, _ = simulated_events(seed=10, n=400, cutoff=cutoff, horizon_days=60)
    path = tmp_path / "events.jsonl"
    with path.open("w") as out:
        for e in events:
            kind = "purchase" if isinstance(e, PurchaseEvent) else "visit"
            out.write(json.dumps({"type": kind, "event_id": e.event_id, "customer_id": e.customer_id,
                                  "occurred_at": e.occurred_at, "amount_minor": 1000, "currency": "EUR"}) + "\n")
        out.write("garbage\n")
    report = backtest.run_backtest(path, cutoff, 60)
    assert (report.customers, report.invalid_count, report.horizon_days) == (len(buyers), 1, 60)
    text = report.format()
    assert f"{report.auc:.4f}" in text and f"{report.brier:.4f}" in text
    assert len([row for row in text.splitlines() if row[:2].strip().isdigit()]) == 10  # ten deciles
