"""Scaled dot-product attention with torch's numerics on the CPU and JAX's fused kernels
elsewhere."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def dot_product_attention(
    query: Float[Array, "batch q_len heads head_dim"],
    key: Float[Array, "batch kv_len heads head_dim"],
    value: Float[Array, "batch kv_len heads head_dim"],
    *,
    bias: Float[Array, "#batch #heads q_len kv_len"] | None = None,
    scale: float | None = None,
) -> Float[Array, "batch q_len heads head_dim"]:
    """`softmax(query keyᵀ * scale + bias) value` per head, as torch's
    `scaled_dot_product_attention` (with `attn_mask=bias`) computes it.

    **Arguments:**

    - `query`, `key`, `value`: `(batch, length, heads, head_dim)` arrays (JAX's layout;
      torch's is `(batch, heads, length, head_dim)`).
    - `bias`: added to the scaled logits, broadcast over batch and heads (a relative
      position bias, a shifted-window mask of `-100`s or `-inf`s), or `None`.
    - `scale`: the logits' factor; default `head_dim ** -0.5`.

    **Returns:** the attended values, `(batch, q_len, heads, head_dim)`.

    On a GPU or TPU this is `jax.nn.dot_product_attention`, which picks a fused kernel. On
    the CPU it is the plain formula in the inputs' own dtype: JAX's reference path takes the
    softmax in float32 whatever the dtype, which would make a float64 model's attention
    float32 (1e-8 off, where the zoo's float64 parity is 1e-10).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return jax.lax.platform_dependent(
        query,
        key,
        value,
        bias,
        cpu=functools.partial(_attention_formula, scale=scale),
        default=functools.partial(_fused_attention, scale=scale),
    )


def _attention_formula(query, key, value, bias, *, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) * jnp.asarray(scale, query.dtype)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def _fused_attention(query, key, value, bias, *, scale):
    if bias is not None:
        bias = jnp.broadcast_to(
            bias.astype(query.dtype),
            (query.shape[0], query.shape[2], query.shape[1], key.shape[1]),
        )
    return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=scale)


def relative_position_index(height: int, width: int) -> np.ndarray:
    """torchvision's relative position index of a `height x width` attention window (Swin's
    `define_relative_position_index`, MaxViT's `_get_relative_position_index`): for each
    pair of positions, the row of the `(2 height - 1) (2 width - 1)` bias table that holds
    their offset. Shape `(height width, height width)`, int64 as torch's."""
    coords = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"))
    flat = coords.reshape(2, -1)
    relative = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)
    return (relative[..., 0] + height - 1) * (2 * width - 1) + relative[..., 1] + width - 1
