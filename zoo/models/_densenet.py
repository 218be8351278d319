"""DenseNet 121, 161, 169 and 201 mirroring `torchvision.models.densenet`.

torchvision's `features` is an `nn.Sequential(OrderedDict)` (`conv0`, `norm0`, `relu0`,
`pool0`, `denseblock1`, `transition1`, ..., `denseblock4`, `norm5`) and each dense block an
`nn.ModuleDict` of `denselayerN`: both are `NamedSequential`s here, so attribute paths are
torchvision's state_dict keys (`features.denseblock2.denselayer7.conv1.weight`). A call
returns `(logits, model)` as for every zoo model.

torchvision's pretrained checkpoints still use the old key names (`denselayer1.norm.1.weight`);
`torchvision_checkpoint` renames them, as torchvision's `_load_state_dict` does.

timm's `densenet121` (and 161, 169, 201) is the same network under the same keys: its
`layout="timm"` export is the state_dict as it is (see `_timm_args` for the options).
"""

import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Layer,
    Linear,
    MaxPool2d,
    NamedSequential,
    ReLU,
    normal,
    relu,
    split_keys,
    zeros,
)
from ._base import FeatureInfo, ZooModel, run_stages
from ._mobilenetv2 import _keys
from ._timm import timm_interop


def _conv(
    keys: Iterator[PRNGKeyArray],
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
) -> Conv2d:
    """`nn.Conv2d(bias=False)` as DenseNet initialises it: `kaiming_normal_` with torch's
    defaults (fan in, gain sqrt(2)), i.e. `normal(0, sqrt(2 / fan_in))`."""
    conv = Conv2d(
        in_channels, out_channels, kernel_size, stride, padding, bias=False, key=next(keys)
    )
    std = math.sqrt(2.0 / math.prod(conv.weight.shape[1:]))
    return eqx.tree_at(lambda c: c.weight, conv, normal(next(keys), conv.weight.shape, std))


def _concat(inputs: Sequence[Array], channels_last: bool) -> Array:
    return jnp.concatenate(inputs, axis=-1 if channels_last else 1)


def _bn_function(
    norm1: BatchNorm2d, relu1: ReLU, conv1: Conv2d, inputs: Sequence[Array], channels_last: bool
) -> tuple[Array, BatchNorm2d]:
    """torchvision's `bn_function`: the 1x1 bottleneck on the concatenated features, and
    `norm1` with its updated buffers."""
    y, norm1 = norm1(_concat(inputs, channels_last), channels_last=channels_last)
    return conv1(relu1(y), channels_last=channels_last), norm1


# `memory_efficient=True`: the backward recomputes the concatenation and the bottleneck from
# the layer's inputs (the earlier layers' outputs, saved anyway) instead of keeping the
# concatenated batch, its normalisation and the ReLU's mask per layer; as torch's
# `checkpoint`, it changes memory, not numbers.
_bn_function_checkpointed = eqx.filter_checkpoint(_bn_function)


class DenseLayer(Layer):
    """torchvision's `_DenseLayer`: BatchNorm, ReLU, 1x1 convolution to `bn_size *
    growth_rate` channels (the bottleneck), BatchNorm, ReLU, 3x3 convolution to
    `growth_rate`, then dropout (`drop_rate`, train mode only).

    A call takes the block's feature maps so far (a list, or one array) and returns `(new
    features, layer)`; the key drives the dropout.
    """

    norm1: BatchNorm2d
    relu1: ReLU
    conv1: Conv2d
    norm2: BatchNorm2d
    relu2: ReLU
    conv2: Conv2d
    # torchvision calls `F.dropout` (no module, no state_dict entry); this holds its rate
    # and follows train and eval mode.
    dropout: Dropout
    memory_efficient: bool = eqx.field(static=True)

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool = False,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.norm1 = BatchNorm2d(num_input_features)
        self.relu1 = ReLU()
        self.conv1 = _conv(keys, num_input_features, bn_size * growth_rate, 1)
        self.norm2 = BatchNorm2d(bn_size * growth_rate)
        self.relu2 = ReLU()
        self.conv2 = _conv(keys, bn_size * growth_rate, growth_rate, 3, padding=1)
        self.dropout = Dropout(float(drop_rate))
        self.memory_efficient = bool(memory_efficient)

    @property
    def drop_rate(self) -> float:
        return self.dropout.p

    def __call__(
        self,
        x: Array | Sequence[Array],
        *,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Array, Self]:
        inputs = list(x) if isinstance(x, list | tuple) else [x]
        bn_function = _bn_function_checkpointed if self.memory_efficient else _bn_function
        y, norm1 = bn_function(self.norm1, self.relu1, self.conv1, inputs, channels_last)
        y, norm2 = self.norm2(y, channels_last=channels_last)
        y = self.dropout(self.conv2(self.relu2(y), channels_last=channels_last), key=key)
        return y, eqx.tree_at(lambda m: (m.norm1, m.norm2), self, (norm1, norm2))


