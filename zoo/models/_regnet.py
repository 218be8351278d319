"""RegNet (X and Y) mirroring `torchvision.models.regnet`.

Attribute paths equal torchvision's state_dict keys (`trunk_output.block2.block2-0.f.se.fc1.bias`).
torchvision names its stages and blocks (`block2`, `block2-0`): those containers are
`NamedSequential`s, whose members carry torch's names, hyphens included. A call returns
`(logits, model)` as for every zoo model.

timm has each variant (`regnety_004`, `regnetx_004_tv`, ...: see `_TIMM`) under its own
names (`stem.conv`, `s1.b1.conv1.bn`, `head.fc`): `torchvision_regnet_to_timm` and
`timm_regnet_to_torchvision` map them, for `save_pretrained(..., layout="timm")` and for
loading timm's checkpoints.
"""

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._compile import fusion_barrier
from .._registry import register
from ..layers import (
    AdaptiveAvgPool2d,
    Layer,
    Linear,
    NamedSequential,
    ReLU,
    SqueezeExcitation,
    conv_norm_activation,
    relu,
    run_sequential,
    torch_default_uniform,
)
from ._base import FeatureInfo, ZooModel, _is_none
from ._mobilenetv2 import _keys, classifier_linear, make_divisible
from ._timm import refuse_unplaced, timm_interop

# torchvision's `_regnet` default norm layer: `partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1)`.
_BN = {"eps": 1e-5, "momentum": 0.1}


