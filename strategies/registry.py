"""The Flower server strategies fedquant composes with, and the one way to build them."""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from fedquant.federation.plan import TrainingPlan

from .links import Links
from .quant_aware import QuantAwareMixin, flower_settings

SERVERS = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam}
NOT_CONFIGURABLE = ("evaluate_metrics_aggr_fn",)  # a callable: nothing a config file can give


def server_options() -> dict[str, list[str]]:
    """For each server strategy, the constructor arguments ``strategy.server_options`` may set:
    Flower's own, minus those the mixin fixes (:func:`~strategies.quant_aware.flower_settings`)."""
    fixed = set(flower_settings()) | set(NOT_CONFIGURABLE)
    return {name: sorted(set(inspect.signature(cls.__init__).parameters) - {"self"} - fixed)
            for name, cls in SERVERS.items()}


def build_strategy(server: str, plan: TrainingPlan, *, min_replies: int = 1, on_too_few: str = "retry",
                   max_retries: int = 3, client_work: list[int] | None = None, on_report=None,
                   on_replies=None, links: Links | None = None, **options) -> FedAvg:
    """A ``QuantAware<Server>`` instance; ``options`` go to Flower's class (e.g. ``proximal_mu``).

    ``server`` and ``options`` are assumed valid (``fedquant.experiment.config.validate`` checks
    them against :func:`server_options` before anything starts)."""
    base = SERVERS[server]
    cls = type(f"QuantAware{base.__name__}", (QuantAwareMixin, base), {})
    return cls(plan=plan, server_name=server, min_replies=min_replies, on_too_few=on_too_few,
               max_retries=max_retries, client_work=client_work, on_report=on_report, on_replies=on_replies,
               links=links, **options)
