"""ShuffleNet V2 mirroring `torchvision.models.shufflenetv2`.

Attribute paths equal torchvision's state_dict keys (`stage2.0.branch1.0.weight`,
`conv5.1.running_var`); `conv1`, the stages and `conv5` are torchvision's `nn.Sequential`s as
tuples. A call returns `(logits, model)` as for every zoo model.
"""

from collections.abc import Iterator, Sequence
from typing import ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    BatchNorm2d,
    Conv2d,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    run_sequential,
)
from ._base import ConvHeadModel, FeatureInfo, head_stage_ends, run_stages
from ._mobilenetv2 import _keys


def channel_shuffle(
    x: Float[Array, "batch channels height width"], groups: int, *, channels_last: bool = False
) -> Float[Array, "batch channels height width"]:
    """torchvision's `channel_shuffle`: the channels viewed as `(groups, channels // groups)`,
    transposed and flattened, so output channel `j * groups + i` is input channel
    `i * (channels // groups) + j`. NCHW, or NHWC with `channels_last=True`."""
    axis = 3 if channels_last else 1
    per_group = x.shape[axis] // groups
    grouped = x.reshape(*x.shape[:axis], groups, per_group, *x.shape[axis + 1 :])
    return jnp.swapaxes(grouped, axis, axis + 1).reshape(x.shape)


def _depthwise_conv(keys: Iterator[PRNGKeyArray], channels: int, stride: int) -> Conv2d:
    """torchvision's `InvertedResidual.depthwise_conv`: 3x3, padding 1, no bias, torch's
    default initialisation."""
    return Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False, key=next(keys))


def _conv1x1(keys: Iterator[PRNGKeyArray], in_channels: int, out_channels: int) -> Conv2d:
    return Conv2d(in_channels, out_channels, 1, bias=False, key=next(keys))


class InvertedResidual(Layer):
    """torchvision's ShuffleNet V2 `InvertedResidual`. With stride 1 the input's channels
    split in half: the first half passes, the second goes through `branch2` (1x1, 3x3
    depthwise, 1x1); with a larger stride both branches see the whole input (`branch1`:
    depthwise, 1x1). The halves are concatenated, then shuffled (`channel_shuffle`, 2
    groups).

    **Arguments:**

    - `inp`, `oup`, `stride`: as in torchvision (with stride 1, `inp == oup`).
    - `keys`: PRNG keys for torch's default initialisation (torchvision leaves it).
    """

    branch1: tuple
    branch2: tuple
    stride: int = eqx.field(static=True)

    def __init__(self, inp: int, oup: int, stride: int, *, keys: Iterator[PRNGKeyArray]):
        if not 1 <= stride <= 3:
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(
                f"Invalid combination of stride {stride}, inp {inp} and oup {oup} values. If "
                "stride == 1 then inp should be equal to oup // 2 << 1."
            )
        if stride > 1:
            self.branch1 = (
                _depthwise_conv(keys, inp, stride),
                BatchNorm2d(inp),
                _conv1x1(keys, inp, branch_features),
                BatchNorm2d(branch_features),
                ReLU(),
            )
        else:
            self.branch1 = ()  # torchvision's empty `nn.Sequential()`: no parameters
        self.branch2 = (
            _conv1x1(keys, inp if stride > 1 else branch_features, branch_features),
            BatchNorm2d(branch_features),
            ReLU(),
            _depthwise_conv(keys, branch_features, stride),
            BatchNorm2d(branch_features),
            _conv1x1(keys, branch_features, branch_features),
            BatchNorm2d(branch_features),
            ReLU(),
        )

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key  # no randomness in ShuffleNet
        axis = 3 if channels_last else 1
        if self.stride == 1:
            x1, x2 = jnp.split(x, 2, axis=axis)  # torch's `chunk(2)` of an even width
            y2, branch2 = run_sequential(self.branch2, x2, channels_last=channels_last)
            out = jnp.concatenate((x1, y2), axis=axis)
            new = eqx.tree_at(lambda b: b.branch2, self, branch2)
        else:
            y1, branch1 = run_sequential(self.branch1, x, channels_last=channels_last)
            y2, branch2 = run_sequential(self.branch2, x, channels_last=channels_last)
            out = jnp.concatenate((y1, y2), axis=axis)
            new = eqx.tree_at(lambda b: (b.branch1, b.branch2), self, (branch1, branch2))
        return channel_shuffle(out, 2, channels_last=channels_last), new


