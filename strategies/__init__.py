"""Flower strategies for quantization-robust federated learning."""

from .plan import STRATEGIES, Profile, TrainingPlan, assign_profiles
from .quant_aware import (
                          ON_TOO_FEW,
                          SERVERS,
                          ClientReport,
                          DivergenceError,
                          QuantAwareMixin,
                          RoundReport,
                          TooFewReplies,
                          build_strategy,
)

__all__ = ["ON_TOO_FEW", "SERVERS", "STRATEGIES", "ClientReport", "DivergenceError", "Profile",
           "QuantAwareMixin", "RoundReport", "TooFewReplies", "TrainingPlan", "assign_profiles",
           "build_strategy"]
