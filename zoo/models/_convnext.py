"""ConvNeXt (tiny, small, base, large) mirroring `torchvision.models.convnext`.

`features` is torchvision's `nn.Sequential` as a tuple: the stem `(conv, LayerNorm2d)`, then
per stage a tuple of `CNBlock`s and, between stages, a downsampling `(LayerNorm2d, conv)`
(`features.1.0.block.3.weight`, `features.2.1.weight`). The classifier is `(LayerNorm2d,
Flatten, Linear)` after global average pooling. A call returns `(logits, model)` as for every
zoo model.
"""

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    GELU,
    Conv2d,
    Layer,
    LayerNorm,
    LayerNorm2d,
    Linear,
    StochasticDepth,
    with_initial_weight,
)
from ..layers._init import numpy_rng
from ._base import FeatureInfo, ZooModel, classifier_head, run_stages, stage_ends
from ._mobilenetv2 import _keys
from ._timm import refuse_unplaced, timm_interop

T = TypeVar("T", Conv2d, Linear)


def trunc_normal(
    key: PRNGKeyArray, shape: tuple[int, ...], std: float, a: float = -2.0, b: float = 2.0
) -> Float[Array, "..."]:
    """torch's `trunc_normal_(mean=0, std=std, a=a, b=b)`: normal draws inside `[a, b]`.
    As in torch, `a` and `b` are absolute bounds, not multiples of `std` (torchvision's
    ConvNeXt: `std=0.02` within `±2`, so ±100 standard deviations: a plain normal)."""
    if isinstance(key, jax.core.Tracer):
        return jax.random.truncated_normal(key, a / std, b / std, shape, jnp.float32) * std
    rng = numpy_rng(key)
    draws = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    outside = (draws < a) | (draws > b)
    while outside.any():  # redraw what falls outside: the truncated distribution
        draws[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32) * std
        outside = (draws < a) | (draws > b)
    return jax.device_put(draws)


def _init_weights(cls: type[T], *args, keys: Iterator[PRNGKeyArray], **kwargs) -> T:
    """`cls(*args, **kwargs)`, a `Conv2d` or `Linear`, as torchvision's ConvNeXt (and Swin)
    initialises it: weight `trunc_normal_(std=0.02)`, bias zero."""
    return with_initial_weight(
        cls, *args, keys=keys, weight=lambda k, shape: trunc_normal(k, shape, 0.02), **kwargs
    )


class Permute(eqx.Module):
    """torchvision's `ops.misc.Permute`: `x.permute(dims)`. It holds its place in
    `CNBlock.block` (so the indices after it are torch's); `CNBlock` runs the block in NHWC
    throughout and does not call it."""

    dims: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        return jnp.transpose(x, self.dims)


class Flatten(Layer):
    """`torch.nn.Flatten(1)`: `(batch, ...)` to `(batch, features)`, in NCHW order for an
    NHWC input, as torch flattens."""

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch features"], Self]:
        del key
        if channels_last and x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(x.shape[0], -1), self


