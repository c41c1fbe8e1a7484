"""Fake quantization for quantization-robust training (plain PyTorch; no flwr/ray/hydra)."""

from .calibration import calibrate, reestimate_batchnorm, set_weight_ranges
from .config import QuantConfig, check_bits
from .grids import act_grid, asymmetric_qparams, weight_grid
from .modules import (
    LayerBits,
    QuantConv2d,
    QuantLinear,
    apply_bits,
    get_bitwidth,
    quant_layers,
    quantize_model,
    set_bitwidth,
    set_layer_bits,
)
from .quantizers import ActivationQuantizer, WeightQuantizer
from .regularizers import gradient_l1_loss, kurtosis, kurtosis_loss
from .scheme import Scheme, get_scheme, set_scheme

__all__ = [
    "ActivationQuantizer", "LayerBits", "QuantConfig", "QuantConv2d", "QuantLinear", "Scheme", "WeightQuantizer",
    "act_grid", "apply_bits", "asymmetric_qparams", "calibrate", "check_bits", "get_bitwidth", "get_scheme",
    "gradient_l1_loss", "kurtosis", "kurtosis_loss", "quant_layers", "quantize_model",
    "reestimate_batchnorm", "set_bitwidth", "set_layer_bits", "set_scheme", "set_weight_ranges", "weight_grid",
]
