"""Swin Transformer V1 (tiny, small, base) and V2 (tiny, small, base) mirroring
`torchvision.models.swin_transformer`.

torchvision's Swin computes channels-last (NHWC) throughout: `features` is its
`nn.Sequential` as a tuple, the patch embedding `(conv, Permute, LayerNorm)`, then per stage
a tuple of blocks (`features.1.0.attn.qkv.weight`) and, between stages, a patch merging
(`features.2.reduction.weight`). The head is `norm`, average pooling and `head`. Each
attention holds its `relative_position_index` (and in V2 its `relative_coords_table`), torch's
persistent buffers, at torch's place in the state_dict. A call returns `(logits, model)` as
for every zoo model.

timm's `swin_{tiny,small,base}_patch4_window7_224` and `swinv2_{tiny,small,base}_window8_256`
are the same networks under other names (`torchvision_swin_to_timm`,
`timm_swin_to_torchvision`): `save_pretrained(..., layout="timm")` writes what timm reads,
and `zoo.load` reads timm's (and Microsoft's original) checkpoints. timm computes
torchvision's function only at sizes where no stage pads its map to window multiples, and
its model takes one size: the export records 224 (V2: 256).
"""

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._registry import _torchvision_builder, register
from ..layers import (
    GELU,
    Conv2d,
    Dropout,
    Layer,
    LayerNorm,
    LayerNorm2d,
    Linear,
    ReLU,
    StochasticDepth,
    dot_product_attention,
    relative_position_index,
    run_sequential,
    split_keys,
)
from ..layers._flags import inference_flag
from ..layers._norm import statistic_value
from ._base import FeatureInfo, ZooModel, run_stages
from ._convnext import _init_weights, trunc_normal
from ._mobilenetv2 import _keys
from ._timm import refuse_unplaced, timm_interop

if TYPE_CHECKING:
    import torch


def relative_coords_table(window_size: tuple[int, int]) -> np.ndarray:
    """torchvision's V2 `relative_coords_table`, `(1, 2 Wh - 1, 2 Ww - 1, 2)` float32: the
    relative coordinates scaled to `[-8, 8]` and log-spaced, `sign(c) log2(|c| + 1) / 3`."""
    wh, ww = window_size
    h = np.arange(-(wh - 1), wh, dtype=np.float32)
    w = np.arange(-(ww - 1), ww, dtype=np.float32)
    table = np.stack(np.meshgrid(h, w, indexing="ij")).transpose(1, 2, 0)[None].copy()
    table[..., 0] /= np.float32(wh - 1)
    table[..., 1] /= np.float32(ww - 1)
    table *= np.float32(8)
    return (np.sign(table) * np.log2(np.abs(table) + np.float32(1)) / np.float32(3)).astype(
        np.float32
    )


def _shift_mask(
    pad_hw: tuple[int, int], window_size: tuple[int, int], shift_size: tuple[int, int]
) -> np.ndarray:
    """torchvision's shifted-window attention mask, `(windows, 1, N, N)`: `-100` between
    tokens that the cyclic shift brought from different regions of the map, else 0."""
    (ph, pw), (wh, ww), (sh, sw) = pad_hw, window_size, shift_size
    regions = np.zeros((ph, pw), np.float32)
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.reshape(ph // wh, wh, pw // ww, ww).transpose(0, 2, 1, 3)
    regions = regions.reshape(-1, wh * ww)
    diff = regions[:, None, :] - regions[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))[:, None]