class CNBlock(Layer):
    """torchvision's ConvNeXt `CNBlock`: `x + stochastic_depth(layer_scale * block(x))` with
    `block` = 7x7 depthwise convolution, `Permute`, `LayerNorm(eps=1e-6)`, `Linear` to 4x,
    exact GELU, `Linear` back, `Permute`.

    **Arguments:**

    - `dim`: the channels.
    - `layer_scale`: the initial value of every `layer_scale` entry (shape `(dim, 1, 1)`, as
      torch's).
    - `stochastic_depth_prob`: this block's drop rate (`"row"` mode).
    - `keys`: PRNG keys for torchvision's initialisation.
    """

    # torch registers `layer_scale` (the block's own parameter) before the `block`
    # submodule's: state_dict order, which the torch face's gradients follow.
    layer_scale: Float[Array, "dim 1 1"]
    block: tuple
    stochastic_depth: StochasticDepth

    def __init__(
        self,
        dim: int,
        layer_scale: float,
        stochastic_depth_prob: float,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.block = (
            _init_weights(Conv2d, dim, dim, 7, padding=3, groups=dim, keys=keys),
            Permute((0, 2, 3, 1)),
            LayerNorm(dim, eps=1e-6),
            _init_weights(Linear, dim, 4 * dim, keys=keys),
            GELU(),
            _init_weights(Linear, 4 * dim, dim, keys=keys),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = jax.device_put(np.full((dim, 1, 1), layer_scale, np.float32))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        h = x if channels_last else x.transpose(0, 2, 3, 1)
        y, _ = self.stochastic_depth(self.branch(h), key=key)
        y = y + h
        return (y if channels_last else y.transpose(0, 3, 1, 2)), self

    def branch(
        self, h: Float[Array, "batch height width dim"]
    ) -> Float[Array, "batch height width dim"]:
        """`layer_scale * block(h)` on an NHWC batch (before stochastic depth and the
        shortcut). torch permutes to channels-last around the LayerNorm and the Linears;
        here the whole block runs in NHWC, where they work on the last axis as they are."""
        conv, _, norm, fc1, act, fc2, _ = self.block
        y = fc2(act(fc1(norm(conv(h, channels_last=True)))))
        return self.layer_scale.reshape(-1).astype(y.dtype) * y


@dataclasses.dataclass(frozen=True)
class CNBlockConfig:
    """One stage of the ConvNeXt paper's section 3 (torchvision's class): its channels, the
    channels its downsampling leads to (`None` for the last stage), and its block count."""

    input_channels: int
    out_channels: int | None
    num_layers: int


class ConvNeXt(ZooModel):
    """torchvision's `ConvNeXt`, as an Equinox module over NCHW batches.

    **Arguments:**

    - `block_setting`: the stages (`CNBlockConfig`s).
    - `stochastic_depth_prob`: the last block's drop rate; block `i` of `n` drops with
      `stochastic_depth_prob * i / (n - 1)`, as in torchvision.
    - `layer_scale`: the initial layer-scale value (`1e-6`).
    - `num_classes`: as in torchvision (`0`: no final `Linear`, calls return the normalised
      pooled features).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives
    stochastic depth in train mode.
    """

    first_conv_path: ClassVar[str] = "features.0.0"
    classifier_path: ClassVar[str] = "classifier.2"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)
    stochastic_depth_prob: float = eqx.field(static=True)

    def __init__(
        self,
        block_setting: Sequence[CNBlockConfig],
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if not block_setting:
            raise ValueError("The block_setting should not be empty")
        if not all(isinstance(s, CNBlockConfig) for s in block_setting):
            raise TypeError("The block_setting should be List[CNBlockConfig]")
        keys = _keys(key)
        first = block_setting[0].input_channels
        stem_conv = _init_weights(Conv2d, in_chans, first, 4, stride=4, keys=keys)
        features: list = [(stem_conv, LayerNorm2d(first, eps=1e-6))]
        channels, reductions = [first], [4]
        total_stage_blocks = sum(cnf.num_layers for cnf in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage = []
            for _ in range(cnf.num_layers):
                # torchvision's rate, rising linearly with the block's depth.
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob, keys=keys))
                stage_block_id += 1
            features.append(tuple(stage))
            channels.append(cnf.input_channels)
            reductions.append(reductions[-1])
            if cnf.out_channels is not None:
                norm = LayerNorm2d(cnf.input_channels, eps=1e-6)
                down = _init_weights(
                    Conv2d, cnf.input_channels, cnf.out_channels, 2, stride=2, keys=keys
                )
                features.append((norm, down))
                channels.append(cnf.out_channels)
                reductions.append(reductions[-1] * 2)
        self.features = tuple(features)
        last = block_setting[-1]
        last_channels = last.input_channels if last.out_channels is None else last.out_channels
        final = (
            _init_weights(Linear, last_channels, num_classes, keys=keys) if num_classes else None
        )
        self.classifier = (LayerNorm2d(last_channels, eps=1e-6), Flatten(), final)
        self.num_features = last_channels
        self.stochastic_depth_prob = stochastic_depth_prob
        self.feature_info = tuple(
            FeatureInfo(channels[i], reductions[i], f"features.{i}") for i in stage_ends(reductions)
        )

    def config_kwargs(self) -> dict[str, float]:
        return {"stochastic_depth_prob": float(self.stochastic_depth_prob)}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        maps, _ = run_stages(self.features, x, ends=ends, depth=depth, key=key)
        return maps, self  # no buffers to update

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        # torchvision pools to (batch, C, 1, 1) and normalises over C: the same as
        # normalising the (batch, C) means.
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))
        return classifier_head(self.classifier, x, pre_logits=pre_logits, key=key)


