"""MaxViT (tiny) mirroring `torchvision.models.maxvit`.

`stem` is torchvision's `nn.Sequential` of two `Conv2dNormActivation`s as nested tuples
(`stem.0.0.weight`), `blocks` its `ModuleList` of `MaxVitBlock`s (`blocks.0.layers.1.layers.
window_attention.attn_layer.1.to_qkv.weight`), `classifier` its `nn.Sequential` (pool,
flatten, LayerNorm, Linear, Tanh, bias-free Linear). Inside, the trunk runs in NHWC; the
attention layers on torchvision's `(batch, partitions, tokens, channels)` layout.

torchvision builds MaxViT for one input size (each stage's map must divide into
`partition_size` windows, and the relative position tables are sized by it): so does the
zoo, and other sizes are refused. A call returns `(logits, model)` as for every zoo model.
"""

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._registry import register
from ..layers import (
    GELU,
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Layer,
    LayerNorm,
    LayerNorm2d,
    Linear,
    NamedSequential,
    SiLU,
    SqueezeExcitation,
    StochasticDepth,
    Tanh,
    dot_product_attention,
    normal,
    relative_position_index,
    run_sequential,
    split_keys,
    with_initial_weight,
)
from ._base import FeatureInfo, ZooModel, classifier_head
from ._convnext import Flatten, trunc_normal
from ._mobilenetv2 import _keys

T = TypeVar("T", Conv2d, Linear)

# torchvision's `partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)` (the TensorFlow values).
_BN = {"eps": 1e-3, "momentum": 0.01}


def _init(cls: type[T], *args, keys: Iterator[PRNGKeyArray], **kwargs) -> T:
    """`cls(*args, **kwargs)`, a `Conv2d` or `Linear`, as torchvision's `MaxVit._init_weights`
    leaves it: weight `normal_(std=0.02)`, bias zero."""
    return with_initial_weight(
        cls, *args, keys=keys, weight=lambda k, shape: normal(k, shape, 0.02), **kwargs
    )


