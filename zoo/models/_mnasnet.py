"""MNASNet (the B1 variant) mirroring `torchvision.models.mnasnet`.

`layers` is torchvision's `nn.Sequential` as a tuple, each stack a nested tuple of blocks
(`layers.8.0.layers.3.weight`); `classifier` is `(Dropout, Linear)`. A call returns
`(logits, model)` as for every zoo model.

torchvision's weights: its `MNASNet` is at `_version = 2` (the stem's widths scale with
`alpha`) and loads a version-1 checkpoint of `alpha != 1.0` into the old fixed 32/16-wide
stem. None of its weight tags needs that: the 0.75 and 1.3 checkpoints (2022) and the 0.5
one (`67.823`, retrained for version 2 in pytorch/vision#1224) have version 2's widths, and
at `alpha == 1.0` both versions are the same network. So every tag loads here by name, as
into torchvision's model, with no `torchvision_checkpoint` step; a version-1 checkpoint of
`alpha != 1.0` (the retired `mnasnet0.5_top1_67.592`) is refused for its stem's shapes.

timm builds the same network as `mnasnet_050`, `mnasnet_075` and `mnasnet_100` (its
EfficientNet builder's names, `mnasnet_timm_names`; torchvision's BatchNorm momentum as its
`bn_momentum`): the exports' `layout="timm"` and timm's checkpoints loading. timm has no
MNASNet 1.3 (its `mnasnet_*` take no width option), so `mnasnet1_3` has no timm layout.
"""

import math
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import _torchvision_builder, register
from ..layers import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Layer,
    Linear,
    ReLU,
    conv2d_kaiming,
    run_sequential,
    uniform,
    zeros,
)
from ._base import (
    ConvHeadModel,
    FeatureInfo,
    classifier_head,
    head_stage_ends,
    run_stages,
    stage_ends,
)
from ._mobilenetv2 import _keys, timm_block_names, timm_builder_interop

if TYPE_CHECKING:
    import torch

# The paper's TensorFlow momentum 0.9997 in torch's convention (torchvision's `_BN_MOMENTUM`).
BN_MOMENTUM = 1 - 0.9997


def _bn(channels: int, momentum: float) -> BatchNorm2d:
    return BatchNorm2d(channels, momentum=momentum)


def _depthwise(keys: Iterator[PRNGKeyArray], channels: int, kernel: int, stride: int) -> Conv2d:
    return conv2d_kaiming(
        keys, channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False
    )


class InvertedResidual(Layer):
    """torchvision's MNASNet `_InvertedResidual`: 1x1 expansion, depthwise convolution,
    linear 1x1 projection, each with BatchNorm; the input added where
    shapes allow (`apply_residual`).

    **Arguments:**

    - `in_ch`, `out_ch`, `kernel_size` (3 or 5), `stride` (1 or 2), `expansion_factor`,
      `bn_momentum`: as in torchvision.
    - `keys`: PRNG keys for torchvision's initialisation.
    """

    layers: tuple
    apply_residual: bool = eqx.field(static=True)

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int,
        expansion_factor: int,
        bn_momentum: float = 0.1,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        if kernel_size not in (3, 5):
            raise ValueError(f"kernel_size should be 3 or 5 instead of {kernel_size}")
        mid_ch = in_ch * expansion_factor
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = (
            conv2d_kaiming(keys, in_ch, mid_ch, 1, bias=False),
            _bn(mid_ch, bn_momentum),
            ReLU(),
            _depthwise(keys, mid_ch, kernel_size, stride),
            _bn(mid_ch, bn_momentum),
            ReLU(),
            conv2d_kaiming(keys, mid_ch, out_ch, 1, bias=False),
            _bn(out_ch, bn_momentum),  # linear: no activation
        )

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key  # no randomness inside a block
        y, layers = run_sequential(self.layers, x, channels_last=channels_last)
        new = eqx.tree_at(lambda b: b.layers, self, layers)
        return (y + x if self.apply_residual else y), new


def stack(
    keys: Iterator[PRNGKeyArray],
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int,
    exp_factor: int,
    repeats: int,
    bn_momentum: float,
) -> tuple[InvertedResidual, ...]:
    """torchvision's `_stack`: `repeats` inverted residuals, the first of which changes the
    width and stride (so has no shortcut)."""
    if repeats < 1:
        raise ValueError(f"repeats should be >= 1, instead got {repeats}")
    first = InvertedResidual(in_ch, out_ch, kernel_size, stride, exp_factor, bn_momentum, keys=keys)
    rest = [
        InvertedResidual(out_ch, out_ch, kernel_size, 1, exp_factor, bn_momentum, keys=keys)
        for _ in range(1, repeats)
    ]
    return (first, *rest)


def round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    """torchvision's `_round_to_multiple_of`: round `val` to a multiple of `divisor`, up
    unless that is within 10% above the multiple below ((83, 8) -> 80, (84, 8) -> 88)."""
    if not 0.0 < round_up_bias < 1.0:
        raise ValueError(
            f"round_up_bias should be greater than 0.0 and smaller than 1.0 instead of "
            f"{round_up_bias}"
        )
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def get_depths(alpha: float) -> list[int]:
    """torchvision's `_get_depths`: the stem's and the six stacks' widths scaled by `alpha`
    (version 2: the stem scales too)."""
    depths = [32, 16, 24, 40, 80, 96, 192, 320]
    return [round_to_multiple_of(depth * alpha, 8) for depth in depths]


