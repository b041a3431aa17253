"""The loyalty model on top of the relationship state. Pure Python plus numpy.

No Faust, Kafka or ClickHouse, and no clock: time (epoch milliseconds, UTC) is always an
argument. The public surface:

* :func:`score_customer` and :func:`signal_to_dict`: one customer's :class:`LoyaltySignal`.
* :func:`know_me` and :data:`KNOW_ME_FIELDS`: the know-me profile the signal carries.
* :func:`fit_bgnbd`: BG/NBD population parameters for the churn risk.
* :mod:`.replay` and :mod:`.backtest`: offline runs over a JSON-lines file of events.
"""

from domain.model.churn import DEFAULT_PARAMS, BgNbdParams, fit_bgnbd, fit_bgnbd_arrays
from domain.model.components import WEIGHTS
from domain.model.knowme import KNOW_ME_FIELDS, KnowMe, know_me, know_me_values
from domain.model.signals import MODEL_VERSION, LoyaltySignal, score_customer, signal_to_dict
from domain.model.tiers import TIERS

__all__ = [
    "DEFAULT_PARAMS",
    "KNOW_ME_FIELDS",
    "MODEL_VERSION",
    "TIERS",
    "WEIGHTS",
    "BgNbdParams",
    "KnowMe",
    "LoyaltySignal",
    "fit_bgnbd",
    "fit_bgnbd_arrays",
    "know_me",
    "know_me_values",
    "score_customer",
    "signal_to_dict",
]