def shifted_window_attention(
    x: Float[Array, "batch height width channels"],
    qkv: Linear,
    proj: Linear,
    relative_position_bias: Float[Array, "1 heads n n"],
    window_size: tuple[int, int],
    num_heads: int,
    shift_size: tuple[int, int],
    *,
    attention_dropout: Dropout,
    dropout: Dropout,
    logit_scale: Float[Array, "heads 1 1"] | None = None,
    key: PRNGKeyArray | None = None,
) -> Float[Array, "batch height width channels"]:
    """torchvision's `shifted_window_attention`: pad the map to window multiples, shift it
    cyclically (no shift along a side the window covers whole), attend within each window
    with the relative position bias (and, shifted, the `-100` mask), project, and undo the
    shift and the padding. With `logit_scale` (V2): cosine attention, the key's third of the
    `qkv` bias left out, the scale clamped at `log(100)`.

    **Arguments:** `x` NHWC; the layers and buffers of a `ShiftedWindowAttention`;
    `attention_dropout` on the attention weights, `dropout` after the projection; `key` for
    them in train mode.

    **Returns:** the attended map, NHWC, the shape of `x`.
    """
    b, h, w, c = x.shape
    (wh, ww), head_dim = window_size, c // num_heads
    pad_b, pad_r = (wh - h % wh) % wh, (ww - w % ww) % ww
    x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    ph, pw = h + pad_b, w + pad_r
    # As torchvision: no shift along a side no longer than the window.
    shift = (0 if wh >= ph else shift_size[0], 0 if ww >= pw else shift_size[1])
    shifted = sum(shift) > 0
    if shifted:
        x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    windows = (ph // wh) * (pw // ww)
    n = wh * ww
    x = x.reshape(b, ph // wh, wh, pw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * windows, n, c)

    weight = qkv.weight.astype(x.dtype)
    bias = None if qkv.bias is None else qkv.bias.astype(x.dtype)
    if logit_scale is not None and bias is not None:  # V2: no key bias
        bias = bias.at[c : 2 * c].set(0)
    y = x @ weight.T
    y = (y if bias is None else y + bias).reshape(b * windows, n, 3, num_heads, head_dim)
    q, k, v = y[:, :, 0], y[:, :, 1], y[:, :, 2]  # (batch, n, heads, head_dim)
    if logit_scale is None:
        scale = head_dim**-0.5
    else:
        # F.normalize (eps 1e-12); the per-head scale is folded into the queries.
        q, k = _normalize(q), _normalize(k)
        scales = jnp.exp(jnp.minimum(logit_scale.astype(x.dtype), math.log(100.0)))
        q, scale = q * scales.reshape(1, 1, num_heads, 1), 1.0
    attn_bias = relative_position_bias.astype(x.dtype)  # (1, heads, n, n)
    if shifted:
        mask = jnp.asarray(_shift_mask((ph, pw), window_size, shift), x.dtype)
        attn_bias = jnp.tile(attn_bias + mask, (b, 1, 1, 1))  # window w of image i: i W + w
    attn_key, drop_key = split_keys(key, 2)
    if attention_dropout.p and not inference_flag(attention_dropout.inference, "Dropout"):
        # Dropout on the weights: the formula, as torch computes it.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(scale, x.dtype) + attn_bias
        probs = attention_dropout(jax.nn.softmax(logits, axis=-1), key=attn_key)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    else:
        out = dot_product_attention(q, k, v, bias=attn_bias, scale=scale)
    x = dropout(proj(out.reshape(b * windows, n, c)), key=drop_key)

    x = x.reshape(b, ph // wh, pw // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, c)
    if shifted:
        x = jnp.roll(x, shift, axis=(1, 2))
    return x[:, :h, :w, :]


def _normalize(x: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
    """`F.normalize(x, dim=-1)`: `x / max(|x|, 1e-12)`, with torch's gradient at `x = 0` (a
    padded token's key: zero, where `jnp.linalg.norm`'s is NaN)."""
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), 0)
    return x / jnp.maximum(norm, 1e-12)


def _gather_bias(
    table: Float[Array, "entries heads"], index: Int[Array, " nn"], window_size: tuple[int, int]
) -> Float[Array, "1 heads n n"]:
    """torchvision's `_get_relative_position_bias`: the table's rows for each token pair."""
    n = window_size[0] * window_size[1]
    return table[index.astype(jnp.int32)].reshape(n, n, -1).transpose(2, 0, 1)[None]


class ShiftedWindowAttention(eqx.Module):
    """torchvision's `ShiftedWindowAttention` (V1): windowed multi-head self-attention with a
    learned relative position bias table.

    **Arguments:**

    - `dim`: the channels; `window_size`, `shift_size`: `(h, w)`; `num_heads`.
    - `qkv_bias`, `proj_bias`: whether the Linears have biases.
    - `attention_dropout`, `dropout`: the rates on the attention weights and the output.
    - `keys`: PRNG keys for torchvision's initialisation (`trunc_normal_(std=0.02)`).
    """

    # torch's order: own parameter, own buffer, then the Linears.
    relative_position_bias_table: Float[Array, "entries heads"]
    relative_position_index: Int[Array, " nn"]
    qkv: Linear
    proj: Linear
    attn_drop: Dropout
    proj_drop: Dropout
    window_size: tuple[int, int] = eqx.field(static=True)
    shift_size: tuple[int, int] = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if len(window_size) != 2 or len(shift_size) != 2:
            raise ValueError("window_size and shift_size must be of length 2")
        self.window_size = (int(window_size[0]), int(window_size[1]))
        self.shift_size = (int(shift_size[0]), int(shift_size[1]))
        self.num_heads = num_heads
        self.qkv = _init_weights(Linear, dim, dim * 3, bias=qkv_bias, keys=keys)
        self.proj = _init_weights(Linear, dim, dim, bias=proj_bias, keys=keys)
        entries = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = trunc_normal(next(keys), (entries, num_heads), 0.02)
        self.relative_position_index = jax.device_put(
            relative_position_index(*self.window_size).reshape(-1).astype(np.int32)
        )
        self.attn_drop = Dropout(attention_dropout)
        self.proj_drop = Dropout(dropout)

    def relative_position_bias(self) -> Float[Array, "1 heads n n"]:
        """The bias added to each window's attention logits, `(1, heads, N, N)`."""
        return _gather_bias(
            self.relative_position_bias_table, self.relative_position_index, self.window_size
        )

    def __call__(
        self, x: Float[Array, "batch height width dim"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "batch height width dim"]:
        return shifted_window_attention(
            x,
            self.qkv,
            self.proj,
            self.relative_position_bias(),
            self.window_size,
            self.num_heads,
            self.shift_size,
            attention_dropout=self.attn_drop,
            dropout=self.proj_drop,
            key=key,
        )


class ShiftedWindowAttentionV2(eqx.Module):
    """torchvision's `ShiftedWindowAttentionV2`: cosine attention with a learned per-head
    `logit_scale`, and the relative position bias from a small MLP (`cpb_mlp`) over
    log-spaced relative coordinates (`relative_coords_table`), as `16 sigmoid(...)`.

    **Arguments:** as `ShiftedWindowAttention`.
    """

    # torch's order: own parameter, own buffers, then the Linears and the MLP.
    logit_scale: Float[Array, "heads 1 1"]
    # A float buffer, stored as its float32 (float64) bits as BatchNorm's statistics are
    # (`weights_convert` presents it as torch's float): no optimizer or gradient sees it.
    relative_coords_table: Int[Array, "1 h w 2"]
    relative_position_index: Int[Array, " nn"]
    qkv: Linear
    proj: Linear
    cpb_mlp: tuple
    attn_drop: Dropout
    proj_drop: Dropout
    window_size: tuple[int, int] = eqx.field(static=True)
    shift_size: tuple[int, int] = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        if len(window_size) != 2 or len(shift_size) != 2:
            raise ValueError("window_size and shift_size must be of length 2")
        self.window_size = (int(window_size[0]), int(window_size[1]))
        self.shift_size = (int(shift_size[0]), int(shift_size[1]))
        self.num_heads = num_heads
        self.qkv = _init_weights(Linear, dim, dim * 3, bias=qkv_bias, keys=keys)
        self.proj = _init_weights(Linear, dim, dim, bias=proj_bias, keys=keys)
        self.relative_coords_table = jax.device_put(
            relative_coords_table(self.window_size).view(np.int32)
        )
        self.relative_position_index = jax.device_put(
            relative_position_index(*self.window_size).reshape(-1).astype(np.int32)
        )
        self.logit_scale = jax.device_put(np.full((num_heads, 1, 1), np.log(10.0), np.float32))
        self.cpb_mlp = (
            _init_weights(Linear, 2, 512, keys=keys),
            ReLU(),
            _init_weights(Linear, 512, num_heads, bias=False, keys=keys),
        )
        self.attn_drop = Dropout(attention_dropout)
        self.proj_drop = Dropout(dropout)

    def relative_position_bias(self) -> Float[Array, "1 heads n n"]:
        """`16 sigmoid(cpb_mlp(relative_coords_table))` gathered per token pair."""
        first = self.cpb_mlp[0]
        # The table in the MLP's dtype, as torch's `.to(dtype)` casts its buffer.
        table = statistic_value(self.relative_coords_table).astype(first.weight.dtype)
        out, _ = run_sequential(self.cpb_mlp, table)
        bias = _gather_bias(
            out.reshape(-1, self.num_heads), self.relative_position_index, self.window_size
        )
        return 16 * jax.nn.sigmoid(bias)

    def __call__(
        self, x: Float[Array, "batch height width dim"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "batch height width dim"]:
        return shifted_window_attention(
            x,
            self.qkv,
            self.proj,
            self.relative_position_bias(),
            self.window_size,
            self.num_heads,
            self.shift_size,
            attention_dropout=self.attn_drop,
            dropout=self.proj_drop,
            logit_scale=self.logit_scale,
            key=key,
        )


class SwinTransformerBlock(Layer):
    """torchvision's `SwinTransformerBlock` (V1, pre-norm): `x + sd(attn(norm1(x)))`, then
    `x + sd(mlp(norm2(x)))`, `mlp` = `Linear`, exact GELU, dropout, `Linear`, dropout
    (`mlp.0`, `mlp.3`). With `post_norm=True` torchvision's `SwinTransformerBlockV2`:
    `x + sd(norm1(attn(x)))`, `x + sd(norm2(mlp(x)))`, with `ShiftedWindowAttentionV2`.
    NHWC in and out (torchvision's Swin is channels-last throughout).

    **Arguments:**

    - `dim`, `num_heads`, `window_size`, `shift_size`: as torchvision's.
    - `mlp_ratio`: the MLP's hidden width over `dim`.
    - `dropout`, `attention_dropout`, `stochastic_depth_prob`: the rates (`"row"` mode).
    - `post_norm`: V2's block (see above).
    - `keys`: PRNG keys for torchvision's initialisation.
    """

    norm1: LayerNorm
    attn: ShiftedWindowAttention | ShiftedWindowAttentionV2
    stochastic_depth: StochasticDepth
    norm2: LayerNorm
    mlp: tuple
    post_norm: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        stochastic_depth_prob: float = 0.0,
        post_norm: bool = False,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        attn = ShiftedWindowAttentionV2 if post_norm else ShiftedWindowAttention
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn = attn(
            dim,
            window_size,
            shift_size,
            num_heads,
            attention_dropout=attention_dropout,
            dropout=dropout,
            keys=keys,
        )
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.norm2 = LayerNorm(dim, eps=1e-5)
        hidden = int(dim * mlp_ratio)
        # torchvision's MLP init (xavier) is overwritten by SwinTransformer's trunc_normal_.
        self.mlp = (
            _init_weights(Linear, dim, hidden, keys=keys),
            GELU(),
            Dropout(dropout),
            _init_weights(Linear, hidden, dim, keys=keys),
            Dropout(dropout),
        )
        self.post_norm = post_norm

    def __call__(
        self, x: Array, *, channels_last: bool = True, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del channels_last  # NHWC always, as torchvision's blocks
        attn_key, sd1, mlp_key, sd2 = split_keys(key, 4)
        if self.post_norm:
            y = self.norm1(self.attn(x, key=attn_key))
        else:
            y = self.attn(self.norm1(x), key=attn_key)
        x = x + self.stochastic_depth(y, key=sd1)[0]
        if self.post_norm:
            y = self.norm2(run_sequential(self.mlp, x, key=mlp_key)[0])
        else:
            y = run_sequential(self.mlp, self.norm2(x), key=mlp_key)[0]
        return x + self.stochastic_depth(y, key=sd2)[0], self


def _merge_patches(x: Float[Array, "batch h w c"]) -> Float[Array, "batch h2 w2 c4"]:
    """torchvision's `_patch_merging_pad`: pad to even sides, then concatenate each 2x2
    patch's pixels (top-left, bottom-left, top-right, bottom-right) along the channels."""
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
    return jnp.concatenate(parts, axis=-1)


class PatchMerging(Layer):
    """torchvision's `PatchMerging`: merge 2x2 patches, `norm` (over `4 dim`), then
    `reduction` to `2 dim`. With `v2=True`, `PatchMergingV2`: `reduction`, then `norm`
    (over `2 dim`). NHWC in and out.

    **Arguments:** `dim`, the input channels; `v2`; `keys` for the initialisation.
    """

    reduction: Linear
    norm: LayerNorm
    v2: bool = eqx.field(static=True)

    def __init__(self, dim: int, v2: bool = False, *, keys: Iterator[PRNGKeyArray]):
        self.reduction = _init_weights(Linear, 4 * dim, 2 * dim, bias=False, keys=keys)
        self.norm = LayerNorm(2 * dim if v2 else 4 * dim, eps=1e-5)
        self.v2 = v2

    def __call__(
        self, x: Array, *, channels_last: bool = True, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del channels_last, key  # NHWC always; nothing random
        x = _merge_patches(x)
        return (self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))), self


class Permute(Layer):
    """torchvision's `ops.misc.Permute([0, 2, 3, 1])` in the patch embedding: NCHW to NHWC.
    The zoo runs the trunk NHWC (`channels_last=True`), where it is the identity."""

    dims: tuple[int, ...] = eqx.field(static=True)

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key
        return (x if channels_last else jnp.transpose(x, self.dims)), self


class SwinTransformer(ZooModel):
    """torchvision's `SwinTransformer` (V1, or V2 with `v2=True`), as an Equinox module over
    NCHW batches of any size (maps are padded to window multiples).

    **Arguments:**

    - `patch_size`, `embed_dim`, `depths`, `num_heads`, `window_size`: as torchvision's.
    - `mlp_ratio`, `dropout`, `attention_dropout`: as torchvision's.
    - `stochastic_depth_prob`: the last block's drop rate; block `i` of `n` drops with
      `stochastic_depth_prob * i / (n - 1)`, as in torchvision.
    - `v2`: torchvision's `block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2`.
    - `num_classes`: as in torchvision (`0`: no `head`, calls return the normalised pooled
      features).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation.

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives
    stochastic depth and dropout in train mode.
    """

    first_conv_path: ClassVar[str] = "features.0.0"
    classifier_path: ClassVar[str] = "head"
    head_modules: ClassVar[tuple[str, ...]] = ("norm", "head")
    global_pool: ClassVar[str] = "avg"
    # torchvision's `features` returns NHWC maps and `norm` takes them: the torch face runs
    # those top-level modules on these layouts (input, output).
    torch_layouts: ClassVar[dict[str, tuple[str, str]]] = {
        "features": ("NCHW", "NHWC"),
        "norm": ("NHWC", "NHWC"),
    }
    features: tuple
    # A Layer (torch's LayerNorm on the last axis of an NHWC map), so the torch face can run
    # it as torchvision's top-level `norm`.
    norm: LayerNorm2d
    head: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)
    options: tuple[tuple[str, float], ...] = eqx.field(static=True)

    def __init__(
        self,
        patch_size: Sequence[int],
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: Sequence[int],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        stochastic_depth_prob: float = 0.1,
        num_classes: int = 1000,
        in_chans: int = 3,
        v2: bool = False,
        *,
        key: PRNGKeyArray,
    ):
        if len(depths) != len(num_heads) or not depths:
            raise ValueError("depths and num_heads must be non-empty lists of the same length")
        keys = _keys(key)
        patch = (int(patch_size[0]), int(patch_size[1]))
        stem = Conv2d(in_chans, embed_dim, patch, stride=patch, key=next(keys))
        features: list = [(stem, Permute((0, 2, 3, 1)), LayerNorm2d(embed_dim, eps=1e-5))]
        total_stage_blocks = sum(depths)
        stage_block_id = 0
        infos = []
        reduction = patch[0]
        for i_stage, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            dim = embed_dim * 2**i_stage
            stage = []
            for i_layer in range(depth):
                # torchvision's rate, rising linearly with the block's depth.
                sd_prob = stochastic_depth_prob * float(stage_block_id) / (total_stage_blocks - 1)
                shift = [0 if i_layer % 2 == 0 else w // 2 for w in window_size]
                stage.append(
                    SwinTransformerBlock(
                        dim,
                        heads,
                        window_size,
                        shift,
                        mlp_ratio=mlp_ratio,
                        dropout=dropout,
                        attention_dropout=attention_dropout,
                        stochastic_depth_prob=sd_prob,
                        post_norm=v2,
                        keys=keys,
                    )
                )
                stage_block_id += 1
            features.append(tuple(stage))
            infos.append(FeatureInfo(dim, reduction, f"features.{len(features) - 1}"))
            if i_stage < len(depths) - 1:
                features.append(PatchMerging(dim, v2=v2, keys=keys))
                reduction *= 2
        self.features = tuple(features)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = LayerNorm2d(self.num_features, eps=1e-5)
        self.head = (
            _init_weights(Linear, self.num_features, num_classes, keys=keys)
            if num_classes
            else None
        )
        self.feature_info = tuple(infos)
        self.options = (
            ("mlp_ratio", float(mlp_ratio)),
            ("dropout", float(dropout)),
            ("attention_dropout", float(attention_dropout)),
            ("stochastic_depth_prob", float(stochastic_depth_prob)),
        )

    def config_kwargs(self) -> dict[str, float]:
        return dict(self.options)

    @classmethod
    def torchvision_code(cls, name: str, options: dict[str, Any]) -> list[str]:
        # torchvision's `swin_t` and siblings refuse `stochastic_depth_prob` (they pass
        # their own): another rate is set on the blocks afterwards, by torchvision's rule.
        options = dict(options)
        rate = options.pop("stochastic_depth_prob", _VARIANTS[name][4])
        lines = super().torchvision_code(name, options)
        if rate != _VARIANTS[name][4]:
            lines += [
                "blocks = [block for stage in model.features[1::2] for block in stage]",
                "for i, block in enumerate(blocks):",
                f"    block.stochastic_depth.p = {rate!r} * i / (len(blocks) - 1)",
            ]
        return lines

    @classmethod
    def torch_feature_map(cls, output: Any, info: FeatureInfo) -> Any:
        """A stage's output as torchvision computes it (NHWC) as the NCHW map."""
        del info
        return output.permute(0, 3, 1, 2)

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        maps, _ = run_stages(self.features, x, ends=ends, depth=depth, key=key)
        return maps, self  # no buffers change

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        del key  # no dropout in the head
        # torchvision normalises each position's channels, then averages the positions.
        x, _ = self.norm(x, channels_last=channels_last)
        x = x.mean(axis=(1, 2) if channels_last else (2, 3))
        return x if pre_logits or self.head is None else self.head(x)


# (patch, embed_dim, depths, heads, window, default stochastic depth, v2) of each variant.
_VARIANTS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 0.2, False),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 0.3, False),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 0.5, False),
    "swin_v2_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 8, 0.2, True),
    "swin_v2_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 8, 0.3, True),
    "swin_v2_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 8, 0.5, True),
}


