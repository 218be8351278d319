"""SqueezeNet 1.0 and 1.1 mirroring `torchvision.models.squeezenet`.

`features` is torchvision's `nn.Sequential` as a tuple of convolutions, pools and `Fire`
modules (`features.3.expand3x3.weight`); the classifier is a sequential too, whose final
layer is a 1x1 convolution (`classifier.1.weight`, shaped `(num_classes, 512, 1, 1)`). A call
returns `(logits, model)` as for every zoo model.
"""

import math
from collections.abc import Iterator
from typing import ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    AdaptiveAvgPool2d,
    Conv2d,
    Dropout,
    Layer,
    MaxPool2d,
    ReLU,
    normal,
    relu,
    run_sequential,
    uniform,
    zeros,
)
from ._alexnet import SequentialTrunk, trunk_feature_info
from ._base import FeatureInfo
from ._mobilenetv2 import _keys


def _conv(
    keys: Iterator[PRNGKeyArray],
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    std: float | None = None,
) -> Conv2d:
    """`nn.Conv2d` as SqueezeNet initialises it: `kaiming_uniform_` (gain sqrt(2), fan in),
    or `normal_(0, std)` for the final convolution; bias zero."""
    conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, key=next(keys))
    shape = conv.weight.shape
    if std is None:
        weight = uniform(next(keys), shape, math.sqrt(6.0 / math.prod(shape[1:])))
    else:
        weight = normal(next(keys), shape, std)
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, zeros((out_channels,))))


class Fire(Layer):
    """torchvision's `Fire`: a 1x1 squeeze, then 1x1 and 3x3 expansions side by side,
    concatenated along the channels (each after a ReLU)."""

    squeeze: Conv2d
    expand1x1: Conv2d
    expand3x3: Conv2d

    def __init__(
        self,
        inplanes: int,
        squeeze_planes: int,
        expand1x1_planes: int,
        expand3x3_planes: int,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.squeeze = _conv(keys, inplanes, squeeze_planes, 1)
        self.expand1x1 = _conv(keys, squeeze_planes, expand1x1_planes, 1)
        self.expand3x3 = _conv(keys, squeeze_planes, expand3x3_planes, 3, padding=1)

    @property
    def out_channels(self) -> int:
        return self.expand1x1.out_channels + self.expand3x3.out_channels

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        x = relu(self.squeeze(x, channels_last=channels_last))
        branches = [
            relu(self.expand1x1(x, channels_last=channels_last)),
            relu(self.expand3x3(x, channels_last=channels_last)),
        ]
        return jnp.concatenate(branches, axis=-1 if channels_last else 1), self


class SqueezeNet(SequentialTrunk):
    """torchvision's `SqueezeNet`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `version`: `"1_0"` or `"1_1"` (fewer channels early, 2.4x less computation).
    - `num_classes`, `dropout`: as in torchvision (`num_classes=0`: no final convolution,
      calls return the globally pooled 512 features).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    The classifier is a 1x1 convolution, so `get_classifier()` is a `Conv2d` and
    `reset_classifier` makes one; `pre_logits` are the globally pooled features.
    """

    first_conv_path: ClassVar[str] = "features.0"
    classifier_path: ClassVar[str] = "classifier.1"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        version: str = "1_0",
        num_classes: int = 1000,
        dropout: float = 0.5,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        fire = lambda *planes: Fire(*planes, keys=keys)  # noqa: E731
        pool = lambda: MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        if version == "1_0":
            features = (
                _conv(keys, in_chans, 96, 7, 2), ReLU(), pool(),
                fire(96, 16, 64, 64), fire(128, 16, 64, 64), fire(128, 32, 128, 128), pool(),
                fire(256, 32, 128, 128), fire(256, 48, 192, 192), fire(384, 48, 192, 192),
                fire(384, 64, 256, 256), pool(),
                fire(512, 64, 256, 256),
            )  # fmt: skip
        elif version == "1_1":
            features = (
                _conv(keys, in_chans, 64, 3, 2), ReLU(), pool(),
                fire(64, 16, 64, 64), fire(128, 16, 64, 64), pool(),
                fire(128, 32, 128, 128), fire(256, 32, 128, 128), pool(),
                fire(256, 48, 192, 192), fire(384, 48, 192, 192), fire(384, 64, 256, 256),
                fire(512, 64, 256, 256),
            )  # fmt: skip
        else:
            raise ValueError(f"Unsupported SqueezeNet version {version}: 1_0 or 1_1 expected")
        self.features = features
        final = _conv(keys, 512, num_classes, 1, std=0.01) if num_classes else None
        self.classifier = (Dropout(dropout), final, ReLU(), AdaptiveAvgPool2d((1, 1)))
        self.num_features = 512
        self.feature_info = trunk_feature_info(features)

    @property
    def num_classes(self) -> int:
        head = self.get_classifier()
        return 0 if head is None else int(head.out_channels)

    def reset_classifier(self, num_classes: int, *, key: PRNGKeyArray | None = None) -> Self:
        """The model with a new final 1x1 convolution for `num_classes` (torch's default
        init), or none for `num_classes=0`, when calls return the pooled features."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        key = jax.random.key(0) if key is None else key
        head = Conv2d(self.num_features, num_classes, 1, key=key) if num_classes else None
        return eqx.tree_at(lambda m: m.classifier[1], self, head, is_leaf=lambda x: x is None)

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        if pre_logits or self.classifier[1] is None:
            return x.mean(axis=(1, 2) if channels_last else (2, 3))
        x, _ = run_sequential(self.classifier, x, channels_last=channels_last, key=key)
        return x.reshape(x.shape[0], -1)


# The reductions are nominal: the unpadded stems shrink 64 pixels to 31 (1.1) or 29 (1.0).
# At 33x33, 1.1's maps are exactly size // reduction, as the feature-map test checks.
_TEST = {"input_size": (3, 33, 33), "any_size": False, "no_dropout": {"dropout": 0.0}}
_CFG = {"torch_builder": "torchvision"}


@register(
    SqueezeNet,
    torchvision_weights="SqueezeNet1_0_Weights",
    test_cfg=_TEST | {"slow": True},
    **_CFG,
)
def squeezenet1_0(*, key: PRNGKeyArray | None = None, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0 (torchvision `squeezenet1_0`)."""
    return SqueezeNet("1_0", key=jax.random.key(0) if key is None else key, **kwargs)


@register(SqueezeNet, torchvision_weights="SqueezeNet1_1_Weights", test_cfg=_TEST, **_CFG)
def squeezenet1_1(*, key: PRNGKeyArray | None = None, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1 (torchvision `squeezenet1_1`)."""
    return SqueezeNet("1_1", key=jax.random.key(0) if key is None else key, **kwargs)