def _conv_output_shape(size: tuple[int, int], kernel: int, stride: int, padding: int):
    """torchvision's `_get_conv_output_shape`."""
    return tuple((s - kernel + 2 * padding) // stride + 1 for s in size)


def _block_input_shapes(input_size: tuple[int, int], n_blocks: int) -> list[tuple[int, int]]:
    """torchvision's `_make_block_input_shapes`: each block's map after its first stride."""
    shapes, shape = [], _conv_output_shape(input_size, 3, 2, 1)
    for _ in range(n_blocks):
        shape = _conv_output_shape(shape, 3, 2, 1)
        shapes.append(shape)
    return shapes


def _conv_bn_act(keys, in_channels, out_channels, kernel, stride=1, groups=1) -> tuple:
    """torchvision's `Conv2dNormActivation` with MaxViT's BatchNorm and GELU: `(conv, bn,
    gelu)`, no conv bias, padding `(kernel - 1) // 2`."""
    conv = _init(
        Conv2d, in_channels, out_channels, kernel, stride, (kernel - 1) // 2, 1, groups, False,
        keys=keys,
    )  # fmt: skip
    return (conv, BatchNorm2d(out_channels, **_BN), GELU())


class MBConv(Layer):
    """torchvision's MaxViT `MBConv`: `proj(x) + stochastic_depth(layers(x))`, `layers` being
    BatchNorm, 1x1 expansion, 3x3 depthwise (the block's stride), squeeze-excitation (SiLU,
    sized by the output channels), 1x1 projection with bias; `proj` an average pool and a
    1x1 convolution where the shape changes (`None`: torch's `nn.Identity`).

    **Arguments:** as torchvision's (`keys`: PRNG keys for its initialisation).
    """

    proj: tuple | None
    stochastic_depth: StochasticDepth
    layers: NamedSequential

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion_ratio: float,
        squeeze_ratio: float,
        stride: int,
        p_stochastic_dropout: float = 0.0,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if stride != 1 or in_channels != out_channels:
            conv = _init(Conv2d, in_channels, out_channels, 1, keys=keys)
            pool = (AvgPool2d(3, stride, 1),) if stride == 2 else ()
            self.proj = (*pool, conv)
        else:
            self.proj = None
        mid = int(out_channels * expansion_ratio)
        squeeze = int(out_channels * squeeze_ratio)
        se = SqueezeExcitation(mid, squeeze, activation=SiLU, keys=keys)
        fc1 = _init(Conv2d, mid, squeeze, 1, keys=keys)
        fc2 = _init(Conv2d, squeeze, mid, 1, keys=keys)
        se = eqx.tree_at(lambda s: (s.fc1, s.fc2), se, (fc1, fc2))
        conv_b, *norm_act = _conv_bn_act(keys, mid, mid, 3, stride, groups=mid)
        self.stochastic_depth = StochasticDepth(p_stochastic_dropout, "row")
        self.layers = NamedSequential(
            [
                ("pre_norm", BatchNorm2d(in_channels, **_BN)),
                ("conv_a", _conv_bn_act(keys, in_channels, mid, 1)),
                ("conv_b", (conv_b, *norm_act)),
                ("squeeze_excitation", se),
                ("conv_c", _init(Conv2d, mid, out_channels, 1, keys=keys)),
            ]
        )

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        layers_key, depth_key = (None, None) if key is None else jax.random.split(key)
        res = x
        for member in self.proj or ():  # (AvgPool2d, Conv2d): both take `channels_last`
            res = member(res, channels_last=channels_last)
        y, layers = self.layers(x, channels_last=channels_last, key=layers_key)
        y, _ = self.stochastic_depth(y, key=depth_key)
        return res + y, eqx.tree_at(lambda m: m.layers, self, layers)


class RelativePositionalMultiHeadAttention(eqx.Module):
    """torchvision's `RelativePositionalMultiHeadAttention` on `(batch, groups, tokens,
    channels)`: multi-head attention within each group, the logits scaled by
    `feat_dim ** -0.5` (torchvision's factor: the channels, not the head width) plus a
    learned bias per head and relative offset.

    `relative_position_index` is torchvision's persistent integer buffer (a state_dict entry,
    int64 in torch, int32 here as JAX's default integer): a buffer by its name
    (`weights_convert.is_buffer_name`), so never trained, and never cast to a float dtype
    (`zoo.cast_floats` casts inexact arrays only).

    **Arguments:** `feat_dim`, `head_dim`, `max_seq_len` (the tokens per group, a square),
    as torchvision's; `keys`: PRNG keys for its initialisation.
    """

    relative_position_bias_table: Float[Array, "offsets heads"]
    relative_position_index: Int[Array, "tokens tokens"]
    to_qkv: Linear
    merge: Linear
    n_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    max_seq_len: int = eqx.field(static=True)
    scale_factor: float = eqx.field(static=True)

    def __init__(
        self, feat_dim: int, head_dim: int, max_seq_len: int, *, keys: Iterator[PRNGKeyArray]
    ):
        if feat_dim % head_dim != 0:
            raise ValueError(f"feat_dim: {feat_dim} must be divisible by head_dim: {head_dim}")
        self.n_heads = feat_dim // head_dim
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.scale_factor = feat_dim**-0.5
        size = int(math.sqrt(max_seq_len))
        self.to_qkv = _init(Linear, feat_dim, self.n_heads * head_dim * 3, keys=keys)
        self.merge = _init(Linear, self.n_heads * head_dim, feat_dim, keys=keys)
        self.relative_position_bias_table = trunc_normal(
            next(keys), ((2 * size - 1) * (2 * size - 1), self.n_heads), 0.02
        )
        self.relative_position_index = jax.device_put(
            relative_position_index(size, size).astype(np.int32)
        )

    def positional_bias(self) -> Float[Array, "1 heads tokens tokens"]:
        """torchvision's `get_relative_positional_bias`."""
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(self.max_seq_len, self.max_seq_len, -1)
        return bias.transpose(2, 0, 1)[None]

    def __call__(
        self, x: Float[Array, "batch groups tokens channels"]
    ) -> Float[Array, "batch groups tokens channels"]:
        b, g, p, d = x.shape
        q, k, v = jnp.split(self.to_qkv(x), 3, axis=-1)
        shape = (b * g, p, self.n_heads, self.head_dim)
        out = dot_product_attention(
            q.reshape(shape),
            k.reshape(shape),
            v.reshape(shape),
            bias=self.positional_bias().astype(x.dtype),
            scale=self.scale_factor,
        )
        return self.merge(out.reshape(b, g, p, d))


class WindowPartition(eqx.Module):
    """torchvision's `WindowPartition` (no parameters): `(B, H, W, C)` (NHWC here) to
    `(B, H/p * W/p, p*p, C)`, non-overlapping `p x p` windows."""

    def __call__(self, x: Array, p: int) -> Array:
        b, h, w, c = x.shape
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p, c)


