"""The model registry: names -> builders and their pretrained configuration (timm's pattern)."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import models

if TYPE_CHECKING:
    import torch

# timm's ImageNet defaults; the torchvision checkpoints were trained with the same.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about an architecture.

    **Fields:**

    - `name`: the registry name.
    - `builder`: `(**kwargs, key=...) -> Equinox model`.
    - `torch_builder`: `(**kwargs) -> torch.nn.Module` with the same state_dict keys
      (torchvision's model, or the zoo's twin); used by `to_torchvision`.
    - `torchvision_weights`: the torchvision weights enum name (e.g. `ResNet18_Weights`),
      whose entries carry the download URLs, or `None`.
    - `pretrained_cfg`: timm-style defaults (`num_classes`, `input_size`, `mean`, `std`,
      `interpolation`, `crop_pct`, `first_conv`, `classifier`).
    """

    name: str
    builder: Callable[..., Any]
    torch_builder: Callable[..., torch.nn.Module] | None = None
    torchvision_weights: str | None = None
    pretrained_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    builder: Callable[..., Any],
    *,
    torch_builder: Callable[..., torch.nn.Module] | None = None,
    torchvision_weights: str | None = None,
    overwrite: bool = False,
    **pretrained_cfg: Any,
) -> ModelInfo:
    """Add an architecture so that `zoo.load(name)` builds it.

    **Arguments:**

    - `name`: the name to load it by.
    - `builder`: returns the Equinox model; it takes `key=` and the keyword options
      (`num_classes`, `in_chans`, ...). Its attribute paths should be the state_dict keys of
      `torch_builder`'s module, so weights convert by name.
    - `torch_builder`, `torchvision_weights`: see `ModelInfo`.
    - `overwrite`: replace an existing entry instead of raising.
    - `**pretrained_cfg`: timm-style defaults (`num_classes`, `input_size`, `mean`, ...).

    **Returns:** the `ModelInfo` stored.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a model named {name!r} is registered already; pass overwrite=True")
    cfg = {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    } | pretrained_cfg
    info = ModelInfo(name, builder, torch_builder, torchvision_weights, cfg)
    _REGISTRY[name] = info
    return info


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern (`"resnet*"`), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; a `KeyError` listing close matches if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} zoo.list_models() lists them all; "
            "zoo.register_model adds one."
        ) from None


def _torchvision(name: str) -> Callable[..., torch.nn.Module]:
    def build(**kwargs: Any) -> torch.nn.Module:
        import torch
        import torchvision

        in_chans = kwargs.pop("in_chans", 3)
        model = getattr(torchvision.models, name)(**kwargs)
        if in_chans != 3:  # torchvision has no in_chans option; timm swaps the stem conv too
            model.conv1 = torch.nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        return model

    return build


def _small_cnn_torch(**kwargs: Any) -> torch.nn.Module:
    return models.SmallCNNTorch(**kwargs)  # imports torch: only when a torch twin is built


_TORCHVISION_RESNETS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnet152": "ResNet152_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights",
}
for _name, _weights in _TORCHVISION_RESNETS.items():
    register_model(
        _name,
        getattr(models, _name),
        torch_builder=_torchvision(_name),
        torchvision_weights=_weights,
    )
register_model(
    "cnn",
    models.small_cnn,
    torch_builder=_small_cnn_torch,
    num_classes=10,
    input_size=(3, 32, 32),
    crop_pct=1.0,
    mean=(0.5,),
    std=(0.5,),
)
