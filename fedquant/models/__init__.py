"""Models built by name; all are plain nn.Modules that ``quantize_model`` can wrap."""

from __future__ import annotations

from torch import nn

from .cct import CCT
from .cnn import CNN
from .mlp import MLP
from .resnet import ResNet20

MODELS = ("mlp", "cnn", "resnet20", "cct")


def build_model(name: str, dataset: object, **options: object) -> nn.Module:
    """Build model ``name`` for ``dataset`` (a :class:`fedquant.data.Dataset`, or anything with
    ``image_shape`` = (C, H, W) and ``num_classes``). ``options`` go to the model (e.g. ``norm``)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not valid: allowed are {', '.join(MODELS)}")
    c, h, w = dataset.image_shape
    if name == "mlp":
        return MLP(c * h * w, dataset.num_classes, **options)
    if name == "cnn":
        return CNN(c, dataset.num_classes, image_size=h, **options)
    if name == "cct":
        return CCT(c, dataset.num_classes, image_size=h, **options)
    return ResNet20(c, dataset.num_classes, **options)


__all__ = ["CCT", "CNN", "MLP", "MODELS", "ResNet20", "build_model"]