def _f32(fn, x: np.ndarray) -> np.ndarray:
    """`fn` of float32 `x`, correctly rounded to float32.

    torch's float32 `log` and `pow` (MKL's, SLEEF's or libm's, by build and CPU) are within
    an ulp of this, closer than NumPy's float32 kernels: over 40,000 random settings one
    stage split differed, an exact tie (a block ratio of `w_m ** 2.5`, say `w_m = 1.96`),
    where the last bit of torch's log decides the rounding. Settings built to hit such
    ties (`w_m` a square, block ratios powers of its root) differ in ~3% of cases. The
    registered sizes' log ratios are all > 2e-3 (thousands of ulps) from a tie; their one
    exact width tie (regnet_x_1_6gf: `80 * 2.25 / 8 = 22.5`) is computed exactly on both
    sides and rounds half to even, as torch rounds."""
    return fn(np.asarray(x, np.float64)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BlockParams:
    """torchvision's `BlockParams`: per stage, the depth, output width, group width,
    bottleneck multiplier and stride, and the network's squeeze-excitation ratio."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    group_widths: tuple[int, ...]
    bottleneck_multipliers: tuple[float, ...]
    strides: tuple[int, ...]
    se_ratio: float | None = None

    @classmethod
    def from_init_params(
        cls,
        depth: int,
        w_0: int,
        w_a: float,
        w_m: float,
        group_width: int,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float | None = None,
        **kwargs: Any,
    ) -> "BlockParams":
        """torchvision's `BlockParams.from_init_params`: block `i` has width
        `w_0 * w_m ** round(log(1 + i * w_a / w_0) / log(w_m))` rounded to a multiple of 8;
        blocks of equal width form a stage.

        The arithmetic is torchvision's in NumPy, float32 as torch's default dtype computes
        it (`arange(depth) * w_a + w_0`, the log ratio, `w_0 * w_m ** capacity / 8`), each
        step rounded to float32 as torch rounds it, so the widths round the same way.
        Extra `kwargs` (the model's options) are ignored, as in torchvision.
        """
        del kwargs
        quant, stride = 8, 2
        if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
            raise ValueError("Invalid RegNet settings")
        f32 = np.float32
        widths_cont = np.arange(depth, dtype=f32) * f32(w_a) + f32(w_0)
        capacity = np.round(_f32(np.log, widths_cont / f32(w_0)) / f32(math.log(w_m)))
        power = _f32(lambda c: np.power(np.float64(f32(w_m)), c), capacity)
        scaled = np.round(f32(w_0) * power / f32(quant)) * f32(quant)
        block_widths = scaled.astype(np.int32).tolist()
        num_stages = len(set(block_widths))

        # A new stage wherever the width changes (torchvision zips the widths twice).
        split_helper = zip(
            [*block_widths, 0],
            [0, *block_widths],
            [*block_widths, 0],
            [0, *block_widths],
            strict=True,
        )
        splits = [w != wp or r != rp for w, wp, r, rp in split_helper]
        stage_widths = [w for w, t in zip(block_widths, splits[:-1], strict=True) if t]
        stage_depths = np.diff([d for d, t in enumerate(splits) if t]).astype(int).tolist()

        bottleneck_multipliers = [bottleneck_multiplier] * num_stages
        stage_widths, group_widths = cls._adjust_widths_groups_compatibilty(
            stage_widths, bottleneck_multipliers, [group_width] * num_stages
        )
        return cls(
            depths=tuple(stage_depths),
            widths=tuple(stage_widths),
            group_widths=tuple(group_widths),
            bottleneck_multipliers=tuple(bottleneck_multipliers),
            strides=(stride,) * num_stages,
            se_ratio=se_ratio,
        )

    def _get_expanded_params(self) -> Iterator[tuple[int, int, int, int, float]]:
        return zip(
            self.widths,
            self.strides,
            self.depths,
            self.group_widths,
            self.bottleneck_multipliers,
            strict=True,
        )

    @staticmethod
    def _adjust_widths_groups_compatibilty(
        stage_widths: Sequence[int], bottleneck_ratios: Sequence[float], group_widths: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """torchvision's: bottleneck widths rounded to a multiple of their group width."""
        widths = [int(w * b) for w, b in zip(stage_widths, bottleneck_ratios, strict=True)]
        group_widths_min = [min(g, w_bot) for g, w_bot in zip(group_widths, widths, strict=True)]
        ws_bot = [
            make_divisible(w_bot, g) for w_bot, g in zip(widths, group_widths_min, strict=True)
        ]
        stage_widths = [int(w_bot / b) for w_bot, b in zip(ws_bot, bottleneck_ratios, strict=True)]
        return stage_widths, group_widths_min


def _squeeze_excitation(
    keys: Iterator[PRNGKeyArray], channels: int, squeeze: int
) -> SqueezeExcitation:
    """torchvision's `SqueezeExcitation` as RegNet initialises it: the 1x1 convs' weights
    `normal(0, sqrt(2 / fan_out))` (RegNet's loop), their biases left at torch's default
    `U(+-1/sqrt(fan_in))` (the loop touches only weights)."""
    se = SqueezeExcitation(channels, squeeze, keys=keys)
    biases = (
        torch_default_uniform(next(keys), (squeeze,), channels),
        torch_default_uniform(next(keys), (channels,), squeeze),
    )
    return eqx.tree_at(lambda m: (m.fc1.bias, m.fc2.bias), se, biases)


class BottleneckTransform(Layer):
    """torchvision's `BottleneckTransform` (an `nn.Sequential` with named members): 1x1 `a`,
    grouped 3x3 `b` (the stride), squeeze-excitation `se` (Y models only), linear 1x1 `c`."""

    a: tuple
    b: tuple
    se: SqueezeExcitation | None
    c: tuple

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float | None,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        w_b = round(width_out * bottleneck_multiplier)
        g = w_b // group_width
        self.a = conv_norm_activation(keys, width_in, w_b, 1, **_BN)
        self.b = conv_norm_activation(keys, w_b, w_b, 3, stride, groups=g, **_BN)
        # The squeeze width is relative to the block's input width (torchvision's comment).
        self.se = _squeeze_excitation(keys, w_b, round(se_ratio * width_in)) if se_ratio else None
        self.c = conv_norm_activation(keys, w_b, width_out, 1, activation=None, **_BN)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key
        nhwc = {"channels_last": channels_last}
        x, a = run_sequential(self.a, x, **nhwc)
        x, b = run_sequential(self.b, x, **nhwc)
        if self.se is not None:
            x, _ = self.se(x, **nhwc)
        x, c = run_sequential(self.c, x, **nhwc)
        return x, eqx.tree_at(lambda t: (t.a, t.b, t.c), self, (a, b, c))


class ResBottleneckBlock(Layer):
    """torchvision's `ResBottleneckBlock`: `relu(proj(x) + f(x))`, `proj` a 1x1 conv and
    BatchNorm where the width or the stride changes (the identity elsewhere)."""

    proj: tuple | None
    f: BottleneckTransform
    activation: ReLU

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int = 1,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float | None = None,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = conv_norm_activation(
                keys, width_in, width_out, 1, stride, activation=None, **_BN
            )
        self.f = BottleneckTransform(
            width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio, keys=keys
        )
        self.activation = ReLU()

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key
        y, f = self.f(x, channels_last=channels_last)
        proj = self.proj
        if proj is not None:
            x, proj = run_sequential(proj, x, channels_last=channels_last)
        new = eqx.tree_at(lambda m: (m.proj, m.f), self, (proj, f), is_leaf=_is_none)
        # Without it XLA:CPU recomputes earlier blocks' residual chains inside the backward's
        # transposes (see `zoo.fusion_barrier`), as in the ResNets.
        return fusion_barrier(relu(x + y)), new


def any_stage(
    width_in: int,
    width_out: int,
    stride: int,
    depth: int,
    group_width: int,
    bottleneck_multiplier: float,
    se_ratio: float | None = None,
    stage_index: int = 0,
    *,
    keys: Iterator[PRNGKeyArray],
) -> NamedSequential:
    """torchvision's `AnyStage`: `depth` blocks named `block{stage_index}-{i}`, the first
    changing the width and taking the stride."""
    return NamedSequential(
        (
            f"block{stage_index}-{i}",
            ResBottleneckBlock(
                width_in if i == 0 else width_out,
                width_out,
                stride if i == 0 else 1,
                group_width,
                bottleneck_multiplier,
                se_ratio,
                keys=keys,
            ),
        )
        for i in range(depth)
    )


class RegNet(ZooModel):
    """torchvision's `RegNet`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `block_params`: the stages (`BlockParams.from_init_params`).
    - `num_classes`, `stem_width`: as in torchvision (`num_classes=0`: no `fc`, calls return
      the pooled features, as in timm).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation (convs `normal(0, sqrt(2 / fan_out))`,
      BatchNorm ones and zeros, `fc` `normal(0, 0.01)` with a zero bias).

    **Returns** (of a call `model(x)`): `(logits, model)`, the second carrying the updated
    BatchNorm buffers in train mode. The rest of the interface is `ZooModel`'s; its feature
    maps are timm's: the stem and each stage.
    """

    first_conv_path: ClassVar[str] = "stem.0"
    classifier_path: ClassVar[str] = "fc"
    head_modules: ClassVar[tuple[str, ...]] = ("fc",)
    global_pool: ClassVar[str] = "avg"
    stem: tuple
    trunk_output: NamedSequential
    avgpool: AdaptiveAvgPool2d
    fc: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        block_params: BlockParams,
        num_classes: int = 1000,
        stem_width: int = 32,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        # torchvision's `SimpleStemIN`: a stride-2 `Conv2dNormActivation`.
        self.stem = conv_norm_activation(keys, in_chans, stem_width, 3, 2, **_BN)
        current_width, reduction = stem_width, 2
        info = [FeatureInfo(stem_width, reduction, "stem")]
        stages = []
        for i, (width_out, stride, depth, group_width, bottleneck_multiplier) in enumerate(
            block_params._get_expanded_params()
        ):
            stage = any_stage(
                current_width,
                width_out,
                stride,
                depth,
                group_width,
                bottleneck_multiplier,
                block_params.se_ratio,
                stage_index=i + 1,
                keys=keys,
            )
            stages.append((f"block{i + 1}", stage))
            current_width, reduction = width_out, reduction * stride
            info.append(FeatureInfo(width_out, reduction, f"trunk_output.block{i + 1}"))
        self.trunk_output = NamedSequential(stages)
        self.avgpool = AdaptiveAvgPool2d()
        self.fc = classifier_linear(keys, current_width, num_classes) if num_classes else None
        self.num_features = current_width
        self.feature_info = tuple(info)

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        del key  # no randomness in a RegNet
        x, stem = run_sequential(self.stem, x, channels_last=True)
        maps, stages = [x], []
        for stage in self.trunk_output:
            if len(maps) < depth:
                x, stage = stage(x, channels_last=True)
                maps.append(x)
            stages.append(stage)  # a stage that did not run keeps its buffers
        trunk = NamedSequential(zip(self.trunk_output.names, stages, strict=True))
        return maps, eqx.tree_at(lambda m: (m.stem, m.trunk_output), self, (stem, trunk))

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key=None,
    ) -> Float[Array, "batch out"]:
        del key
        x = self.avgpool(x, channels_last=channels_last).reshape(x.shape[0], -1)
        return x if pre_logits or self.fc is None else self.fc(x)


def _regnet(key: PRNGKeyArray | None, kwargs: dict, **init_params: Any) -> RegNet:
    block_params = BlockParams.from_init_params(**init_params)
    return RegNet(block_params, key=jax.random.key(0) if key is None else key, **kwargs)


# timm's RegNet names (`timm.models.regnet`; its `_filter_fn` knows torchvision's too) for a
# block's torchvision modules. timm numbers its blocks from 1 (`s2.b1` is `block2-0`).
_TIMM_BLOCK = {
    "proj.0": "downsample.conv",
    "proj.1": "downsample.bn",
    "f.a.0": "conv1.conv",
    "f.a.1": "conv1.bn",
    "f.b.0": "conv2.conv",
    "f.b.1": "conv2.bn",
    "f.se.fc1": "se.fc1",
    "f.se.fc2": "se.fc2",
    "f.c.0": "conv3.conv",
    "f.c.1": "conv3.bn",
}
_PARAM = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_TV_KEY = re.compile(
    rf"stem\.(?P<stem>[01])\.(?P<p0>{_PARAM})"
    rf"|trunk_output\.block(?P<s>\d+)\.block(?P=s)-(?P<b>\d+)\."
    rf"(?P<layer>proj\.[01]|f\.(?:[abc]\.[01]|se\.fc[12]))\.(?P<p1>{_PARAM})"
    r"|fc\.(?P<p2>weight|bias)"
)
_TIMM_KEY = re.compile(
    rf"stem\.(?P<stem>conv|bn)\.(?P<p0>{_PARAM})"
    rf"|s(?P<s>\d+)\.b(?P<b>\d+)\."
    rf"(?P<layer>downsample\.(?:conv|bn)|conv[123]\.(?:conv|bn)|se\.fc[12])\.(?P<p1>{_PARAM})"
    r"|head\.fc\.(?P<p2>weight|bias)"
)


def torchvision_regnet_to_timm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A torchvision RegNet state_dict under timm's `RegNet` keys (`stem.conv`,
    `s{S}.b{B+1}.{conv1, conv2, se, conv3, downsample}`, `head.fc`), key by key, values
    as they are, in the same order.

    **Raises:** `ValueError` for a key timm's RegNet has no place for.
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TV_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
        elif m["stem"] is not None:
            out[f"stem.{'conv' if m['stem'] == '0' else 'bn'}.{m['p0']}"] = value
        elif m["s"] is not None:
            block = f"s{m['s']}.b{int(m['b']) + 1}"
            out[f"{block}.{_TIMM_BLOCK[m['layer']]}.{m['p1']}"] = value
        else:
            out[f"head.fc.{m['p2']}"] = value
    refuse_unplaced(unknown, "not a torchvision RegNet state_dict timm's RegNet can hold")
    return out


