"""MobileNet V3 (large and small) mirroring `torchvision.models.mobilenetv3`.

`features` is torchvision's `nn.Sequential` as a tuple (`features.4.block.2.fc1.weight`); a
call returns `(logits, model)` as for every zoo model.

timm has both as `mobilenetv3_large_100` and `mobilenetv3_small_100` (its EfficientNet
builder's names, `_mobilenet_v3_timm_names`; torchvision's BatchNorm options as its `bn_eps`,
`bn_momentum`): the exports' `layout="timm"` and timm's checkpoints loading. timm pools before
its `conv_head`, a 1x1 convolution with bias: torchvision's `classifier.0` `Linear`, reshaped.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    Conv2d,
    Dropout,
    Hardsigmoid,
    Hardswish,
    Layer,
    ReLU,
    SqueezeExcitation,
    conv_norm_activation,
    run_sequential,
)
from ._base import FeatureInfo, ZooModel, classifier_head, run_stages, stage_ends
from ._mobilenetv2 import (
    _keys,
    classifier_linear,
    make_divisible,
    sequential_layers,
    timm_block_names,
    timm_builder_interop,
    timm_stages,
)

# torchvision's MobileNet V3 BatchNorm (TensorFlow's defaults).
_BN = {"eps": 0.001, "momentum": 0.01}


@dataclasses.dataclass(frozen=True)
class InvertedResidualConfig:
    """One row of the MobileNet V3 paper's tables 1 and 2 (torchvision's class), channels
    already scaled by the width multiplier."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int
    dilation: int


def _row(cin, kernel, expanded, cout, use_se, activation, stride, dilation, width_mult):
    adjust = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731
    return InvertedResidualConfig(
        adjust(cin), kernel, adjust(expanded), adjust(cout), use_se, activation == "HS",
        stride, dilation,
    )  # fmt: skip


class InvertedResidual(Layer):
    """torchvision's MobileNet V3 `InvertedResidual`: expansion, depthwise convolution,
    squeeze-excitation (hard-sigmoid gate), projection, and the shortcut where shapes allow."""

    block: tuple
    use_res_connect: bool = eqx.field(static=True)

    def __init__(self, cnf: InvertedResidualConfig, *, keys: Iterator[PRNGKeyArray]):
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = Hardswish if cnf.use_hs else ReLU
        layers: list = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                conv_norm_activation(
                    keys, cnf.input_channels, cnf.expanded_channels, 1, activation=act, **_BN
                )
            )
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(
            conv_norm_activation(
                keys, cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, stride,
                groups=cnf.expanded_channels, dilation=cnf.dilation, activation=act, **_BN,
            )
        )  # fmt: skip
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(
                SqueezeExcitation(
                    cnf.expanded_channels, squeeze, scale_activation=Hardsigmoid, keys=keys
                )
            )
        layers.append(
            conv_norm_activation(
                keys, cnf.expanded_channels, cnf.out_channels, 1, activation=None, **_BN
            )
        )
        self.block = tuple(layers)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        y, block = run_sequential(self.block, x, channels_last=channels_last, key=key)
        new = eqx.tree_at(lambda b: b.block, self, block)
        return (x + y if self.use_res_connect else y), new