def _swin(arch: str, key: PRNGKeyArray | None, kwargs: dict) -> SwinTransformer:
    embed_dim, depths, heads, window, stochastic_depth_prob, v2 = _VARIANTS[arch]
    kwargs.setdefault("stochastic_depth_prob", stochastic_depth_prob)
    return SwinTransformer(
        [4, 4],
        embed_dim,
        depths,
        heads,
        [window, window],
        v2=v2,
        key=jax.random.key(0) if key is None else key,
        **kwargs,
    )


def _torchvision_swin(name: str) -> Callable[..., "torch.nn.Module"]:
    """torchvision's model (as `torch_builder="torchvision"` builds it), taking the
    `stochastic_depth_prob` option too: torchvision's `swin_t` and siblings pass their own to
    `SwinTransformer` and refuse another (`got multiple values`), so it is set afterwards, on
    each block's `StochasticDepth` by torchvision's rule (rising linearly with the depth)."""
    build = _torchvision_builder(name)

    def torch_builder(**kwargs: Any) -> "torch.nn.Module":
        rate = kwargs.pop("stochastic_depth_prob", None)
        model = build(**kwargs)
        if rate is not None:
            blocks = [block for stage in model.features[1::2] for block in stage]
            for i, block in enumerate(blocks):
                block.stochastic_depth.p = rate * float(i) / (len(blocks) - 1)
        return model

    return torch_builder


