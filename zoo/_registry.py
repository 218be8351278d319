"""The model registry: names -> builders and their pretrained configuration (timm's pattern).

Each architecture registers its models in its own file (`@register(ResNet, ...)` above each
builder in `zoo/models/_resnet.py`); this module knows no architecture.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import equinox as eqx
import jax

if TYPE_CHECKING:
    import torch

# timm's ImageNet defaults; the torchvision checkpoints were trained with the same.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEFAULT_CFG: dict[str, Any] = {
    "num_classes": 1000,
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
# How the registry-driven tests run a model (beside its config, as timm's `test_input_size`).
# `(state_dict, kwargs) -> state_dict`: see `ModelInfo.torchvision_checkpoint`.
CheckpointHook = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
# `(state_dict, kwargs) -> (timm architecture, timm-keyed state_dict, timm model_args)`: see
# `ModelInfo.timm_layout`.
TimmLayout = Callable[[dict[str, Any], dict[str, Any]], tuple[str, dict[str, Any], dict[str, Any]]]
_DEFAULT_TEST_CFG: dict[str, Any] = {"input_size": (3, 33, 33), "slow": False, "any_size": True}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about an architecture.

    **Fields:**

    - `name`: the registry name.
    - `builder`: `(**kwargs, key=...) -> Equinox model`.
    - `torch_builder`: `(**kwargs) -> torch.nn.Module` with the same state_dict keys
      (torchvision's model, or the zoo's twin); used by `to_torchvision` and the tests.
    - `torchvision_weights`: the torchvision weights enum name (e.g. `ResNet18_Weights`),
      whose entries carry the download URLs, or `None`.
    - `pretrained_cfg`: timm-style defaults (`num_classes`, `input_size`, `mean`, `std`,
      `interpolation`, `crop_pct`); `first_conv` and `classifier` come from the model class.
    - `test_cfg`: how the registry-driven tests run it: `input_size` (small, odd), `slow`
      (a large variant: tested in float64 at that size, only with `pytest -m large`),
      `any_size` (False where only `input_size` works), `no_dropout` (the constructor
      options that turn dropout off, for elementwise train-mode parity), `no_aux` (the
      options that remove auxiliary classifiers, for the train-mode test: with them
      torchvision's GoogLeNet returns a namedtuple in train mode) and `train_parity_large`
      (the float64 train step needs GBs, VGG, or most of a minute to compile, DenseNet and
      GoogLeNet, whose own tests cover train mode by default, and EfficientNet B0 and
      MNASNet 0.5, whose blocks MobileNet V3's and V2's default steps cover: with `-m large`
      only), `hub_large` (the Hub round trip writes and reads GBs, VGG: `-m large` only)
      and `generic_large` (the tests of machinery every model shares, both faces and the
      feature maps, compile for long, VGG: `-m large` only).
    - `timm_name`: the same architecture's name in timm, under the same state_dict keys
      (feature maps are compared; its `timm_layout` is the state_dict as it is), or `None`.
    - `torchvision_checkpoint`: what torchvision's own builder does when it loads its
      weights, as `(state_dict, kwargs) -> state_dict`: rename a checkpoint's old keys
      (DenseNet's `norm.1`), set the options its weights need in `kwargs` with `setdefault`
      (Inception's `transform_input=True`). Applied to torchvision downloads only; `None`:
      nothing to do.
    - `checkpoint_adapter`: `(state_dict, kwargs) -> state_dict`, applied to every
      checkpoint `zoo.load` builds from: another layout's keys to torchvision's, and what
      the built options ask for (a ViT's timm keys renamed, its position embeddings
      interpolated for another `image_size`, or its `image_size` set in `kwargs` with
      `setdefault` from the checkpoint's); `None`: nothing to do.
    - `timm_layout`: where timm has the architecture, `(state_dict, kwargs) ->
      (architecture, state_dict, model_args)`: timm's model name, the state_dict under
      timm's keys, and the `timm.create_model` options for `kwargs` (the model's
      `config_kwargs()`, e.g. `img_size`), for `save_pretrained(..., layout="timm")`. It
      must rename key by key (the export maps the stem's and classifier's paths through it).
      `zoo.models._timm.timm_interop` builds it, and the `checkpoint_adapter` that loads
      timm's checkpoints, from a family's key maps. `None`: timm has no such network.
    """

    name: str
    builder: Callable[..., Any]
    torch_builder: Callable[..., torch.nn.Module] | None = None
    torchvision_weights: str | None = None
    pretrained_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)
    test_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)
    timm_name: str | None = None
    model_class_hint: type | None = None
    torchvision_checkpoint: CheckpointHook | None = None
    checkpoint_adapter: CheckpointHook | None = None
    timm_layout: TimmLayout | None = None

    @functools.cached_property
    def model_class(self) -> type:
        """The class the builder returns (found without drawing any weights)."""
        if self.model_class_hint is not None:
            return self.model_class_hint
        return type(eqx.filter_eval_shape(self.builder, key=jax.random.key(0)))

    @property
    def first_conv(self) -> str:
        """The stem convolution's path (the model class's `first_conv`)."""
        return self.pretrained_cfg.get("first_conv") or self.model_class.first_conv_path

    @property
    def classifier(self) -> str:
        """The classifier's path (the model class's `classifier`)."""
        return self.pretrained_cfg.get("classifier") or self.model_class.classifier_path

    def counts_in(self, state_dict: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
        """The `num_classes` and `in_chans` that `state_dict` pins down, each with the
        evidence (a phrase): the classifier's rows (a Linear's, or a 1x1 convolution's as
        SqueezeNet's), 0 where it has no classifier keys (timm's `num_classes=0`), and the
        stem convolution's input channels."""
        head_key, stem_key = f"{self.classifier}.weight", f"{self.first_conv}.weight"
        head, stem = state_dict.get(head_key), state_dict.get(stem_key)
        counts: dict[str, tuple[int, str]] = {}
        if head is not None and len(head.shape) in (2, 4):
            counts["num_classes"] = (
                int(head.shape[0]),
                f"{head_key} has shape {tuple(head.shape)}",
            )
        elif head is None and not any(k.startswith(f"{self.classifier}.") for k in state_dict):
            counts["num_classes"] = (0, f"it has no {self.classifier}.* keys: no classifier")
        if stem is not None and len(stem.shape) == 4:
            counts["in_chans"] = (int(stem.shape[1]), f"{stem_key} has shape {tuple(stem.shape)}")
        return counts

    def weight_tags(self) -> list[str]:
        """Every tag of the model's torchvision weights enum (`IMAGENET1K_V1`, ...), read
        from torchvision (imports it); `[]` without torchvision weights."""
        enum = self.weights_enum()
        return [] if enum is None else list(enum.__members__)

    def weights_enum(self) -> Any:
        """torchvision's weights enum for this model (imports torchvision), or `None`."""
        if self.torchvision_weights is None:
            return None
        import torchvision

        return getattr(torchvision.models, self.torchvision_weights)


_REGISTRY: dict[str, ModelInfo] = {}
F = TypeVar("F", bound=Callable[..., Any])


def register_model(
    name: str,
    builder: Callable[..., Any],
    *,
    torch_builder: Callable[..., torch.nn.Module] | str | None = None,
    torchvision_weights: str | None = None,
    test_cfg: dict[str, Any] | None = None,
    timm_name: str | bool | None = None,
    model_class: type | None = None,
    torchvision_checkpoint: CheckpointHook | None = None,
    checkpoint_adapter: CheckpointHook | None = None,
    timm_layout: TimmLayout | None = None,
    overwrite: bool = False,
    **pretrained_cfg: Any,
) -> ModelInfo:
    """Add an architecture so that `zoo.load(name)` builds it.

    **Arguments:**

    - `name`: the name to load it by.
    - `builder`: returns the Equinox model; it takes `key=` and the keyword options
      (`num_classes`, `in_chans`, ...). Its attribute paths should be the state_dict keys of
      `torch_builder`'s module, so weights convert by name.
    - `torch_builder`: see `ModelInfo`; `"torchvision"` builds `torchvision.models.<name>`
      (its stem convolution rebuilt for another `in_chans`, as timm does).
    - `torchvision_weights`, `test_cfg`, `timm_name`, `torchvision_checkpoint`,
      `checkpoint_adapter`, `timm_layout`: see `ModelInfo` (`timm_name=True`: timm's name
      is `name`).
    - `model_class`: the class `builder` returns (found by `eqx.filter_eval_shape` if not
      given).
    - `overwrite`: replace an existing entry instead of raising.
    - `**pretrained_cfg`: timm-style defaults (`num_classes`, `input_size`, `mean`, ...).

    **Returns:** the `ModelInfo` stored.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a model named {name!r} is registered already; pass overwrite=True")
    if torch_builder == "torchvision":
        torch_builder = _torchvision_builder(name)
    elif isinstance(torch_builder, str):
        raise ValueError(
            f"torch_builder must be a callable or 'torchvision', not {torch_builder!r}"
        )
    if timm_name is True:
        timm_name = name
    if timm_layout is None and timm_name is not None:  # timm's keys are torchvision's
        timm_layout = timm_layout_from(timm_name)
    info = ModelInfo(
        name,
        builder,
        torch_builder,
        torchvision_weights,
        _DEFAULT_CFG | pretrained_cfg,
        _DEFAULT_TEST_CFG | dict(test_cfg or {}),
        timm_name,
        model_class,
        torchvision_checkpoint,
        checkpoint_adapter,
        timm_layout,
    )
    _REGISTRY[name] = info
    return info


def timm_layout_from(
    architecture: str,
    to_timm: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    model_args: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> TimmLayout:
    """A `timm_layout`: timm's `architecture`, the state_dict through `to_timm` (as it is
    where timm's keys are torchvision's: ResNet, DenseNet), and `model_args(kwargs)`, the
    `timm.create_model` options for the model's `config_kwargs()` (none by default: a
    family with options timm takes under other names maps them, or refuses them)."""

    def layout(
        state_dict: dict[str, Any], kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any], dict]:
        args = model_args(dict(kwargs)) if model_args is not None else {}
        return architecture, dict(state_dict) if to_timm is None else to_timm(state_dict), args

    return layout


def register(model_class: type, **kwargs: Any) -> Callable[[F], F]:
    """Decorator form of `register_model`, for a builder in its architecture's file: the
    registry name is the function's name.

        @register(ResNet, torch_builder="torchvision", torchvision_weights="ResNet18_Weights")
        def resnet18(*, key=None, **kwargs) -> ResNet: ...
    """

    def decorate(builder: F) -> F:
        register_model(builder.__name__, builder, model_class=model_class, **kwargs)
        return builder

    return decorate


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


def _torchvision_builder(name: str) -> Callable[..., torch.nn.Module]:
    def build(**kwargs: Any) -> torch.nn.Module:
        import torchvision

        in_chans = kwargs.pop("in_chans", 3)
        model = getattr(torchvision.models, name)(**kwargs)
        if in_chans != 3:  # torchvision has no in_chans option; timm rebuilds the stem too
            first_conv = get_model_info(name).first_conv
            model.set_submodule(
                first_conv, _with_in_channels(model.get_submodule(first_conv), in_chans)
            )
        return model

    return build


def _with_in_channels(conv: Any, in_chans: int) -> Any:
    import torch

    return torch.nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
