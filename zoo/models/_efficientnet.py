"""EfficientNet B0-B7 and EfficientNet V2 (S, M, L) mirroring `torchvision.models.efficientnet`.

`features` is torchvision's `nn.Sequential` as a tuple, each stage a nested tuple of blocks
(`features.1.0.block.0.0.weight`); a call returns `(logits, model)` as for every zoo model.

timm has every variant, under its EfficientNet builder's names (`efficientnet_b0` ...
`efficientnet_b7`, `efficientnetv2_s`, `_m`, `_l`; `_efficientnet_timm_names`): the exports'
`layout="timm"` and timm's checkpoints loading, with torchvision's BatchNorm options and its
dropout and stochastic depth as timm's `bn_eps`, `bn_momentum`, `drop_rate`, `drop_path_rate`.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    Dropout,
    Layer,
    Linear,
    SiLU,
    SqueezeExcitation,
    StochasticDepth,
    conv_norm_activation,
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
from ._mobilenetv2 import (
    _keys,
    make_divisible,
    sequential_layers,
    timm_block_names,
    timm_builder_interop,
)


@dataclasses.dataclass(frozen=True)
class MBConvConfig:
    """One stage of the EfficientNet paper's table 1 or the EfficientNetV2 paper's table 4
    (torchvision's `MBConvConfig` and `FusedMBConvConfig`), channels and depth already scaled.

    **Fields:** `expand_ratio`, `kernel`, `stride` (of the stage's first block),
    `input_channels`, `out_channels`, `num_layers` (blocks in the stage), as in torchvision;
    `fused`: `FusedMBConv` blocks instead of `MBConv`.
    """

    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int
    fused: bool = False


def mbconv_config(
    expand_ratio: float,
    kernel: int,
    stride: int,
    input_channels: int,
    out_channels: int,
    num_layers: int,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
) -> MBConvConfig:
    """torchvision's `MBConvConfig(...)`: channels scaled by `width_mult` and rounded to a
    multiple of 8, the block count scaled by `depth_mult` and rounded up."""
    return MBConvConfig(
        expand_ratio,
        kernel,
        stride,
        make_divisible(input_channels * width_mult, 8),
        make_divisible(out_channels * width_mult, 8),
        math.ceil(num_layers * depth_mult),
    )


def fused_mbconv_config(
    expand_ratio: float,
    kernel: int,
    stride: int,
    input_channels: int,
    out_channels: int,
    num_layers: int,
) -> MBConvConfig:
    """torchvision's `FusedMBConvConfig(...)` (unscaled, as there)."""
    return MBConvConfig(
        expand_ratio, kernel, stride, input_channels, out_channels, num_layers, fused=True
    )


def _residual(
    block: Layer, x: Array, channels_last: bool, key: PRNGKeyArray | None
) -> tuple[Array, Any]:
    """torchvision's `MBConv.forward` and `FusedMBConv.forward`: the block, then, where the
    shortcut applies, stochastic depth on the branch and the input added."""
    block_key, depth_key = (None, None) if key is None else jax.random.split(key)
    y, layers = run_sequential(block.block, x, channels_last=channels_last, key=block_key)
    new = eqx.tree_at(lambda b: b.block, block, layers)
    if block.use_res_connect:
        y, _ = block.stochastic_depth(y, channels_last=channels_last, key=depth_key)
        y = y + x
    return y, new


class MBConv(Layer):
    """torchvision's `MBConv`: 1x1 expansion (absent where it would not widen), depthwise
    convolution, squeeze-excitation (SiLU, sigmoid gate), linear 1x1
    projection; the shortcut with stochastic depth where shapes allow.

    **Arguments:**

    - `cnf`: the block's row (its own input channels and stride).
    - `stochastic_depth_prob`: this block's drop rate.
    - `bn`: BatchNorm options (`eps`, `momentum`).
    - `keys`: PRNG keys for torchvision's initialisation.
    """

    block: tuple
    stochastic_depth: StochasticDepth
    use_res_connect: bool = eqx.field(static=True)

    def __init__(
        self,
        cnf: MBConvConfig,
        stochastic_depth_prob: float,
        bn: dict[str, Any],
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = make_divisible(cnf.input_channels * cnf.expand_ratio, 8)
        layers: list = []
        if expanded != cnf.input_channels:
            layers.append(
                conv_norm_activation(keys, cnf.input_channels, expanded, 1, activation=SiLU, **bn)
            )
        layers.append(
            conv_norm_activation(
                keys, expanded, expanded, cnf.kernel, cnf.stride, groups=expanded,
                activation=SiLU, **bn,
            )
        )  # fmt: skip
        # The squeeze width follows the block's input, not its expansion (as torchvision).
        squeeze = max(1, cnf.input_channels // 4)
        layers.append(SqueezeExcitation(expanded, squeeze, activation=SiLU, keys=keys))
        layers.append(
            conv_norm_activation(keys, expanded, cnf.out_channels, 1, activation=None, **bn)
        )
        self.block = tuple(layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        return _residual(self, x, channels_last, key)


class FusedMBConv(Layer):
    """torchvision's `FusedMBConv`: a full `kernel` convolution that expands (then a linear
    1x1 projection), or at ratio 1 a single convolution to the output width; the shortcut
    with stochastic depth where shapes allow.

    **Arguments:** as `MBConv`.
    """

    block: tuple
    stochastic_depth: StochasticDepth
    use_res_connect: bool = eqx.field(static=True)

    def __init__(
        self,
        cnf: MBConvConfig,
        stochastic_depth_prob: float,
        bn: dict[str, Any],
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = make_divisible(cnf.input_channels * cnf.expand_ratio, 8)
        if expanded != cnf.input_channels:
            self.block = (
                conv_norm_activation(
                    keys, cnf.input_channels, expanded, cnf.kernel, cnf.stride,
                    activation=SiLU, **bn,
                ),
                conv_norm_activation(keys, expanded, cnf.out_channels, 1, activation=None, **bn),
            )  # fmt: skip
        else:
            self.block = (
                conv_norm_activation(
                    keys, cnf.input_channels, cnf.out_channels, cnf.kernel, cnf.stride,
                    activation=SiLU, **bn,
                ),
            )  # fmt: skip
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        return _residual(self, x, channels_last, key)


def efficientnet_conf(
    arch: str, width_mult: float = 1.0, depth_mult: float = 1.0
) -> tuple[list[MBConvConfig], int | None]:
    """torchvision's `_efficientnet_conf`: the stage table and the penultimate width (`None`:
    four times the last stage's)."""
    if arch.startswith("efficientnet_b"):
        row = lambda *a: mbconv_config(*a, width_mult, depth_mult)  # noqa: E731
        setting = [
            row(1, 3, 1, 32, 16, 1),
            row(6, 3, 2, 16, 24, 2),
            row(6, 5, 2, 24, 40, 2),
            row(6, 3, 2, 40, 80, 3),
            row(6, 5, 1, 80, 112, 3),
            row(6, 5, 2, 112, 192, 4),
            row(6, 3, 1, 192, 320, 1),
        ]
        return setting, None
    fused, row = fused_mbconv_config, mbconv_config
    if arch.startswith("efficientnet_v2_s"):
        setting = [
            fused(1, 3, 1, 24, 24, 2),
            fused(4, 3, 2, 24, 48, 4),
            fused(4, 3, 2, 48, 64, 4),
            row(4, 3, 2, 64, 128, 6),
            row(6, 3, 1, 128, 160, 9),
            row(6, 3, 2, 160, 256, 15),
        ]
    elif arch.startswith("efficientnet_v2_m"):
        setting = [
            fused(1, 3, 1, 24, 24, 3),
            fused(4, 3, 2, 24, 48, 5),
            fused(4, 3, 2, 48, 80, 5),
            row(4, 3, 2, 80, 160, 7),
            row(6, 3, 1, 160, 176, 14),
            row(6, 3, 2, 176, 304, 18),
            row(6, 3, 1, 304, 512, 5),
        ]
    elif arch.startswith("efficientnet_v2_l"):
        setting = [
            fused(1, 3, 1, 32, 32, 4),
            fused(4, 3, 2, 32, 64, 7),
            fused(4, 3, 2, 64, 96, 7),
            row(4, 3, 2, 96, 192, 10),
            row(6, 3, 1, 192, 224, 19),
            row(6, 3, 2, 224, 384, 25),
            row(6, 3, 1, 384, 640, 7),
        ]
    else:
        raise ValueError(f"Unsupported model type {arch}")
    return setting, 1280


def _classifier_linear(keys: Iterator[PRNGKeyArray], in_features: int, out_features: int):
    """`nn.Linear` as torchvision's EfficientNet initialises it: `uniform_(-r, r)` with
    `r = 1/sqrt(out_features)`, bias zero."""
    linear = Linear(in_features, out_features, key=next(keys))
    weight = uniform(next(keys), linear.weight.shape, 1.0 / math.sqrt(out_features))
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight, zeros((out_features,))))


class EfficientNet(ConvHeadModel):
    """torchvision's `EfficientNet` (V1 and V2), as an Equinox module over NCHW batches.

    **Arguments:**

    - `inverted_residual_setting`: the stage table (`efficientnet_conf`).
    - `dropout`: the classifier's dropout rate.
    - `stochastic_depth_prob`: the rate the deepest block nears; block `i` of `n` drops its
      branch with `stochastic_depth_prob * i / n` (torchvision's linear rule).
    - `num_classes`, `last_channel`: as in torchvision (`num_classes=0`: no final `Linear`,
      calls return the pooled features).
    - `in_chans`: input channels (3 in torchvision).
    - `norm_eps`, `norm_momentum`: the BatchNorms' (torchvision's `norm_layer` partial).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives dropout
    and stochastic depth in train mode.

    `feature_info` lists timm's five maps: the last stage at each reduction 2, 4, 8, 16, 32
    (`features.1`, `.2`, `.3`, `.5`, and `.7`, or `.6` in V2 S). `forward_features` returns
    what the 1x1 head convolution after them (the last member of `features`) makes of the
    last, as timm's `conv_head`.
    """

    first_conv_path: ClassVar[str] = "features.0.0"
    classifier_path: ClassVar[str] = "classifier.1"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    classifier: tuple
    stochastic_depth_prob: float = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        inverted_residual_setting: Sequence[MBConvConfig],
        dropout: float,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
        last_channel: int | None = None,
        in_chans: int = 3,
        *,
        norm_eps: float = 1e-5,
        norm_momentum: float | None = 0.1,
        key: PRNGKeyArray,
    ):
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, MBConvConfig) for s in inverted_residual_setting):
            raise TypeError("The inverted_residual_setting should be List[MBConvConfig]")
        keys = _keys(key)
        bn = {"eps": norm_eps, "momentum": norm_momentum}
        first = inverted_residual_setting[0].input_channels
        features: list = [conv_norm_activation(keys, in_chans, first, 3, 2, activation=SiLU, **bn)]
        channels, reductions = [first], [2]
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list = []
            for i in range(cnf.num_layers):
                block_cnf = cnf
                if i:  # later blocks of a stage: the stage's width in, stride 1
                    block_cnf = dataclasses.replace(cnf, input_channels=cnf.out_channels, stride=1)
                # torchvision's expression, in its order (a static float: bit-equal rates).
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                block = FusedMBConv if cnf.fused else MBConv
                stage.append(block(block_cnf, sd_prob, bn, keys=keys))
                stage_block_id += 1
            features.append(tuple(stage))
            channels.append(cnf.out_channels)
            reductions.append(reductions[-1] * cnf.stride)
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 4 * last_in if last_channel is None else last_channel
        features.append(conv_norm_activation(keys, last_in, last_out, 1, activation=SiLU, **bn))
        self.features = tuple(features)
        final = _classifier_linear(keys, last_out, num_classes) if num_classes else None
        self.classifier = (Dropout(dropout), final)
        self.stochastic_depth_prob = stochastic_depth_prob
        self.num_features = last_out
        # timm's maps: the last member at each reduction, the head convolution left out.
        self.feature_info = tuple(
            FeatureInfo(channels[i], reductions[i], f"features.{i}") for i in stage_ends(reductions)
        )

    def config_kwargs(self) -> dict[str, float]:
        return {
            "dropout": float(self.classifier[0].p),
            "stochastic_depth_prob": float(self.stochastic_depth_prob),
        }

    def _forward_stages(
        self,
        x: Float[Array, "batch height width channels"],
        *,
        depth: int,
        key: PRNGKeyArray | None = None,
        head: bool | None = None,
    ) -> tuple[list[Array], Self]:
        """As `ZooModel`'s; at full depth (unless `head=False`) one more map after the
        `feature_info` maps: the head convolution's output, which `forward_features` (the
        contract's last map) returns."""
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        ends, depth = head_stage_ends(ends, depth, head, len(self.features))
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


# B5-B7 (ported from TensorFlow) use TensorFlow's BatchNorm; V2 only its eps.
_TF_BN = {"norm_eps": 0.001, "norm_momentum": 0.01}
_V2_BN = {"norm_eps": 0.001}


def _efficientnet(
    arch: str,
    dropout: float,
    key: PRNGKeyArray | None,
    kwargs: dict[str, Any],
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    **norm: float,
) -> EfficientNet:
    setting, last_channel = efficientnet_conf(arch, width_mult, depth_mult)
    return EfficientNet(
        setting,
        kwargs.pop("dropout", dropout),
        last_channel=last_channel,
        key=jax.random.key(0) if key is None else key,
        **norm,
        **kwargs,
    )


def _efficientnet_timm_names(
    arch: str, width_mult: float = 1.0, depth_mult: float = 1.0
) -> dict[str, str]:
    """torchvision's module paths -> timm's, for the variant's stage table: stage `S`'s block
    `B` (`features.{S+1}.B`) is timm's `blocks.S.B`, of timm's type for the block
    torchvision builds (an `MBConv` without expansion is a `DepthwiseSeparableConv`, a
    `FusedMBConv` an `EdgeResidual`, or a `ConvBnAct` without expansion)."""
    setting, _ = efficientnet_conf(arch, width_mult, depth_mult)
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1"}
    for stage, cnf in enumerate(setting):
        for b in range(cnf.num_layers):
            width = cnf.input_channels if b == 0 else cnf.out_channels  # the block's input
            expands = make_divisible(width * cnf.expand_ratio, 8) != width  # as the blocks do
            if cnf.fused:
                kind, units = ("er", ["cna", "cna"]) if expands else ("cn", ["cna"])
            else:
                kind = "ir" if expands else "ds"
                units = ["cna"] * expands + ["cna", "se", "cna"]
            layers = sequential_layers(f"features.{stage + 1}.{b}.block", units)
            names |= timm_block_names(f"blocks.{stage}.{b}", kind, layers)
    head = len(setting) + 1
    return names | {
        f"features.{head}.0": "conv_head",
        f"features.{head}.1": "bn2",
        "classifier.1": "classifier",
    }


def _timm(architecture: str, arch: str, *scale: float, **bn: float) -> dict[str, Any]:
    """timm's same network: its padding, SE widths (a quarter of the block's input), SiLU,
    head and stochastic depth schedule (`drop_path_rate * i / n` over the blocks, on the
    residual branch, per sample) are torchvision's."""
    return timm_builder_interop(
        architecture,
        _efficientnet_timm_names(arch, *scale),
        options={"dropout": "drop_rate", "stochastic_depth_prob": "drop_path_rate"},
        fixed=bn,
    )


# timm's names for the BatchNorm options of `_TF_BN` and `_V2_BN`.
_TIMM_TF_BN = {"bn_eps": 0.001, "bn_momentum": 0.01}
_TIMM_V2_BN = {"bn_eps": 0.001}
_NO_DROPOUT = {"no_dropout": {"dropout": 0.0, "stochastic_depth_prob": 0.0}}
_SLOW = _NO_DROPOUT | {"slow": True}
_CFG = {"torch_builder": "torchvision"}


def _preprocessing(crop: int, resize: int, interpolation: str, **norm: Any) -> dict[str, Any]:
    """The DEFAULT weights' evaluation transforms (torchvision's `ImageClassification`), in
    timm's terms."""
    return {
        "input_size": (3, crop, crop),
        "crop_pct": crop / resize,
        "interpolation": interpolation,
        **norm,
    }


# Only B0 runs in the default test run; the others in float64 with `pytest -m large`.
# `train_parity_large`: B0's float64 train step takes ~45 s to compile (3% of the default
# run); its blocks' train mode (depthwise convolutions, squeeze-excitation, BatchNorm) is
# MobileNet V3's, whose float64 train step runs by default.
@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B0_Weights",
    **_timm("efficientnet_b0", "efficientnet_b0", 1.0, 1.0),
    test_cfg=_NO_DROPOUT | {"train_parity_large": True},
    **_CFG,
    **_preprocessing(224, 256, "bicubic"),
)
def efficientnet_b0(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B0 (torchvision `efficientnet_b0`). `key` defaults to
    `jax.random.key(0)`; `kwargs`: `num_classes`, `dropout`, `stochastic_depth_prob`,
    `in_chans`."""
    return _efficientnet("efficientnet_b0", 0.2, key, kwargs, 1.0, 1.0)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B1_Weights",
    **_timm("efficientnet_b1", "efficientnet_b1", 1.0, 1.1),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(240, 255, "bilinear"),
)
def efficientnet_b1(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B1 (torchvision `efficientnet_b1`)."""
    return _efficientnet("efficientnet_b1", 0.2, key, kwargs, 1.0, 1.1)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B2_Weights",
    **_timm("efficientnet_b2", "efficientnet_b2", 1.1, 1.2),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(288, 288, "bicubic"),
)
def efficientnet_b2(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B2 (torchvision `efficientnet_b2`)."""
    return _efficientnet("efficientnet_b2", 0.3, key, kwargs, 1.1, 1.2)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B3_Weights",
    **_timm("efficientnet_b3", "efficientnet_b3", 1.2, 1.4),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(300, 320, "bicubic"),
)
def efficientnet_b3(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B3 (torchvision `efficientnet_b3`)."""
    return _efficientnet("efficientnet_b3", 0.3, key, kwargs, 1.2, 1.4)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B4_Weights",
    **_timm("efficientnet_b4", "efficientnet_b4", 1.4, 1.8),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(380, 384, "bicubic"),
)
def efficientnet_b4(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B4 (torchvision `efficientnet_b4`)."""
    return _efficientnet("efficientnet_b4", 0.4, key, kwargs, 1.4, 1.8)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B5_Weights",
    **_timm("efficientnet_b5", "efficientnet_b5", 1.6, 2.2, **_TIMM_TF_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(456, 456, "bicubic"),
)
def efficientnet_b5(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B5 (torchvision `efficientnet_b5`; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet("efficientnet_b5", 0.4, key, kwargs, 1.6, 2.2, **_TF_BN)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B6_Weights",
    **_timm("efficientnet_b6", "efficientnet_b6", 1.8, 2.6, **_TIMM_TF_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(528, 528, "bicubic"),
)
def efficientnet_b6(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B6 (torchvision `efficientnet_b6`; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet("efficientnet_b6", 0.5, key, kwargs, 1.8, 2.6, **_TF_BN)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_B7_Weights",
    **_timm("efficientnet_b7", "efficientnet_b7", 2.0, 3.1, **_TIMM_TF_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(600, 600, "bicubic"),
)
def efficientnet_b7(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B7 (torchvision `efficientnet_b7`; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet("efficientnet_b7", 0.5, key, kwargs, 2.0, 3.1, **_TF_BN)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_V2_S_Weights",
    **_timm("efficientnetv2_s", "efficientnet_v2_s", **_TIMM_V2_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(384, 384, "bilinear"),
)
def efficientnet_v2_s(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet V2 S (torchvision `efficientnet_v2_s`; BatchNorm eps 1e-3)."""
    return _efficientnet("efficientnet_v2_s", 0.2, key, kwargs, **_V2_BN)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_V2_M_Weights",
    **_timm("efficientnetv2_m", "efficientnet_v2_m", **_TIMM_V2_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(480, 480, "bilinear"),
)
def efficientnet_v2_m(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet V2 M (torchvision `efficientnet_v2_m`; BatchNorm eps 1e-3)."""
    return _efficientnet("efficientnet_v2_m", 0.3, key, kwargs, **_V2_BN)


@register(
    EfficientNet,
    torchvision_weights="EfficientNet_V2_L_Weights",
    **_timm("efficientnetv2_l", "efficientnet_v2_l", **_TIMM_V2_BN),
    test_cfg=_SLOW,
    **_CFG,
    **_preprocessing(480, 480, "bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
)
def efficientnet_v2_l(*, key: PRNGKeyArray | None = None, **kwargs) -> EfficientNet:
    """EfficientNet V2 L (torchvision `efficientnet_v2_l`; BatchNorm eps 1e-3)."""
    return _efficientnet("efficientnet_v2_l", 0.4, key, kwargs, **_V2_BN)
