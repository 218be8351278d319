"""Vision Transformer (b_16, b_32, l_16, l_32, h_14) mirroring
`torchvision.models.vision_transformer`.

The patch embedding `conv_proj`, the `class_token`, the `encoder` (`pos_embedding`, the
blocks `encoder.layers.encoder_layer_{i}` and the final `ln`) and the `heads`
(`heads.head`, after `heads.pre_logits` and a tanh when `representation_size` is set) carry
torchvision's state_dict keys, in torch's order. `forward_features` returns the normalised
tokens `(batch, 1 + patches, hidden_dim)` (timm's `output_fmt="NLC"`); `forward_head`
classifies the class token. The feature maps (`features_only`, `forward_intermediates`) are
each encoder layer's patch tokens as NCHW grids, the class token dropped, as timm's.

A ViT computes for one image size, as torchvision's: build another with `image_size=`; a
checkpoint for another size has its position embeddings interpolated as torchvision's
`interpolate_embeddings` does (`vit_checkpoint`). timm's ViT checkpoints load too
(`timm_vit_to_torchvision`).
"""

import functools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import (
    GELU,
    Conv2d,
    Dropout,
    Layer,
    LayerNorm,
    Linear,
    NamedSequential,
    Tanh,
    dot_product_attention,
    normal,
    run_sequential,
    split_keys,
    torch_default_uniform,
    uniform,
    zeros,
)
from ..layers._flags import inference_flag
from ._base import FeatureInfo, ZooModel, _normalise_indices
from ._convnext import trunc_normal
from ._mobilenetv2 import _keys
from ._timm import refuse_unplaced


def _xavier_uniform(key: PRNGKeyArray, shape: tuple[int, int]) -> Float[Array, "out in"]:
    """torch's `xavier_uniform_` for a `(out, in)` weight: `U(±sqrt(6 / (in + out)))`."""
    return uniform(key, shape, math.sqrt(6.0 / (shape[0] + shape[1])))


def _linear(
    in_features: int, out_features: int, weight: Array, bias: Array, *, key: PRNGKeyArray
) -> Linear:
    """A `Linear` holding the given arrays (built as shapes: torch's default draws would be
    thrown away)."""
    layer = eqx.filter_eval_shape(Linear, in_features, out_features, key=key)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))


