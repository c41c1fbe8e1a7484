"""Datasets and federated partitions (plain PyTorch/NumPy; no flwr/ray/hydra)."""

from .datasets import CIFAR, DATASETS, Dataset, load_dataset
from .errors import DatasetError
from .partition import (
    SCHEMES,
    label_histogram,
    mean_label_entropy,
    partition_indices,
    split_holdout,
    split_validation,
)

__all__ = [
    "CIFAR", "DATASETS", "SCHEMES", "Dataset", "DatasetError", "label_histogram", "load_dataset",
    "mean_label_entropy", "partition_indices", "split_holdout", "split_validation",
]