def _classifier_linear(keys: Iterator[PRNGKeyArray], in_features: int, out_features: int):
    """`nn.Linear` as torchvision's MNASNet initialises it: `kaiming_uniform_(mode="fan_out",
    nonlinearity="sigmoid")`, i.e. `U(-r, r)` with `r = sqrt(3 / out_features)`; bias zero."""
    linear = Linear(in_features, out_features, key=next(keys))
    weight = uniform(next(keys), linear.weight.shape, math.sqrt(3.0 / out_features))
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight, zeros((out_features,))))


# (kernel, stride, expansion, repeats) of the six stacks, torchvision's table.
_STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))


class MNASNet(ConvHeadModel):
    """torchvision's `MNASNet` (B1), as an Equinox module over NCHW batches.

    **Arguments:**

    - `alpha`: the width multiplier (`get_depths`).
    - `num_classes`, `dropout`: as in torchvision (`num_classes=0`: no final `Linear`, calls
      return the pooled 1280 features).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives dropout in
    train mode.

    `feature_info` lists timm's five maps (those of its `mnasnet_*`, which names the same
    network otherwise): the stem (`layers.7`, reduction 2) and the last stack at each
    reduction 4, 8, 16, 32 (`layers.8`, `.9`, `.11`, `.13`). `forward_features` returns what
    the 1x1 head convolution after them (`layers.14` to `.16`, 1280 wide) makes of the last
    (see `ConvHeadModel`).
    """

    first_conv_path: ClassVar[str] = "layers.0"
    classifier_path: ClassVar[str] = "classifier.1"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    # torchvision's MNASNet refuses a state_dict without its module version (2: this stem).
    torch_state_dict_metadata: ClassVar[dict[str, dict[str, int]]] = {"": {"version": 2}}
    layers: tuple
    classifier: tuple
    alpha: float = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        alpha: float,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if alpha <= 0.0:
            raise ValueError(f"alpha should be greater than 0.0 instead of {alpha}")
        keys = _keys(key)
        depths = get_depths(alpha)
        m = BN_MOMENTUM
        layers: list = [
            # First layer: regular conv.
            conv2d_kaiming(keys, in_chans, depths[0], 3, 2, 1, bias=False),
            _bn(depths[0], m),
            ReLU(),
            # Depthwise separable, no skip.
            _depthwise(keys, depths[0], 3, 1),
            _bn(depths[0], m),
            ReLU(),
            conv2d_kaiming(keys, depths[0], depths[1], 1, bias=False),
            _bn(depths[1], m),
        ]
        # Each member's output width and reduction, for `feature_info`.
        channels, reductions = [*[depths[0]] * 7, depths[1]], [2] * 8
        for out, (kernel, stride, expansion, repeats) in zip(depths[2:], _STACKS, strict=True):
            layers.append(stack(keys, channels[-1], out, kernel, stride, expansion, repeats, m))
            channels.append(out)
            reductions.append(reductions[-1] * stride)
        # timm's maps: the last member at each reduction, the head convolution left out.
        self.feature_info = tuple(
            FeatureInfo(channels[i], reductions[i], f"layers.{i}") for i in stage_ends(reductions)
        )
        # Final mapping to classifier input.
        layers += [conv2d_kaiming(keys, depths[7], 1280, 1, bias=False), _bn(1280, m), ReLU()]
        self.layers = tuple(layers)
        final = _classifier_linear(keys, 1280, num_classes) if num_classes else None
        self.classifier = (Dropout(dropout), final)
        self.alpha = alpha
        self.num_features = 1280

    def config_kwargs(self) -> dict[str, float]:
        return {"dropout": float(self.classifier[0].p)}

    def _forward_stages(
        self,
        x: Float[Array, "batch height width channels"],
        *,
        depth: int,
        key: PRNGKeyArray | None = None,
        head: bool | None = None,
    ) -> tuple[list[Array], Self]:
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        ends, depth = head_stage_ends(ends, depth, head, len(self.layers))
        maps, layers = run_stages(self.layers, x, ends=ends, depth=depth, key=key)
        return maps, eqx.tree_at(lambda m: m.layers, self, layers)

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))  # torchvision's `x.mean([2, 3])`
        return classifier_head(self.classifier, x, pre_logits=pre_logits, key=key)


def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
    # Named as the method it shadows: an unpickled model falls back to torchvision's.
    if local_metadata.get("version") is None:
        local_metadata = {**local_metadata, "version": type(self)._version}
    type(self)._load_from_state_dict(self, state_dict, prefix, local_metadata, *args)


