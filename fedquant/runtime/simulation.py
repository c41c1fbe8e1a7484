"""The one adapter to Flower's simulation engine (tested with flwr 1.41 and 1.42, and Ray 2.55).

``flwr.simulation.run_simulation`` is deprecated upstream in favour of ``flwr run``; keeping the
call here means a Flower upgrade touches this file only.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from ..federation.flower_releases import TESTED_FLWR, installed_flwr


class _KnownNoise(logging.Filter):
    """Drop Flower's run_simulation deprecation notice (acknowledged in this module's docstring)
    and its traceback for every failed client: the strategy reports each failure by client id,
    and ``simulation.verbose=true`` shows them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("run_simulation` function is deprecated" in msg or "ClientAppException" in msg
                    or msg.startswith("An exception was raised when processing a message by RayBackend"))


REPLY_POLL_S = 0.005  # seconds between looks for replies (Flower's default: 0.1)


def hide_ray_gpu_notice() -> None:
    """Hide the FutureWarning every ``ray.init`` prints ("Tip: In future versions of Ray, Ray will
    no longer override accelerator visible devices env var if num_gpus=0 ... set
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0"). We rely on today's behaviour: a client with
    ``num_gpus_per_client=0`` sees no GPU, so ``device=auto`` trains it on the CPU. The variable
    the notice suggests would switch that off (every Ray worker would see every GPU), so the
    notice is filtered instead. Process-wide; call it before Ray starts (``flwr run``'s simulation
    imports the app before it starts Ray: ``fedquant.flower_app`` calls it on import)."""
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def quiet_flower_logs(verbose: bool) -> None:
    """Flower's INFO logs (every round's sampled nodes and metrics) only with ``verbose``; the
    known noise (:class:`_KnownNoise`) filtered out otherwise."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for f in [f for f in flwr_logger.filters if isinstance(f, _KnownNoise)]:
        flwr_logger.removeFilter(f)
    if not verbose:
        flwr_logger.addFilter(_KnownNoise())


class RayUnreachable(RuntimeError):
    """``simulation.ray_address`` names a Ray cluster that does not answer."""


def resolve_ray_address(address: str) -> str:
    """``auto`` as Ray resolves it: ``$RAY_ADDRESS``, else the address of the last cluster
    started on this machine (``<tmp>/ray/ray_current_cluster``); a concrete address as given."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    found = current.read_text().strip() if current.is_file() else ""
    if not found:
        raise RayUnreachable("simulation.ray_address=auto: no running Ray cluster found ($RAY_ADDRESS unset, no "
                             f"{current}); start one with `ray start --head`, or use simulation.ray_address=null")
    return found


def check_ray_reachable(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with one line when nothing accepts connections at ``address``
    (``host:port``, optionally ``ray://``): Ray itself would retry for minutes."""
    resolved = resolve_ray_address(address)
    host, _, port = resolved.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        shown = address if resolved == address else f"{address} ({resolved})"
        raise RayUnreachable(f"simulation.ray_address={shown}: no Ray cluster answers there within {timeout_s:g} s "
                             f"({type(err).__name__}: {err}); start one with `ray start --head`, or use "
                             "simulation.ray_address=null for a local instance") from None


def poll_replies_often(grid) -> None:
    """Make Flower's simulation grid look for client replies every 5 ms instead of every 0.1 s.

    ``InMemoryGrid.send_and_receive`` sleeps ``pull_interval`` between looks, so every round
    ended on the next 0.1 s tick after its last reply (0.05 s lost per round on average; the
    interval went from 0.1 s to 5 ms, see docs/benchmarks.md). A look is a dictionary lookup
    under a lock, so polling more often costs nothing measurable. Results do not depend on it.
    Other grids (deployment, tests' in-process grids) are left as they are.
    """
    # Private access, kept to this one function: run_simulation builds its InMemoryGrid itself
    # with the default pull_interval=0.1 and flwr (1.41, 1.42) offers no argument, setting or
    # environment variable to change it. If Flower renames or drops the attribute, assigning it
    # would silently do nothing, so its absence is reported (once) and Flower's default is kept.
    try:
        from flwr.superlink.grid import InMemoryGrid
    except ImportError:
        _warn_once("flwr.superlink.grid.InMemoryGrid no longer exists")
        return
    if not isinstance(grid, InMemoryGrid):
        return
    if not hasattr(grid, "pull_interval"):
        _warn_once(f"flwr's {type(grid).__name__} has no attribute 'pull_interval'")
        return
    grid.pull_interval = REPLY_POLL_S


_warned: set[str] = set()


def _warn_once(problem: str) -> None:
    if problem in _warned:
        return
    _warned.add(problem)
    logging.getLogger("fedquant").warning(
        "%s (installed flwr %s, tested with %s): replies are polled at Flower's default interval, so rounds "
        "take a little longer (fedquant.runtime.simulation.poll_replies_often)", problem, installed_flwr(),
        " and ".join(TESTED_FLWR))


def run_flower_simulation(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, *,
                          num_cpus_per_client: float, num_gpus_per_client: float,
                          ray_address: str | None = None, ray_timeout_s: float = 30.0,
                          verbose: bool = False) -> None:
    """Run ``server_app`` against ``num_supernodes`` virtual nodes executing ``client_app`` on Ray.

    ``ray_address=None``: Flower starts a fresh local Ray instance (``address="local"``; Ray's own
    default would join the last cluster started on this machine, and hang for as long as one
    waits if that cluster died). An address (``auto``, ``host:port``) is attached to first
    (Flower only starts Ray when it is not running), failing within ``ray_timeout_s`` when
    nothing answers there (:class:`RayUnreachable`). Ray is shut
    down afterwards, so sweeps start each job clean. Exceptions raised in the ServerApp propagate.
    """
    import flwr.simulation
    import ray

    quiet_flower_logs(verbose)
    hide_ray_gpu_notice()
    if ray_address:
        check_ray_reachable(ray_address, ray_timeout_s)
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=verbose)
    backend_config = {
        "client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": num_gpus_per_client},
        # Flower's ray.init when Ray is not running yet: a fresh local instance, never the last one started
        "init_args": {"address": "local", "include_dashboard": False, "log_to_driver": verbose,
                      "logging_level": logging.INFO if verbose else logging.ERROR},
    }
    try:
        flwr.simulation.run_simulation(server_app=server_app, client_app=client_app,
                                       num_supernodes=num_supernodes, backend_config=backend_config,
                                       verbose_logging=verbose)
    finally:
        if ray.is_initialized():
            ray.shutdown()
