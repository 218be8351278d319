"""Layer normalisation with torch's numerics: `torch.nn.LayerNorm` over the last axis and
torchvision's `LayerNorm2d` over the channels of an image batch."""

from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._sequential import Layer


def layer_norm(
    x: Float[Array, "*shape"],
    weight: Float[Array, " channels"] | None,
    bias: Float[Array, " channels"] | None,
    eps: float,
    axis: int = -1,
) -> Float[Array, "*shape"]:
    """`torch.nn.functional.layer_norm` over one axis: `(x - mean) / sqrt(var + eps) *
    weight + bias`, with the *biased* variance and `eps` inside the square root.

    **Arguments:**

    - `x`: the input.
    - `weight`, `bias`: per-element affine parameters along `axis`, or `None`.
    - `eps`: added to the variance.
    - `axis`: the axis normalised (torch's `normalized_shape` is the last one).

    **Returns:** the normalised `x`, in its dtype. Statistics are computed in at least
    float32, as torch does for half-precision inputs.
    """
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    xs = x.astype(stat_dtype)
    axis = axis % x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mean = jnp.mean(xs, axis=axis, keepdims=True)
    # Centred once: it serves the variance and the output (the two-pass variance, never
    # negative), and `centred * centred` (not `jnp.square`) keeps `jax.vjp` from saving
    # `2 * centred` beside it.
    centred = xs - mean
    var = jnp.mean(centred * centred, axis=axis, keepdims=True)
    y = centred * (1.0 / jnp.sqrt(var + eps))
    if weight is not None:
        y = y * weight.astype(stat_dtype).reshape(shape)
    if bias is not None:
        y = y + bias.astype(stat_dtype).reshape(shape)
    return y.astype(x.dtype)


def _affine(
    channels: int, elementwise_affine: bool, bias: bool
) -> tuple[Array | None, Array | None]:
    """torch's `ones`/`zeros` initialisation, from NumPy (`jnp.ones` would compile one kernel
    per new size), one buffer per field."""
    if not elementwise_affine:
        return None, None
    if not bias:
        return jax.device_put(np.ones(channels, np.float32)), None
    weight, bias_value = jax.device_put(
        [np.ones(channels, np.float32), np.zeros(channels, np.float32)]
    )
    return weight, bias_value


class LayerNorm(eqx.Module):
    """`torch.nn.LayerNorm(normalized_shape)` for one normalised (the last) axis.

    **Arguments:**

    - `normalized_shape`: the size of the last axis (an int, or a one-element tuple as torch
      stores it).
    - `eps`: added to the variance (torch's default `1e-5`; ConvNeXt uses `1e-6`).
    - `elementwise_affine`, `bias`: whether `weight` (ones) and `bias` (zeros) exist.

    A call `ln(x)` returns the normalised array (no state to return).
    """

    weight: Float[Array, " channels"] | None
    bias: Float[Array, " channels"] | None
    normalized_shape: tuple[int] = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        normalized_shape: int | tuple[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        if len(shape) != 1:
            raise ValueError(
                f"LayerNorm normalises one axis here; got normalized_shape={normalized_shape}"
            )
        self.normalized_shape = (int(shape[0]),)
        self.eps = eps
        self.weight, self.bias = _affine(self.normalized_shape[0], elementwise_affine, bias)

    def __call__(self, x: Float[Array, "*batch channels"]) -> Float[Array, "*batch channels"]:
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(
                f"LayerNorm{self.normalized_shape} got an input of shape {x.shape}: its last "
                "axis must have that size"
            )
        return layer_norm(x, self.weight, self.bias, self.eps)


class LayerNorm2d(Layer):
    """torchvision's `LayerNorm2d` (`torchvision.models.convnext`): `LayerNorm` over the
    channels of an NCHW batch (torch permutes to channels-last and back). With
    `channels_last=True` the batch is NHWC and the channels are the last axis already: no
    transpose at all. A `(batch, channels)` input (a pooled map, as in ConvNeXt's classifier)
    is normalised over its channels.

    A `zoo.layers.Layer`, so it sits in a sequential: `y, ln = ln(x, channels_last=...)`.

    **Arguments:** as `LayerNorm`, with `num_channels` the channel count.
    """

    weight: Float[Array, " channels"] | None
    bias: Float[Array, " channels"] | None
    normalized_shape: tuple[int] = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ):
        self.normalized_shape = (int(num_channels),)
        self.eps = eps
        self.weight, self.bias = _affine(num_channels, elementwise_affine, bias)

    def __call__(
        self,
        x: Float[Array, "batch channels *spatial"],
        *,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "batch channels *spatial"], Self]:
        """**Arguments:** `x`, NCHW (NHWC with `channels_last=True`) or `(batch, channels)`.

        **Returns:** `(y, ln)`, `y` in the layout of `x`."""
        del key
        axis = -1 if channels_last else 1
        if x.ndim < 2 or x.shape[axis] != self.normalized_shape[0]:
            layout = "NHWC" if channels_last else "NCHW"
            raise ValueError(
                f"LayerNorm2d({self.normalized_shape[0]}) got an input of shape {x.shape}: "
                f"expected {layout} with that many channels"
            )
        return layer_norm(x, self.weight, self.bias, self.eps, axis=axis), self


__all__ = ["LayerNorm", "LayerNorm2d", "layer_norm"]
