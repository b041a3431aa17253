"""The gone_quiet backtest on a hand-made population whose outcome is known."""

from __future__ import annotations

from domain.alerts.backtest import backtest_gone_quiet
from domain.records import PurchaseEvent, PurchaseItem
from domain.relationship import DAY_MS

T0 = 1_704_067_200_000
CUT = T0 + 300 * DAY_MS


def buys(customer: str, days: list[int]) -> list[PurchaseEvent]:
    return [PurchaseEvent(f"{customer}-{d}", customer, T0 + d * DAY_MS, "store", f"o-{customer}-{d}", 1_000, "EUR",
                          items=(PurchaseItem("s", "shoes", 1, 1_000),)) for d in days]


def test_rhythm_catches_a_weekly_buyer_who_stopped_before_the_naive_rule_does():
    events = (
        buys("weekly-stopped", list(range(100, 281, 7)))          # last at 279: due ~ 279+7+3 = 289 (in window)
        + buys("weekly-going", list(range(100, 400, 7)))          # keeps buying after the cut-off
        + buys("monthly-quiet", [0, 30, 60, 90, 120, 150, 180, 210, 240])  # last 240: naive due 300 - no
        + buys("sixty-ago", [10, 235])                            # last 235: naive due 295 (in window), returns
        + buys("sixty-ago", [330])
    )
    result = backtest_gone_quiet(events, CUT, horizon_days=90, window_days=30, naive_days=60)
    assert result.buyers == 4
    # weekly-stopped: due 279 + 7 + 3.5 = 289.5; monthly-quiet: due 240 + 30 + 15 = 285; both in [270, 300)
    assert (result.gone_quiet.alerted, result.gone_quiet.precision) == (2, 1.0)
    assert result.gone_quiet.mean_prior_purchases == (26 + 9) / 2
    assert result.gone_quiet.median_days_quiet_at_alert == (10.5 + 45) / 2
    assert (result.naive.alerted, result.naive.precision) == (1, 0.0)  # it picked the one who came back
    assert result.naive.mean_prior_purchases == 2.0
    text = result.format()
    assert "gone_quiet (own rhythm)" in text and "naive (60 days without purchase)" in text