def timm_regnet_to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `torchvision_regnet_to_timm`: a timm RegNet X or Y state_dict
    (`timm.create_model("regnety_004")`'s) under torchvision's keys, in the same order, so
    `zoo.load("regnet_y_400mf", weights=...)` and torchvision's `regnet_y_400mf` load it.

    **Raises:** `ValueError` for a key torchvision's RegNet has no place for (timm's RegNet
    Z and V, its `final_conv`, or another model's checkpoint).
    """
    block = {v: k for k, v in _TIMM_BLOCK.items()}
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TIMM_KEY.fullmatch(key)
        if m is None or (m["b"] is not None and m["b"] == "0"):
            unknown.append(key)
        elif m["stem"] is not None:
            out[f"stem.{0 if m['stem'] == 'conv' else 1}.{m['p0']}"] = value
        elif m["s"] is not None:
            prefix = f"trunk_output.block{m['s']}.block{m['s']}-{int(m['b']) - 1}"
            out[f"{prefix}.{block[m['layer']]}.{m['p1']}"] = value
        else:
            out[f"fc.{m['p2']}"] = value
    refuse_unplaced(unknown, "not a timm RegNet state_dict torchvision's RegNet can hold")
    return out


def _timm(architecture: str) -> dict[str, Any]:
    # The same network: timm's BatchNorms are torch's defaults (eps 1e-5, momentum 0.1), its
    # SE squeezes to round(0.25 * block input width) with a ReLU, its stages split where the
    # width changes; `_tv` variants round the bottleneck widths to their group width as
    # torchvision does (`make_divisible`), where timm's originals round to nearest.
    return timm_interop(
        architecture,
        torchvision_regnet_to_timm,
        timm_regnet_to_torchvision,
        marker="stem.conv.weight",
    )


_CFG = {"torch_builder": "torchvision"}
# Every variant but the smallest: float64 parity at the default test size, with `-m large`.
_SLOW = {"slow": True}


@register(RegNet, torchvision_weights="RegNet_Y_400MF_Weights", **_CFG, **_timm("regnety_004"))
def regnet_y_400mf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-400MF (torchvision `regnet_y_400mf`). `key` defaults to `jax.random.key(0)`."""
    return _regnet(key, kwargs, depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25)


@register(
    RegNet,
    torchvision_weights="RegNet_Y_800MF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_008_tv"),
)
def regnet_y_800mf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-800MF (torchvision `regnet_y_800mf`)."""
    return _regnet(key, kwargs, depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16, se_ratio=0.25)


@register(
    RegNet,
    torchvision_weights="RegNet_Y_1_6GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_016"),
)
def regnet_y_1_6gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-1.6GF (torchvision `regnet_y_1_6gf`)."""
    return _regnet(
        key, kwargs, depth=27, w_0=48, w_a=20.71, w_m=2.65, group_width=24, se_ratio=0.25
    )


