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

import functools
import shlex
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from clients import handle_query, handle_train, node_partition

from .app import Experiment, client_setup
from .hydra_conf import compose_config as compose_overrides
from .runtime.simulation import quiet_flower_logs

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
    return handle_train(setup, msg, int(context.node_config.get("partition-id", -1)), _own_partition(context, setup))


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    setup = _setup(tuple(sorted(context.run_config.items())))
    return handle_query(node_partition(context.node_config, setup.data.num_clients), msg)
