"""Flower strategies for quantization-robust federated learning."""

from .faults import DivergenceError, TooFewReplies
from .quant_aware import QuantAwareMixin
from .registry import SERVERS, build_strategy, server_options

__all__ = ["SERVERS", "DivergenceError", "QuantAwareMixin", "TooFewReplies", "build_strategy", "server_options"]
