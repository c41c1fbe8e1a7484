"""fedquant as a Flower app: the ``ServerApp`` and ``ClientApp`` objects that ``flwr run`` starts
(``[tool.flwr.app.components]`` in pyproject.toml).

The run config (``[tool.flwr.app.config]``, or ``flwr run . --run-config "..."``) maps onto the
same Hydra composition as the command line, so one config system stays the source of truth:

- ``experiment``: a ``conf/experiment`` name (``+experiment=NAME``), empty for the defaults;
- ``overrides``: Hydra-style overrides in one string (``"strategy=fedavg client.lr=0.02"``);
- ``num-server-rounds``: ``num_rounds`` (0 keeps the experiment's); ``seed``: ``seed``;
- ``output-dir``: where results go (absolute; empty: ``~/fedquant-runs``), in a folder per run
  that the ServerApp prints;
- ``data-placement``: ``server`` (simulation: the server's plan says which partition a node
  trains) or ``node`` (deployment: every SuperNode holds one partition, ``--node-config
  "partition-id=K num-partitions=N"`` with N = ``num_clients``, and trains only that one).

The simulation's size is the experiment's own: ``num_clients`` data partitions, of which the
plan samples ``clients_per_round`` each round and deals them out over however many SuperNodes the
federation has (``num-supernodes`` only sets how many train at once). Both apps run on any Flower
engine: the ClientApp rebuilds data and model from the run config in its own process, no Ray
needed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from clients import handle_query, handle_train, node_partition
from fedquant.federation import protocol as P

from .app import Experiment, client_setup
from .hydra_conf import compose_config as compose_overrides
from .runtime.simulation import hide_ray_gpu_notice, quiet_flower_logs

# flwr run's simulation loads the ClientApp (this module) before it starts Ray.
hide_ray_gpu_notice()

RUN_CONFIG_KEYS = ("experiment", "overrides", "num-server-rounds", "seed", "output-dir", "data-placement")
PLACEMENTS = ("server", "node")


def hydra_overrides(run_config: Mapping) -> list[str]:
    """The run config as the Hydra overrides the command line would take."""
    unknown = sorted(set(run_config) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"run config keys {unknown} are not fedquant's: allowed are {', '.join(RUN_CONFIG_KEYS)}")
    out = [f"+experiment={run_config['experiment']}"] if run_config.get("experiment") else []
    out += shlex.split(str(run_config.get("overrides", "")))
    if int(run_config.get("num-server-rounds", 0)) > 0:
        out.append(f"num_rounds={int(run_config['num-server-rounds'])}")
    if "seed" in run_config:
        out.append(f"seed={int(run_config['seed'])}")
    if run_config.get("data-placement", "server") not in PLACEMENTS:
        raise ValueError(f"data-placement={run_config['data-placement']!r} is not valid: allowed are {', '.join(PLACEMENTS)}")
    return out


def data_on_nodes(run_config: Mapping) -> bool:
    return run_config.get("data-placement", "server") == "node"


def compose_config(run_config: Mapping) -> dict:
    """The experiment config for a run config, composed from conf/ exactly as the CLI does."""
    return compose_overrides(hydra_overrides(run_config))


def output_dir(run_config: Mapping, run_id: int) -> Path:
    base = Path(str(run_config.get("output-dir") or "~/fedquant-runs")).expanduser().resolve()
    return base / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_run{run_id}"


def _parent_and_command(pid: int) -> tuple[int, str] | None:
    """A process's parent pid and command line (Linux: /proc; elsewhere ``ps``), None if unknown."""
    try:
        proc = Path(f"/proc/{pid}")
        if proc.is_dir():
            ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            return ppid, (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        out = subprocess.run(["ps", "-o", "ppid=", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        ppid, _, command = out.partition(" ")
        return int(ppid), command
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def superlink_pid(pid: int | None = None, process=_parent_and_command) -> int | None:
    """The pid of the ``flower-superlink`` this process runs under (the ServerApp is a child of
    the SuperLink's SuperExec, in simulation and in deployment), None when there is none."""
    pid = os.getpid() if pid is None else pid
    for _ in range(16):
        found = process(pid)
        if found is None:
            return None
        ppid, command = found
        if any(Path(word).name == "flower-superlink" for word in command.split()[:2]):
            return pid
        if ppid <= 1 or ppid == pid:
            return None
        pid = ppid
    return None


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    cfg = compose_config(context.run_config)
    quiet_flower_logs(cfg["simulation"]["verbose"])
    out = output_dir(context.run_config, context.run_id)
    print(f"fedquant: run {context.run_id} writes its results to {out}", flush=True)
    experiment = Experiment(cfg, out)
    start = time.perf_counter()
    try:
        experiment.serve(grid, data_on_nodes=data_on_nodes(context.run_config))
        experiment.finish(time.perf_counter() - start)
    finally:
        experiment.close()
        # `flwr run` leaves the SuperLink running (the local one it started, too) and Flower has no
        # command that stops it (`flwr stop` stops a run).
        if (link := superlink_pid()) is not None:
            print(f"fedquant: the SuperLink keeps running after this run (pid {link}; stop it with "
                  f"`kill {link}`)", flush=True)


@functools.lru_cache(maxsize=4)
def _setup(run_config: tuple):
    return client_setup(compose_config(dict(run_config)))


def _own_partition(context: Context, setup) -> int | None:
    """The partition this node holds in deployment (``data-placement=node``), else None."""
    if not data_on_nodes(context.run_config):
        return None
    return node_partition(context.node_config, setup.data.num_clients)


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    # Flower numbers a simulation's virtual nodes 0..n-1 in node_config["partition-id"]; the
    # strategy uses it only to order its messages (the data partition travels in the message).
    setup = _setup(tuple(sorted(context.run_config.items())))
    if setup.state_dir is None and P.ERROR_FEEDBACK in msg.content.config_records[P.CONFIG]:
        setup = dataclasses.replace(setup, state_dir=client_state_dir(context))
    return handle_train(setup, msg, int(context.node_config.get("partition-id", -1)), _own_partition(context, setup))


def client_state_dir(context: Context) -> str:
    """Where this node keeps its clients' private state (uplink error-feedback residuals): the
    node's ``--node-config "state-dir=PATH"`` (keep it across runs to resume one exactly), else a
    folder per run beside the results."""
    if "state-dir" in context.node_config:
        return str(Path(str(context.node_config["state-dir"])).expanduser())
    base = Path(str(context.run_config.get("output-dir") or "~/fedquant-runs")).expanduser()
    return str(base / f"client_state_run{context.run_id}")


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    setup = _setup(tuple(sorted(context.run_config.items())))
    return handle_query(node_partition(context.node_config, setup.data.num_clients), msg)