@register(
    RegNet,
    torchvision_weights="RegNet_Y_3_2GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_032"),
)
def regnet_y_3_2gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-3.2GF (torchvision `regnet_y_3_2gf`)."""
    return _regnet(
        key, kwargs, depth=21, w_0=80, w_a=42.63, w_m=2.66, group_width=24, se_ratio=0.25
    )


@register(
    RegNet,
    torchvision_weights="RegNet_Y_8GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_080_tv"),
)
def regnet_y_8gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-8GF (torchvision `regnet_y_8gf`)."""
    return _regnet(
        key, kwargs, depth=17, w_0=192, w_a=76.82, w_m=2.19, group_width=56, se_ratio=0.25
    )


@register(
    RegNet,
    torchvision_weights="RegNet_Y_16GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_160"),
)
def regnet_y_16gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-16GF (torchvision `regnet_y_16gf`)."""
    return _regnet(
        key, kwargs, depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112, se_ratio=0.25
    )


@register(
    RegNet,
    torchvision_weights="RegNet_Y_32GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnety_320"),
)
def regnet_y_32gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-32GF (torchvision `regnet_y_32gf`)."""
    return _regnet(
        key, kwargs, depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232, se_ratio=0.25
    )


# torchvision's only weights for the 128GF model are SWAG's, trained and evaluated at 384x384
# (bicubic resize to 384, no crop).
@register(
    RegNet,
    torchvision_weights="RegNet_Y_128GF_Weights",
    test_cfg=_SLOW,
    input_size=(3, 384, 384),
    interpolation="bicubic",
    crop_pct=1.0,
    **_CFG,
    **_timm("regnety_1280"),
)
def regnet_y_128gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetY-128GF (torchvision `regnet_y_128gf`; 645M parameters)."""
    return _regnet(
        key, kwargs, depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264, se_ratio=0.25
    )


@register(
    RegNet,
    torchvision_weights="RegNet_X_400MF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_004_tv"),
)
def regnet_x_400mf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-400MF (torchvision `regnet_x_400mf`)."""
    return _regnet(key, kwargs, depth=22, w_0=24, w_a=24.48, w_m=2.54, group_width=16)


