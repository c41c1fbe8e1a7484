"""Models built by name; all are plain nn.Modules that ``quantize_model`` can wrap."""

from __future__ import annotations

import inspect

from torch import nn

from .cct import CCT
from .cnn import CNN
from .mlp import MLP
from .resnet import ResNet20
from .width import check_width

MODELS = ("mlp", "cnn", "resnet20", "cct")
WIDTH_MODELS = ("mlp", "cnn", "resnet20")  # those with a ``width`` (HeteroFL sub-models)
_CLASSES = {"mlp": MLP, "cnn": CNN, "resnet20": ResNet20, "cct": CCT}
# set from the dataset, or (width) per client by the federation, not by model.options
_FIXED = {"self", "in_features", "in_channels", "num_classes", "image_size", "width"}


def model_options(name: str) -> list[str]:
    """The ``model.options`` model ``name`` accepts (its constructor's own arguments)."""
    return sorted(set(inspect.signature(_CLASSES[name].__init__).parameters) - _FIXED)


def build_model(name: str, dataset: object, width: float = 1.0, **options: object) -> nn.Module:
    """Build model ``name`` for ``dataset`` (a :class:`fedquant.data.Dataset`, or anything with
    ``image_shape`` = (C, H, W) and ``num_classes``). ``options`` go to the model (e.g. ``norm``).
    ``width`` < 1 builds the HeteroFL sub-model of that capacity ratio (mlp, cnn, resnet20; see
    :mod:`fedquant.models.width`)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not valid: allowed are {', '.join(MODELS)}")
    c, h, w = dataset.image_shape
    if name == "cct":
        if check_width(width) != 1:
            raise ValueError(f"model.name=cct does not support width < 1 (HeteroFL sub-models): "
                             f"width={width!r} given; models with a width are {', '.join(WIDTH_MODELS)}")
        return CCT(c, dataset.num_classes, image_size=h, **options)
    if name == "mlp":
        return MLP(c * h * w, dataset.num_classes, width=width, **options)
    if name == "cnn":
        return CNN(c, dataset.num_classes, image_size=h, width=width, **options)
    return ResNet20(c, dataset.num_classes, width=width, **options)


__all__ = ["CCT", "CNN", "MLP", "MODELS", "WIDTH_MODELS", "ResNet20", "build_model", "model_options"]
