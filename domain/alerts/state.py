"""Per-customer alert state: what the rules must remember between evaluations. Pure.

Small on purpose (it is stored per customer next to the relationship state):

* the last evaluated score, tier and components (the "before" of the next alert);
* the trailing score peaks: a monotone queue of ``(as_of, score, components)`` with strictly
  falling scores, at most one entry per UTC day (the day's highest), so the 30-day peak is its
  first entry and it never holds more than ``score_peak_days + 1`` entries;
* one :class:`Episode` per alert kind that has ever started;
* the gone-quiet schedule: the due time and the last purchase it was computed from.

:func:`alert_state_to_dict` / :func:`alert_state_from_dict` give a JSON-able plain dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.relationship import DAY_MS


@dataclass(slots=True)
class Episode:
    """One alert kind's episode: whether it is going on, and when it last raised an alert."""

    active: bool = False
    started_at: int | None = None
    last_raised_at: int | None = None

    def __init__(self, active: bool = False, started_at: int | None = None, last_raised_at: int | None = None) -> None:
        # Written out: see domain/__init__.py, "Value classes".
        self.active = active
        self.started_at = started_at
        self.last_raised_at = last_raised_at

    def step(self, started: bool, ended: bool, at: int, cooldown_ms: int) -> bool:
        """Advance the episode; True when an alert must be raised now.

        While active, only ``ended`` matters. When not active and ``started``, a new episode
        begins; it raises an alert unless the last one of this kind is less than ``cooldown_ms``
        old, in which case it is taken as the old episode flaring up again and stays silent.
        """
        if self.active:
            if ended:
                self.active = False
            return False
        if not started:
            return False
        self.active = True
        self.started_at = at
        if self.last_raised_at is not None and at - self.last_raised_at < cooldown_ms:
            return False
        self.last_raised_at = at
        return True


@dataclass(slots=True, unsafe_hash=True)
class Peak:
    # Not frozen, and its __init__ written out: see domain/__init__.py, "Value classes".
    at: int
    score: float
    components: dict[str, float]

    def __init__(self, at: int, score: float, components: dict[str, float]) -> None:
        self.at = at
        self.score = score
        self.components = components


@dataclass(slots=True)
class AlertState:
    customer_id: str
    as_of: int | None = None
    score: float | None = None
    tier: str | None = None
    components: dict[str, float] = field(default_factory=dict)
    peaks: list[Peak] = field(default_factory=list)
    episodes: dict[str, Episode] = field(default_factory=dict)
    quiet_due_at: int | None = None
    quiet_anchor: int | None = None  # last_purchase_at the due time was computed from

    def __init__(self, customer_id: str, as_of: int | None = None, score: float | None = None, tier: str | None = None,
                 components: dict[str, float] | None = None, peaks: list[Peak] | None = None,
                 episodes: dict[str, Episode] | None = None, quiet_due_at: int | None = None,
                 quiet_anchor: int | None = None) -> None:
        # None for a container: a new empty one, as the fields' default factories give.
        self.customer_id = customer_id
        self.as_of = as_of
        self.score = score
        self.tier = tier
        self.components = {} if components is None else components
        self.peaks = [] if peaks is None else peaks
        self.episodes = {} if episodes is None else episodes
        self.quiet_due_at = quiet_due_at
        self.quiet_anchor = quiet_anchor

    def episode(self, kind: str) -> Episode:
        episode = self.episodes.get(kind)
        if episode is None:
            episode = self.episodes[kind] = Episode()
        return episode

    def record_score(self, at: int, score: float, components: dict[str, float], window_ms: int) -> Peak:
        """Add a score to the trailing peaks and return the peak of the window ending at ``at``.

        Times only move forward here: a signal older than the newest entry (a late event scored
        as of an earlier time) is treated as of the newest entry's time.
        """
        peaks = self.peaks
        if peaks and at < peaks[-1].at:
            at = peaks[-1].at
        while peaks and peaks[0].at <= at - window_ms:
            peaks.pop(0)
        while peaks and peaks[-1].score <= score:
            peaks.pop()
        if not peaks or peaks[-1].at // DAY_MS != at // DAY_MS:
            peaks.append(Peak(at, score, dict(components)))
        # else: a higher score earlier the same day stands for the day (keeps one entry a day)
        return peaks[0]

    def copy(self) -> AlertState:
        """A deep copy (peaks' component dicts are never changed in place, so they are shared)."""
        return AlertState(
            customer_id=self.customer_id, as_of=self.as_of, score=self.score, tier=self.tier,
            components=dict(self.components), peaks=list(self.peaks),
            episodes={kind: Episode(e.active, e.started_at, e.last_raised_at) for kind, e in self.episodes.items()},
            quiet_due_at=self.quiet_due_at, quiet_anchor=self.quiet_anchor,
        )


def alert_state_to_dict(state: AlertState) -> dict:
    """A JSON-able plain dict (the stored form)."""
    return {
        "customer_id": state.customer_id,
        "as_of": state.as_of,
        "score": state.score,
        "tier": state.tier,
        "components": dict(state.components),
        "peaks": [{"at": p.at, "score": p.score, "components": dict(p.components)} for p in state.peaks],
        "episodes": {
            kind: {"active": e.active, "started_at": e.started_at, "last_raised_at": e.last_raised_at}
            for kind, e in sorted(state.episodes.items())
        },
        "quiet_due_at": state.quiet_due_at,
        "quiet_anchor": state.quiet_anchor,
    }


def alert_state_from_dict(data: dict) -> AlertState:
    return AlertState(
        customer_id=data["customer_id"],
        as_of=data.get("as_of"),
        score=data.get("score"),
        tier=data.get("tier"),
        components=dict(data.get("components") or {}),
        peaks=[Peak(p["at"], p["score"], dict(p["components"])) for p in data.get("peaks") or ()],
        episodes={kind: Episode(e["active"], e.get("started_at"), e.get("last_raised_at"))
                  for kind, e in (data.get("episodes") or {}).items()},
        quiet_due_at=data.get("quiet_due_at"),
        quiet_anchor=data.get("quiet_anchor"),
    )