class WindowDepartition(eqx.Module):
    """torchvision's `WindowDepartition`: the windows back to a `(B, H, W, C)` map."""

    def __call__(self, x: Array, p: int, h_partitions: int, w_partitions: int) -> Array:
        b, _, _, c = x.shape
        x = x.reshape(b, h_partitions, w_partitions, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h_partitions * p, w_partitions * p, c)


class SwapAxes(eqx.Module):
    """torchvision's `SwapAxes(a, b)`: `torch.swapaxes(x, a, b)`."""

    a: int = eqx.field(static=True)
    b: int = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        return jnp.swapaxes(x, self.a, self.b)


class PartitionAttentionLayer(Layer):
    """torchvision's `PartitionAttentionLayer`: the map cut into `partition_size` windows
    (`"window"`) or into a `partition_size` grid of strided positions (`"grid"`, the axes
    swapped), then `x + sd(attn_layer(x))`, `x + sd(mlp_layer(x))` (pre-LayerNorm
    transformer, exact GELU), and the map reassembled. `partition_swap`/`departition_swap`
    are `None` where torchvision has `nn.Identity`.

    **Arguments:** as torchvision's (the activation is GELU, the norm `nn.LayerNorm`);
    `keys`: PRNG keys for its initialisation.
    """

    partition_op: WindowPartition
    departition_op: WindowDepartition
    partition_swap: SwapAxes | None
    departition_swap: SwapAxes | None
    attn_layer: tuple
    mlp_layer: tuple
    stochastic_dropout: StochasticDepth
    p: int = eqx.field(static=True)
    g: int = eqx.field(static=True)
    grid_size: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        head_dim: int,
        partition_size: int,
        partition_type: str,
        grid_size: tuple[int, int],
        mlp_ratio: int,
        attention_dropout: float,
        mlp_dropout: float,
        p_stochastic_dropout: float,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if partition_type not in ("grid", "window"):
            raise ValueError("partition_type must be either 'grid' or 'window'")
        n_partitions = grid_size[0] // partition_size
        if partition_type == "window":
            self.p, self.g = partition_size, n_partitions
        else:
            self.p, self.g = n_partitions, partition_size
        self.grid_size = tuple(grid_size)
        self.partition_op = WindowPartition()
        self.departition_op = WindowDepartition()
        swap = SwapAxes(-2, -3) if partition_type == "grid" else None
        self.partition_swap = self.departition_swap = swap
        self.attn_layer = (
            LayerNorm(in_channels),
            # partition_size ** 2 tokens either way: the grid's axes are swapped.
            RelativePositionalMultiHeadAttention(
                in_channels, head_dim, partition_size**2, keys=keys
            ),
            Dropout(attention_dropout),
        )
        self.mlp_layer = (
            LayerNorm(in_channels),
            _init(Linear, in_channels, in_channels * mlp_ratio, keys=keys),
            GELU(),
            _init(Linear, in_channels * mlp_ratio, in_channels, keys=keys),
            Dropout(mlp_dropout),
        )
        self.stochastic_dropout = StochasticDepth(p_stochastic_dropout, "row")

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        keys = split_keys(key, 4)
        if not channels_last:
            x = x.transpose(0, 2, 3, 1)
        gh, gw = self.grid_size[0] // self.p, self.grid_size[1] // self.p
        if self.grid_size[0] % self.p or self.grid_size[1] % self.p:
            raise ValueError(
                f"Grid size must be divisible by partition size. Got grid size of "
                f"{self.grid_size} and partition size of {self.p}"
            )
        if x.shape[1:3] != self.grid_size:
            raise ValueError(
                f"PartitionAttentionLayer was built for a {self.grid_size} map, got {x.shape[1:3]}"
            )
        x = self.partition_op(x, self.p)
        if self.partition_swap is not None:
            x = self.partition_swap(x)
        norm, attn, drop = self.attn_layer
        y, _ = self.stochastic_dropout(drop(attn(norm(x)), key=keys[0]), key=keys[1])
        x = x + y
        norm, fc1, act, fc2, drop = self.mlp_layer
        y = drop(fc2(act(fc1(norm(x)))), key=keys[2])
        y, _ = self.stochastic_dropout(y, key=keys[3])
        x = x + y
        if self.departition_swap is not None:
            x = self.departition_swap(x)
        x = self.departition_op(x, self.p, gh, gw)
        return (x if channels_last else x.transpose(0, 3, 1, 2)), self


