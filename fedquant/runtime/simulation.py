"""The one adapter to Flower's simulation engine (tested with flwr 1.41 and Ray 2.55).

``flwr.simulation.run_simulation`` is deprecated upstream in favour of ``flwr run``; keeping the
call here means a Flower upgrade touches this file only.
"""

from __future__ import annotations

import logging
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


class _KnownNoise(logging.Filter):
    """Drop Flower's run_simulation deprecation notice (acknowledged in this module's docstring)
    and its traceback for every failed client: the strategy reports each failure by client id,
    and ``simulation.verbose=true`` shows them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("run_simulation` function is deprecated" in msg or "ClientAppException" in msg
                    or msg.startswith("An exception was raised when processing a message by RayBackend"))


REPLY_POLL_S = 0.005


def poll_replies_often(grid) -> None:
    """Make the simulation's grid look for client replies every 5 ms instead of Flower's 0.1 s.

    ``InMemoryGrid.send_and_receive`` sleeps ``pull_interval`` between looks, so every round
    ended on the next 0.1 s tick after its last reply (0.05 s lost per round on average). A look
    is a dictionary lookup under a lock, so polling more often costs nothing measurable.
    """
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = REPLY_POLL_S


def run_flower_simulation(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, *,
                          num_cpus_per_client: float, num_gpus_per_client: float,
                          ray_address: str | None = None, verbose: bool = False) -> None:
    """Run ``server_app`` against ``num_supernodes`` virtual nodes executing ``client_app`` on Ray.

    With ``ray_address`` (e.g. ``"auto"``) an existing Ray cluster is attached first (Flower only
    starts Ray when it is not running). Ray is shut down afterwards, so sweeps start each job
    clean. Exceptions raised in the ServerApp propagate.
    """
    import flwr.simulation
    import ray

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for f in [f for f in flwr_logger.filters if isinstance(f, _KnownNoise)]:
        flwr_logger.removeFilter(f)
    if not verbose:
        flwr_logger.addFilter(_KnownNoise())
    # Ray's notice about a future default; we rely on today's (num_gpus=0 hides the GPUs).
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
    if ray_address:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=verbose)
    backend_config = {
        "client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": num_gpus_per_client},
        "init_args": {"include_dashboard": False, "log_to_driver": verbose,
                      "logging_level": logging.INFO if verbose else logging.ERROR},
    }
    try:
        flwr.simulation.run_simulation(server_app=server_app, client_app=client_app,
                                       num_supernodes=num_supernodes, backend_config=backend_config,
                                       verbose_logging=verbose)
    finally:
        if ray.is_initialized():
            ray.shutdown()
