"""GoogLeNet (Inception v1) mirroring `torchvision.models.googlenet`, and what it shares with
Inception v3 (`_inception.py`): `BasicConv2d`, and `AuxTrunk`, a trunk of named modules with
auxiliary classifiers beside it.

Attribute paths are torchvision's state_dict keys (`inception4a.branch2.1.bn.running_var`,
`aux1.fc2.weight`), in its order. A call returns `(logits, model)` as for every zoo model:
the main logits only, also in train mode, where torchvision returns a namedtuple with the
auxiliary logits; `forward_with_aux` returns that namedtuple.
"""

import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._modes import is_training
from .._registry import register
from ..layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Layer,
    Linear,
    MaxPool2d,
    apply_layer,
    normal,
    relu,
    split_keys,
)
from ._base import FeatureInfo, ZooModel, _is_none, classifier_head
from ._mobilenetv2 import _keys

# torchvision's `_transform_input`: images normalised with ImageNet's mean and std, remapped
# per channel to the (x - 0.5) / 0.5 normalisation the ported Google weights expect.
_TRANSFORM_SCALE = np.array([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5])
_TRANSFORM_SHIFT = np.array([(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5])


def _normal_weight(module: Any, keys: Iterator[PRNGKeyArray], std: float | None) -> Any:
    """`module` (a `Conv2d` or `Linear`) with torchvision's `init_weights` draw for its
    weight, `trunc_normal_(0, std, a=-2, b=2)` (its bounds are 20 or more standard deviations
    away: a normal draw); `std=None` keeps torch's default. The bias keeps torch's default,
    as torchvision leaves it."""
    if std is None:
        return module
    return eqx.tree_at(lambda m: m.weight, module, normal(next(keys), module.weight.shape, std))


def linear(
    keys: Iterator[PRNGKeyArray], in_features: int, out_features: int, std: float | None
) -> Linear:
    """`nn.Linear` with `_normal_weight`'s initialisation."""
    return _normal_weight(Linear(in_features, out_features, key=next(keys)), keys, std)


class BasicConv2d(Layer):
    """torchvision's `BasicConv2d` (GoogLeNet's and Inception v3's): a convolution without
    bias, BatchNorm with `eps=0.001`, ReLU.

    **Arguments:**

    - `in_channels`, `out_channels`, `kernel_size`, `stride`, `padding`: the convolution's.
    - `std`: the weight's normal draw (torchvision's `init_weights`), or `None` for torch's
      default initialisation.
    - `keys`: PRNG keys.
    """

    conv: Conv2d
    bn: BatchNorm2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        *,
        std: float | None,
        keys: Iterator[PRNGKeyArray],
    ):
        conv = Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, bias=False, key=next(keys)
        )
        self.conv = _normal_weight(conv, keys, std)
        self.bn = BatchNorm2d(out_channels, eps=0.001)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        y, bn = self.bn(self.conv(x, channels_last=channels_last), channels_last=channels_last)
        return relu(y), eqx.tree_at(lambda m: m.bn, self, bn)


def concat_branches(branches: list[Array], channels_last: bool) -> Array:
    """`torch.cat(branches, 1)`: along the channels."""
    return jnp.concatenate(branches, axis=-1 if channels_last else 1)