class MaxVitLayer(Layer):
    """torchvision's `MaxVitLayer`: `layers` = `MBconv`, `window_attention`,
    `grid_attention` (torch's names).

    **Arguments:** as torchvision's; `keys`: PRNG keys for its initialisation.
    """

    layers: NamedSequential

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        squeeze_ratio: float,
        expansion_ratio: float,
        stride: int,
        head_dim: int,
        mlp_ratio: int,
        mlp_dropout: float,
        attention_dropout: float,
        p_stochastic_dropout: float,
        partition_size: int,
        grid_size: tuple[int, int],
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        mbconv = MBConv(
            in_channels, out_channels, expansion_ratio, squeeze_ratio, stride,
            p_stochastic_dropout, keys=keys,
        )  # fmt: skip
        members = [("MBconv", mbconv)]
        for kind in ("window", "grid"):
            attention = PartitionAttentionLayer(
                out_channels, head_dim, partition_size, kind, grid_size, mlp_ratio,
                attention_dropout, mlp_dropout, p_stochastic_dropout, keys=keys,
            )  # fmt: skip
            members.append((f"{kind}_attention", attention))
        self.layers = NamedSequential(members)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        y, layers = self.layers(x, channels_last=channels_last, key=key)
        return y, eqx.tree_at(lambda m: m.layers, self, layers)


class MaxVitBlock(Layer):
    """torchvision's `MaxVitBlock`: `n_layers` `MaxVitLayer`s, the first with stride 2.

    **Arguments:** as torchvision's (`p_stochastic`: each layer's drop rate); `keys`: PRNG
    keys for its initialisation.
    """

    layers: tuple
    grid_size: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        squeeze_ratio: float,
        expansion_ratio: float,
        head_dim: int,
        mlp_ratio: int,
        mlp_dropout: float,
        attention_dropout: float,
        partition_size: int,
        input_grid_size: tuple[int, int],
        n_layers: int,
        p_stochastic: Sequence[float],
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if not len(p_stochastic) == n_layers:
            raise ValueError(
                f"p_stochastic must have length n_layers={n_layers}, got p_stochastic="
                f"{p_stochastic}."
            )
        self.grid_size = _conv_output_shape(input_grid_size, 3, 2, 1)
        layers = []
        for idx, p in enumerate(p_stochastic):
            layer = MaxVitLayer(
                in_channels if idx == 0 else out_channels, out_channels, squeeze_ratio,
                expansion_ratio, 2 if idx == 0 else 1, head_dim, mlp_ratio, mlp_dropout,
                attention_dropout, p, partition_size, self.grid_size, keys=keys,
            )  # fmt: skip
            layers.append(layer)
        self.layers = tuple(layers)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        y, layers = run_sequential(self.layers, x, channels_last=channels_last, key=key)
        return y, eqx.tree_at(lambda m: m.layers, self, layers)


