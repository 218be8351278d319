"""Inception v3 mirroring `torchvision.models.inception`.

Attribute paths are torchvision's state_dict keys (`Mixed_6b.branch7x7_2.conv.weight`,
`AuxLogits.conv1.bn.running_var`), in its order; torchvision's functional pools
(`F.avg_pool2d` and `F.max_pool2d` inside the blocks) are module constants here, as they
hold no state. A call returns `(logits, model)` as for every zoo model: the main logits only,
also in train mode, where torchvision returns `InceptionOutputs(logits, aux_logits)`;
`forward_with_aux` returns that namedtuple (see `AuxTrunk`).

timm's `inception_v3` is the same network under the same keys (its BatchNorms' eps 1e-3
too), with `aux_logits=True` where the model has `AuxLogits`; `transform_input=True`, which
timm has not, has no timm layout (see `_timm_args`).
"""

import abc
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register, timm_layout_from
from ..layers import AdaptiveAvgPool2d, AvgPool2d, Dropout, Layer, Linear, MaxPool2d
from ..layers._conv import _height_width
from ._base import FeatureInfo, _is_none
from ._googlenet import (
    AuxTrunk,
    BasicConv2d,
    _check_aux_classes,
    _drop_aux,
    concat_branches,
    linear,
)
from ._mobilenetv2 import _keys

# The blocks' `F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)` (torch's defaults:
# count_include_pad=True, floor mode) and `F.max_pool2d(x, kernel_size=3, stride=2)`.
_AVG_POOL = AvgPool2d(3, 1, 1)
_MAX_POOL = MaxPool2d(3, 2)


class _Block(Layer):
    """An Inception block: branches (each a chain of `BasicConv2d`s, or a pool then one)
    whose outputs are concatenated along the channels; `_branches` lists them as
    torchvision's `_forward` computes them."""

    @abc.abstractmethod
    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        """Each branch's members in order: a field's name, a pool, or a tuple of names run
        side by side on one input and concatenated."""

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        # A branch is a chain of members, or of parallel pairs (InceptionE's 1x3 and 3x1
        # convolutions of one input, concatenated); members are read by attribute name.
        updated, outputs = {}, []
        for branch in self._branches():
            y = x
            for member in branch:
                if isinstance(member, tuple):
                    parts = []
                    for name in member:
                        part, updated[name] = getattr(self, name)(y, channels_last=channels_last)
                        parts.append(part)
                    y = concat_branches(parts, channels_last)
                elif isinstance(member, str):
                    y, updated[member] = getattr(self, member)(y, channels_last=channels_last)
                else:  # a pool
                    y = member(y, channels_last=channels_last)
            outputs.append(y)
        new = eqx.tree_at(lambda m: [getattr(m, n) for n in updated], self, list(updated.values()))
        return concat_branches(outputs, channels_last), new


