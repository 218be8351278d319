"""Pooling with torch's padding conventions."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._conv import _pair


class MaxPool2d(eqx.Module):
    """`torch.nn.MaxPool2d` (floor mode): the padding is `-inf`, never zero, so a padded
    border can never win the max; this matters for inputs with negative values.
    """

    kernel_size: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    def __call__(
        self, x: Float[Array, "batch channels height width"]
    ) -> Float[Array, "batch channels out_height out_width"]:
        (ph, pw) = self.padding
        return jax.lax.reduce_window(
            x,
            -jnp.inf,
            jax.lax.max,
            window_dimensions=(1, 1, *self.kernel_size),
            window_strides=(1, 1, *self.stride),
            padding=((0, 0), (0, 0), (ph, ph), (pw, pw)),
        )


class AdaptiveAvgPool2d(eqx.Module):
    """`torch.nn.AdaptiveAvgPool2d((1, 1))`: the global average over height and width.

    Only the `(1, 1)` output used by torchvision's classifiers is supported.
    """

    def __call__(
        self, x: Float[Array, "batch channels height width"]
    ) -> Float[Array, "batch channels 1 1"]:
        return jnp.mean(x, axis=(2, 3), keepdims=True)