def _torchvision_mnasnet(name: str) -> Callable[..., "torch.nn.Module"]:
    """torchvision's model (as `torch_builder="torchvision"` builds it), which also loads a
    state_dict that carries no torch `_metadata` as its current version 2.

    torchvision's `MNASNet._load_from_state_dict` raises ("version should be set to 1 or 2
    instead of None") on such a state_dict, and safetensors files, `wc.to_state_dict` and
    any rebuilt dict carry none; the zoo's weights are version 2's always. The instance's
    method is replaced, not the class's: torchvision's `MNASNet` stays as it is.
    """
    build = _torchvision_builder(name)

    def torch_builder(**kwargs: Any) -> "torch.nn.Module":
        model = build(**kwargs)
        model._load_from_state_dict = types.MethodType(_load_from_state_dict, model)
        return model

    return torch_builder


def mnasnet_timm_names() -> dict[str, str]:
    """torchvision's MNASNet module paths (every width) -> timm's `mnasnet_*`: the stem's
    depthwise separable convolution (`layers.3` to `.7`) is timm's `blocks.0.0`, stack `k`
    (`layers.{8+k}`) its `blocks.{k+1}`, the head convolution (`layers.14`, `.15`) its
    `conv_head`, `bn2`."""
    stem = ["layers.3", "layers.4", "layers.6", "layers.7"]
    names = {"layers.0": "conv_stem", "layers.1": "bn1"} | timm_block_names(
        "blocks.0.0", "ds", stem
    )
    for k, (*_, repeats) in enumerate(_STACKS):
        for b in range(repeats):
            layers = [f"layers.{8 + k}.{b}.layers.{i}" for i in (0, 1, 3, 4, 6, 7)]
            names |= timm_block_names(f"blocks.{k + 1}.{b}", "ir", layers)
    return names | {"layers.14": "conv_head", "layers.15": "bn2", "classifier.1": "classifier"}


def _timm(architecture: str) -> dict[str, Any]:
    """timm's same network (MNASNet B1: ReLU, no squeeze-excitation, the last stack without
    shortcut, 1280 head channels at every width; eps 1e-5), with torchvision's BatchNorm
    momentum."""
    return timm_builder_interop(
        architecture,
        mnasnet_timm_names(),
        options={"dropout": "drop_rate"},
        fixed={"bn_momentum": BN_MOMENTUM},
    )


def _mnasnet(alpha: float, key: PRNGKeyArray | None, kwargs: dict[str, Any]) -> MNASNet:
    return MNASNet(alpha, key=jax.random.key(0) if key is None else key, **kwargs)


_TEST = {"no_dropout": {"dropout": 0.0}}
# Every variant but the smallest: float64 parity at the default test size, with `-m large`.
_SLOW = _TEST | {"slow": True}
# The 0.75 and 1.3 weights (torchvision's later recipe) are evaluated resized to 232.
_RESIZE_232 = {"crop_pct": 224 / 232}


# `train_parity_large`: the float64 train step takes ~40 s to compile; its inverted
# residuals' train mode is MobileNet V2's, whose float64 train step runs by default.
@register(
    MNASNet,
    torch_builder=_torchvision_mnasnet("mnasnet0_5"),
    torchvision_weights="MNASNet0_5_Weights",
    **_timm("mnasnet_050"),
    test_cfg=_TEST | {"train_parity_large": True},
)
def mnasnet0_5(*, key: PRNGKeyArray | None = None, **kwargs) -> MNASNet:
    """MNASNet with depth multiplier 0.5 (torchvision `mnasnet0_5`). `key` defaults to
    `jax.random.key(0)`; `kwargs`: `num_classes`, `dropout`, `in_chans`."""
    return _mnasnet(0.5, key, kwargs)


@register(
    MNASNet,
    torch_builder=_torchvision_mnasnet("mnasnet0_75"),
    torchvision_weights="MNASNet0_75_Weights",
    **_timm("mnasnet_075"),
    test_cfg=_SLOW,
    **_RESIZE_232,
)
def mnasnet0_75(*, key: PRNGKeyArray | None = None, **kwargs) -> MNASNet:
    """MNASNet with depth multiplier 0.75 (torchvision `mnasnet0_75`)."""
    return _mnasnet(0.75, key, kwargs)


@register(
    MNASNet,
    torch_builder=_torchvision_mnasnet("mnasnet1_0"),
    torchvision_weights="MNASNet1_0_Weights",
    **_timm("mnasnet_100"),
    test_cfg=_SLOW,
)
def mnasnet1_0(*, key: PRNGKeyArray | None = None, **kwargs) -> MNASNet:
    """MNASNet with depth multiplier 1.0 (torchvision `mnasnet1_0`)."""
    return _mnasnet(1.0, key, kwargs)


# No timm layout: timm has no MNASNet 1.3 (its `mnasnet_140` is another width, and its
# `mnasnet_*` builders fix the width multiplier).
@register(
    MNASNet,
    torch_builder=_torchvision_mnasnet("mnasnet1_3"),
    torchvision_weights="MNASNet1_3_Weights",
    test_cfg=_SLOW,
    **_RESIZE_232,
)
def mnasnet1_3(*, key: PRNGKeyArray | None = None, **kwargs) -> MNASNet:
    """MNASNet with depth multiplier 1.3 (torchvision `mnasnet1_3`)."""
    return _mnasnet(1.3, key, kwargs)