# -- timm's names ------------------------------------------------------------------------------
# timm's Swin (`timm.models.swin_transformer`, V2 `swin_transformer_v2`) built with
# `img_size` computes torchvision's function at that size where every stage's map is a
# whole number of windows (224 k to 224 k + 3 pixels a side for V1's 7-pixel windows,
# 256 k to 256 k + 3 for V2's 8): there neither pads, and the cyclic shift, its -100 mask,
# the 2x2 merging order (top-left, bottom-left, top-right, bottom-right), the relative
# position bias (V2: `16 sigmoid(cpb_mlp(...))` over the same log-spaced table,
# `logit_scale` clamped at log(100)), the LayerNorms (eps 1e-5), exact GELU and the head are
# the same. Elsewhere they differ: timm shifts the map before padding it to window
# multiples, torchvision after, and timm shrinks a window to a map smaller than it (and its
# bias table with it) where torchvision pads the map. timm's model refuses any input but
# its `img_size` (`strict_img_size`), so a `layout="timm"` export records 224 (V2: 256);
# timm's `dynamic_img_size=True` runs other sizes with the windows and shifts fixed for
# `img_size`: not torchvision's function (at 448x448 the last stage's 14x14 map is not
# shifted by timm, and is by torchvision).
_TV_SWIN_KEY = re.compile(
    r"features\.0\.(?P<stem>[02])\.(?P<p0>weight|bias)"
    r"|features\.(?P<f>\d+)\.(?:(?P<b>\d+)\.(?P<rest>"
    r"norm[12]\.(?:weight|bias)|mlp\.[03]\.(?:weight|bias)"
    r"|attn\.(?:relative_position_bias_table|relative_position_index|relative_coords_table"
    r"|logit_scale|(?:qkv|proj)\.(?:weight|bias)|cpb_mlp\.(?:0\.weight|0\.bias|2\.weight)))"
    r"|(?P<merge>reduction\.weight|norm\.weight|norm\.bias))"
    r"|(?P<top>norm|head)\.(?P<p1>weight|bias)"
)
_TIMM_SWIN_KEY = re.compile(
    r"patch_embed\.(?P<stem>proj|norm)\.(?P<p0>weight|bias)"
    r"|layers\.(?P<s>\d+)\.(?:blocks\.(?P<b>\d+)\.(?P<rest>"
    r"norm[12]\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias)"
    r"|attn\.(?:relative_position_bias_table|logit_scale|[qv]_bias|(?:qkv|proj)\.(?:weight|bias)"
    r"|cpb_mlp\.(?:0\.weight|0\.bias|2\.weight)))"
    r"|downsample\.(?P<merge>reduction\.weight|norm\.weight|norm\.bias))"
    r"|(?P<top>norm|head\.fc|head)\.(?P<p1>weight|bias)"
)
# Buffers torchvision saves and timm computes at construction (not in its state_dict).
_SWIN_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")
# torchvision's order of a block's entries (V1 and V2 together) and a merging's.
_TV_SWIN_BLOCK_ORDER = (
    "norm1.weight",
    "norm1.bias",
    "attn.logit_scale",
    "attn.relative_position_bias_table",
    "attn.relative_coords_table",
    "attn.relative_position_index",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "attn.cpb_mlp.0.weight",
    "attn.cpb_mlp.0.bias",
    "attn.cpb_mlp.2.weight",
    "norm2.weight",
    "norm2.bias",
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.3.weight",
    "mlp.3.bias",
)
_TV_SWIN_MERGE_ORDER = ("reduction.weight", "norm.weight", "norm.bias")


