"""ResNet, ResNeXt and Wide ResNet mirroring `torchvision.models.resnet`.

Attribute paths equal torchvision's state_dict keys (`layer2.0.downsample.1.running_var`), so
weight conversion is a rename. A call returns `(logits, model)`: the model carries the updated
BatchNorm buffers in train mode and is returned unchanged in eval mode.
"""

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._compile import fusion_barrier
from .._registry import register
from ..layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Layer,
    Linear,
    MaxPool2d,
    kaiming_normal_fan_out as _kaiming,
    relu,
)
from ._base import FeatureInfo, ZooModel


def _keys(key: PRNGKeyArray) -> Iterator[PRNGKeyArray]:
    while True:
        key, sub = jax.random.split(key)
        yield sub


def _conv(
    keys: Iterator[PRNGKeyArray],
    in_planes: int,
    out_planes: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    dilation: int = 1,
) -> Conv2d:
    conv = Conv2d(
        in_planes, out_planes, kernel, stride, padding, dilation, groups, bias=False, key=next(keys)
    )
    # torchvision re-initialises every conv with kaiming_normal_(mode="fan_out", relu).
    return eqx.tree_at(lambda c: c.weight, conv, _kaiming(next(keys), conv.weight.shape))


def _conv3x3(keys, in_planes, out_planes, stride=1, groups=1, dilation=1) -> Conv2d:
    return _conv(keys, in_planes, out_planes, 3, stride, dilation, groups, dilation)


def _conv1x1(keys, in_planes, out_planes, stride=1) -> Conv2d:
    return _conv(keys, in_planes, out_planes, 1, stride)


Downsample = tuple[Conv2d, BatchNorm2d]


def _is_none(x: object) -> bool:
    return x is None


def _downsample(
    x: Array, downsample: Downsample | None, channels_last: bool
) -> tuple[Array, Downsample | None]:
    if downsample is None:
        return x, None
    conv, bn = downsample
    y, bn = bn(conv(x, channels_last=channels_last), channels_last=channels_last)
    return y, (conv, bn)