class Inception(Layer):
    """torchvision's GoogLeNet `Inception` block: a 1x1 branch, two 1x1-then-3x3 branches
    (the second's 3x3 is torchvision's known deviation from the paper's 5x5, kept for its
    weights) and a 3x3 max-pool (`ceil_mode=True`) then 1x1 branch, concatenated."""

    branch1: BasicConv2d
    branch2: tuple[BasicConv2d, BasicConv2d]
    branch3: tuple[BasicConv2d, BasicConv2d]
    branch4: tuple[MaxPool2d, BasicConv2d]

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        std: float | None,
        keys: Iterator[PRNGKeyArray],
    ):
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        self.branch1 = conv(in_channels, ch1x1, 1)
        self.branch2 = (conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = (conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = (MaxPool2d(3, 1, 1, ceil_mode=True), conv(in_channels, pool_proj, 1))

    @property
    def branches(self) -> tuple:
        return (self.branch1, self.branch2, self.branch3, self.branch4)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        outputs, branches = [], []
        for branch in self.branches:
            y, branch = apply_layer(branch, x, channels_last=channels_last)
            outputs.append(y)
            branches.append(branch)
        new = eqx.tree_at(lambda m: m.branches, self, tuple(branches))
        return concat_branches(outputs, channels_last), new


def flatten_nchw(x: Array, channels_last: bool) -> Float[Array, "batch features"]:
    """`torch.flatten(x, 1)` of an NCHW map (transposed there from NHWC first): a `Linear`
    after it reads torch's (channel, row, column) order."""
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    return x.reshape(x.shape[0], -1)


_AUX_POOL = AdaptiveAvgPool2d((4, 4))  # torchvision's functional `F.adaptive_avg_pool2d`


class InceptionAux(Layer):
    """torchvision's GoogLeNet `InceptionAux`: adaptive average pool to 4x4, a 1x1
    `BasicConv2d` to 128 channels, `fc1` (2048 -> 1024) with ReLU, dropout, `fc2` (the
    classes; `None` without classifier, when it returns the 1024 features)."""

    conv: BasicConv2d
    fc1: Linear
    fc2: Linear | None
    dropout: Dropout

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.7,
        *,
        std: float | None,
        keys: Iterator[PRNGKeyArray],
    ):
        self.conv = BasicConv2d(in_channels, 128, 1, std=std, keys=keys)
        self.fc1 = linear(keys, 2048, 1024, std)
        self.fc2 = linear(keys, 1024, num_classes, std) if num_classes else None
        self.dropout = Dropout(dropout)

    def reset_classifier(self, num_classes: int, key: PRNGKeyArray) -> Self:
        """The head with a new `fc2` (torch's default init), or none for `num_classes=0`."""
        fc2 = Linear(1024, num_classes, key=key) if num_classes else None
        return eqx.tree_at(lambda m: m.fc2, self, fc2, is_leaf=_is_none)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch out"], Self]:
        x = _AUX_POOL(x, channels_last=channels_last)
        x, conv = self.conv(x, channels_last=channels_last)
        x = self.dropout(relu(self.fc1(flatten_nchw(x, channels_last))), key=key)
        new = eqx.tree_at(lambda m: m.conv, self, conv)
        return (x if self.fc2 is None else self.fc2(x)), new


class AuxTrunk(ZooModel):
    """GoogLeNet's and Inception v3's skeleton: a trunk of named modules (`trunk`, run in
    order on NHWC maps), auxiliary classifiers reading the trunk after some of them
    (`aux_after`), and torchvision's head (global average pool, dropout, `fc`).

    The auxiliary classifiers run where torchvision runs them: in a full forward (`__call__`,
    `forward_with_aux`) while they are in train mode. A call returns the main logits only
    (and the model with the auxiliary BatchNorms' updated buffers, as torchvision's train
    step leaves them); `forward_with_aux` returns them all in torchvision's namedtuple.
    `forward_features` and `forward_intermediates` never run them (as timm's).
    """

    trunk: ClassVar[tuple[str, ...]]
    aux_after: ClassVar[dict[str, str]]  # trunk module -> the aux head reading its output
    outputs: ClassVar[type]  # torchvision's namedtuple: the logits, then the aux heads'
    aux_order: ClassVar[tuple[str, ...]]  # the aux heads in `outputs`' order
    head_modules: ClassVar[tuple[str, ...]] = ("dropout", "fc")
    global_pool: ClassVar[str] = "avg"
    avgpool: eqx.AbstractVar[AdaptiveAvgPool2d]
    dropout: eqx.AbstractVar[Dropout]
    fc: eqx.AbstractVar[Linear | None]
    transform_input: eqx.AbstractVar[bool]

    @property
    def aux_logits(self) -> bool:
        """Whether the model has its auxiliary classifiers."""
        return any(getattr(self, name) is not None for name in self.aux_after.values())

    def _transform_input(self, x: Float[Array, "batch height width 3"]) -> Array:
        if not self.transform_input:
            return x
        # As torchvision: a multiply then an add per element, by constants cast to x's dtype.
        return x * _TRANSFORM_SCALE.astype(x.dtype) + _TRANSFORM_SHIFT.astype(x.dtype)

    def _run(
        self,
        x: Float[Array, "batch height width channels"],
        *,
        depth: int,
        with_aux: bool,
        key: PRNGKeyArray | None = None,
    ) -> tuple[list[Array], dict[str, Array], Self]:
        """The trunk on NHWC `x` up to its `depth`-th feature map and, `with_aux`, the
        auxiliary heads that are in train mode (`key` for their dropout).

        **Returns:** `(maps, aux, model)`: the maps, the heads' outputs by name, and the
        model with updated buffers."""
        ends = [self.trunk.index(info.module) for info in self.feature_info]
        heads = {
            after: name
            for after, name in self.aux_after.items()
            if with_aux and getattr(self, name) is not None and is_training(getattr(self, name))
        }
        keys = split_keys(key, len(self.trunk))
        x = self._transform_input(x)
        maps, aux, updated = [], {}, {}
        for i, name in enumerate(self.trunk[: ends[depth - 1] + 1]):
            x, layer = apply_layer(getattr(self, name), x, channels_last=True)
            if isinstance(layer, Layer):  # the pools have no buffers
                updated[name] = layer
            if i in ends:
                maps.append(x)
            if name in heads:
                head = heads[name]
                aux[head], updated[head] = getattr(self, head)(x, channels_last=True, key=keys[i])
        new = eqx.tree_at(lambda m: [getattr(m, n) for n in updated], self, list(updated.values()))
        return maps, aux, new

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        del key  # no randomness in the trunk
        maps, _, model = self._run(x, depth=depth, with_aux=False)
        return maps, model

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        x = self.avgpool(x, channels_last=channels_last).reshape(x.shape[0], -1)
        return classifier_head((self.dropout, self.fc), x, pre_logits=pre_logits, key=key)

    def forward_with_aux(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Any, Self]:
        """The main and the auxiliary logits, for a train step that adds the auxiliary losses
        as torchvision's reference training does (`loss + 0.3 * aux_loss` per head).

        **Arguments:**

        - `x`: an NCHW batch.
        - `key`: PRNG key for dropout (train mode).

        **Returns:** `(outputs, model)`: torchvision's namedtuple (`GoogLeNetOutputs(logits,
        aux_logits2, aux_logits1)`, `InceptionOutputs(logits, aux_logits)`), whose auxiliary
        entries are `None` in eval mode or without auxiliary classifiers (torchvision then
        returns the bare logits), and the model with updated buffers.
        """
        self._check(x)
        if self.out_indices is not None:
            raise ValueError(
                "forward_with_aux needs the classifiers: this model is features_only (call it "
                "for its feature maps)"
            )
        head_key, aux_key = (None, None) if key is None else tuple(jax.random.split(key))
        maps, aux, model = self._run(
            x.transpose(0, 2, 3, 1), depth=len(self.feature_info), with_aux=True, key=aux_key
        )
        logits = model.forward_head(maps[-1], channels_last=True, key=head_key)
        return self.outputs(logits, *(aux.get(n) for n in self.aux_order)), model

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Any, Self]:
        """The main logits (or, after `features_only`, the feature maps) and the model with
        updated buffers; in train mode the auxiliary classifiers run too (their BatchNorms
        update as in torchvision) but only the main logits are returned: see
        `forward_with_aux`."""
        if self.out_indices is not None:
            return super().__call__(x, key=key)
        outputs, model = self.forward_with_aux(x, key=key)
        return outputs.logits, model

    def reset_classifier(self, num_classes: int, *, key: PRNGKeyArray | None = None) -> Self:
        """The model with a new `fc` for `num_classes` (torch's default init), or none for
        `num_classes=0`; the auxiliary classifiers' final `Linear`s are replaced alike (as
        timm's Inception v3 does)."""
        model = super().reset_classifier(num_classes, key=key)
        key = jax.random.key(0) if key is None else key
        for i, name in enumerate(self.aux_after.values()):
            head = getattr(model, name)
            if head is not None:
                new = head.reset_classifier(num_classes, jax.random.fold_in(key, i + 1))
                model = eqx.tree_at(lambda m, n=name: getattr(m, n), model, new)
        return model