def _copy(value: Any) -> Any:
    """A slice as its own tensor or array (safetensors refuses tensors sharing memory)."""
    return value.clone() if hasattr(value, "clone") else np.array(value, copy=True)


def _as(like: Any, array: np.ndarray) -> Any:
    """`array` as the kind of `like`: a torch tensor where the checkpoint holds torch's."""
    if type(like).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(array)
    return array


def _qkv_bias(q_bias: Any, v_bias: Any) -> Any:
    """torchvision's V2 `qkv.bias` from timm's `q_bias` and `v_bias`: the key's third zero
    (torchvision zeroes it at run time; timm has no key bias)."""
    if type(q_bias).__module__.startswith("torch"):
        import torch

        return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])


def torchvision_swin_to_timm(state_dict: Mapping[str, Any], *, v2: bool = False) -> dict[str, Any]:
    """A torchvision Swin state_dict (`swin_t`'s, or with `v2=True` `swin_v2_t`'s, and the
    other sizes') under timm's keys (`timm.create_model("swin_tiny_patch4_window7_224")`'s,
    `"swinv2_tiny_window8_256"`'s), key by key, in torchvision's order.

    Renames `features.0.{0, 2}` to `patch_embed.{proj, norm}`, the blocks `features.{2S+1}.B`
    to `layers.S.blocks.B` (`mlp.{0, 3}` to `mlp.{fc1, fc2}`), the merging before stage `S`,
    `features.{2S}`, to `layers.S.downsample` (timm merges at a stage's start), and `head` to
    `head.fc`. The buffers `relative_position_index` (and V2's `relative_coords_table`),
    which timm computes, are left out. With `v2`, `attn.qkv.bias` becomes timm's `q_bias` and
    `v_bias`, its first and last thirds: the key's third, which torchvision zeroes before
    use, is left out (the function is unchanged).

    **Raises:** `ValueError` for a key timm's Swin has no place for.
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TV_SWIN_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
        elif m["stem"] is not None:
            out[f"patch_embed.{'proj' if m['stem'] == '0' else 'norm'}.{m['p0']}"] = value
        elif m["top"] is not None:
            out[f"{'norm' if m['top'] == 'norm' else 'head.fc'}.{m['p1']}"] = value
        elif m["b"] is not None and int(m["f"]) % 2 == 1:
            prefix, rest = f"layers.{int(m['f']) // 2}.blocks.{m['b']}", m["rest"]
            if rest.split(".")[-1] in _SWIN_BUFFERS:
                continue
            if v2 and rest == "attn.qkv.bias":
                third = value.shape[0] // 3
                out[f"{prefix}.attn.q_bias"] = _copy(value[:third])
                out[f"{prefix}.attn.v_bias"] = _copy(value[2 * third :])
                continue
            if rest.startswith("mlp."):  # mlp.0, mlp.3 (not cpb_mlp's)
                rest = f"mlp.fc{1 if rest[4] == '0' else 2}{rest[5:]}"
            out[f"{prefix}.{rest}"] = value
        elif m["merge"] is not None and int(m["f"]) % 2 == 0 and m["f"] != "0":
            out[f"layers.{int(m['f']) // 2}.downsample.{m['merge']}"] = value
        else:
            unknown.append(key)
    refuse_unplaced(unknown, "not a torchvision Swin state_dict timm's Swin can hold")
    return out


def _window(table: Any, window_size: Sequence[int] | None) -> tuple[int, int]:
    """The attention window: `window_size`, checked against a V1 bias table's rows,
    `(2 h - 1) (2 w - 1)`, or read from them (square windows)."""
    if table is not None:
        rows = int(table.shape[0])
        side = (math.isqrt(rows) + 1) // 2
        if window_size is None and (2 * side - 1) ** 2 == rows:
            return side, side
        if window_size is None or (2 * window_size[0] - 1) * (2 * window_size[1] - 1) != rows:
            raise ValueError(
                f"relative_position_bias_table has {rows} rows: not a window of "
                f"{window_size}; pass the checkpoint's window_size"
            )
    if window_size is None:
        raise ValueError(
            "a timm Swin V2 state_dict does not record its window: pass window_size "
            "(8 for swinv2_*_window8_256, torchvision's swin_v2_*)"
        )
    return int(window_size[0]), int(window_size[1])


def _tv_rank(key: str) -> tuple:
    """A torchvision Swin key's place in its state_dict."""
    parts = key.split(".")
    if parts[0] != "features":
        return (math.inf, parts[0] == "head", parts[-1] == "bias")
    if parts[1] == "0":
        return (0, 0, parts[2] == "2", parts[3] == "bias")
    if parts[2].isdigit():
        return (int(parts[1]), int(parts[2]), _TV_SWIN_BLOCK_ORDER.index(".".join(parts[3:])))
    return (int(parts[1]), 0, _TV_SWIN_MERGE_ORDER.index(".".join(parts[2:])))