class BasicBlock(Layer):
    """torchvision's `BasicBlock`: two 3x3 convolutions and an identity (or 1x1) shortcut.

    A call `block(x)` takes NCHW (NHWC with `channels_last=True`) and returns
    `(y, block)` with the updated BatchNorm buffers.
    """

    expansion: ClassVar[int] = 1
    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    downsample: Downsample | None

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Downsample | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = _conv3x3(keys, inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv3x3(keys, planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key  # no randomness (a `zoo.layers.Layer`, so sequentials and faces call it)
        nhwc = {"channels_last": channels_last}
        out, bn1 = self.bn1(self.conv1(x, **nhwc), **nhwc)
        out, bn2 = self.bn2(self.conv2(relu(out), **nhwc), **nhwc)
        identity, downsample = _downsample(x, self.downsample, channels_last)
        new = eqx.tree_at(
            lambda b: (b.bn1, b.bn2, b.downsample), self, (bn1, bn2, downsample), is_leaf=_is_none
        )
        return relu(out + identity), new


class Bottleneck(Layer):
    """torchvision's `Bottleneck` (ResNet v1.5: the stride sits on the 3x3 convolution).

    Called like `BasicBlock`.
    """

    expansion: ClassVar[int] = 4
    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    conv3: Conv2d
    bn3: BatchNorm2d
    downsample: Downsample | None

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Downsample | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(keys, inplanes, width)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = _conv3x3(keys, width, width, stride, groups, dilation)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = _conv1x1(keys, width, planes * self.expansion)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key  # no randomness (a `zoo.layers.Layer`, so sequentials and faces call it)
        nhwc = {"channels_last": channels_last}
        out, bn1 = self.bn1(self.conv1(x, **nhwc), **nhwc)
        out, bn2 = self.bn2(self.conv2(relu(out), **nhwc), **nhwc)
        out, bn3 = self.bn3(self.conv3(relu(out), **nhwc), **nhwc)
        identity, downsample = _downsample(x, self.downsample, channels_last)
        new = eqx.tree_at(
            lambda b: (b.bn1, b.bn2, b.bn3, b.downsample),
            self,
            (bn1, bn2, bn3, downsample),
            is_leaf=_is_none,
        )
        return relu(out + identity), new


Block = BasicBlock | Bottleneck


def _run_layer(x: Array, layer: tuple[Block, ...]) -> tuple[Array, tuple[Block, ...]]:
    new_blocks = []
    for block in layer:
        x, block = block(x, channels_last=True)
        # Without it XLA:CPU recomputes the residual chain of earlier blocks inside the
        # backward's transposes (see `zoo.fusion_barrier`).
        x = fusion_barrier(x)
        new_blocks.append(block)
    return x, tuple(new_blocks)


class ResNet(ZooModel):
    """torchvision's `ResNet`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `block`: `BasicBlock` or `Bottleneck`.
    - `layers`: blocks per stage, e.g. `(2, 2, 2, 2)` for ResNet18.
    - `num_classes`, `zero_init_residual`, `groups`, `width_per_group`,
      `replace_stride_with_dilation`: as in torchvision (`num_classes=0`: no `fc`, calls
      return the pooled features, as in timm).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for the initialisation (torchvision's scheme).

    **Returns** (of a call `model(x)`): `(logits, model)`, the second carrying the updated
    BatchNorm buffers in train mode. Use `zoo.eval_mode(model)` for inference. The rest of
    the interface (`forward_features`, `forward_intermediates`, ...) is `ZooModel`'s.
    """

    first_conv_path: ClassVar[str] = "conv1"
    classifier_path: ClassVar[str] = "fc"
    head_modules: ClassVar[tuple[str, ...]] = ("fc",)
    global_pool: ClassVar[str] = "avg"
    conv1: Conv2d
    bn1: BatchNorm2d
    maxpool: MaxPool2d
    layer1: tuple[Block, ...]
    layer2: tuple[Block, ...]
    layer3: tuple[Block, ...]
    layer4: tuple[Block, ...]
    avgpool: AdaptiveAvgPool2d
    fc: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation should be None or a 3-element tuple, got "
                f"{replace_stride_with_dilation}"
            )
        self.conv1 = _conv(keys, in_chans, 64, 7, 2, 3)
        self.bn1 = BatchNorm2d(64)
        self.maxpool = MaxPool2d(3, 2, 1)
        self.avgpool = AdaptiveAvgPool2d()

        inplanes, dilation = 64, 1

        def make_layer(planes: int, blocks: int, stride: int, dilate: bool) -> tuple[Block, ...]:
            nonlocal inplanes, dilation
            previous_dilation = dilation
            if dilate:
                dilation *= stride
                stride = 1
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = (
                    _conv1x1(keys, inplanes, planes * block.expansion, stride),
                    BatchNorm2d(planes * block.expansion),
                )
            out = [
                block(
                    inplanes,
                    planes,
                    stride,
                    downsample,
                    groups,
                    width_per_group,
                    previous_dilation,
                    keys=keys,
                )
            ]
            inplanes = planes * block.expansion
            for _ in range(1, blocks):
                out.append(
                    block(
                        inplanes,
                        planes,
                        groups=groups,
                        base_width=width_per_group,
                        dilation=dilation,
                        keys=keys,
                    )
                )
            if zero_init_residual:
                # Each residual branch starts as the identity (torchvision's option).
                last_bn = "bn3" if block is Bottleneck else "bn2"
                out = [
                    eqx.tree_at(
                        lambda b: getattr(b, last_bn).weight,
                        b,
                        jnp.zeros_like(getattr(b, last_bn).weight),
                    )
                    for b in out
                ]
            return tuple(out)

        self.layer1 = make_layer(64, layers[0], 1, False)
        self.layer2 = make_layer(128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = make_layer(256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = make_layer(512, layers[3], 2, replace_stride_with_dilation[2])
        self.num_features = 512 * block.expansion
        fc_key = next(keys)
        self.fc = Linear(self.num_features, num_classes, key=fc_key) if num_classes else None
        # timm's feature maps: the stem's ReLU (torchvision's `relu`; timm calls it `act1`),
        # then each stage; a dilated stage keeps the previous reduction.
        info, reduction = [FeatureInfo(64, 2, "relu")], 4
        for i, (dilate, planes) in enumerate(
            zip((False, *replace_stride_with_dilation), (64, 128, 256, 512), strict=True)
        ):
            reduction *= 1 if (i == 0 or dilate) else 2
            info.append(FeatureInfo(planes * block.expansion, reduction, f"layer{i + 1}"))
        self.feature_info = tuple(info)

    def config_kwargs(self) -> dict[str, Any]:
        # A dilation keeps every shape, so a checkpoint cannot tell it: recorded (a layer is
        # dilated where its last block's 3x3 dilates more than the layer before's).
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        dilations = [layer[-1].conv2.dilation[0] for layer in layers]
        dilated = [b > a for a, b in itertools.pairwise(dilations)]
        return {"replace_stride_with_dilation": dilated} if any(dilated) else {}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        del key  # no randomness in a ResNet
        x, bn1 = self.bn1(self.conv1(x, channels_last=True), channels_last=True)
        x = relu(x)
        maps, layers = [x], []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            if len(maps) >= depth:
                layers.append(layer)  # not run: its buffers stay as they are
                continue
            if i == 0:
                x = self.maxpool(x, channels_last=True)
            x, layer = _run_layer(x, layer)
            maps.append(x)
            layers.append(layer)
        new = eqx.tree_at(
            lambda m: (m.bn1, m.layer1, m.layer2, m.layer3, m.layer4), self, (bn1, *layers)
        )
        return maps, new

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


# Registration facts shared by the family: torchvision's builders and ImageNet's defaults;
# timm has each under the same name with the same state_dict keys.
_CFG = {"torch_builder": "torchvision", "timm_name": True}
# The deep variants run in float64 at a tiny size, and only with `pytest -m slow`.
_SLOW = {"input_size": (3, 32, 32), "slow": True}


def _resnet(block, layers, key: PRNGKeyArray | None, **kwargs) -> ResNet:
    return ResNet(block, layers, key=jax.random.key(0) if key is None else key, **kwargs)


@register(ResNet, torchvision_weights="ResNet18_Weights", **_CFG)
def resnet18(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNet-18 (torchvision `resnet18`). `key` defaults to `jax.random.key(0)`."""
    return _resnet(BasicBlock, (2, 2, 2, 2), key, **kwargs)


@register(ResNet, torchvision_weights="ResNet34_Weights", test_cfg=_SLOW, **_CFG)
def resnet34(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNet-34 (torchvision `resnet34`)."""
    return _resnet(BasicBlock, (3, 4, 6, 3), key, **kwargs)


@register(ResNet, torchvision_weights="ResNet50_Weights", test_cfg=_SLOW, **_CFG)
def resnet50(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNet-50 (torchvision `resnet50`, v1.5)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), key, **kwargs)


@register(ResNet, torchvision_weights="ResNet101_Weights", test_cfg=_SLOW, **_CFG)
def resnet101(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNet-101 (torchvision `resnet101`)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), key, **kwargs)


@register(ResNet, torchvision_weights="ResNet152_Weights", test_cfg=_SLOW, **_CFG)
def resnet152(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNet-152 (torchvision `resnet152`)."""
    return _resnet(Bottleneck, (3, 8, 36, 3), key, **kwargs)


@register(ResNet, torchvision_weights="ResNeXt50_32X4D_Weights", test_cfg=_SLOW, **_CFG)
def resnext50_32x4d(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (torchvision `resnext50_32x4d`)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), key, groups=32, width_per_group=4, **kwargs)


@register(ResNet, torchvision_weights="ResNeXt101_32X8D_Weights", test_cfg=_SLOW, **_CFG)
def resnext101_32x8d(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d (torchvision `resnext101_32x8d`)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), key, groups=32, width_per_group=8, **kwargs)


@register(ResNet, torchvision_weights="ResNeXt101_64X4D_Weights", test_cfg=_SLOW, **_CFG)
def resnext101_64x4d(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """ResNeXt-101 64x4d (torchvision `resnext101_64x4d`)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), key, groups=64, width_per_group=4, **kwargs)


@register(ResNet, torchvision_weights="Wide_ResNet50_2_Weights", test_cfg=_SLOW, **_CFG)
def wide_resnet50_2(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (torchvision `wide_resnet50_2`)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), key, width_per_group=128, **kwargs)


@register(ResNet, torchvision_weights="Wide_ResNet101_2_Weights", test_cfg=_SLOW, **_CFG)
def wide_resnet101_2(*, key: PRNGKeyArray | None = None, **kwargs) -> ResNet:
    """Wide ResNet-101-2 (torchvision `wide_resnet101_2`)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), key, width_per_group=128, **kwargs)