@register(
    RegNet,
    torchvision_weights="RegNet_X_800MF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_008"),
)
def regnet_x_800mf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-800MF (torchvision `regnet_x_800mf`)."""
    return _regnet(key, kwargs, depth=16, w_0=56, w_a=35.73, w_m=2.28, group_width=16)


@register(
    RegNet,
    torchvision_weights="RegNet_X_1_6GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_016"),
)
def regnet_x_1_6gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-1.6GF (torchvision `regnet_x_1_6gf`)."""
    return _regnet(key, kwargs, depth=18, w_0=80, w_a=34.01, w_m=2.25, group_width=24)


@register(
    RegNet,
    torchvision_weights="RegNet_X_3_2GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_032"),
)
def regnet_x_3_2gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-3.2GF (torchvision `regnet_x_3_2gf`)."""
    return _regnet(key, kwargs, depth=25, w_0=88, w_a=26.31, w_m=2.25, group_width=48)


@register(
    RegNet,
    torchvision_weights="RegNet_X_8GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_080"),
)
def regnet_x_8gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-8GF (torchvision `regnet_x_8gf`)."""
    return _regnet(key, kwargs, depth=23, w_0=80, w_a=49.56, w_m=2.88, group_width=120)


@register(
    RegNet,
    torchvision_weights="RegNet_X_16GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_160"),
)
def regnet_x_16gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-16GF (torchvision `regnet_x_16gf`)."""
    return _regnet(key, kwargs, depth=22, w_0=216, w_a=55.59, w_m=2.1, group_width=128)


@register(
    RegNet,
    torchvision_weights="RegNet_X_32GF_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("regnetx_320"),
)
def regnet_x_32gf(*, key: PRNGKeyArray | None = None, **kwargs) -> RegNet:
    """RegNetX-32GF (torchvision `regnet_x_32gf`)."""
    return _regnet(key, kwargs, depth=23, w_0=320, w_a=69.86, w_m=2.0, group_width=168)