def timm_swin_to_torchvision(
    state_dict: Mapping[str, Any], *, window_size: Sequence[int] | None = None
) -> dict[str, Any]:
    """A timm Swin or Swin V2 state_dict (`timm.create_model("swin_tiny_patch4_window7_224")`'s,
    `"swinv2_tiny_window8_256"`'s, and the other sizes'; or Microsoft's original checkpoints,
    which merge at a stage's end and name the classifier `head`) under torchvision's keys, so
    `zoo.load("swin_t", weights=...)` and torchvision's `swin_t` load it.

    The inverse of `torchvision_swin_to_timm`: V2's `q_bias` and `v_bias` become `qkv.bias`
    with a zero key third, and the buffers timm leaves out of its state_dict
    (`relative_position_index`, V2's `relative_coords_table`) are computed for the window;
    a checkpoint's own copies (Microsoft's, and their `attn_mask`) are dropped for them.

    **Arguments:**

    - `state_dict`: timm's keys to tensors (torch or NumPy); wrapper prefixes stripped.
    - `window_size`: the attention window `(h, w)`. A V1 checkpoint's bias table gives it
      (square windows); a V2 checkpoint records none, so it is needed: 8 for torchvision's
      V2 and timm's `swinv2_*_window8_256` (timm's `window16` checkpoints have the same keys
      and shapes and compute another function).

    **Returns:** a new dict with torchvision's keys, in torchvision's order.

    **Raises:** `ValueError` for a key torchvision's Swin has no place for, a `q_bias`
    without its `v_bias`, or a window the bias table does not fit.
    """
    # Microsoft's checkpoints hold stage 0's merging (timm's filter shifts them the same way).
    microsoft = "layers.0.downsample.reduction.weight" in state_dict
    out: dict[str, Any] = {}
    attention: dict[str, dict[str, Any]] = {}  # each block's q_bias, v_bias, bias table
    unknown = []
    for key, value in state_dict.items():
        m = _TIMM_SWIN_KEY.fullmatch(key)
        if key.split(".")[-1] in _SWIN_BUFFERS:
            continue
        if m is None:
            unknown.append(key)
        elif m["stem"] is not None:
            out[f"features.0.{'0' if m['stem'] == 'proj' else '2'}.{m['p0']}"] = value
        elif m["top"] is not None:
            out[f"{'norm' if m['top'] == 'norm' else 'head'}.{m['p1']}"] = value
        elif m["merge"] is not None:
            out[f"features.{2 * (int(m['s']) + microsoft)}.{m['merge']}"] = value
        else:
            prefix, rest = f"features.{2 * int(m['s']) + 1}.{m['b']}", m["rest"]
            if rest in ("attn.q_bias", "attn.v_bias", "attn.relative_position_bias_table"):
                attention.setdefault(prefix, {})[rest.removeprefix("attn.")] = value
                if rest != "attn.relative_position_bias_table":
                    continue
            elif rest == "attn.logit_scale":
                attention.setdefault(prefix, {})["v2"] = value
            if rest.startswith("mlp."):  # mlp.fc1, mlp.fc2 (not cpb_mlp's)
                rest = f"mlp.{0 if rest[6] == '1' else 3}{rest[7:]}"
            out[f"{prefix}.{rest}"] = value
    refuse_unplaced(unknown, "not a timm Swin state_dict torchvision's Swin can hold")
    for prefix, entries in attention.items():
        like = next(iter(entries.values()))
        if ("q_bias" in entries) != ("v_bias" in entries):
            raise ValueError(f"{prefix}: timm's q_bias and v_bias come together; one is missing")
        if "q_bias" in entries:
            out[f"{prefix}.attn.qkv.bias"] = _qkv_bias(entries["q_bias"], entries["v_bias"])
        h, w = _window(entries.get("relative_position_bias_table"), window_size)
        index = relative_position_index(h, w).reshape(-1).astype(np.int64)
        out[f"{prefix}.attn.relative_position_index"] = _as(like, index)
        if "v2" in entries:
            out[f"{prefix}.attn.relative_coords_table"] = _as(like, relative_coords_table((h, w)))
    return dict(sorted(out.items(), key=lambda item: _tv_rank(item[0])))


