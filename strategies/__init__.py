"""Flower strategies for quantization-robust federated learning."""

from .discovery import PartitionsMissing, discover_partitions
from .faults import DivergenceError, TooFewReplies
from .flower_compat import FlowerMismatch
from .links import Links
from .quant_aware import QuantAwareMixin
from .registry import SERVERS, build_strategy, server_options

__all__ = ["SERVERS", "DivergenceError", "FlowerMismatch", "Links", "PartitionsMissing", "QuantAwareMixin", "TooFewReplies",
           "build_strategy", "discover_partitions", "server_options"]
