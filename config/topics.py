"""Every topic name, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from domain.records import EventKind


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def purchases(self) -> str:
        return f"{self.prefix}purchases"

    @property
    def calls(self) -> str:
        return f"{self.prefix}calls"

    @property
    def visits(self) -> str:
        return f"{self.prefix}visits"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def signals(self) -> str:
        return f"{self.prefix}signals"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def alert_due(self) -> str:
        """Internal: customers whose gone-quiet time has passed, keyed like the inputs."""
        return f"{self.prefix}alert-due"

    @property
    def model_params(self) -> str:
        """Internal, one partition: the BG/NBD parameters the sink fitted, newest last."""
        return f"{self.prefix}model-params"

    @property
    def state_fences(self) -> str:
        """Internal, compacted: one tiny record per input partition and batch, each in a transaction
        of the partition's fence producer (:mod:`streams.fencing`)."""
        return f"{self.prefix}state-fences"

    def for_kind(self, kind: EventKind) -> str:
        return {"purchase": self.purchases, "call": self.calls, "visit": self.visits}[kind]

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.purchases, self.calls, self.visits)

    @property
    def outputs(self) -> tuple[str, str, str]:
        return (self.dead_letters, self.signals, self.alerts)

    def all(self) -> tuple[str, ...]:
        return self.inputs + self.outputs + (self.alert_due, self.model_params, self.state_fences)


KIND_BY_SUFFIX: dict[str, EventKind] = {"purchases": "purchase", "calls": "call", "visits": "visit"}