# timm's ConvNeXt names (`timm.models.convnext`, `conv_mlp=False`) -> torchvision's, for
# stage `s` (features.{2s+1} holds its blocks, features.{2s} its downsampling).
_TIMM_BLOCK = {
    "conv_dw": "block.0",
    "norm": "block.2",
    "mlp.fc1": "block.3",
    "mlp.fc2": "block.5",
}
_TIMM_KEY = re.compile(
    r"stem\.(?P<stem>[01])\.(?P<p0>weight|bias)"
    r"|stages\.(?P<s>\d+)\.(?:downsample\.(?P<down>[01])\.(?P<p1>weight|bias)"
    r"|blocks\.(?P<b>\d+)\.(?:gamma|(?P<layer>conv_dw|norm|mlp\.fc[12])\.(?P<p2>weight|bias)))"
    r"|head\.(?P<head>norm|fc)\.(?P<p3>weight|bias)"
)


def timm_convnext_to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ConvNeXt state_dict (`timm.create_model("convnext_tiny")`'s, and the other
    sizes') under torchvision's keys, so `zoo.load("convnext_tiny", weights=...)` and
    torchvision's `convnext_tiny` load it.

    Renames `stem.N` to `features.0.N`, `stages.S.downsample.N` to `features.{2S}.N`,
    `stages.S.blocks.B.{conv_dw, norm, mlp.fc1, mlp.fc2}` to `features.{2S+1}.B.block.{0, 2,
    3, 5}`, and `head.{norm, fc}` to `classifier.{0, 2}`; timm's layer scale `gamma`, shape
    `(dim,)`, becomes `layer_scale`, shape `(dim, 1, 1)`. The two compute the same function
    (timm's `LayerNorm`s are torch's, eps 1e-6, and its GELU is exact).

    **Arguments:**

    - `state_dict`: timm's keys to tensors (torch or NumPy); wrapper prefixes stripped.

    **Returns:** a new dict with torchvision's keys, in the same order.

    **Raises:** `ValueError` for a key torchvision's ConvNeXt has no place for (timm's
    `conv_mlp`, GRN or `head_hidden_size` variants, or another model's checkpoint).
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TIMM_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
        elif m["stem"] is not None:
            out[f"features.0.{m['stem']}.{m['p0']}"] = value
        elif m["down"] is not None:
            out[f"features.{2 * int(m['s'])}.{m['down']}.{m['p1']}"] = value
        elif m["b"] is not None:
            prefix = f"features.{2 * int(m['s']) + 1}.{m['b']}"
            if m["layer"] is None:  # gamma
                out[f"{prefix}.layer_scale"] = value.reshape(-1, 1, 1)
            else:
                out[f"{prefix}.{_TIMM_BLOCK[m['layer']]}.{m['p2']}"] = value
        else:
            out[f"classifier.{0 if m['head'] == 'norm' else 2}.{m['p3']}"] = value
    refuse_unplaced(unknown, "not a timm ConvNeXt state_dict torchvision's ConvNeXt can hold")
    return out


_TV_KEY = re.compile(
    r"features\.(?P<f>\d+)\.(?:(?P<b>\d+)\.(?:layer_scale|block\.(?P<layer>[0235])\.(?P<p1>weight|bias))"
    r"|(?P<n>[01])\.(?P<p0>weight|bias))"
    r"|classifier\.(?P<head>[02])\.(?P<p2>weight|bias)"
)


def torchvision_convnext_to_timm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `timm_convnext_to_torchvision`: a torchvision ConvNeXt state_dict
    under timm's `ConvNeXt` keys (`timm.create_model("convnext_tiny")`'s), in the same order.

    **Raises:** `ValueError` for a key timm's ConvNeXt has no place for.
    """
    block = {v: k for k, v in _TIMM_BLOCK.items()}
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TV_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
        elif m["head"] is not None:
            out[f"head.{'norm' if m['head'] == '0' else 'fc'}.{m['p2']}"] = value
        elif m["b"] is not None and int(m["f"]) % 2 == 1:
            prefix = f"stages.{int(m['f']) // 2}.blocks.{m['b']}"
            if m["layer"] is None:  # layer_scale, (dim, 1, 1) -> timm's gamma, (dim,)
                out[f"{prefix}.gamma"] = value.reshape(-1)
            else:
                out[f"{prefix}.{block['block.' + m['layer']]}.{m['p1']}"] = value
        elif m["n"] is not None and m["f"] == "0":
            out[f"stem.{m['n']}.{m['p0']}"] = value
        elif m["n"] is not None and int(m["f"]) % 2 == 0:
            out[f"stages.{int(m['f']) // 2}.downsample.{m['n']}.{m['p0']}"] = value
        else:
            unknown.append(key)
    refuse_unplaced(unknown, "not a torchvision ConvNeXt state_dict timm's ConvNeXt can hold")
    return out


def _timm(architecture: str) -> dict[str, Any]:
    # timm's drop_path_rate grows linearly over the blocks from 0, as torchvision's
    # stochastic_depth_prob does.
    def model_args(kwargs: dict[str, Any]) -> dict[str, Any]:
        rate = float(kwargs.get("stochastic_depth_prob", 0.0))
        return {"drop_path_rate": rate} if rate else {}

    return timm_interop(
        architecture,
        torchvision_convnext_to_timm,
        timm_convnext_to_torchvision,
        marker="stem.0.weight",
        model_args=model_args,
    )


# (stages, default stochastic depth) of each torchvision variant.
_VARIANTS = {
    "convnext_tiny": (((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)), 0.1),
    "convnext_small": (((96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3)), 0.4),
    "convnext_base": (((128, 256, 3), (256, 512, 3), (512, 1024, 27), (1024, None, 3)), 0.5),
    "convnext_large": (((192, 384, 3), (384, 768, 3), (768, 1536, 27), (1536, None, 3)), 0.5),
}


def _convnext(arch: str, key: PRNGKeyArray | None, kwargs: dict) -> ConvNeXt:
    stages, stochastic_depth_prob = _VARIANTS[arch]
    kwargs.setdefault("stochastic_depth_prob", stochastic_depth_prob)
    setting = [CNBlockConfig(*stage) for stage in stages]
    return ConvNeXt(setting, key=jax.random.key(0) if key is None else key, **kwargs)


# 33x33: stride 32 overall leaves a 1x1 map in the last stage (torchvision's minimum is 32).
_TEST = {"input_size": (3, 33, 33), "no_dropout": {"stochastic_depth_prob": 0.0}}
_CFG = {"torch_builder": "torchvision"}


@register(
    ConvNeXt,
    torchvision_weights="ConvNeXt_Tiny_Weights",
    **_timm("convnext_tiny"),
    test_cfg=_TEST,
    **_CFG,
)
def convnext_tiny(*, key: PRNGKeyArray | None = None, **kwargs) -> ConvNeXt:
    """ConvNeXt tiny (torchvision `convnext_tiny`). `key` defaults to `jax.random.key(0)`."""
    return _convnext("convnext_tiny", key, kwargs)


# The larger variants: float64 parity only, with `pytest -m large`.
@register(
    ConvNeXt,
    torchvision_weights="ConvNeXt_Small_Weights",
    **_timm("convnext_small"),
    test_cfg=_TEST | {"slow": True},
    **_CFG,
)
def convnext_small(*, key: PRNGKeyArray | None = None, **kwargs) -> ConvNeXt:
    """ConvNeXt small (torchvision `convnext_small`)."""
    return _convnext("convnext_small", key, kwargs)


@register(
    ConvNeXt,
    torchvision_weights="ConvNeXt_Base_Weights",
    **_timm("convnext_base"),
    test_cfg=_TEST | {"slow": True},
    **_CFG,
)
def convnext_base(*, key: PRNGKeyArray | None = None, **kwargs) -> ConvNeXt:
    """ConvNeXt base (torchvision `convnext_base`)."""
    return _convnext("convnext_base", key, kwargs)


@register(
    ConvNeXt,
    torchvision_weights="ConvNeXt_Large_Weights",
    **_timm("convnext_large"),
    test_cfg=_TEST | {"slow": True},
    **_CFG,
)
def convnext_large(*, key: PRNGKeyArray | None = None, **kwargs) -> ConvNeXt:
    """ConvNeXt large (torchvision `convnext_large`)."""
    return _convnext("convnext_large", key, kwargs)
