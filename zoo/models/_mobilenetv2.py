"""MobileNet V2 mirroring `torchvision.models.mobilenetv2`.

`features` is torchvision's `nn.Sequential` as a tuple (`features.3.conv.1.0.weight`); a call
returns `(logits, model)` as for every zoo model.
"""

from collections.abc import Iterator
from typing import ClassVar, Self

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


@register(
    MobileNetV2,
    torch_builder="torchvision",
    torchvision_weights="MobileNet_V2_Weights",
    test_cfg={"no_dropout": {"dropout": 0.0}},
)
def mobilenet_v2(*, key: PRNGKeyArray | None = None, **kwargs) -> MobileNetV2:
    """MobileNet V2 (torchvision `mobilenet_v2`). `key` defaults to `jax.random.key(0)`."""
    return MobileNetV2(key=jax.random.key(0) if key is None else key, **kwargs)
