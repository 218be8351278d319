"""MobileNet V2 mirroring `torchvision.models.mobilenetv2`.

`features` is torchvision's `nn.Sequential` as a tuple (`features.3.conv.1.0.weight`); a call
returns `(logits, model)` as for every zoo model.

timm builds the same network as `mobilenetv2_100` with its EfficientNet builder, under that
builder's names (`conv_stem`, `blocks.S.B.conv_dw`, `conv_head`, ...), which
`timm_builder_interop` (here, shared with MobileNet V3, EfficientNet and MNASNet) maps both
ways: `save_pretrained(..., layout="timm")` and timm's checkpoints loading.
"""

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    BatchNorm2d,
    Dropout,
    Layer,
    Linear,
    ReLU6,
    conv2d_kaiming,
    conv_norm_activation,
    normal,
    run_sequential,
    zeros,
)
from ._base import FeatureInfo, ZooModel, classifier_head, run_stages, stage_ends
from ._timm import refuse_unplaced, timm_interop, warn_timm_defaults_differ


def _keys(key: PRNGKeyArray) -> Iterator[PRNGKeyArray]:
    while True:
        key, sub = jax.random.split(key)
        yield sub


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round a channel count to a multiple of `divisor`,
    never more than 10% down."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def classifier_linear(keys: Iterator[PRNGKeyArray], in_features: int, out_features: int):
    """`nn.Linear` as torchvision's MobileNets initialise it: `normal_(0, 0.01)`, bias zero."""
    linear = Linear(in_features, out_features, key=next(keys))
    weight = normal(next(keys), linear.weight.shape, 0.01)
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight, zeros((out_features,))))


# -- timm's EfficientNet builder names ------------------------------------------------------------
# timm builds MobileNet V2 and V3, EfficientNet and MNASNet with one builder
# (`timm.models._efficientnet_builder`): `conv_stem`, `bn1`, `blocks.{stage}.{block}.*`,
# `conv_head`, `bn2`, `classifier`. Each block type's layers with parameters, in state_dict
# order (torchvision's order too); "se" is the squeeze-excitation's `conv_reduce`, `conv_expand`.
TIMM_BLOCK_LAYERS = {
    "ds": ("conv_dw", "bn1", "se", "conv_pw", "bn2"),  # DepthwiseSeparableConv (no expansion)
    "ir": ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3"),  # InvertedResidual
    "er": ("conv_exp", "bn1", "conv_pwl", "bn2"),  # EdgeResidual (torchvision's FusedMBConv)
    "cn": ("conv", "bn1"),  # ConvBnAct (FusedMBConv at expansion 1, MobileNet V3's last conv)
}


def timm_block_names(block: str, kind: str, layers: Sequence[str]) -> dict[str, str]:
    """One block's torchvision module paths -> timm's.

    **Arguments:**

    - `block`: timm's path of the block (`blocks.2.0`).
    - `kind`: timm's block type (a `TIMM_BLOCK_LAYERS` key).
    - `layers`: torchvision's module paths of the block's convolutions, BatchNorms and
      squeeze-excitation layers (two paths, `fc1` and `fc2`, where it has one), in state_dict
      order.

    **Returns:** `{torchvision path: timm path}`.
    """
    names = [
        name
        for layer in TIMM_BLOCK_LAYERS[kind]
        for name in (("se.conv_reduce", "se.conv_expand") if layer == "se" else (layer,))
    ]
    if len(layers) == len(names) - 2:  # two fewer: the block has no squeeze-excitation
        names = [n for n in names if not n.startswith("se.")]
    if len(layers) != len(names):
        raise ValueError(f"a timm {kind!r} block has layers {names}, not {len(layers)}: {layers}")
    return {tv: f"{block}.{name}" for tv, name in zip(layers, names, strict=True)}


def sequential_layers(prefix: str, units: Sequence[str]) -> list[str]:
    """torchvision's module paths in a `Sequential` of `units`: "cna" a
    `Conv2dNormActivation` (`{prefix}.{i}.0`, `.1`), "se" a `SqueezeExcitation` (`.fc1`,
    `.fc2`)."""
    subs = {"cna": ("0", "1"), "se": ("fc1", "fc2")}
    return [f"{prefix}.{i}.{sub}" for i, unit in enumerate(units) for sub in subs[unit]]


