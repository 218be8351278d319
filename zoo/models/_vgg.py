"""VGG (11, 13, 16, 19 layers, with and without BatchNorm) mirroring `torchvision.models.vgg`.

`features` and `classifier` are torchvision's `nn.Sequential`s as tuples (`features.3.weight`,
`classifier.6.weight`); a call returns `(logits, model)` as for every zoo model.

timm's `vgg*` checkpoints load (`timm_vgg_to_torchvision`); there is no `layout="timm"`
export (see `_NO_TIMM_LAYOUT`).
"""

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from .._registry import register
from ..layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Linear,
    MaxPool2d,
    ReLU,
    conv2d_kaiming,
    normal,
    zeros,
)
from ._alexnet import PooledMLPTrunk, trunk_feature_info
from ._base import FeatureInfo
from ._mobilenetv2 import _keys
from ._timm import refuse_unplaced, timm_checkpoint

# torchvision's `cfgs`: output channels of each 3x3 convolution, "M" a 2x2 max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M") + (512,) * 4 + ("M",)
    + (512,) * 4 + ("M",),
}  # fmt: skip


def _linear(keys: Iterator[PRNGKeyArray], in_features: int, out_features: int, init: bool):
    """`nn.Linear`, as VGG's `init_weights` re-initialises it: `normal_(0, 0.01)`, bias zero."""
    if not init:
        return Linear(in_features, out_features, key=next(keys))
    # Shapes only: torch's default draw, discarded, would take seconds for the 25088x4096 one.
    template = eqx.filter_eval_shape(Linear, in_features, out_features, key=next(keys))
    weight = normal(next(keys), (out_features, in_features), 0.01)
    return eqx.tree_at(lambda m: (m.weight, m.bias), template, (weight, zeros((out_features,))))


def make_layers(
    cfg: Sequence[int | str],
    batch_norm: bool,
    in_chans: int,
    init: bool,
    keys: Iterator[PRNGKeyArray],
) -> tuple:
    """torchvision's `make_layers`: the `features` members."""
    layers, in_channels = [], in_chans
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
            continue
        if init:  # kaiming_normal_(mode="fan_out"), bias zero
            conv = conv2d_kaiming(keys, in_channels, v, 3, padding=1)
        else:
            conv = Conv2d(in_channels, v, 3, padding=1, key=next(keys))
        layers += [conv, BatchNorm2d(v), ReLU()] if batch_norm else [conv, ReLU()]
        in_channels = v
    return tuple(layers)


class VGG(PooledMLPTrunk):
    """torchvision's `VGG`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `cfg`: the `features` table (`CFGS["A"]` for VGG 11, ...); `batch_norm`: a BatchNorm
      after each convolution (the `_bn` variants).
    - `num_classes`, `init_weights`, `dropout`: as in torchvision (`num_classes=0`: no
      final `Linear`, calls return the 4096 pre-logits).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for the initialisation (torchvision's with `init_weights`, else
      torch's defaults).

    Inputs need at least 32x32 pixels.
    """

    first_conv_path: ClassVar[str] = "features.0"
    classifier_path: ClassVar[str] = "classifier.6"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    avgpool: AdaptiveAvgPool2d
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        cfg: Sequence[int | str],
        batch_norm: bool = False,
        num_classes: int = 1000,
        init_weights: bool = True,
        dropout: float = 0.5,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        self.features = make_layers(cfg, batch_norm, in_chans, init_weights, keys)
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        last = next(v for v in reversed(cfg) if v != "M")
        final = _linear(keys, 4096, num_classes, init_weights) if num_classes else None
        self.classifier = (
            _linear(keys, last * 7 * 7, 4096, init_weights),
            ReLU(),
            Dropout(dropout),
            _linear(keys, 4096, 4096, init_weights),
            ReLU(),
            Dropout(dropout),
            final,
        )
        self.num_features = last
        self.feature_info = trunk_feature_info(self.features)


def _vgg(cfg: str, batch_norm: bool, key: PRNGKeyArray | None, kwargs) -> VGG:
    return VGG(CFGS[cfg], batch_norm, key=jax.random.key(0) if key is None else key, **kwargs)


# timm's VGG head (`timm.models.vgg`): `pre_logits.fc1` a 7x7 convolution (torchvision's
# `classifier.0`, its (4096, C * 49) weight reshaped as `flatten` orders it), `pre_logits.fc2`
# a 1x1 one (`classifier.3`), then global average pooling and `head.fc` (`classifier.6`);
# `features` is torchvision's, index by index.
_TIMM_HEAD = {
    "pre_logits.fc1": "classifier.0",
    "pre_logits.fc2": "classifier.3",
    "head.fc": "classifier.6",
}
_TIMM_KEY = re.compile(
    r"(?P<features>features\.\d+\.(?:weight|bias|running_mean|running_var|num_batches_tracked))"
    r"|(?P<head>pre_logits\.fc[12]|head\.fc)\.(?P<p>weight|bias)"
)
_TV_KEY = re.compile(
    r"(?P<features>features\.\d+\.(?:weight|bias|running_mean|running_var|num_batches_tracked))"
    r"|(?P<head>classifier\.[036])\.(?P<p>weight|bias)"
)