class InceptionA(_Block):
    """torchvision's `InceptionA` (`Mixed_5b`-`Mixed_5d`): 1x1, 1x1-5x5, 1x1-3x3-3x3 and
    average pool-1x1 branches."""

    branch1x1: BasicConv2d
    branch5x5_1: BasicConv2d
    branch5x5_2: BasicConv2d
    branch3x3dbl_1: BasicConv2d
    branch3x3dbl_2: BasicConv2d
    branch3x3dbl_3: BasicConv2d
    branch_pool: BasicConv2d

    def __init__(
        self,
        in_channels: int,
        pool_features: int,
        *,
        std: float | None,
        keys: Iterator[PRNGKeyArray],
    ):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        self.branch1x1 = conv(in_channels, 64, 1)
        self.branch5x5_1 = conv(in_channels, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.branch_pool = conv(in_channels, pool_features, 1)

    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        return (
            ("branch1x1",),
            ("branch5x5_1", "branch5x5_2"),
            ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            (_AVG_POOL, "branch_pool"),
        )


class InceptionB(_Block):
    """torchvision's `InceptionB` (`Mixed_6a`, the grid reduction to 17x17): a stride-2
    3x3, a 1x1-3x3-3x3 (stride 2) and a 3x3 max-pool branch."""

    branch3x3: BasicConv2d
    branch3x3dbl_1: BasicConv2d
    branch3x3dbl_2: BasicConv2d
    branch3x3dbl_3: BasicConv2d

    def __init__(self, in_channels: int, *, std: float | None, keys: Iterator[PRNGKeyArray]):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        self.branch3x3 = conv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        return (
            ("branch3x3",),
            ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            (_MAX_POOL,),
        )


class InceptionC(_Block):
    """torchvision's `InceptionC` (`Mixed_6b`-`Mixed_6e`): 1x1, factorised 7x7 (1x7, 7x1),
    doubly factorised 7x7 and average pool-1x1 branches."""

    branch1x1: BasicConv2d
    branch7x7_1: BasicConv2d
    branch7x7_2: BasicConv2d
    branch7x7_3: BasicConv2d
    branch7x7dbl_1: BasicConv2d
    branch7x7dbl_2: BasicConv2d
    branch7x7dbl_3: BasicConv2d
    branch7x7dbl_4: BasicConv2d
    branch7x7dbl_5: BasicConv2d
    branch_pool: BasicConv2d

    def __init__(
        self,
        in_channels: int,
        channels_7x7: int,
        *,
        std: float | None,
        keys: Iterator[PRNGKeyArray],
    ):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        c7 = channels_7x7
        self.branch1x1 = conv(in_channels, 192, 1)
        self.branch7x7_1 = conv(in_channels, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(in_channels, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv(in_channels, 192, 1)

    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        return (
            ("branch1x1",),
            ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
            tuple(f"branch7x7dbl_{i}" for i in range(1, 6)),
            (_AVG_POOL, "branch_pool"),
        )


class InceptionD(_Block):
    """torchvision's `InceptionD` (`Mixed_7a`, the grid reduction to 8x8): 1x1-3x3
    (stride 2), 1x1-1x7-7x1-3x3 (stride 2) and a 3x3 max-pool branch."""

    branch3x3_1: BasicConv2d
    branch3x3_2: BasicConv2d
    branch7x7x3_1: BasicConv2d
    branch7x7x3_2: BasicConv2d
    branch7x7x3_3: BasicConv2d
    branch7x7x3_4: BasicConv2d

    def __init__(self, in_channels: int, *, std: float | None, keys: Iterator[PRNGKeyArray]):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        self.branch3x3_1 = conv(in_channels, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(in_channels, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        return (
            ("branch3x3_1", "branch3x3_2"),
            tuple(f"branch7x7x3_{i}" for i in range(1, 5)),
            (_MAX_POOL,),
        )


class InceptionE(_Block):
    """torchvision's `InceptionE` (`Mixed_7b`, `Mixed_7c`): 1x1, 1x1 then parallel 1x3 and
    3x1, 1x1-3x3 then parallel 1x3 and 3x1, and average pool-1x1 branches."""

    branch1x1: BasicConv2d
    branch3x3_1: BasicConv2d
    branch3x3_2a: BasicConv2d
    branch3x3_2b: BasicConv2d
    branch3x3dbl_1: BasicConv2d
    branch3x3dbl_2: BasicConv2d
    branch3x3dbl_3a: BasicConv2d
    branch3x3dbl_3b: BasicConv2d
    branch_pool: BasicConv2d

    def __init__(self, in_channels: int, *, std: float | None, keys: Iterator[PRNGKeyArray]):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        self.branch1x1 = conv(in_channels, 320, 1)
        self.branch3x3_1 = conv(in_channels, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(in_channels, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv(in_channels, 192, 1)

    def _branches(self) -> tuple[tuple[Any, ...], ...]:
        return (
            ("branch1x1",),
            ("branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
            ("branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")),
            (_AVG_POOL, "branch_pool"),
        )


# The auxiliary head's `F.avg_pool2d(x, kernel_size=5, stride=3)`, then a 5x5 convolution:
# it needs a 17x17 map (Mixed_6e's at 299x299 inputs) or larger, as torchvision's does.
_AUX_POOL = AvgPool2d(5, 3)
_AUX_MIN_MAP = 17


class InceptionAux(Layer):
    """torchvision's Inception v3 `InceptionAux` (`AuxLogits`): average pool 5x5 stride 3,
    `conv0` (1x1, 128), `conv1` (5x5, 768), global average pool, `fc` (the classes; `None`
    without classifier, when it returns the 768 features). It needs a map of 17x17 or more
    (inputs of 299x299 or more), as torchvision's does."""

    conv0: BasicConv2d
    conv1: BasicConv2d
    fc: Linear | None

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        init_weights: bool,
        keys: Iterator[PRNGKeyArray],
    ):
        # torchvision sets `stddev = 0.01` on the `conv1` block, which its init loop never
        # reads (it reads the inner nn.Conv2d's): 0.1 as every conv; `fc`'s 0.001 is read.
        std = 0.1 if init_weights else None
        self.conv0 = BasicConv2d(in_channels, 128, 1, std=std, keys=keys)
        self.conv1 = BasicConv2d(128, 768, 5, std=std, keys=keys)
        self.fc = (
            linear(keys, 768, num_classes, 0.001 if init_weights else None) if num_classes else None
        )

    def reset_classifier(self, num_classes: int, key: PRNGKeyArray) -> Self:
        """The head with a new `fc` (torch's default init), or none for `num_classes=0`."""
        fc = Linear(768, num_classes, key=key) if num_classes else None
        return eqx.tree_at(lambda m: m.fc, self, fc, is_leaf=_is_none)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch out"], Self]:
        if min(_height_width(x, channels_last)) < _AUX_MIN_MAP:
            raise ValueError(
                f"Inception v3's auxiliary classifier needs a {_AUX_MIN_MAP}x{_AUX_MIN_MAP} "
                f"map or larger (inputs of 299x299 or more), got {x.shape} (torchvision's "
                "fails there too): train smaller inputs with aux_logits=False, or in eval mode"
            )
        x = _AUX_POOL(x, channels_last=channels_last)
        x, conv0 = self.conv0(x, channels_last=channels_last)
        x, conv1 = self.conv1(x, channels_last=channels_last)
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))  # F.adaptive_avg_pool2d((1, 1))
        new = eqx.tree_at(lambda m: (m.conv0, m.conv1), self, (conv0, conv1))
        return (x if self.fc is None else self.fc(x)), new


class InceptionOutputs(NamedTuple):
    """torchvision's `InceptionOutputs`: what `Inception3.forward_with_aux` returns."""

    logits: Float[Array, "batch classes"]
    aux_logits: Float[Array, "batch classes"] | None


class Inception3(AuxTrunk):
    """torchvision's `Inception3` (Inception v3), as an Equinox module over NCHW batches.

    **Arguments:**

    - `num_classes`, `aux_logits`, `transform_input`, `init_weights`, `dropout`: as in
      torchvision (`num_classes=0`: no `fc`, calls return the pooled 2048 features;
      `init_weights=None` is torchvision's current default, `True`). torchvision's
      `inception_blocks` (torch classes) has no equivalent.
    - `in_chans`: input channels (3 in torchvision; `transform_input` needs 3).
    - `key`: PRNG key for the initialisation.

    Inputs need at least 75x75 pixels, and 299x299 in train mode with the auxiliary
    classifier (as torchvision's).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`, the main classifier's
    logits only, in train mode too (torchvision returns `InceptionOutputs(logits,
    aux_logits)` there): the auxiliary classifier `AuxLogits` still runs in train mode and
    updates its BatchNorms as torchvision's does, and `model.forward_with_aux(x, key=key)`
    returns both logits for their losses.
    """

    first_conv_path: ClassVar[str] = "Conv2d_1a_3x3.conv"
    classifier_path: ClassVar[str] = "fc"
    trunk: ClassVar[tuple[str, ...]] = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
        "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
    )  # fmt: skip
    aux_after: ClassVar[dict[str, str]] = {"Mixed_6e": "AuxLogits"}
    outputs: ClassVar[type] = InceptionOutputs
    aux_order: ClassVar[tuple[str, ...]] = ("AuxLogits",)
    Conv2d_1a_3x3: BasicConv2d
    Conv2d_2a_3x3: BasicConv2d
    Conv2d_2b_3x3: BasicConv2d
    maxpool1: MaxPool2d
    Conv2d_3b_1x1: BasicConv2d
    Conv2d_4a_3x3: BasicConv2d
    maxpool2: MaxPool2d
    Mixed_5b: InceptionA
    Mixed_5c: InceptionA
    Mixed_5d: InceptionA
    Mixed_6a: InceptionB
    Mixed_6b: InceptionC
    Mixed_6c: InceptionC
    Mixed_6d: InceptionC
    Mixed_6e: InceptionC
    AuxLogits: InceptionAux | None
    Mixed_7a: InceptionD
    Mixed_7b: InceptionE
    Mixed_7c: InceptionE
    avgpool: AdaptiveAvgPool2d
    dropout: Dropout
    fc: Linear | None
    transform_input: bool = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        init_weights: bool | None = None,
        dropout: float = 0.5,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if transform_input and in_chans != 3:
            raise ValueError(
                f"transform_input remaps the 3 RGB channels; in_chans={in_chans} needs "
                "transform_input=False"
            )
        keys = _keys(key)
        # torchvision's `init_weights`: trunc_normal_(std=0.1) for every conv and Linear
        # (0.001 for the auxiliary `fc`).
        init = init_weights is None or bool(init_weights)
        std = 0.1 if init else None
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        kw = {"std": std, "keys": keys}
        self.transform_input = bool(transform_input)
        self.Conv2d_1a_3x3 = conv(in_chans, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.maxpool1 = MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        self.maxpool2 = MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(192, 32, **kw)
        self.Mixed_5c = InceptionA(256, 64, **kw)
        self.Mixed_5d = InceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, **kw)
        self.Mixed_6c = InceptionC(768, 160, **kw)
        self.Mixed_6d = InceptionC(768, 160, **kw)
        self.Mixed_6e = InceptionC(768, 192, **kw)
        self.AuxLogits = (
            InceptionAux(768, num_classes, init_weights=init, keys=keys) if aux_logits else None
        )
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, **kw)
        self.Mixed_7c = InceptionE(2048, **kw)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.dropout = Dropout(dropout)
        self.fc = linear(keys, 2048, num_classes, std) if num_classes else None
        self.num_features = 2048
        # timm's `inception_v3` feature maps. The reductions are nominal: the unpadded stem
        # makes a 75x75 input's maps 35, 15, 7, 3 and 1 pixels.
        self.feature_info = (
            FeatureInfo(64, 2, "Conv2d_2b_3x3"),
            FeatureInfo(192, 4, "Conv2d_4a_3x3"),
            FeatureInfo(288, 8, "Mixed_5d"),
            FeatureInfo(768, 16, "Mixed_6e"),
            FeatureInfo(2048, 32, "Mixed_7c"),
        )

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "aux_logits": self.aux_logits,
            "transform_input": self.transform_input,
            "dropout": float(self.dropout.p),
        }


def inception_v3_checkpoint(state_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What `torchvision.models.inception_v3(weights=...)` does: `transform_input=True`
    unless given, `init_weights=False`, and the auxiliary classifier kept (its default)
    unless `aux_logits=False` is asked for."""
    kwargs.setdefault("transform_input", True)
    kwargs.setdefault("init_weights", False)
    if not kwargs.setdefault("aux_logits", True):
        return _drop_aux(state_dict, ("AuxLogits.",))
    _check_aux_classes(state_dict, kwargs, "AuxLogits.fc.weight")
    return state_dict


def _timm_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's `inception_v3` options for the model's: `aux_logits` (then timm's `forward`
    returns `(logits, aux_logits)` in eval mode too, as for its own torchvision weights,
    `inception_v3.tv_in1k`) and `dropout` as timm's `drop_rate` (the same place, before
    `fc`).

    **Raises:** `ValueError` for `transform_input=True`: timm has no such option, and its
    model would compute another function of the same input."""
    if kwargs.get("transform_input", False):
        raise ValueError(
            "inception_v3 with transform_input=True has no timm layout: timm's inception_v3 "
            "has no such option, so it would compute another function of the same input. "
            "transform_input only renormalises ImageNet-normalised inputs to mean = std = "
            "0.5: load the same weights with transform_input=False and export with "
            "pretrained_cfg={'mean': [0.5] * 3, 'std': [0.5] * 3} (as timm's "
            "inception_v3.tv_in1k reads them), or export with layout='torchvision'"
        )
    args: dict[str, Any] = {}
    if kwargs.get("aux_logits", True):  # torchvision's default
        args["aux_logits"] = True
    if float(kwargs.get("dropout", 0.5)):
        args["drop_rate"] = float(kwargs.get("dropout", 0.5))
    return args


def timm_inception_v3_checkpoint(
    state_dict: dict[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """timm's `inception_v3` checkpoints (`tf_in1k`, `gluon_in1k`, ...) have torchvision's
    keys but no auxiliary classifier: a checkpoint without `AuxLogits` builds the model
    without one unless `aux_logits` is given (then a strict load names the missing keys)."""
    if not any(k.startswith("AuxLogits.") for k in state_dict):
        kwargs.setdefault("aux_logits", False)
    return state_dict


# 75x75 is torchvision's smallest input (maps of 35, 15, 7, 3 and 1 pixels). `slow`: the
# default registry tests took 2.7x ResNet18's time (94 convolutions, each with a BatchNorm,
# to compile), and in train mode the net is so ill-conditioned that a 1-ulp change of the
# input moves torchvision's own float64 gradients by 1e-11 of the largest, beyond the
# generic test's 1e-12: tests/test_googlenet_inception.py compares it with a tolerance
# measured from that sensitivity. timm's `inception_v3` (same module names, no auxiliary
# classifier) is compared there too (`timm_name` is for the default registry tests), and
# its `layout="timm"` export, which the registry tests run for default models only, in
# tests/test_timm_convnets.py.
@register(
    Inception3,
    torch_builder="torchvision",
    torchvision_weights="Inception_V3_Weights",
    torchvision_checkpoint=inception_v3_checkpoint,
    checkpoint_adapter=timm_inception_v3_checkpoint,
    timm_layout=timm_layout_from("inception_v3", model_args=_timm_args),
    test_cfg={
        "input_size": (3, 75, 75),
        "slow": True,
        "any_size": False,
        "no_dropout": {"dropout": 0.0},
        "no_aux": {"aux_logits": False},
    },
    input_size=(3, 299, 299),
    crop_pct=299 / 342,
)
def inception_v3(*, key: PRNGKeyArray | None = None, **kwargs) -> Inception3:
    """Inception v3 (torchvision `inception_v3`). `key` defaults to `jax.random.key(0)`."""
    return Inception3(key=jax.random.key(0) if key is None else key, **kwargs)
