"""QAT at W4A4 on real data (scikit-learn digits), beside float training + post-training W4A4."""

import copy

import torch

from fedquant.data import load_dataset
from fedquant.federation.bitwidths import FLOAT
from fedquant.learning.evaluation import accuracy
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models import build_model
from fedquant.quant import QuantConfig, calibrate, quantize_model, set_bitwidth


def test_qat_w4a4_reaches_90_percent_on_digits():
    data = load_dataset("digits")
    idx = torch.arange(len(data.train_y))
    cfg = TrainConfig(epochs=15, batch_size=32, lr=0.05)
    base = quantize_model(build_model("mlp", data), QuantConfig(None, None))
    calib = [data.normalize(data.train_x[:512])]

    qat = copy.deepcopy(base)
    train_local(qat, data, idx, cfg, lambda: (4, 4), seed=0)
    calibrate(qat, calib)
    qat_acc, _ = accuracy(qat, data, data.test_x, data.test_y)

    fp = copy.deepcopy(base)
    train_local(fp, data, idx, cfg, lambda: FLOAT, seed=0)
    fp_acc, _ = accuracy(fp, data, data.test_x, data.test_y)
    set_bitwidth(fp, 4, 4)
    calibrate(fp, calib)
    ptq_acc, _ = accuracy(fp, data, data.test_x, data.test_y)
    measured = f"QAT W4A4 {qat_acc:.3f} | float {fp_acc:.3f} -> PTQ W4A4 {ptq_acc:.3f}"
    assert qat_acc >= 0.90, measured
    assert fp_acc >= 0.90, measured
