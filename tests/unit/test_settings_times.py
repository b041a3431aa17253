"""Times in settings: LOYALTY_EARLIEST_EVENT_TIME in either accepted form, and a clear refusal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import Settings, parse_time_ms
from domain.validation import EARLIEST_EVENT_MS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2000-01-01T00:00:00Z", 946_684_800_000),
        ("2000-01-01", 946_684_800_000),  # no offset: UTC
        ("1990-01-01T00:00:00+02:00", 631_144_800_000),
        ("1995-06-09T00:00:00.001Z", 802_656_000_001),
        ("631152000000", 631_152_000_000),  # epoch milliseconds
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_parse_time_ms(text, expected):
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "2000-13-01", "1e12", "-5"])
def test_parse_time_ms_refuses_what_is_not_a_time(text):
    with pytest.raises(ValueError, match="ISO-8601 time .* nor epoch milliseconds"):
        parse_time_ms(text)


def test_the_default_earliest_time_is_the_domain_default():
    assert Settings().earliest_event_ms == EARLIEST_EVENT_MS


def test_an_earlier_time_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOYALTY_EARLIEST_EVENT_TIME", "1990-01-01")
    assert Settings().earliest_event_ms == 631_152_000_000


def test_a_bad_earliest_time_names_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOYALTY_EARLIEST_EVENT_TIME", "last year")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"] == ("earliest_event_time",)
    assert "not an ISO-8601 time" in str(caught.value)
