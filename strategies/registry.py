"""The Flower server strategies fedquant composes with, and the one way to build them.

Every Flower 1.42 strategy that aggregates model arrays is here, declared once with the state it
keeps (:data:`strategies.server_state.SERVER_STATE`; :mod:`fedquant.federation.aggregators` states
their rules); FedXgbBagging and FedXgbCyclic aggregate XGBoost trees (bytes), not arrays, and are not.
"""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAvg

from fedquant.federation import protocol as P
from fedquant.federation.aggregators import min_replies as aggregator_min_replies
from fedquant.federation.plan import TrainingPlan

from .links import Links
from .quant_aware import QuantAwareMixin, flower_settings
from .server_state import SERVER_STATE

SERVERS = {name: cls for name, (cls, _) in SERVER_STATE.items()}  # strategy.server -> Flower class
NOT_CONFIGURABLE = ("evaluate_metrics_aggr_fn", "selection_rule")  # callables: nothing a config file can give
FIXED = {"qfedavg": {"train_loss_key": P.TRAIN_LOSS}}  # per server: what fedquant's replies dictate


def server_options() -> dict[str, list[str]]:
    """For each server strategy, the constructor arguments ``strategy.server_options`` may set:
    Flower's own, minus those the mixin fixes (:func:`~strategies.quant_aware.flower_settings`)."""
    fixed = set(flower_settings()) | set(NOT_CONFIGURABLE)
    return {name: sorted(set(inspect.signature(cls.__init__).parameters) - {"self"} - fixed - set(FIXED.get(name, {})))
            for name, cls in SERVERS.items()}


def build_strategy(server: str, plan: TrainingPlan, *, min_replies: int = 1, on_too_few: str = "retry",
                   max_retries: int = 3, client_work: list[int] | None = None, on_report=None,
                   on_replies=None, links: Links | None = None, partition_sizes: list[int] | None = None,
                   dp: str = "none", dp_options: dict | None = None, client_lr: float | None = None,
                   **options) -> FedAvg:
    """A ``QuantAware<Server>`` instance; ``options`` go to Flower's class (e.g. ``proximal_mu``).

    ``server`` and ``options`` are assumed valid (``fedquant.experiment.config.validate`` checks
    them against :func:`server_options` before anything starts). A round needs at least the
    replies the aggregator's rule is defined for (Krum: ``2f + 3``, Bulyan: ``4f + 3``), so that
    many count as ``min_replies`` when more than the configured. q-FedAvg's
    ``client_learning_rate`` (its ``L = 1 / lr``) defaults to ``client_lr``, the clients' own."""
    base = SERVERS[server]
    cls = type(f"QuantAware{base.__name__}", (QuantAwareMixin, base), {})
    options = {**FIXED.get(server, {}), **options}
    if server == "qfedavg" and "client_learning_rate" not in options and client_lr is not None:
        options["client_learning_rate"] = client_lr
    return cls(plan=plan, server_name=server, min_replies=max(min_replies, aggregator_min_replies(server, options)),
               on_too_few=on_too_few, max_retries=max_retries, client_work=client_work, on_report=on_report,
               on_replies=on_replies, links=links, partition_sizes=partition_sizes, dp=dp, dp_options=dp_options,
               **options)
