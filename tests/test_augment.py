"""The CIFAR recipe's augmentation: random 4-pixel-padded crops and horizontal flips, seeded."""

from __future__ import annotations

import numpy as np
import torch

from fedquant.data.augment import random_crop_flip
from fedquant.learning.local_training import TrainConfig, train_local
from tests.helpers import make_config


def test_crops_and_flips_equal_a_per_image_reference():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_crop_flip(x, torch.Generator().manual_seed(7), pad=4)
    g = torch.Generator().manual_seed(7)  # the same draws, in the same order
    offsets = torch.randint(0, 9, (2, 6), generator=g).numpy()
    flips = (torch.rand(6, generator=g) < 0.5).numpy()
    for n in range(6):
        padded = np.pad(x[n].numpy(), ((0, 0), (4, 4), (4, 4)))  # black border
        crop = padded[:, offsets[0, n]:offsets[0, n] + 8, offsets[1, n]:offsets[1, n] + 8]
        expected = crop[:, :, ::-1] if flips[n] else crop
        assert np.array_equal(out[n].numpy(), expected)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert flips.any() and not flips.all() and len(set(offsets.flatten())) > 2  # the draws vary


def test_channels_last_input_and_reproducibility():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    a = random_crop_flip(x, torch.Generator().manual_seed(3))
    b = random_crop_flip(x.contiguous(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_augmented_local_training_is_seeded_and_differs_from_plain(tmp_path):
    from fedquant.data import load_dataset
    from tests.fixtures import cifar_files

    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    members, _ = cifar_files("cifar10", n=16)
    for name, raw in members.items():
        (folder / name).write_bytes(raw)
    data = load_dataset("cifar10", tmp_path)
    cfg = make_config("dataset=cifar10")
    assert cfg["dataset"]["augment"] is True and make_config("dataset=fmnist")["dataset"]["augment"] is False
    from fedquant.models import build_model
    from fedquant.quant import QuantConfig, quantize_model

    def train(augment: bool) -> dict:
        torch.manual_seed(0)
        model = quantize_model(build_model("resnet20", data), QuantConfig(None, None))
        train_local(model, data, torch.arange(32), TrainConfig(batch_size=16, augment=augment), lambda: (None, None), 0)
        return model.state_dict()

    one, two, plain = train(True), train(True), train(False)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], plain[k]) for k in one)