class GoogLeNetOutputs(NamedTuple):
    """torchvision's `GoogLeNetOutputs`: what `GoogLeNet.forward_with_aux` returns."""

    logits: Float[Array, "batch classes"]
    aux_logits2: Float[Array, "batch classes"] | None
    aux_logits1: Float[Array, "batch classes"] | None


class GoogLeNet(AuxTrunk):
    """torchvision's `GoogLeNet` (Inception v1), as an Equinox module over NCHW batches.

    **Arguments:**

    - `num_classes`, `aux_logits`, `transform_input`, `init_weights`, `dropout`,
      `dropout_aux`: as in torchvision (`num_classes=0`: no `fc`, calls return the pooled
      1024 features; `init_weights=None` is torchvision's current default, `True`).
      torchvision's `blocks` (torch classes) has no equivalent.
    - `in_chans`: input channels (3 in torchvision; `transform_input` needs 3).
    - `key`: PRNG key for the initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`, the main classifier's
    logits only, in train mode too (torchvision returns `GoogLeNetOutputs(logits,
    aux_logits2, aux_logits1)` there): the auxiliary classifiers `aux1` and `aux2` still run
    in train mode and update their BatchNorms as torchvision's do, and
    `model.forward_with_aux(x, key=key)` returns all three logits for their losses.
    """

    first_conv_path: ClassVar[str] = "conv1.conv"
    classifier_path: ClassVar[str] = "fc"
    trunk: ClassVar[tuple[str, ...]] = (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
        "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
        "maxpool4", "inception5a", "inception5b",
    )  # fmt: skip
    aux_after: ClassVar[dict[str, str]] = {"inception4a": "aux1", "inception4d": "aux2"}
    outputs: ClassVar[type] = GoogLeNetOutputs
    aux_order: ClassVar[tuple[str, ...]] = ("aux2", "aux1")
    conv1: BasicConv2d
    maxpool1: MaxPool2d
    conv2: BasicConv2d
    conv3: BasicConv2d
    maxpool2: MaxPool2d
    inception3a: Inception
    inception3b: Inception
    maxpool3: MaxPool2d
    inception4a: Inception
    inception4b: Inception
    inception4c: Inception
    inception4d: Inception
    inception4e: Inception
    maxpool4: MaxPool2d
    inception5a: Inception
    inception5b: Inception
    aux1: InceptionAux | None
    aux2: InceptionAux | None
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
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
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
        # torchvision's `init_weights`: trunc_normal_(std=0.01) for every conv and Linear.
        std = 0.01 if init_weights is None or init_weights else None
        conv = lambda *args, **kw: BasicConv2d(*args, **kw, std=std, keys=keys)  # noqa: E731
        block = lambda *args: Inception(*args, std=std, keys=keys)  # noqa: E731
        pool = lambda kernel: MaxPool2d(kernel, 2, ceil_mode=True)  # noqa: E731
        self.transform_input = bool(transform_input)
        self.conv1 = conv(in_chans, 64, 7, 2, 3)
        self.maxpool1 = pool(3)
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.maxpool2 = pool(3)
        self.inception3a = block(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = block(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = pool(3)
        self.inception4a = block(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = block(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = block(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = block(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = block(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = pool(2)
        self.inception5a = block(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = block(832, 384, 192, 384, 48, 128, 128)
        aux = lambda channels: InceptionAux(  # noqa: E731
            channels, num_classes, dropout_aux, std=std, keys=keys
        )
        self.aux1 = aux(512) if aux_logits else None
        self.aux2 = aux(528) if aux_logits else None
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.dropout = Dropout(dropout)
        self.fc = linear(keys, 1024, num_classes, std) if num_classes else None
        self.num_features = 1024
        # The last module at each reduction, as timm picks them for Inception v3.
        self.feature_info = (
            FeatureInfo(64, 2, "conv1"),
            FeatureInfo(192, 4, "conv3"),
            FeatureInfo(480, 8, "inception3b"),
            FeatureInfo(832, 16, "inception4e"),
            FeatureInfo(1024, 32, "inception5b"),
        )

    def config_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "aux_logits": self.aux_logits,
            "transform_input": self.transform_input,
            "dropout": float(self.dropout.p),
        }
        if self.aux1 is not None:
            kwargs["dropout_aux"] = float(self.aux1.dropout.p)
        return kwargs


def _drop_aux(state_dict: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def _check_aux_classes(state_dict: dict[str, Any], kwargs: dict[str, Any], key: str) -> None:
    """torchvision refuses another `num_classes` with its weights; the zoo re-initialises
    `fc` for one, but not an auxiliary head it would load with 1000 rows."""
    rows, wanted = state_dict[key].shape[0], kwargs.get("num_classes")
    if wanted is not None and wanted != rows:
        raise ValueError(
            f"torchvision's checkpoint has {rows}-class auxiliary classifiers ({key}), and "
            f"the zoo re-initialises only `fc` for num_classes={wanted}: pass "
            "aux_logits=False (and add your own auxiliary heads if you train with them)"
        )


def googlenet_checkpoint(state_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What `torchvision.models.googlenet(weights=...)` does: `transform_input=True` unless
    given, `init_weights=False`, and the auxiliary classifiers (in the checkpoint, but not
    trained) dropped unless `aux_logits=True` is asked for, when torchvision warns."""
    kwargs.setdefault("transform_input", True)
    kwargs.setdefault("init_weights", False)
    if not kwargs.setdefault("aux_logits", False):
        return _drop_aux(state_dict, ("aux1.", "aux2."))
    _check_aux_classes(state_dict, kwargs, "aux1.fc2.weight")
    warnings.warn(
        "auxiliary heads in the pretrained googlenet model are NOT pretrained, so make sure "
        "to train them",
        stacklevel=2,
    )
    return state_dict


# 79x79 gives maps of 40, 20, 10, 5 and 3 pixels, where `ceil_mode` adds a window to each of
# the four pools. At 33x33 (maps of 2 and 1 pixels) the 3x3 convolutions are matmuls
# (`zoo.layers.lowers_to_matmul`) whose im2col made every compile ~2x slower, for 7 tests.
# `no_aux`: torchvision's train-mode call returns a namedtuple with the auxiliary logits;
# tests/test_googlenet_inception.py tests them. `train_parity_large`: the float64 train step
# (45 s of the default run) runs with `-m large`, as does the stricter train step with the
# auxiliary losses; by default the train-mode outputs and statistics are compared in float64
# (`test_googlenet_forward_with_aux_is_torchvisions_train_mode_call`).
@register(
    GoogLeNet,
    torch_builder="torchvision",
    torchvision_weights="GoogLeNet_Weights",
    torchvision_checkpoint=googlenet_checkpoint,
    test_cfg={
        "input_size": (3, 79, 79),
        "no_dropout": {"dropout": 0.0, "dropout_aux": 0.0},
        "no_aux": {"aux_logits": False},
        "train_parity_large": True,
    },
)
def googlenet(*, key: PRNGKeyArray | None = None, **kwargs) -> GoogLeNet:
    """GoogLeNet (torchvision `googlenet`). `key` defaults to `jax.random.key(0)`."""
    return GoogLeNet(key=jax.random.key(0) if key is None else key, **kwargs)
