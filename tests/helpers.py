"""Configs for small experiments, composed from conf/ exactly as the CLI does."""

from __future__ import annotations

from fedquant.hydra_conf import compose_config


def make_config(*overrides: str) -> dict:
    return compose_config(overrides)


TINY = ("num_clients=6", "clients_per_round=3", "num_rounds=2", "client.local_epochs=1", "quiet=true")


TIMING_KEYS = ("seconds", "cpu_seconds")  # a client report's times: they differ between identical runs


def strip_seconds(round_entry: dict) -> list[dict]:
    """A results.json round's client reports minus their wall and CPU time."""
    return [{k: v for k, v in c.items() if k not in TIMING_KEYS} for c in round_entry.get("train", {}).get("clients", [])]


# Small runs whose one command-line run several tests share (tests/conftest.py)
REFERENCE_OVERRIDES = ("num_clients=2", "clients_per_round=2", "client.local_epochs=1", "eval.settings=[fp,w4a4,w2a2]",
                       "quiet=true")  # two clients: one per SuperNode of the Deployment Engine test
REFERENCE_RUN = (*REFERENCE_OVERRIDES, "num_rounds=1", "seed=1")
# seed 0, faults.nan_client_rate=0.5: NaN from some clients in rounds 1 and 2, from every client in round 3
DIVERGING = (*TINY, "num_rounds=4", "faults.nan_client_rate=0.5", "logger=wandb", "logger.mode=offline")
