"""Know-me profile: what staff or the IVR should know when this customer gets in touch. Pure.

The greeting never carries contact details or amounts: only when, what kind of thing, and
where, which is what a shop assistant would remember.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from domain.model.suggest import CoPurchaseTable, Suggestion, suggest
from domain.relationship import DAY_MS, RelationshipState, favourite, preferred_channel, window

OPEN_ISSUE_DAYS = 90
"""Unresolved calls this recent count as open issues."""
GREETING_CATEGORIES = 2
"""Categories named in the greeting; more are summed up as "and more"."""

_WHERE = {"web": "online", "app": "in the app", "phone": "by phone"}


@dataclass(slots=True, unsafe_hash=True)
class KnowMe:
    """The profile; the loyalty signal carries the same fields under the same names."""

    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    greeting_hint: str  # first: it is what staff read
    last_purchase_at: int | None
    last_purchase_categories: list[str]
    last_purchase_skus: list[str]
    last_purchase_channel: str | None
    last_purchase_location_id: str | None
    favourite_category: str | None
    preferred_channel: str | None
    open_issues: int
    suggested_categories: list[Suggestion]  # next-best categories, best first (domain.model.suggest)

    def __init__(self, greeting_hint: str, last_purchase_at: int | None, last_purchase_categories: list[str],
                 last_purchase_skus: list[str], last_purchase_channel: str | None, last_purchase_location_id: str | None,
                 favourite_category: str | None, preferred_channel: str | None, open_issues: int,
                 suggested_categories: list[Suggestion]) -> None:
        self.greeting_hint = greeting_hint
        self.last_purchase_at = last_purchase_at
        self.last_purchase_categories = last_purchase_categories
        self.last_purchase_skus = last_purchase_skus
        self.last_purchase_channel = last_purchase_channel
        self.last_purchase_location_id = last_purchase_location_id
        self.favourite_category = favourite_category
        self.preferred_channel = preferred_channel
        self.open_issues = open_issues
        self.suggested_categories = suggested_categories


KNOW_ME_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(KnowMe))
"""The know-me fields in the order they are shown: on the loyalty signal, in the HTTP profile
and, all but the SKUs, in an alert's context."""


def know_me_values(profile: object) -> dict[str, Any]:
    """The know-me fields of a profile or a loyalty signal, by name, in :data:`KNOW_ME_FIELDS` order."""
    return {name: getattr(profile, name) for name in KNOW_ME_FIELDS}


def know_me(state: RelationshipState, as_of: int, copurchase: CoPurchaseTable | None = None) -> KnowMe:
    """The profile as of ``as_of``; suggestions come from ``copurchase`` (none without it)."""
    last = state.last_purchase
    issues = window(state, OPEN_ISSUE_DAYS, as_of).unresolved_calls
    suggestions = suggest(state, copurchase)
    return KnowMe(
        last_purchase_at=None if last is None else last.occurred_at,
        last_purchase_categories=[] if last is None else list(last.categories),
        last_purchase_skus=[] if last is None else list(last.skus),
        last_purchase_channel=None if last is None else last.channel,
        last_purchase_location_id=None if last is None else last.location_id,
        favourite_category=favourite(state.categories_bought),
        preferred_channel=preferred_channel(state),
        open_issues=issues,
        suggested_categories=suggestions,
        greeting_hint=greeting_hint(state, as_of, issues, suggestions),
    )


def greeting_hint(
    state: RelationshipState, as_of: int, open_issues: int, suggestions: list[Suggestion] | None = None
) -> str:
    """E.g. "Welcome back! Last time (12 days ago) you bought shoes in store S01. You might also
    like socks." (the first suggestion when the customer's own purchases led to it)."""
    last = state.last_purchase
    if last is None:
        text = "Welcome! Good to see you."
    else:
        days = as_of // DAY_MS - last.occurred_at // DAY_MS  # calendar days, UTC
        ago = "today" if days <= 0 else "yesterday" if days == 1 else f"{days} days ago"
        text = f"Welcome back! Last time ({ago}) you bought {_what(last.categories)}{_where(last.channel, last.location_id)}."
        if suggestions and suggestions[0].from_copurchase:
            text += f" You might also like {suggestions[0].category}."
    if open_issues:
        plural = "call" if open_issues == 1 else "calls"
        text += f" Open issue: {open_issues} unresolved {plural} in the last {OPEN_ISSUE_DAYS} days."
    return text


def _what(categories: list[str]) -> str:
    if not categories:
        return "something"
    named = categories[:GREETING_CATEGORIES]
    if len(categories) > GREETING_CATEGORIES:
        return ", ".join(named) + " and more"
    return " and ".join(named)


def _where(channel: str, location_id: str | None) -> str:
    if channel == "store":
        return f" in store {location_id}" if location_id else " in store"
    return f" {_WHERE[channel]}" if channel in _WHERE else ""