@jax.tree_util.register_pytree_with_keys_class  # a subclass needs its own registration
class DenseBlock(NamedSequential):
    """torchvision's `_DenseBlock` (an `nn.ModuleDict` of `denselayer1`, `denselayer2`,
    ...): each layer reads the concatenation of the block's input and every earlier layer's
    output; the block returns the concatenation of all of them.

    A call `block(x, channels_last=, key=)` returns `(y, block)`, the layers carrying their
    updated buffers.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "DenseBlock" + super().__repr__().removeprefix("NamedSequential")

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, "DenseBlock"]:
        keys = split_keys(key, len(self))
        features, new = [x], []
        for layer, k in zip(self, keys, strict=True):
            y, layer = layer(features, channels_last=channels_last, key=k)
            features.append(y)
            new.append(layer)
        return _concat(features, channels_last), DenseBlock(zip(self.names, new, strict=True))


def dense_block(
    num_layers: int,
    num_input_features: int,
    bn_size: int,
    growth_rate: int,
    drop_rate: float,
    memory_efficient: bool = False,
    *,
    keys: Iterator[PRNGKeyArray],
) -> DenseBlock:
    """torchvision's `_DenseBlock(...)`: layer `i` reads `num_input_features + i *
    growth_rate` channels."""
    return DenseBlock(
        (
            f"denselayer{i + 1}",
            DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate,
                bn_size,
                drop_rate,
                memory_efficient,
                keys=keys,
            ),
        )
        for i in range(num_layers)
    )


class Transition(Layer):
    """torchvision's `_Transition` (an `nn.Sequential` with named members): BatchNorm, ReLU,
    1x1 convolution, 2x2 average pool of stride 2."""

    norm: BatchNorm2d
    relu: ReLU
    conv: Conv2d
    pool: AvgPool2d

    def __init__(
        self, num_input_features: int, num_output_features: int, *, keys: Iterator[PRNGKeyArray]
    ):
        self.norm = BatchNorm2d(num_input_features)
        self.relu = ReLU()
        self.conv = _conv(keys, num_input_features, num_output_features, 1)
        self.pool = AvgPool2d(kernel_size=2, stride=2)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key
        y, norm = self.norm(x, channels_last=channels_last)
        y = self.conv(self.relu(y), channels_last=channels_last)
        return self.pool(y, channels_last=channels_last), eqx.tree_at(lambda m: m.norm, self, norm)


class DenseNet(ZooModel):
    """torchvision's `DenseNet` (DenseNet-BC), as an Equinox module over NCHW batches.

    **Arguments:**

    - `growth_rate`, `block_config`, `num_init_features`, `bn_size`, `drop_rate`,
      `num_classes`: as in torchvision (`num_classes=0`: no `classifier`, calls return the
      pooled features, as in timm).
    - `memory_efficient`: recompute each dense layer's bottleneck (concatenation, `norm1`,
      ReLU, 1x1 convolution) in the backward instead of keeping it (`jax.checkpoint`, as
      torchvision's `torch.utils.checkpoint`): the same logits and gradients from fewer
      saved values (`jax.vjp`'s residuals for densenet121 at 8x3x96x96: 117 MiB instead of
      225). Under one `jit` XLA:CPU may recompute them itself: its train step's temporary
      memory was the same either way. torch's recomputation runs each `norm1` in train
      mode a second time, updating its running statistics twice per step; here they are
      updated once, as without `memory_efficient`.
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation (convolutions `kaiming_normal_`,
      BatchNorm ones and zeros, the classifier torch's default with a zero bias).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives the dense
    layers' dropout in train mode (`drop_rate > 0`).

    `feature_info` lists timm's five maps: the stem after its ReLU (`features.relu0`, timm's
    `features.norm0`, a BatchNorm with its ReLU), dense blocks 1-3 (before their
    transitions) and `features.norm5` after the ReLU that torchvision's `forward` applies to
    it (timm's `norm5` includes it). `forward_features` returns that last map, as timm's,
    and `forward_head` pools it.

    Inputs need at least 29x29 pixels (torchvision's `min_size`).
    """

    first_conv_path: ClassVar[str] = "features.conv0"
    classifier_path: ClassVar[str] = "classifier"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: NamedSequential
    classifier: Linear | None
    memory_efficient: bool = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0,
        num_classes: int = 1000,
        memory_efficient: bool = False,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        members: list[tuple[str, Any]] = [
            ("conv0", _conv(keys, in_chans, num_init_features, 7, 2, 3)),
            ("norm0", BatchNorm2d(num_init_features)),
            ("relu0", ReLU()),
            ("pool0", MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        info, reduction = [FeatureInfo(num_init_features, 2, "features.relu0")], 4
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = dense_block(
                num_layers,
                num_features,
                bn_size,
                growth_rate,
                drop_rate,
                memory_efficient,
                keys=keys,
            )
            members.append((f"denseblock{i + 1}", block))
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                info.append(FeatureInfo(num_features, reduction, f"features.denseblock{i + 1}"))
                reduction *= 2
                transition = Transition(num_features, num_features // 2, keys=keys)
                members.append((f"transition{i + 1}", transition))
                num_features = num_features // 2
        members.append(("norm5", BatchNorm2d(num_features)))
        info.append(FeatureInfo(num_features, reduction, "features.norm5"))
        self.features = NamedSequential(members)
        self.classifier = None
        if num_classes:  # torch's default weight, bias constant 0
            linear = Linear(num_features, num_classes, key=next(keys))
            self.classifier = eqx.tree_at(lambda m: m.bias, linear, zeros((num_classes,)))
        self.memory_efficient = bool(memory_efficient)
        self.num_features = num_features
        self.feature_info = tuple(info)

    def config_kwargs(self) -> dict[str, Any]:
        layer = self.features.denseblock1[0]
        return {"drop_rate": float(layer.drop_rate), "memory_efficient": self.memory_efficient}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        names = self.features.names
        ends = [names.index(info.module.split(".", 1)[1]) for info in self.feature_info]
        maps, layers = run_stages(tuple(self.features), x, ends=ends, depth=depth, key=key)
        if depth == len(ends):  # torchvision's `forward`: F.relu on the features' output
            maps[-1] = relu(maps[-1])
        features = NamedSequential(zip(names, layers, strict=True))
        return maps, eqx.tree_at(lambda m: m.features, self, features)

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key=None,
    ) -> Float[Array, "batch out"]:
        del key  # no dropout in the head
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))
        return x if pre_logits or self.classifier is None else self.classifier(x)


# torchvision's `_load_state_dict`: its checkpoints (ported from LuaTorch) name a dense
# layer's modules `norm.1`, `relu.1`, `conv.1`, ..., which are `norm1`, `relu1`, `conv1` now.
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def torchvision_checkpoint(state_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """torchvision's DenseNet checkpoint with its old keys (`...denselayer1.norm.1.weight`)
    renamed as torchvision's `_load_state_dict` renames them (`...denselayer1.norm1.weight`);
    other keys, and their order, kept. `kwargs` need nothing."""
    del kwargs
    renamed = {}
    for name, value in state_dict.items():
        match = _OLD_KEY.match(name)
        renamed[match.group(1) + match.group(2) if match else name] = value
    return renamed


def _densenet(
    growth_rate: int,
    block_config: tuple[int, int, int, int],
    num_init_features: int,
    key: PRNGKeyArray | None,
    kwargs: dict[str, Any],
) -> DenseNet:
    return DenseNet(
        growth_rate,
        block_config,
        num_init_features,
        key=jax.random.key(0) if key is None else key,
        **kwargs,
    )


def _timm_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's `DenseNet` options for the model's: torchvision's `drop_rate` (dropout after
    each dense layer) is timm's `proj_drop_rate` (timm's `drop_rate` is a dropout before the
    classifier, which torchvision has not); `memory_efficient` (recomputation, the same
    function) is timm's too. timm's BatchNorms are torch's defaults, as torchvision's, and its
    `norm5` applies the ReLU torchvision's `forward` applies after `features`."""
    args: dict[str, Any] = {}
    if float(kwargs.get("drop_rate", 0.0)):
        args["proj_drop_rate"] = float(kwargs["drop_rate"])
    if kwargs.get("memory_efficient", False):
        args["memory_efficient"] = True
    return args


def _timm(architecture: str) -> dict[str, Any]:
    # The same keys (timm's own torchvision filter only renames the old `norm.1` keys): the
    # layout is the state_dict as it is, and timm's checkpoints need no adapter. Not
    # `timm_name`: timm's `features_only` DenseNet flattens its names (tests/test_densenet.py).
    return timm_interop(architecture, model_args=_timm_args)


# 33x33 gives maps of 17, 9, 4, 2 and 1 pixels: the smallest odd size past torchvision's
# 29x29 minimum, where every BatchNorm of the train-mode test still sees 4 values.
# `train_parity_large`: densenet121's float64 train step compiles ~23,000 operations (a
# minute of the default run); tests/test_densenet.py runs the same train-mode comparison on
# two small DenseNets by default, the full one runs with `-m large`.
_TEST = {"input_size": (3, 33, 33), "no_dropout": {"drop_rate": 0.0}, "train_parity_large": True}
_SLOW = _TEST | {"slow": True}
_CFG = {"torch_builder": "torchvision", "torchvision_checkpoint": torchvision_checkpoint}


@register(
    DenseNet,
    torchvision_weights="DenseNet121_Weights",
    test_cfg=_TEST,
    **_CFG,
    **_timm("densenet121"),
)
def densenet121(*, key: PRNGKeyArray | None = None, **kwargs) -> DenseNet:
    """DenseNet-121 (torchvision `densenet121`). `key` defaults to `jax.random.key(0)`."""
    return _densenet(32, (6, 12, 24, 16), 64, key, kwargs)


@register(
    DenseNet,
    torchvision_weights="DenseNet161_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("densenet161"),
)
def densenet161(*, key: PRNGKeyArray | None = None, **kwargs) -> DenseNet:
    """DenseNet-161 (torchvision `densenet161`)."""
    return _densenet(48, (6, 12, 36, 24), 96, key, kwargs)


@register(
    DenseNet,
    torchvision_weights="DenseNet169_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("densenet169"),
)
def densenet169(*, key: PRNGKeyArray | None = None, **kwargs) -> DenseNet:
    """DenseNet-169 (torchvision `densenet169`)."""
    return _densenet(32, (6, 12, 32, 32), 64, key, kwargs)


@register(
    DenseNet,
    torchvision_weights="DenseNet201_Weights",
    test_cfg=_SLOW,
    **_CFG,
    **_timm("densenet201"),
)
def densenet201(*, key: PRNGKeyArray | None = None, **kwargs) -> DenseNet:
    """DenseNet-201 (torchvision `densenet201`)."""
    return _densenet(32, (6, 12, 48, 32), 64, key, kwargs)
