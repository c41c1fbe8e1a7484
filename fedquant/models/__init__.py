"""Models built by name; all are plain nn.Modules that ``quantize_model`` can wrap."""

from __future__ import annotations

import inspect

from torch import nn

from .cct import CCT
from .cnn import CNN
from .mlp import MLP
from .resnet import ResNet20

MODELS = ("mlp", "cnn", "resnet20", "cct")
_CLASSES = {"mlp": MLP, "cnn": CNN, "resnet20": ResNet20, "cct": CCT}
_FIXED = {"self", "in_features", "in_channels", "num_classes", "image_size"}  # set from the dataset


def model_options(name: str) -> list[str]:
    """The ``model.options`` model ``name`` accepts (its constructor's own arguments)."""
    return sorted(set(inspect.signature(_CLASSES[name].__init__).parameters) - _FIXED)


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


__all__ = ["CCT", "CNN", "MLP", "MODELS", "ResNet20", "build_model", "model_options"]