def _rename(
    state_dict: Mapping[str, Any], pattern: re.Pattern, head: dict[str, str], what: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = pattern.fullmatch(key)
        if m is None:
            unknown.append(key)
        elif m["features"] is not None:
            out[key] = value
        else:
            out[f"{head[m['head']]}.{m['p']}"] = value
    refuse_unplaced(unknown, f"not a {what}")
    return out


def timm_vgg_to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A timm VGG state_dict (`timm.create_model("vgg16")`'s, any of the eight) under
    torchvision's keys, in the same order: `pre_logits.fc1`'s (4096, C, 7, 7) convolution
    weight becomes `classifier.0`'s (4096, C * 49) `Linear` weight, `pre_logits.fc2`'s
    (4096, 4096, 1, 1) becomes `classifier.3`'s (4096, 4096), `head.fc` `classifier.6`; the
    values are the same numbers (tensors or NumPy arrays, reshaped).

    **Raises:** `ValueError` for a key torchvision's VGG has no place for.
    """
    out = _rename(
        state_dict, _TIMM_KEY, _TIMM_HEAD, "timm VGG state_dict torchvision's VGG can hold"
    )
    for key in ("classifier.0.weight", "classifier.3.weight"):
        if key in out:
            out[key] = out[key].reshape(out[key].shape[0], -1)
    return out


def torchvision_vgg_to_timm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `timm_vgg_to_torchvision`: a torchvision VGG state_dict under timm's
    keys and shapes, in the same order (for timm's VGG; no export writes it, see
    `_NO_TIMM_LAYOUT`).

    **Raises:** `ValueError` for a key timm's VGG has no place for.
    """
    head = {v: k for k, v in _TIMM_HEAD.items()}
    out = _rename(state_dict, _TV_KEY, head, "torchvision VGG state_dict timm's VGG can hold")
    for key, kernel in (("pre_logits.fc1.weight", 7), ("pre_logits.fc2.weight", 1)):
        if key in out:
            out[key] = out[key].reshape(out[key].shape[0], -1, kernel, kernel)
    return out


# timm's VGG is torchvision's function only where the last feature map is at most 7x7
# (inputs up to 255 pixels a side): there torchvision's AdaptiveAvgPool2d(7) and timm's
# (which pools a smaller map up to 7x7) agree, and the 7x7 `fc1` sees the whole map. On a
# larger map timm slides `fc1` over it and averages the MLP's outputs, where torchvision
# averages the map down to 7x7 first: other logits (tests/test_timm_convnets.py measures
# both). A VGG takes any size, so a `layout="timm"` export would silently change the
# function for large inputs: none is registered (`save_pretrained` refuses it); timm's
# checkpoints load into torchvision's names exactly.
_NO_TIMM_LAYOUT = {
    "checkpoint_adapter": timm_checkpoint("pre_logits.fc1.weight", timm_vgg_to_torchvision)
}

# 133M to 144M parameters each, 103M of them in the first classifier Linear: vgg11 alone
# runs in the default test run. 65x33 leaves a 2x1 map for the (7, 7) pool (32 is the
# smallest size: five 2x2 pools); at 33x33, where the map is 1x1, XLA:CPU's YNN fusion takes
# ~25 s for one eval call at batch 2..8 (0.2 s at batch 32, or at 65x33).
# `train_parity_large`: the float64 train step's parameters, gradients and updated copy of
# 133M parameters on both sides peak at ~9 GB: with -m large only.
# `hub_large`: the Hub round trip writes and reads 0.5 GB (25 s of the default run); the
# export code is every model's, tested on the others by default. `generic_large`: so are the
# faces and the feature maps (30 s of compiles here).
_TEST = {
    "input_size": (3, 65, 33),
    "no_dropout": {"dropout": 0.0},
    "train_parity_large": True,
    "hub_large": True,
    "generic_large": True,
}
_SLOW = _TEST | {"slow": True}
_CFG = {"torch_builder": "torchvision", **_NO_TIMM_LAYOUT}


@register(VGG, torchvision_weights="VGG11_Weights", test_cfg=_TEST, **_CFG)
def vgg11(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 11 (configuration "A"; torchvision `vgg11`)."""
    return _vgg("A", False, key, kwargs)


@register(VGG, torchvision_weights="VGG11_BN_Weights", test_cfg=_SLOW, **_CFG)
def vgg11_bn(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 11 with BatchNorm (torchvision `vgg11_bn`)."""
    return _vgg("A", True, key, kwargs)


@register(VGG, torchvision_weights="VGG13_Weights", test_cfg=_SLOW, **_CFG)
def vgg13(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 13 (configuration "B"; torchvision `vgg13`)."""
    return _vgg("B", False, key, kwargs)


@register(VGG, torchvision_weights="VGG13_BN_Weights", test_cfg=_SLOW, **_CFG)
def vgg13_bn(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 13 with BatchNorm (torchvision `vgg13_bn`)."""
    return _vgg("B", True, key, kwargs)


@register(VGG, torchvision_weights="VGG16_Weights", test_cfg=_SLOW, **_CFG)
def vgg16(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 16 (configuration "D"; torchvision `vgg16`)."""
    return _vgg("D", False, key, kwargs)


@register(VGG, torchvision_weights="VGG16_BN_Weights", test_cfg=_SLOW, **_CFG)
def vgg16_bn(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 16 with BatchNorm (torchvision `vgg16_bn`)."""
    return _vgg("D", True, key, kwargs)


@register(VGG, torchvision_weights="VGG19_Weights", test_cfg=_SLOW, **_CFG)
def vgg19(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 19 (configuration "E"; torchvision `vgg19`)."""
    return _vgg("E", False, key, kwargs)


@register(VGG, torchvision_weights="VGG19_BN_Weights", test_cfg=_SLOW, **_CFG)
def vgg19_bn(*, key: PRNGKeyArray | None = None, **kwargs) -> VGG:
    """VGG 19 with BatchNorm (torchvision `vgg19_bn`)."""
    return _vgg("E", True, key, kwargs)