def timm_stages(widths: Sequence[int]) -> list[tuple[int, int]]:
    """timm's `(stage, block)` of each block, from the blocks' output widths: a stage is a
    run of blocks of one width (timm's arch strings; the papers' tables)."""
    out: list[tuple[int, int]] = []
    for i, width in enumerate(widths):
        if i and width == widths[i - 1]:
            out.append((out[-1][0], out[-1][1] + 1))
        else:
            out.append((out[-1][0] + 1 if out else 0, 0))
    return out


def _rename(
    state_dict: Mapping[str, Any],
    names: Mapping[str, str],
    reshape: Mapping[str, Any],
    error: str,
) -> dict[str, Any]:
    """`state_dict` with each key's module path (all but the last name) renamed by `names`;
    `reshape[module]` maps the module's weight (torchvision's Linear <-> timm's 1x1 conv)."""
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module not in names:
            unknown.append(key)
            continue
        if module in reshape and param == "weight" and value is not None:
            value = reshape[module](value)
        out[f"{names[module]}.{param}"] = value
    refuse_unplaced(unknown, error)
    return out


def timm_builder_interop(
    architecture: str,
    names: Mapping[str, str],
    *,
    options: Mapping[str, str],
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    linear_as_conv: Collection[str] = (),
) -> dict[str, Any]:
    """`register`'s timm keyword arguments (`timm_interop`) for a network timm's EfficientNet
    builder makes as `architecture`.

    **Arguments:**

    - `names`: torchvision's module paths -> timm's, for every module with parameters.
    - `options`: torchvision's options -> timm's `create_model` arguments of the same meaning
      (`dropout` -> `drop_rate`); passed where not zero.
    - `fixed`: `create_model` arguments the variant always needs (its BatchNorm's `bn_eps`,
      `bn_momentum`).
    - `defaults`: torchvision's options timm has no argument for, at the values where the
      networks agree; any other value, or any other option, is refused with a `ValueError`
      (export it with `layout="torchvision"`).
    - `linear_as_conv`: torchvision `Linear`s that are 1x1 convolutions in timm.

    **Returns:** `timm_layout` and `checkpoint_adapter` (timm's checkpoints hold
    `conv_stem.weight`, torchvision's never do).

    The adapter renames keys; the BatchNorm options are the torchvision network's. A
    checkpoint of timm's model built with timm's defaults (eps 1e-5: its own
    `mobilenetv3_*_100` and `efficientnet_b5` weights, where torchvision's eps is 1e-3)
    loads with a `TimmCheckpointWarning`, and computes other logits than in timm; one of a
    `tf_*` port (the same keys; TensorFlow's "same" padding) loads and computes other
    logits too (nothing in the file tells it apart).
    """
    inverse = {v: k for k, v in names.items()}
    to_conv = {m: (lambda w: w.reshape(*w.shape, 1, 1)) for m in linear_as_conv}
    to_linear = {names[m]: (lambda w: w.reshape(*w.shape[:2])) for m in linear_as_conv}
    fixed, defaults = dict(fixed or {}), dict(defaults or {})

    def to_timm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        error = f"a state_dict timm's {architecture} cannot hold"
        return _rename(state_dict, names, to_conv, error)

    def to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        error = f"not a timm {architecture} state_dict torchvision's network can hold"
        renamed = _rename(state_dict, inverse, to_linear, error)
        if "bn_eps" in fixed:  # the one option that changes eval logits
            warn_timm_defaults_differ(architecture, {"bn_eps": fixed["bn_eps"]})
        return renamed

    def model_args(kwargs: dict[str, Any]) -> dict[str, Any]:
        args = dict(fixed)
        for key, value in kwargs.items():
            if key in options:
                if value:
                    args[options[key]] = float(value)
            elif key in ("num_classes", "in_chans"):  # timm reads them from config.json
                continue
            elif key not in defaults or value != defaults[key]:
                raise ValueError(
                    f"timm's {architecture} has no option for {key}={value!r}: export this "
                    "model with layout='torchvision'"
                )
        return args

    return timm_interop(
        architecture, to_timm, to_torchvision, marker="conv_stem.weight", model_args=model_args
    )


