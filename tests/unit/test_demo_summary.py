"""The demo summary's answer to "big audience or loyal base?", from a tier mix worked out by hand."""

from __future__ import annotations

import pytest

from ops.demo import TierMix, audience_verdict

# (tier, customers, revenue_365d_minor)
LOYAL_BASE = TierMix([("transactional", 40, 30_000), ("loyal", 30, 70_000), ("fiercely_loyal", 10, 50_000),
                      ("captive", 10, 40_000), ("new", 10, 10_000)])
BIG_AUDIENCE = TierMix([("transactional", 60, 90_000), ("captive", 20, 60_000), ("loyal", 15, 45_000),
                        ("at_risk", 5, 5_000)])


@pytest.mark.parametrize(("mix", "expected"), [
    # 10 + 30 = 40 of 100 loyal, (50,000 + 70,000) / 200,000 = 60.0 % of revenue;
    # 40 + 10 = 50 transactional or captive, (30,000 + 40,000) / 200,000 = 35.0 %
    (LOYAL_BASE, "40 of 100 customers (40.0%) are fiercely loyal or loyal and bring 60.0% of the last 365 days' "
                 "revenue; 50 (50.0%) are transactional or captive and bring 35.0%. More of the revenue rests on a "
                 "loyal base than on a big audience."),
    # 15 of 100 loyal with 45,000 / 200,000 = 22.5 %; 60 + 20 = 80 with 150,000 / 200,000 = 75.0 %
    (BIG_AUDIENCE, "15 of 100 customers (15.0%) are fiercely loyal or loyal and bring 22.5% of the last 365 days' "
                   "revenue; 80 (80.0%) are transactional or captive and bring 75.0%. More of the revenue rests on "
                   "a big audience (buying without loyalty) than on a loyal base."),
    # nobody yet: no shares to give, and no side ahead
    (TierMix([]), "0 of 0 customers (-) are fiercely loyal or loyal and bring - of the last 365 days' revenue; "
                  "0 (-) are transactional or captive and bring -. The loyal base and the big audience bring the "
                  "same revenue."),
])
def test_audience_verdict_gives_the_shares_and_the_side_the_revenue_rests_on(mix: TierMix, expected: str) -> None:
    assert audience_verdict(mix) == expected


def test_tier_mix_sums_tiers_together() -> None:
    assert (LOYAL_BASE.customers, LOYAL_BASE.revenue) == (100, 200_000)
    assert LOYAL_BASE.of(("transactional", "captive")) == (50, 70_000)
    assert LOYAL_BASE.of(("lapsed",)) == (0, 0)