def mobilenet_v3_conf(
    arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[list[InvertedResidualConfig], int]:
    """torchvision's `_mobilenet_v3_conf`: the block table and the penultimate width."""
    r = 2 if reduced_tail else 1
    d = 2 if dilated else 1
    row = lambda *a: _row(*a, width_mult)  # noqa: E731
    if arch == "mobilenet_v3_large":
        setting = [
            row(16, 3, 16, 16, False, "RE", 1, 1),
            row(16, 3, 64, 24, False, "RE", 2, 1),
            row(24, 3, 72, 24, False, "RE", 1, 1),
            row(24, 5, 72, 40, True, "RE", 2, 1),
            row(40, 5, 120, 40, True, "RE", 1, 1),
            row(40, 5, 120, 40, True, "RE", 1, 1),
            row(40, 3, 240, 80, False, "HS", 2, 1),
            row(80, 3, 200, 80, False, "HS", 1, 1),
            row(80, 3, 184, 80, False, "HS", 1, 1),
            row(80, 3, 184, 80, False, "HS", 1, 1),
            row(80, 3, 480, 112, True, "HS", 1, 1),
            row(112, 3, 672, 112, True, "HS", 1, 1),
            row(112, 5, 672, 160 // r, True, "HS", 2, d),
            row(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
            row(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
        ]
        last_channel = make_divisible(1280 // r * width_mult, 8)
    elif arch == "mobilenet_v3_small":
        setting = [
            row(16, 3, 16, 16, True, "RE", 2, 1),
            row(16, 3, 72, 24, False, "RE", 2, 1),
            row(24, 3, 88, 24, False, "RE", 1, 1),
            row(24, 5, 96, 40, True, "HS", 2, 1),
            row(40, 5, 240, 40, True, "HS", 1, 1),
            row(40, 5, 240, 40, True, "HS", 1, 1),
            row(40, 5, 120, 48, True, "HS", 1, 1),
            row(48, 5, 144, 48, True, "HS", 1, 1),
            row(48, 5, 288, 96 // r, True, "HS", 2, d),
            row(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
            row(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
        ]
        last_channel = make_divisible(1024 // r * width_mult, 8)
    else:
        raise ValueError(f"Unsupported model type {arch}")
    return setting, last_channel


class MobileNetV3(ZooModel):
    """torchvision's `MobileNetV3`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `inverted_residual_setting`, `last_channel`: the block table and penultimate width
      (`mobilenet_v3_conf`).
    - `num_classes`, `dropout`: as in torchvision (`num_classes=0`: no final `Linear`, calls
      return the `last_channel` pre-logits).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.
    """

    first_conv_path: ClassVar[str] = "features.0.0"
    classifier_path: ClassVar[str] = "classifier.3"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        inverted_residual_setting: Sequence[InvertedResidualConfig],
        last_channel: int,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        keys = _keys(key)
        first = inverted_residual_setting[0].input_channels
        features: list = [
            conv_norm_activation(keys, in_chans, first, 3, 2, activation=Hardswish, **_BN)
        ]
        channels, reductions = [first], [2]
        for cnf in inverted_residual_setting:
            features.append(InvertedResidual(cnf, keys=keys))
            channels.append(cnf.out_channels)
            stride = 1 if cnf.dilation > 1 else cnf.stride
            reductions.append(reductions[-1] * stride)
        last_in = inverted_residual_setting[-1].out_channels
        features.append(
            conv_norm_activation(keys, last_in, 6 * last_in, 1, activation=Hardswish, **_BN)
        )
        channels.append(6 * last_in)
        reductions.append(reductions[-1])
        self.features = tuple(features)
        final = classifier_linear(keys, last_channel, num_classes) if num_classes else None
        self.classifier = (
            classifier_linear(keys, 6 * last_in, last_channel),
            Hardswish(),
            Dropout(dropout),
            final,
        )
        self.num_features = 6 * last_in
        self.feature_info = tuple(
            FeatureInfo(channels[i], reductions[i], f"features.{i}") for i in stage_ends(reductions)
        )

    @property
    def head_hidden_size(self) -> int:
        return int(self.classifier[0].out_features)

    def config_kwargs(self) -> dict[str, Any]:
        # `dilated` keeps every shape, so a checkpoint cannot tell it: recorded.
        convs = jax.tree.leaves(self.features, is_leaf=lambda x: isinstance(x, Conv2d))
        dilated = any(isinstance(c, Conv2d) and c.dilation != (1, 1) for c in convs)
        return {"dropout": float(self.classifier[2].p)} | ({"dilated": True} if dilated else {})

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        maps, features = run_stages(self.features, x, ends=ends, depth=depth, key=key)
        return maps, eqx.tree_at(lambda m: m.features, self, features)

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))
        return classifier_head(self.classifier, x, pre_logits=pre_logits, key=key)


_TEST = {"no_dropout": {"dropout": 0.0}}
_CFG = {"torch_builder": "torchvision"}


def _mobilenet_v3(arch: str, key, kwargs) -> MobileNetV3:
    conf = {k: kwargs.pop(k) for k in ("width_mult", "reduced_tail", "dilated") if k in kwargs}
    setting, last_channel = mobilenet_v3_conf(arch, **conf)
    return MobileNetV3(
        setting, last_channel, key=jax.random.key(0) if key is None else key, **kwargs
    )


def _mobilenet_v3_timm_names(arch: str) -> dict[str, str]:
    """torchvision's module paths -> timm's: block `features.i` is timm's `blocks.S.B`
    (stages: runs of one output width), a `DepthwiseSeparableConv` where it has no expansion;
    the last conv, `features.{n+1}`, timm's last stage (a `ConvBnAct`); `classifier.0` its
    `conv_head`."""
    setting, _ = mobilenet_v3_conf(arch)
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1"}
    stages = timm_stages([cnf.out_channels for cnf in setting])
    for i, (cnf, (stage, b)) in enumerate(zip(setting, stages, strict=True), start=1):
        expands = cnf.expanded_channels != cnf.input_channels
        units = ["cna"] * expands + ["cna"] + ["se"] * cnf.use_se + ["cna"]
        layers = sequential_layers(f"features.{i}.block", units)
        names |= timm_block_names(f"blocks.{stage}.{b}", "ir" if expands else "ds", layers)
    last = len(setting) + 1
    head = [f"features.{last}.0", f"features.{last}.1"]
    names |= timm_block_names(f"blocks.{stages[-1][0] + 1}.0", "cn", head)
    return names | {"classifier.0": "conv_head", "classifier.3": "classifier"}


def _timm(architecture: str, arch: str) -> dict[str, Any]:
    """timm's same network: its hard-swish, hard-sigmoid gates, SE widths
    (`make_divisible(expanded / 4, 8)`), padding and head (pool, 1x1 conv with bias,
    hard-swish, dropout, classifier) are torchvision's. Its dilated and reduced-tail
    variants and other widths are other timm models (refused: export with
    layout='torchvision')."""
    return timm_builder_interop(
        architecture,
        _mobilenet_v3_timm_names(arch),
        options={"dropout": "drop_rate"},
        fixed={"bn_eps": _BN["eps"], "bn_momentum": _BN["momentum"]},
        defaults={"width_mult": 1.0, "reduced_tail": False, "dilated": False},
        linear_as_conv=("classifier.0",),
    )


# The large variant: float64 parity only, with `pytest -m large` (as the deep ResNets).
@register(
    MobileNetV3,
    torchvision_weights="MobileNet_V3_Large_Weights",
    **_timm("mobilenetv3_large_100", "mobilenet_v3_large"),
    test_cfg=_TEST | {"slow": True},
    **_CFG,
)
def mobilenet_v3_large(*, key: PRNGKeyArray | None = None, **kwargs) -> MobileNetV3:
    """MobileNet V3 large (torchvision `mobilenet_v3_large`)."""
    return _mobilenet_v3("mobilenet_v3_large", key, kwargs)


@register(
    MobileNetV3,
    torchvision_weights="MobileNet_V3_Small_Weights",
    **_timm("mobilenetv3_small_100", "mobilenet_v3_small"),
    test_cfg=_TEST,
    **_CFG,
)
def mobilenet_v3_small(*, key: PRNGKeyArray | None = None, **kwargs) -> MobileNetV3:
    """MobileNet V3 small (torchvision `mobilenet_v3_small`)."""
    return _mobilenet_v3("mobilenet_v3_small", key, kwargs)