# Options the export may record beside the model's `config_kwargs()`: timm reads them from
# config.json's `num_classes` and `input_size`.
_TIMM_READS = ("num_classes", "in_chans")


def _timm(arch: str, architecture: str) -> dict[str, Any]:
    """`register`'s timm hooks for `arch`, timm's `architecture`: the key maps (V2's
    `q_bias`, `v_bias`; the window for the buffers timm does not save), and timm's options:
    `img_size`, the size at which timm computes torchvision's function (224, V2 256: timm
    refuses other inputs), `drop_path_rate` (timm's default is 0.1; its rates rise linearly
    over the blocks from 0, as torchvision's), and where set torchvision's `dropout` (timm's
    `proj_drop_rate`: the attention's projection and the MLP), `attention_dropout`
    (`attn_drop_rate`) and `mlp_ratio`."""
    _, _, _, window, stochastic_depth_prob, v2 = _VARIANTS[arch]
    known = {"mlp_ratio", "dropout", "attention_dropout", "stochastic_depth_prob", *_TIMM_READS}

    def model_args(kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"{arch} options {unknown} have no timm equivalent: export it with "
                "layout='torchvision'"
            )
        rate = kwargs.get("stochastic_depth_prob", stochastic_depth_prob)
        args: dict[str, Any] = {"img_size": 256 if v2 else 224, "drop_path_rate": float(rate)}
        if float(kwargs.get("mlp_ratio", 4.0)) != 4.0:
            args["mlp_ratio"] = float(kwargs["mlp_ratio"])
        if kwargs.get("dropout"):
            args["proj_drop_rate"] = float(kwargs["dropout"])
        if kwargs.get("attention_dropout"):
            args["attn_drop_rate"] = float(kwargs["attention_dropout"])
        return args

    return timm_interop(
        architecture,
        functools.partial(torchvision_swin_to_timm, v2=v2),
        functools.partial(timm_swin_to_torchvision, window_size=(window, window)),
        marker="patch_embed.proj.weight",
        model_args=model_args,
    )