class MaxVit(ZooModel):
    """torchvision's `MaxVit`, as an Equinox module over NCHW batches of one size.

    **Arguments:**

    - `input_size`: the `(height, width)` the model is built for (and the only one it
      takes): each block's map must be divisible by `partition_size`.
    - `stem_channels`, `partition_size`, `block_channels`, `block_layers`, `head_dim`,
      `stochastic_depth_prob` (spread linearly from 0 over the layers), `squeeze_ratio`,
      `expansion_ratio`, `mlp_ratio`, `mlp_dropout`, `attention_dropout`: as torchvision's
      (its BatchNorm, eps 1e-3 and momentum 0.01, and GELU are fixed).
    - `num_classes`: as in torchvision (`0`: no final `Linear`, calls return what it would
      read, the `Tanh` of the hidden `Linear`).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives
    stochastic depth and dropout in train mode.

    `feature_info` lists timm's five maps: the stem's (reduction 2) and each block's.
    """

    first_conv_path: ClassVar[str] = "stem.0.0"
    classifier_path: ClassVar[str] = "classifier.5"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    stem: tuple
    blocks: tuple
    classifier: tuple
    input_size: tuple[int, int] = eqx.field(static=True)
    partition_size: int = eqx.field(static=True)
    # The constructor's options (but `num_classes`, `in_chans`), for `config_kwargs`.
    options: tuple[tuple[str, Any], ...] = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        input_size: tuple[int, int],
        stem_channels: int,
        partition_size: int,
        block_channels: Sequence[int],
        block_layers: Sequence[int],
        head_dim: int,
        stochastic_depth_prob: float,
        squeeze_ratio: float = 0.25,
        expansion_ratio: float = 4,
        mlp_ratio: int = 4,
        mlp_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        input_size = (int(input_size[0]), int(input_size[1]))
        block_channels, block_layers = tuple(block_channels), tuple(block_layers)
        self.options = (
            ("input_size", input_size),
            ("stem_channels", stem_channels),
            ("partition_size", partition_size),
            ("block_channels", block_channels),
            ("block_layers", block_layers),
            ("head_dim", head_dim),
            ("stochastic_depth_prob", float(stochastic_depth_prob)),
            ("squeeze_ratio", squeeze_ratio),
            ("expansion_ratio", expansion_ratio),
            ("mlp_ratio", mlp_ratio),
            ("mlp_dropout", mlp_dropout),
            ("attention_dropout", attention_dropout),
        )
        shapes = _block_input_shapes(input_size, len(block_channels))
        for idx, shape in enumerate(shapes):
            if shape[0] % partition_size != 0 or shape[1] % partition_size != 0:
                raise ValueError(
                    f"Input size {shape} of block {idx} is not divisible by partition size "
                    f"{partition_size}. Consider changing the partition size or the input "
                    f"size.\nCurrent configuration yields the following block input sizes: "
                    f"{shapes}."
                )
        keys = _keys(key)
        stem_conv = _init(
            Conv2d, in_chans, stem_channels, 3, 2, 1, bias=False, keys=keys
        )  # Conv2dNormActivation's padding (3 - 1) // 2
        self.stem = (
            (stem_conv, BatchNorm2d(stem_channels, **_BN), GELU()),
            (_init(Conv2d, stem_channels, stem_channels, 3, 1, 1, keys=keys),),
        )
        grid = _conv_output_shape(input_size, 3, 2, 1)
        # torchvision's `np.linspace(0, p, sum(block_layers)).tolist()`: the same floats.
        p_stochastic = np.linspace(0, stochastic_depth_prob, sum(block_layers)).tolist()
        blocks, p_idx = [], 0
        in_channels = [stem_channels, *block_channels[:-1]]
        for in_ch, out_ch, n in zip(in_channels, block_channels, block_layers, strict=True):
            block = MaxVitBlock(
                in_ch, out_ch, squeeze_ratio, expansion_ratio, head_dim, mlp_ratio,
                mlp_dropout, attention_dropout, partition_size, grid, n,
                p_stochastic[p_idx : p_idx + n], keys=keys,
            )  # fmt: skip
            blocks.append(block)
            grid, p_idx = block.grid_size, p_idx + n
        self.blocks = tuple(blocks)
        last = block_channels[-1]
        final = _init(Linear, last, num_classes, bias=False, keys=keys) if num_classes else None
        self.classifier = (
            AdaptiveAvgPool2d(1),
            Flatten(),
            # torch's `nn.LayerNorm` on the flat (batch, channels) features.
            LayerNorm2d(last),
            _init(Linear, last, last, keys=keys),
            Tanh(),
            final,
        )
        self.input_size = input_size
        self.partition_size = partition_size
        self.num_features = last
        self.feature_info = (
            FeatureInfo(stem_channels, 2, "stem"),
            *(FeatureInfo(c, 2 ** (i + 2), f"blocks.{i}") for i, c in enumerate(block_channels)),
        )

    @property
    def head_hidden_size(self) -> int:
        """The hidden `Linear`'s width: what the final `Linear` reads (after `Tanh`)."""
        return self.classifier[3].out_features

    def reset_classifier(self, num_classes: int, *, key: PRNGKeyArray | None = None) -> Self:
        """The model with a new final `Linear` for `num_classes` (bias-free, as torchvision's;
        torch's default init), or none for `num_classes=0`."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        key = jax.random.key(0) if key is None else key
        head = Linear(self.head_hidden_size, num_classes, False, key=key) if num_classes else None
        return eqx.tree_at(lambda m: m.classifier[5], self, head, is_leaf=lambda x: x is None)

    def config_kwargs(self) -> dict[str, Any]:
        # Lists, as torchvision's `MaxVit` concatenates `block_channels` with one.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}

    @classmethod
    def torchvision_code(cls, name: str, options: dict[str, Any]) -> list[str]:
        # torchvision's `maxvit_t` passes its own architecture options and refuses them (and
        # `partition_size`, `stochastic_depth_prob`): the class takes them all.
        args = ", ".join(f"{k}={v!r}" for k, v in (_MAXVIT_T | options).items())
        return [f"model = torchvision.models.MaxVit({args})"]

    def fixed_input_size(self) -> tuple[int, int]:
        return self.input_size

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        if tuple(x.shape[1:3]) != self.input_size:
            height, width = x.shape[1:3]
            raise ValueError(
                f"MaxVit was built for {self.input_size[0]}x{self.input_size[1]} inputs, got "
                f"{height}x{width}: torchvision's MaxViT takes one size. Build it for yours: "
                f"zoo.load('maxvit_t', input_size=({height}, {width})) (each block's map must "
                f"divide by partition_size={self.partition_size}; pass partition_size= too)."
            )
        keys = split_keys(key, 5)
        x, stem = run_sequential(self.stem, x, channels_last=True, key=keys[0])
        maps, blocks = [x], list(self.blocks)
        for i in range(depth - 1):
            x, blocks[i] = blocks[i](x, channels_last=True, key=keys[i + 1])
            maps.append(x)
        return maps, eqx.tree_at(lambda m: (m.stem, m.blocks), self, (stem, tuple(blocks)))

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        # torchvision pools to (batch, C, 1, 1) and flattens: the (batch, C) means.
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))
        return classifier_head(self.classifier[2:], x, pre_logits=pre_logits, key=key)


# torchvision's `maxvit_t` configuration.
_MAXVIT_T = {
    "stem_channels": 64,
    "block_channels": [64, 128, 256, 512],
    "block_layers": [2, 2, 5, 2],
    "head_dim": 32,
    "stochastic_depth_prob": 0.2,
    "partition_size": 7,
}


def _torchvision_maxvit_t(**kwargs: Any) -> "Any":
    """torchvision's `MaxVit` as `maxvit_t` builds it, taking every option as a keyword
    (`maxvit_t(partition_size=...)` and `maxvit_t(stochastic_depth_prob=...)` raise in
    torchvision: its builder passes them itself), plus `in_chans` (the stem convolution
    rebuilt, as `torch_builder="torchvision"` does)."""
    import torch
    from torchvision.models.maxvit import MaxVit as TorchMaxVit

    in_chans = kwargs.pop("in_chans", 3)
    options = _MAXVIT_T | {"input_size": (224, 224)} | kwargs
    for name in ("block_channels", "block_layers"):  # torchvision concatenates lists
        options[name] = list(options[name])
    model = TorchMaxVit(**options)
    if in_chans != 3:
        conv = model.stem[0][0]
        model.stem[0][0] = torch.nn.Conv2d(
            in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            bias=False,
        )  # fmt: skip
    return model


# The registry tests build maxvit_t for 64x64 (the size conftest's BatchNorm calibration
# runs at) with 2x2 partitions (7x7 ones need 224x224), and two blocks of one layer each:
# XLA:CPU compiles ~2 s per MaxViT layer, and each registry test compiles the network
# several times (the four blocks of one layer took ~80 s in all, under budget's 45 s only
# so). tests/test_maxvit.py covers two-layer blocks (train mode, float64) and, with
# `-m large`, maxvit_t itself at 224x224.
_TEST = {
    "input_size": (3, 64, 64),
    "any_size": False,
    "kwargs": {
        "input_size": (64, 64),
        "partition_size": 2,
        "block_channels": (64, 128),
        "block_layers": (1, 1),
    },
    "no_dropout": {"stochastic_depth_prob": 0.0},
    "train_parity_large": True,
}


@register(
    MaxVit,
    torch_builder=_torchvision_maxvit_t,
    torchvision_weights="MaxVit_T_Weights",
    test_cfg=_TEST,
    input_size=(3, 224, 224),
    crop_pct=1.0,
    interpolation="bicubic",
)
def maxvit_t(*, key: PRNGKeyArray | None = None, **kwargs) -> MaxVit:
    """MaxViT tiny (torchvision `maxvit_t`). `key` defaults to `jax.random.key(0)`;
    `kwargs`: `input_size` (default `(224, 224)`), `partition_size` (7),
    `stochastic_depth_prob` (0.2), `num_classes`, `in_chans`, and `MaxVit`'s other
    options."""
    options = _MAXVIT_T | {"input_size": (224, 224)} | kwargs
    return MaxVit(key=jax.random.key(0) if key is None else key, **options)
