"""The experiment's data and model, built once per process from small picklable specs.

The server and every Ray worker call these with the same spec and get the same partitions
(deterministic in the seed); the cache means a worker loads and partitions the dataset once for
the whole run, however many messages it serves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import (
    Dataset,
    label_histogram,
    load_dataset,
    partition_indices,
    split_holdout,
    split_validation,
)
from ..models import build_model
from ..quant import QuantConfig, quantize_model


@dataclass(frozen=True)
class DataSpec:
    dataset: str
    root: str | None
    partition: str
    partition_params: tuple[tuple[str, float], ...]
    num_clients: int
    holdout: int  # server hold-out: calibration + validation, seen by no client
    validation: int  # of which validation
    seed: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    options: tuple[tuple[str, object], ...]
    quant: tuple[tuple[str, object], ...]  # QuantConfig fields (bit-widths are set per step)


@dataclass
class FederatedData:
    data: Dataset
    calibration: torch.Tensor  # indices into data.train_x: the server's calibration set
    validation: torch.Tensor  # indices into data.train_x: the server's validation set
    clients: list[torch.Tensor]  # indices into data.train_x, one tensor per client

    def label_histogram(self) -> np.ndarray:
        """Samples per class and client, ``[num_clients, num_classes]``."""
        return label_histogram(self.data.train_y.numpy(), [c.numpy() for c in self.clients], self.data.num_classes)


@functools.lru_cache(maxsize=2)
def federated_data(spec: DataSpec) -> FederatedData:
    data = load_dataset(spec.dataset, spec.root)
    holdout, rest = split_holdout(len(data.train_y), spec.holdout, spec.seed)
    calibration, validation = split_validation(holdout, spec.validation, spec.seed)
    parts = partition_indices(data.train_y.numpy()[rest], spec.num_clients, spec.partition, spec.seed,
                              **dict(spec.partition_params))
    return FederatedData(data, torch.from_numpy(calibration), torch.from_numpy(validation),
                         [torch.from_numpy(rest[p]) for p in parts])


def build_quantized_model(spec: ModelSpec, data: Dataset, seed: int = 0, width: float = 1.0) -> nn.Module:
    """The experiment's model (its HeteroFL sub-model of ``width`` below 1), wrapped with
    quantizers and set to float; its initial weights depend only on ``seed`` (the global torch
    RNG is left untouched)."""
    config = QuantConfig(**dict(spec.quant), weight_bits=None, act_bits=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return quantize_model(build_model(spec.name, data, width=width, **dict(spec.options)), config)


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
