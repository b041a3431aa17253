"""Live or historical (domain/alerts/live.py): the boundary, by hand, and the stamped alert."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from domain.alerts import Alert, alert_from_dict, alert_to_dict, is_historical, stamp
from sinks.rows import ALERT_COLUMNS, alert_row

HOUR_MS = 3_600_000
WINDOW = 48 * HOUR_MS  # the default LOYALTY_ALERT_LIVE_WINDOW_HOURS
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize("event_time, expected", [
    (NOW, False),                        # about this very moment
    (NOW - 1, False),
    (NOW - WINDOW + 1, False),           # 47:59:59.999 ago
    (NOW - WINDOW, False),               # exactly 48 h ago: the edge is still live
    (NOW - WINDOW - 1, True),            # 48 h and 1 ms ago
    (NOW - 365 * 24 * HOUR_MS, True),    # a year-old backfill
    (NOW + 5 * 60_000, False),           # 5 minutes ahead (an upstream clock ahead of ours)
], ids=["now", "1ms-ago", "just-inside", "edge", "just-outside", "a-year-ago", "future"])
def test_older_than_the_live_window_is_historical(event_time: int, expected: bool) -> None:
    assert is_historical(event_time, NOW, WINDOW) is expected


def test_a_zero_window_makes_everything_before_now_historical_and_a_negative_one_is_refused() -> None:
    assert (is_historical(NOW, NOW, 0), is_historical(NOW - 1, NOW, 0)) == (False, True)
    with pytest.raises(ValueError, match="live window cannot be negative"):
        is_historical(NOW, NOW, -1)


def _alert(raised_at: int) -> Alert:
    return Alert(alert_id=str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty-stream:alert"),
                                         f"c1|gone_quiet|{raised_at}")),
                 customer_id="c1", kind="gone_quiet", severity="info", raised_at=raised_at, model_version="m",
                 summary="s", before_score=None, after_score=50.0, before_tier=None, after_tier="loyal",
                 tier_reason="r", measure="days_since_last_purchase", measure_before=10.0, measure_after=25.0,
                 threshold=20.0)


def test_stamp_sets_the_processing_time_and_the_flag_and_keeps_the_id() -> None:
    old, recent = _alert(NOW - 30 * 24 * HOUR_MS), _alert(NOW - HOUR_MS)
    stamped_old, stamped_recent = stamp(old, NOW, WINDOW), stamp(recent, NOW, WINDOW)
    assert (stamped_old.processed_at, stamped_old.historical) == (NOW, True)
    assert (stamped_recent.processed_at, stamped_recent.historical) == (NOW, False)
    assert stamped_old == replace(old, processed_at=NOW, historical=True)  # nothing else changes
    assert stamped_old.alert_id == old.alert_id and stamped_old.raised_at == old.raised_at
    datum = alert_to_dict(stamped_old)
    assert (datum["processed_at"], datum["historical"]) == (NOW, True)
    assert alert_from_dict(datum) == stamped_old


def test_the_alerts_row_carries_the_flag_and_an_old_writers_datum_reads_as_live() -> None:
    datum = alert_to_dict(stamp(_alert(NOW - 30 * 24 * HOUR_MS), NOW, WINDOW))
    row = alert_row(datum, NOW + 5)
    assert set(row) == set(ALERT_COLUMNS)
    assert (row["raised_at"], row["processed_at"], row["historical"], row["updated_at"]) == (
        NOW - 30 * 24 * HOUR_MS, NOW, True, NOW + 5)
    old = {k: v for k, v in datum.items() if k not in ("processed_at", "historical")}  # alert.avsc 0001
    row = alert_row(old, NOW + 5)
    assert (row["processed_at"], row["historical"]) == (None, False)
    assert alert_from_dict(old) == replace(alert_from_dict(datum), processed_at=None, historical=False)
