"""Flower strategies for quantization-robust federated learning."""

from .plan import STRATEGIES, Profile, TrainingPlan, assign_profiles, check_plan_inputs
from .quant_aware import SERVERS, ClientReport, QuantAwareMixin, RoundReport, build_strategy

__all__ = ["SERVERS", "STRATEGIES", "ClientReport", "Profile", "QuantAwareMixin", "RoundReport",
           "TrainingPlan", "assign_profiles", "build_strategy", "check_plan_inputs"]
