"""Live or historical: whether an alert is about now or about the past. Pure: both times are arguments.

An alert is about the event time of the signal that raised it (``raised_at``: the customer's
newest event, or the gone-quiet due time). When that time is more than the live window older than
the wall clock of the worker processing it, the alert is *historical*: a backfill or a replay of
old history raised it, and nobody should be paged for it. It is still published and stored (BI
counts it), flagged, and consumers that act on alerts (the webhook) skip it.

The boundary: an event time exactly ``live_window_ms`` before the processing time is still live;
one millisecond older is historical. An event time after the processing time (a clock a little
ahead upstream) is live.
"""

from __future__ import annotations

from dataclasses import replace

from domain.alerts.record import Alert

HOUR_MS = 3_600_000


def is_historical(event_time_ms: int, processed_at_ms: int, live_window_ms: int) -> bool:
    """True when ``event_time_ms`` is more than ``live_window_ms`` before ``processed_at_ms``."""
    if live_window_ms < 0:
        raise ValueError(f"the live window cannot be negative ({live_window_ms} ms)")
    return processed_at_ms - event_time_ms > live_window_ms


def stamp(alert: Alert, processed_at_ms: int, live_window_ms: int) -> Alert:
    """The alert with its processing time and its live/historical flag set (its id unchanged)."""
    return replace(alert, processed_at=processed_at_ms,
                   historical=is_historical(alert.raised_at, processed_at_ms, live_window_ms))