class InvertedResidual(Layer):
    """torchvision's MobileNet V2 `InvertedResidual`: 1x1 expansion (absent at ratio 1), 3x3
    depthwise convolution, linear 1x1 projection, and the shortcut where shapes allow."""

    conv: tuple
    use_res_connect: bool = eqx.field(static=True)

    def __init__(
        self, inp: int, oup: int, stride: int, expand_ratio: int, *, keys: Iterator[PRNGKeyArray]
    ):
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list = []
        if expand_ratio != 1:
            layers.append(conv_norm_activation(keys, inp, hidden_dim, 1, activation=ReLU6))
        layers.append(
            conv_norm_activation(
                keys, hidden_dim, hidden_dim, 3, stride, groups=hidden_dim, activation=ReLU6
            )
        )
        layers += [conv2d_kaiming(keys, hidden_dim, oup, 1, bias=False), BatchNorm2d(oup)]
        self.conv = tuple(layers)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        y, conv = run_sequential(self.conv, x, channels_last=channels_last, key=key)
        new = eqx.tree_at(lambda b: b.conv, self, conv)
        return (x + y if self.use_res_connect else y), new


# t (expansion), c (channels), n (blocks), s (first stride): torchvision's table.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
_SETTING += ((6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(ZooModel):
    """torchvision's `MobileNetV2`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `num_classes`, `width_mult`, `inverted_residual_setting`, `round_nearest`, `dropout`:
      as in torchvision (`num_classes=0`: no final `Linear`, calls return the pooled
      features).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives dropout in
    train mode.
    """

    first_conv_path: ClassVar[str] = "features.0.0"
    classifier_path: ClassVar[str] = "classifier.1"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        inverted_residual_setting: tuple[tuple[int, int, int, int], ...] | None = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        setting = _SETTING if inverted_residual_setting is None else inverted_residual_setting
        if len(setting) == 0 or len(setting[0]) != 4:
            raise ValueError(
                f"inverted_residual_setting should be non-empty or a 4-element list, got {setting}"
            )
        input_channel = make_divisible(32 * width_mult, round_nearest)
        last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list = [
            conv_norm_activation(keys, in_chans, input_channel, 3, 2, activation=ReLU6)
        ]
        channels, reductions = [input_channel], [2]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(
                    InvertedResidual(input_channel, output_channel, stride, t, keys=keys)
                )
                input_channel = output_channel
                channels.append(output_channel)
                reductions.append(reductions[-1] * stride)
        features.append(
            conv_norm_activation(keys, input_channel, last_channel, 1, activation=ReLU6)
        )
        channels.append(last_channel)
        reductions.append(reductions[-1])
        self.features = tuple(features)
        final = classifier_linear(keys, last_channel, num_classes) if num_classes else None
        self.classifier = (Dropout(dropout), final)
        self.num_features = last_channel
        self.feature_info = tuple(
            FeatureInfo(channels[i], reductions[i], f"features.{i}") for i in stage_ends(reductions)
        )

    def config_kwargs(self) -> dict[str, float]:
        return {"dropout": float(self.classifier[0].p)}

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


def _mobilenet_v2_timm_names() -> dict[str, str]:
    """torchvision's `mobilenet_v2` module paths -> timm's `mobilenetv2_100`'s: a stage per
    `_SETTING` row; a block at expansion 1 is timm's `DepthwiseSeparableConv`."""
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1"}
    index = 1
    for stage, (t, _, n, _) in enumerate(_SETTING):
        for b in range(n):
            # At expansion 1 torchvision's block has no expansion conv.
            subs = ("0.0", "0.1", "1", "2") if t == 1 else ("0.0", "0.1", "1.0", "1.1", "2", "3")
            layers = [f"features.{index}.conv.{sub}" for sub in subs]
            names |= timm_block_names(f"blocks.{stage}.{b}", "ds" if t == 1 else "ir", layers)
            index += 1
    return names | {
        f"features.{index}.0": "conv_head",
        f"features.{index}.1": "bn2",
        "classifier.1": "classifier",
    }


@register(
    MobileNetV2,
    torch_builder="torchvision",
    torchvision_weights="MobileNet_V2_Weights",
    test_cfg={"no_dropout": {"dropout": 0.0}},
    # The same network (ReLU6, BatchNorm eps 1e-5, momentum 0.1, the dropout before the
    # classifier). torchvision's other options are refused where an export records them
    # (`model_kwargs`; `config_kwargs` has the dropout only).
    **timm_builder_interop(
        "mobilenetv2_100",
        _mobilenet_v2_timm_names(),
        options={"dropout": "drop_rate"},
        defaults={"width_mult": 1.0, "inverted_residual_setting": None, "round_nearest": 8},
    ),
)
def mobilenet_v2(*, key: PRNGKeyArray | None = None, **kwargs) -> MobileNetV2:
    """MobileNet V2 (torchvision `mobilenet_v2`). `key` defaults to `jax.random.key(0)`."""
    return MobileNetV2(key=jax.random.key(0) if key is None else key, **kwargs)