class PatchConv2d(Conv2d):
    """torchvision's ViT `conv_proj`, a `Conv2d` whose stride is its kernel (no padding):
    computed as one matmul over the non-overlapping patches. XLA:CPU took 24 s to compile
    the 16x16-kernel convolution on a 32x32 input (and `Conv2d`'s im2col of 256 taps as
    long); the patches are a reshape. Any other configuration is `Conv2d`'s."""

    def __call__(
        self, x: Float[Array, "batch in_channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch out_channels out_height out_width"]:
        kh, kw = self.kernel_size
        height, width = x.shape[1:3] if channels_last else x.shape[2:4]
        plain = self.stride == self.kernel_size and self.padding == (0, 0)
        if not plain or self.groups != 1 or self.dilation != (1, 1) or height % kh or width % kw:
            return super().__call__(x, channels_last=channels_last)
        nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
        batch, _, _, channels = nhwc.shape
        grid = (batch, height // kh, width // kw)
        # (batch, h, kh, w, kw, C) -> rows of (kh, kw, C) patches, the kernel's (kh, kw, C).
        patches = nhwc.reshape(grid[0], grid[1], kh, grid[2], kw, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(*grid, kh * kw * channels)
        weight = self.weight.astype(x.dtype).transpose(2, 3, 1, 0)
        y = patches @ weight.reshape(kh * kw * channels, self.out_channels)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y if channels_last else y.transpose(0, 3, 1, 2)


class MultiheadAttention(eqx.Module):
    """`torch.nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)` as a
    ViT calls it: self-attention (query, key and value the same input), no mask, no
    attention weights returned.

    The packed `in_proj_weight` holds the query, key and value projections one above the
    other (torch's layout and initialisation: Xavier-uniform, zero biases; `out_proj` a
    `Linear` with torch's default weights and a zero bias). Attention runs through
    `zoo.layers.dot_product_attention`; in train mode with `dropout > 0` the attention
    probabilities are dropped before the values are summed, as torch's
    `scaled_dot_product_attention(dropout_p=dropout)`.

    **Arguments:**

    - `embed_dim`, `num_heads`: as in torch (`embed_dim` divisible by `num_heads`).
    - `dropout`: the attention dropout rate.
    - `key`: PRNG key for the initialisation.
    """

    in_proj_weight: Float[Array, "three_embed embed"]
    in_proj_bias: Float[Array, " three_embed"]
    out_proj: Linear
    dropout: Dropout
    embed_dim: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, *, key: PRNGKeyArray):
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        wkey, okey = jax.random.split(key)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = _xavier_uniform(wkey, (3 * embed_dim, embed_dim))
        self.in_proj_bias = zeros((3 * embed_dim,))
        weight = torch_default_uniform(okey, (embed_dim, embed_dim), embed_dim)
        self.out_proj = _linear(embed_dim, embed_dim, weight, zeros((embed_dim,)), key=okey)
        self.dropout = Dropout(dropout)

    def __call__(
        self, x: Float[Array, "batch length embed"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "batch length embed"]:
        batch, length, _ = x.shape
        qkv = x @ self.in_proj_weight.astype(x.dtype).T + self.in_proj_bias.astype(x.dtype)
        shape = (batch, length, self.num_heads, self.embed_dim // self.num_heads)
        q, k, v = (a.reshape(shape) for a in jnp.split(qkv, 3, axis=-1))
        if self.dropout.p > 0 and not inference_flag(self.dropout.inference, "Dropout"):
            # The fused kernels have no dropout: the formula, the probabilities dropped.
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(shape[-1] ** -0.5, x.dtype)
            probs = self.dropout(jax.nn.softmax(logits, axis=-1), key=key)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        else:
            out = dot_product_attention(q, k, v)
        return self.out_proj(out.reshape(batch, length, self.embed_dim))


class EncoderBlock(Layer):
    """torchvision's ViT `EncoderBlock`: `x = x + dropout(attention(ln_1(x)))`, then
    `x + mlp(ln_2(x))` with `mlp` = `Linear` to `mlp_dim`, exact GELU, dropout, `Linear`
    back, dropout (torchvision's `MLPBlock`: Xavier-uniform weights, biases `N(0, 1e-6)`).
    LayerNorms with eps 1e-6. A `Layer` on `(batch, length, hidden_dim)` tokens."""

    ln_1: LayerNorm
    self_attention: MultiheadAttention
    dropout: Dropout
    ln_2: LayerNorm
    mlp: tuple
    num_heads: int = eqx.field(static=True)

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.num_heads = num_heads
        self.ln_1 = LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = MultiheadAttention(
            hidden_dim, num_heads, attention_dropout, key=next(keys)
        )
        self.dropout = Dropout(dropout)
        self.ln_2 = LayerNorm(hidden_dim, eps=1e-6)
        fc1, fc2 = (
            _linear(
                i,
                o,
                _xavier_uniform(next(keys), (o, i)),
                normal(next(keys), (o,), 1e-6),
                key=next(keys),
            )
            for i, o in ((hidden_dim, mlp_dim), (mlp_dim, hidden_dim))
        )
        self.mlp = (fc1, GELU(), Dropout(dropout), fc2, Dropout(dropout))

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch length hidden_dim"], Self]:
        del channels_last  # tokens have no channel axis to move
        attention_key, dropout_key, mlp_key = split_keys(key, 3)
        y = self.dropout(self.self_attention(self.ln_1(x), key=attention_key), key=dropout_key)
        y = y + x
        z, _ = run_sequential(self.mlp, self.ln_2(y), key=mlp_key)
        return y + z, self


class Encoder(Layer):
    """torchvision's ViT `Encoder`: adds `pos_embedding` (`N(0, 0.02)`, BERT's), dropout,
    the `layers` (`encoder_layer_{i}`) and the final `ln`. A `Layer` on tokens."""

    pos_embedding: Float[Array, "1 length hidden_dim"]
    dropout: Dropout
    layers: NamedSequential
    ln: LayerNorm

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.pos_embedding = normal(next(keys), (1, seq_length, hidden_dim), 0.02)
        self.dropout = Dropout(dropout)
        self.layers = NamedSequential(
            (
                f"encoder_layer_{i}",
                EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, keys=keys),
            )
            for i in range(num_layers)
        )
        self.ln = LayerNorm(hidden_dim, eps=1e-6)

    def run(
        self, x: Float[Array, "batch length hidden_dim"], *, depth: int, key: PRNGKeyArray | None
    ) -> list[Float[Array, "batch length hidden_dim"]]:
        """The outputs of the first `depth` layers (before `ln`)."""
        keys = split_keys(key, 1 + len(self.layers))
        x = self.dropout(x + self.pos_embedding.astype(x.dtype), key=keys[0])
        outputs = []
        for layer, k in zip(self.layers, keys[1 : depth + 1], strict=False):
            x, _ = layer(x, key=k)
            outputs.append(x)
        return outputs

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch length hidden_dim"], Self]:
        del channels_last
        return self.ln(self.run(x, depth=len(self.layers), key=key)[-1]), self


class VisionTransformer(ZooModel):
    """torchvision's `VisionTransformer`, as an Equinox module over NCHW batches of
    `image_size`-square images.

    **Arguments:**

    - `image_size`, `patch_size`, `num_layers`, `num_heads`, `hidden_dim`, `mlp_dim`,
      `dropout`, `attention_dropout`, `representation_size`: as in torchvision (LayerNorm
      eps 1e-6; torchvision's `conv_stem_configs` and `norm_layer` are not offered).
    - `num_classes`: as in torchvision (`0`: no `heads.head`, calls return the class token's
      features, after `heads.pre_logits` and tanh where `representation_size` is set).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for torchvision's initialisation (the head's weights are zeros).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)`; the key drives dropout
    in train mode. Inputs of another size than `image_size` are refused, as torchvision's.
    """

    first_conv_path: ClassVar[str] = "conv_proj"
    classifier_path: ClassVar[str] = "heads.head"
    head_modules: ClassVar[tuple[str, ...]] = ("heads",)
    global_pool: ClassVar[str] = "token"
    output_fmt: ClassVar[str] = "NLC"
    # torch registers the model's own parameter (`class_token`) before its submodules'.
    class_token: Float[Array, "1 1 hidden_dim"]
    conv_proj: PatchConv2d
    encoder: Encoder
    heads: NamedSequential
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)
    image_size: int = eqx.field(static=True)
    patch_size: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    attention_dropout: float = eqx.field(static=True)
    representation_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        representation_size: int | None = None,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        if image_size % patch_size:
            raise ValueError(
                f"Input shape indivisible by patch size! image_size={image_size} is no "
                f"multiple of patch_size={patch_size}"
            )
        keys = _keys(key)
        self.image_size, self.patch_size = image_size, patch_size
        self.dropout, self.attention_dropout = dropout, attention_dropout
        self.representation_size = representation_size
        self.class_token = zeros((1, 1, hidden_dim))
        conv = eqx.filter_eval_shape(
            PatchConv2d, in_chans, hidden_dim, patch_size, stride=patch_size, key=next(keys)
        )
        fan_in = in_chans * patch_size * patch_size
        weight = trunc_normal(next(keys), conv.weight.shape, math.sqrt(1 / fan_in))
        self.conv_proj = eqx.tree_at(
            lambda m: (m.weight, m.bias), conv, (weight, zeros((hidden_dim,)))
        )
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(
            seq_length,
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            dropout,
            attention_dropout,
            keys=keys,
        )
        heads: list[tuple[str, Any]] = []
        width = hidden_dim
        if representation_size is not None:
            weight = trunc_normal(
                next(keys), (representation_size, hidden_dim), math.sqrt(1 / hidden_dim)
            )
            bias = zeros((representation_size,))
            pre_logits = _linear(hidden_dim, representation_size, weight, bias, key=next(keys))
            heads += [("pre_logits", pre_logits), ("act", Tanh())]
            width = representation_size
        head = None
        if num_classes:
            head = _linear(
                width,
                num_classes,
                zeros((num_classes, width)),
                zeros((num_classes,)),
                key=next(keys),
            )
        self.heads = NamedSequential([*heads, ("head", head)])
        self.num_features = hidden_dim
        self.feature_info = tuple(
            FeatureInfo(hidden_dim, patch_size, f"encoder.layers.encoder_layer_{i}")
            for i in range(num_layers)
        )

    @property
    def head_hidden_size(self) -> int:
        return self.num_features if self.representation_size is None else self.representation_size

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "dropout": float(self.dropout),
            "attention_dropout": float(self.attention_dropout),
            "representation_size": self.representation_size,
        }

    def fixed_input_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @classmethod
    def torch_feature_map(cls, output: Any, info: FeatureInfo) -> Any:
        """An encoder layer's tokens `(batch, 1 + side², hidden_dim)` as the NCHW map of its
        patch tokens (the class token dropped)."""
        del info
        patches = output[:, 1:]
        side = math.isqrt(patches.shape[1])
        return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()

    # -- the contract, for tokens ------------------------------------------------------------
    def _check(self, x: Array) -> None:
        super()._check(x)
        height, width = x.shape[2:]
        if (height, width) != (self.image_size, self.image_size):
            which = "height" if height != self.image_size else "width"
            got = height if which == "height" else width
            raise ValueError(
                f"Wrong image {which}! Expected {self.image_size} but got {got}: this "
                f"VisionTransformer was built for {self.image_size}x{self.image_size} inputs. "
                f"Build one for yours with zoo.load(name, image_size={got}, ...) (a "
                "checkpoint's position embeddings are interpolated), or resize the images."
            )

    def _tokens(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key: PRNGKeyArray
    ) -> list[Float[Array, "batch length hidden_dim"]]:
        """The first `depth` encoder layers' outputs for an NHWC batch."""
        patches = self.conv_proj(x, channels_last=True)
        batch, _, _, dim = patches.shape
        tokens = jnp.concatenate(
            [
                jnp.broadcast_to(self.class_token.astype(patches.dtype), (batch, 1, dim)),
                patches.reshape(batch, -1, dim),  # row-major patches, as torch's reshape
            ],
            axis=1,
        )
        return self.encoder.run(tokens, depth=depth, key=key)

    def _grid(self, tokens: Float[Array, "batch length dim"]) -> Float[Array, "batch h w dim"]:
        side = self.image_size // self.patch_size
        return tokens[:, 1:].reshape(tokens.shape[0], side, side, tokens.shape[-1])

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        return [self._grid(t) for t in self._tokens(x, depth=depth, key=key)], self

    def forward_features(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch length hidden_dim"], Self]:
        """The tokens after `encoder.ln`, `(batch, 1 + patches, hidden_dim)` (timm's
        `output_fmt="NLC"`), and the model (no buffers to update)."""
        self._check(x)
        tokens = self._tokens(x.transpose(0, 2, 3, 1), depth=len(self.feature_info), key=key)
        return self.encoder.ln(tokens[-1]), self

    def forward_intermediates(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        indices: Any = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Any, Self]:
        """`ZooModel.forward_intermediates`: the maps are the layers' patch-token grids
        (NCHW); `final_features` is `forward_features`'s tokens, or with `stop_early` before
        the last layer the deepest map asked for (the contract's rule)."""
        self._check(x)
        count = len(self.feature_info)
        wanted = _normalise_indices(indices, count)
        depth = wanted[-1] + 1 if (stop_early or intermediates_only) else count
        tokens = self._tokens(x.transpose(0, 2, 3, 1), depth=depth, key=key)
        intermediates = [self._grid(tokens[i]).transpose(0, 3, 1, 2) for i in wanted]
        if intermediates_only:
            return intermediates, self
        final = self.encoder.ln(tokens[-1]) if depth == count else intermediates[-1]
        return (final, intermediates), self

    def forward_head(
        self,
        x: Float[Array, "batch length hidden_dim"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        """The class token of `forward_features`'s tokens through `heads` (with
        `pre_logits=True`, or without `heads.head`, what `heads.head` reads)."""
        del channels_last, key  # tokens; the heads have no dropout
        y = x[:, 0]
        for name, layer in self.heads.items():
            if name == "head" and (pre_logits or layer is None):
                break
            y = layer(y)
        return y

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Any, Self]:
        """Logits (or, after `features_only`, the list of feature maps) and the model."""
        if self.out_indices is not None:
            return self.forward_intermediates(
                x, indices=self.out_indices, intermediates_only=True, key=key
            )
        tokens, _ = self.forward_features(x, key=key)
        return self.forward_head(tokens), self


# -- timm's names ----------------------------------------------------------------------------
# timm's `vit_base_patch16_224` family (`timm.models.vision_transformer.VisionTransformer`
# with a class token, learnt position embeddings including its slot, token pooling) ->
# torchvision's, per block.
_TIMM_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv": "self_attention.in_proj_",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_TIMM_TOP = {
    "cls_token": "class_token",
    "pos_embed": "encoder.pos_embedding",
    "patch_embed.proj.weight": "conv_proj.weight",
    "patch_embed.proj.bias": "conv_proj.bias",
    "norm.weight": "encoder.ln.weight",
    "norm.bias": "encoder.ln.bias",
    "head.weight": "heads.head.weight",
    "head.bias": "heads.head.bias",
}
_TIMM_KEY = re.compile(
    r"blocks\.(?P<b>\d+)\.(?P<layer>norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\."
    r"(?P<p>weight|bias)"
)
_TV_KEY = re.compile(
    r"encoder\.layers\.encoder_layer_(?P<b>\d+)\.(?P<layer>ln_[12]\.|mlp\.[03]\."
    r"|self_attention\.(?:in_proj_|out_proj\.))(?P<p>weight|bias)"
)


def _in_torchvision_order(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Keys in torchvision's state_dict order: `class_token`, `conv_proj`, the encoder's
    `pos_embedding`, its layers by number, its `ln`, the heads."""

    def rank(key: str) -> tuple:
        m = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", key)
        if m:
            return (3, int(m[1]))
        for i, prefix in enumerate(("class_token", "conv_proj.", "encoder.pos_embedding")):
            if key.startswith(prefix):
                return (i, 0)
        return (4, 0) if key.startswith("encoder.ln.") else (5, 0)

    return dict(sorted(state_dict.items(), key=lambda item: rank(item[0])))


def timm_vit_to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ViT state_dict (`timm.create_model("vit_base_patch16_224")`'s, and the other
    `vit_{tiny,small,base,large,huge}_patch*` with a class token and token pooling) under
    torchvision's keys, so `zoo.load("vit_b_16", weights=...)` and torchvision's `vit_b_16`
    load it.

    Renames `cls_token` to `class_token`, `pos_embed` to `encoder.pos_embedding` (both hold
    the class token's slot first), `patch_embed.proj` to `conv_proj`, `blocks.N.{norm1,
    attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}` to `encoder.layers.encoder_layer_N.{ln_1,
    self_attention.in_proj_, self_attention.out_proj, ln_2, mlp.0, mlp.3}`, `norm` to
    `encoder.ln` and `head` to `heads.head`. timm's packed `qkv` is torch's `in_proj` (query,
    key, value rows, heads contiguous within each); its LayerNorms (eps 1e-6) and exact GELU
    are torchvision's: the two compute the same function.

    **Arguments:**

    - `state_dict`: timm's keys to tensors (torch or NumPy); wrapper prefixes stripped.

    **Returns:** a new dict with torchvision's keys, in torchvision's order.

    **Raises:** `ValueError` for a key torchvision's ViT has no place for (timm's `fc_norm`
    of average pooling, register tokens, layer scale, qk-norm, `norm_pre`, attention
    pooling...), or position embeddings without the class token's slot (`no_embed_class`).
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TIMM_KEY.fullmatch(key)
        if key in _TIMM_TOP:
            out[_TIMM_TOP[key]] = value
        elif m is None:
            unknown.append(key)
        else:
            layer = _TIMM_BLOCK[m["layer"]]
            sep = "" if layer.endswith("_") else "."
            out[f"encoder.layers.encoder_layer_{m['b']}.{layer}{sep}{m['p']}"] = value
    refuse_unplaced(unknown, "not a timm ViT state_dict torchvision's VisionTransformer can hold")
    pos = out.get("encoder.pos_embedding")
    if pos is not None:
        length = int(pos.shape[1])
        if math.isqrt(length - 1) ** 2 != length - 1 and math.isqrt(length) ** 2 == length:
            raise ValueError(
                f"pos_embed has shape {tuple(pos.shape)}: {length} patch positions and no "
                "class token slot (timm's no_embed_class=True), which torchvision's ViT "
                "cannot hold"
            )
    return _in_torchvision_order(out)


def torchvision_vit_to_timm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `timm_vit_to_torchvision`: a torchvision ViT state_dict under timm's
    `VisionTransformer` keys (`vit_base_patch16_224` for `vit_b_16`), in timm's order.

    **Raises:** `ValueError` for a key timm's plain ViT has no place for (torchvision's
    `heads.pre_logits` of `representation_size`, or a convolutional stem).
    """
    top = {v: k for k, v in _TIMM_TOP.items()}
    block = {v: k for k, v in _TIMM_BLOCK.items()}
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _TV_KEY.fullmatch(key)
        if key in top:
            out[top[key]] = value
        elif m is None:
            unknown.append(key)
        else:
            layer = m["layer"].removesuffix(".")
            out[f"blocks.{m['b']}.{block[layer]}.{m['p']}"] = value
    refuse_unplaced(unknown, "not a torchvision ViT state_dict timm's VisionTransformer can hold")

    def rank(key: str) -> tuple:
        if key.startswith("blocks."):
            return (2, int(key.split(".")[1]))
        order = ("cls_token", "pos_embed", "patch_embed.")
        return next(((i, 0) for i, p in enumerate(order) if key.startswith(p)), (3, 0))

    return dict(sorted(out.items(), key=lambda item: rank(item[0])))


def vit_checkpoint(state_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ViTs' `checkpoint_adapter`: timm's keys become torchvision's
    (`timm_vit_to_torchvision`); without `image_size` in `kwargs` the checkpoint's own is
    taken (its position embeddings' grid times the patch size, as torchvision's builder takes
    its weights' `min_size`), and for another `image_size` the position embeddings are
    interpolated as torchvision's `interpolate_embeddings` does (bicubic, `align_corners`)."""
    if "pos_embed" in state_dict or "cls_token" in state_dict:
        state_dict = timm_vit_to_torchvision(state_dict)
    pos, stem = state_dict.get("encoder.pos_embedding"), state_dict.get("conv_proj.weight")
    if pos is None or stem is None or len(pos.shape) != 3 or len(stem.shape) != 4:
        return state_dict  # not a ViT's: the load reports what does not fit
    patch, side = int(stem.shape[-1]), math.isqrt(int(pos.shape[1]) - 1)
    if side * side != pos.shape[1] - 1:
        return state_dict
    image_size = kwargs.setdefault("image_size", side * patch)
    if image_size // patch == side:
        return state_dict
    import torch
    from torchvision.models.vision_transformer import interpolate_embeddings

    state_dict = dict(state_dict)  # torchvision's function replaces the entry in place
    if not isinstance(pos, torch.Tensor):
        state_dict["encoder.pos_embedding"] = torch.as_tensor(np.asarray(pos))
    return interpolate_embeddings(image_size, patch, state_dict)


def vit_timm_layout(
    architecture: str, state_dict: dict[str, Any], kwargs: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The ViTs' `timm_layout` (`save_pretrained(..., layout="timm")`): timm's
    `architecture` (`vit_base_patch16_224` for `vit_b_16`), the state_dict under timm's keys
    (`torchvision_vit_to_timm`), and timm's options for the model's `config_kwargs()`:
    `img_size`, and torchvision's dropouts in timm's places (`dropout` after the position
    embeddings and in each block's projections, `attention_dropout` on the attention
    probabilities)."""
    if kwargs.get("representation_size") is not None:
        raise ValueError(
            "a ViT with representation_size (heads.pre_logits) has no timm layout: timm's "
            "VisionTransformer has no pre-logits layer. Export it with layout='torchvision'."
        )
    model_args: dict[str, Any] = {"img_size": int(kwargs.get("image_size", 224))}
    if kwargs.get("dropout"):
        model_args |= {"pos_drop_rate": kwargs["dropout"], "proj_drop_rate": kwargs["dropout"]}
    if kwargs.get("attention_dropout"):
        model_args["attn_drop_rate"] = kwargs["attention_dropout"]
    return architecture, torchvision_vit_to_timm(state_dict), model_args


# (patch_size, num_layers, num_heads, hidden_dim, mlp_dim) of each torchvision variant.
_VARIANTS = {
    "vit_b_16": (16, 12, 12, 768, 3072),
    "vit_b_32": (32, 12, 12, 768, 3072),
    "vit_l_16": (16, 24, 16, 1024, 4096),
    "vit_l_32": (32, 24, 16, 1024, 4096),
    "vit_h_14": (14, 32, 16, 1280, 5120),
}


def _vit(arch: str, key: PRNGKeyArray | None, kwargs: dict) -> VisionTransformer:
    patch_size, num_layers, num_heads, hidden_dim, mlp_dim = _VARIANTS[arch]
    kwargs.setdefault("image_size", 224)
    return VisionTransformer(
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        key=jax.random.key(0) if key is None else key,
        **kwargs,
    )


def _test(image_size: int, slow: bool) -> dict[str, Any]:
    # A 2x2 patch grid: the smallest whose maps are grids, and 5 tokens (fast).
    return {
        "input_size": (3, image_size, image_size),
        "kwargs": {"image_size": image_size},
        "any_size": False,
        "no_dropout": {"dropout": 0.0, "attention_dropout": 0.0},
        "slow": slow,
    }


_CFG = {"torch_builder": "torchvision", "checkpoint_adapter": vit_checkpoint}


def _timm(architecture: str) -> dict[str, Any]:
    return {"timm_layout": functools.partial(vit_timm_layout, architecture)}


@register(
    VisionTransformer,
    torchvision_weights="ViT_B_16_Weights",
    **_timm("vit_base_patch16_224"),
    # 86M parameters: the float64 train step (GBs; tests/test_vit.py covers train mode at a
    # tiny configuration) and the Hub round trip (a 344 MB file) with `-m large` only.
    test_cfg=_test(32, False) | {"train_parity_large": True, "hub_large": True},
    **_CFG,
)
def vit_b_16(*, key: PRNGKeyArray | None = None, **kwargs) -> VisionTransformer:
    """ViT-B/16 (torchvision `vit_b_16`). `key` defaults to `jax.random.key(0)`."""
    return _vit("vit_b_16", key, kwargs)


# The larger variants: float64 parity only, with `pytest -m large`.
@register(
    VisionTransformer,
    torchvision_weights="ViT_B_32_Weights",
    **_timm("vit_base_patch32_224"),
    test_cfg=_test(64, True),
    **_CFG,
)
def vit_b_32(*, key: PRNGKeyArray | None = None, **kwargs) -> VisionTransformer:
    """ViT-B/32 (torchvision `vit_b_32`)."""
    return _vit("vit_b_32", key, kwargs)


@register(
    VisionTransformer,
    torchvision_weights="ViT_L_16_Weights",
    **_timm("vit_large_patch16_224"),
    test_cfg=_test(32, True),
    **_CFG,
)
def vit_l_16(*, key: PRNGKeyArray | None = None, **kwargs) -> VisionTransformer:
    """ViT-L/16 (torchvision `vit_l_16`)."""
    return _vit("vit_l_16", key, kwargs)


@register(
    VisionTransformer,
    torchvision_weights="ViT_L_32_Weights",
    **_timm("vit_large_patch32_224"),
    test_cfg=_test(64, True),
    **_CFG,
)
def vit_l_32(*, key: PRNGKeyArray | None = None, **kwargs) -> VisionTransformer:
    """ViT-L/32 (torchvision `vit_l_32`)."""
    return _vit("vit_l_32", key, kwargs)


@register(
    VisionTransformer,
    torchvision_weights="ViT_H_14_Weights",
    **_timm("vit_huge_patch14_224"),
    test_cfg=_test(28, True),
    **_CFG,
)
def vit_h_14(*, key: PRNGKeyArray | None = None, **kwargs) -> VisionTransformer:
    """ViT-H/14 (torchvision `vit_h_14`)."""
    return _vit("vit_h_14", key, kwargs)