class ShuffleNetV2(ConvHeadModel):
    """torchvision's `ShuffleNetV2`, as an Equinox module over NCHW batches; torch's default
    initialisation, as torchvision leaves it.

    **Arguments:**

    - `stages_repeats`: blocks in `stage2`, `stage3`, `stage4` (3 ints).
    - `stages_out_channels`: the widths of `conv1`, the three stages and `conv5` (5 ints).
    - `num_classes`: as in torchvision (`num_classes=0`: no `fc`, calls return the pooled
      `conv5` features).
    - `inverted_residual`: the block class, as in torchvision (called
      `inverted_residual(inp, oup, stride, keys=keys)`).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for the initialisation.

    `feature_info` lists five maps: `conv1` (reduction 2), `maxpool` (4) and the three
    stages (8, 16, 32). `forward_features` returns what the 1x1 `conv5` after them makes of
    the last (see `ConvHeadModel`).
    """

    first_conv_path: ClassVar[str] = "conv1.0"
    classifier_path: ClassVar[str] = "fc"
    head_modules: ClassVar[tuple[str, ...]] = ("fc",)
    global_pool: ClassVar[str] = "avg"
    conv1: tuple
    maxpool: MaxPool2d
    stage2: tuple
    stage3: tuple
    stage4: tuple
    conv5: tuple
    fc: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        stages_repeats: Sequence[int],
        stages_out_channels: Sequence[int],
        num_classes: int = 1000,
        inverted_residual: type[Layer] = InvertedResidual,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        keys = _keys(key)
        width = stages_out_channels[0]
        self.conv1 = (
            Conv2d(in_chans, width, 3, 2, 1, bias=False, key=next(keys)),
            BatchNorm2d(width),
            ReLU(),
        )
        self.maxpool = MaxPool2d(3, 2, 1)
        stages = []
        for repeats, out in zip(stages_repeats, stages_out_channels[1:4], strict=True):
            blocks = [inverted_residual(width, out, 2, keys=keys)]
            blocks += [inverted_residual(out, out, 1, keys=keys) for _ in range(repeats - 1)]
            stages.append(tuple(blocks))
            width = out
        self.stage2, self.stage3, self.stage4 = stages
        last = stages_out_channels[-1]
        self.conv5 = (_conv1x1(keys, width, last), BatchNorm2d(last), ReLU())
        self.fc = Linear(last, num_classes, key=next(keys)) if num_classes else None
        self.num_features = last
        widths, names = stages_out_channels, ("conv1", "maxpool", "stage2", "stage3", "stage4")
        self.feature_info = tuple(
            FeatureInfo(w, 2 ** (i + 1), n)
            for i, (w, n) in enumerate(zip((widths[0], *widths[:4]), names, strict=True))
        )

    def _forward_stages(
        self,
        x: Float[Array, "batch height width channels"],
        *,
        depth: int,
        key: PRNGKeyArray | None = None,
        head: bool | None = None,
    ) -> tuple[list[Array], Self]:
        del key  # no randomness in ShuffleNet
        trunk = (self.conv1, self.maxpool, self.stage2, self.stage3, self.stage4, self.conv5)
        ends, depth = head_stage_ends(range(len(self.feature_info)), depth, head, len(trunk))
        maps, (conv1, _, *rest) = run_stages(trunk, x, ends=ends, depth=depth, key=None)
        new = eqx.tree_at(
            lambda m: (m.conv1, m.stage2, m.stage3, m.stage4, m.conv5), self, (conv1, *rest)
        )
        return maps, new

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        del key
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))  # torchvision's `x.mean([2, 3])`
        return x if pre_logits or self.fc is None else self.fc(x)


def _shufflenet_v2(
    key: PRNGKeyArray | None, repeats: Sequence[int], channels: Sequence[int], **kwargs
) -> ShuffleNetV2:
    return ShuffleNetV2(repeats, channels, key=jax.random.key(0) if key is None else key, **kwargs)


_CFG = {"torch_builder": "torchvision"}
# Every variant but the smallest: float64 parity at the default test size, with `-m large`.
_SLOW = {"slow": True}
# The 1.5x and 2.0x weights (torchvision's later recipe) are evaluated resized to 232.
_RESIZE_232 = {"crop_pct": 224 / 232}


@register(ShuffleNetV2, torchvision_weights="ShuffleNet_V2_X0_5_Weights", **_CFG)
def shufflenet_v2_x0_5(*, key: PRNGKeyArray | None = None, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x (torchvision `shufflenet_v2_x0_5`). `key` defaults to
    `jax.random.key(0)`; `kwargs`: `num_classes`, `in_chans`."""
    return _shufflenet_v2(key, (4, 8, 4), (24, 48, 96, 192, 1024), **kwargs)


@register(ShuffleNetV2, torchvision_weights="ShuffleNet_V2_X1_0_Weights", test_cfg=_SLOW, **_CFG)
def shufflenet_v2_x1_0(*, key: PRNGKeyArray | None = None, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x (torchvision `shufflenet_v2_x1_0`)."""
    return _shufflenet_v2(key, (4, 8, 4), (24, 116, 232, 464, 1024), **kwargs)


@register(
    ShuffleNetV2,
    torchvision_weights="ShuffleNet_V2_X1_5_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_RESIZE_232,
)
def shufflenet_v2_x1_5(*, key: PRNGKeyArray | None = None, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x (torchvision `shufflenet_v2_x1_5`)."""
    return _shufflenet_v2(key, (4, 8, 4), (24, 176, 352, 704, 1024), **kwargs)


@register(
    ShuffleNetV2,
    torchvision_weights="ShuffleNet_V2_X2_0_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_RESIZE_232,
)
def shufflenet_v2_x2_0(*, key: PRNGKeyArray | None = None, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 2.0x (torchvision `shufflenet_v2_x2_0`)."""
    return _shufflenet_v2(key, (4, 8, 4), (24, 244, 488, 976, 2048), **kwargs)
