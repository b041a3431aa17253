"""Alerts on loyalty drops. Pure Python: no Faust, Kafka, ClickHouse or HTTP, and no clock.

The public surface:

* :func:`evaluate` (with :func:`alert_facts`): one customer's new signal in, the alerts to raise,
  their new :class:`AlertState` and the gone-quiet due time out.
* :class:`AlertRules`: every threshold, with documented defaults (:data:`DEFAULT_RULES`).
* :class:`DueIndex`: the gone-quiet timers, so quiet customers are found without a scan.
* :class:`Alert` and :func:`alert_to_dict`: the record and the datum of ``schemas/alert.avsc``.
* :func:`is_historical` and :func:`stamp`: whether an alert is about the past (older than the
  live window before the processing time), and the alert with that flag and its processing time.
"""

from domain.alerts.due import DueIndex
from domain.alerts.evaluate import AlertFacts, Evaluation, alert_facts, evaluate, quiet_due_at
from domain.alerts.live import is_historical, stamp
from domain.alerts.record import (
    Alert,
    AlertContext,
    ComponentChange,
    alert_from_dict,
    alert_id,
    alert_to_dict,
)
from domain.alerts.rules import (
    ALERT_KINDS,
    DEFAULT_RULES,
    SEVERITIES,
    TIER_ORDER,
    AlertRules,
    severity,
    tier_rank,
)
from domain.alerts.state import AlertState, Episode, alert_state_from_dict, alert_state_to_dict

__all__ = [
    "ALERT_KINDS",
    "DEFAULT_RULES",
    "SEVERITIES",
    "TIER_ORDER",
    "Alert",
    "AlertContext",
    "AlertFacts",
    "AlertRules",
    "AlertState",
    "ComponentChange",
    "DueIndex",
    "Episode",
    "Evaluation",
    "alert_facts",
    "alert_from_dict",
    "alert_id",
    "alert_state_from_dict",
    "alert_state_to_dict",
    "alert_to_dict",
    "evaluate",
    "is_historical",
    "quiet_due_at",
    "severity",
    "stamp",
    "tier_rank",
]