# 65x49: a 16x12 first map, larger than the window, so the shifted-window mask, the padding
# to window multiples and (deeper, 4x3 and 2x2 maps) the unshifted padded windows all run.
# `train_parity_large`: swin_t's float64 train step takes over a minute here (a shared
# 2-core machine); tests/test_swin.py covers train mode (V1 and V2) at a tiny configuration.
# `timm_input_size`: the one size timm's Swin takes from a `layout="timm"` export (every
# stage's map a whole number of windows), where it computes torchvision's function.
_TEST = {
    "input_size": (3, 65, 49),
    "no_dropout": {"stochastic_depth_prob": 0.0},
    "train_parity_large": True,
    "timm_input_size": (3, 224, 224),
}
_SLOW = _TEST | {"slow": True}
_SLOW_V2 = _SLOW | {"timm_input_size": (3, 256, 256)}


def _preprocessing(crop: int, resize: int) -> dict[str, Any]:
    """torchvision's evaluation transforms for the weights: bicubic resize, centre crop."""
    return {"input_size": (3, crop, crop), "crop_pct": crop / resize, "interpolation": "bicubic"}


@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_t"),
    **_timm("swin_t", "swin_tiny_patch4_window7_224"),
    torchvision_weights="Swin_T_Weights",
    test_cfg=_TEST,
    **_preprocessing(224, 232),
)
def swin_t(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin-T (torchvision `swin_t`). `key` defaults to `jax.random.key(0)`."""
    return _swin("swin_t", key, kwargs)


# The larger variants and V2: float64 parity only, with `pytest -m large` (V2's blocks are
# tested by default in tests/test_swin.py at a tiny configuration).
@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_s"),
    **_timm("swin_s", "swin_small_patch4_window7_224"),
    torchvision_weights="Swin_S_Weights",
    test_cfg=_SLOW,
    **_preprocessing(224, 246),
)
def swin_s(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin-S (torchvision `swin_s`)."""
    return _swin("swin_s", key, kwargs)


@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_b"),
    **_timm("swin_b", "swin_base_patch4_window7_224"),
    torchvision_weights="Swin_B_Weights",
    test_cfg=_SLOW,
    **_preprocessing(224, 238),
)
def swin_b(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin-B (torchvision `swin_b`)."""
    return _swin("swin_b", key, kwargs)


@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_v2_t"),
    **_timm("swin_v2_t", "swinv2_tiny_window8_256"),
    torchvision_weights="Swin_V2_T_Weights",
    test_cfg=_SLOW_V2,
    **_preprocessing(256, 260),
)
def swin_v2_t(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin V2-T (torchvision `swin_v2_t`)."""
    return _swin("swin_v2_t", key, kwargs)


@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_v2_s"),
    **_timm("swin_v2_s", "swinv2_small_window8_256"),
    torchvision_weights="Swin_V2_S_Weights",
    test_cfg=_SLOW_V2,
    **_preprocessing(256, 260),
)
def swin_v2_s(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin V2-S (torchvision `swin_v2_s`)."""
    return _swin("swin_v2_s", key, kwargs)


@register(
    SwinTransformer,
    torch_builder=_torchvision_swin("swin_v2_b"),
    **_timm("swin_v2_b", "swinv2_base_window8_256"),
    torchvision_weights="Swin_V2_B_Weights",
    test_cfg=_SLOW_V2,
    **_preprocessing(256, 272),
)
def swin_v2_b(*, key: PRNGKeyArray | None = None, **kwargs) -> SwinTransformer:
    """Swin V2-B (torchvision `swin_v2_b`)."""
    return _swin("swin_v2_b", key, kwargs)
