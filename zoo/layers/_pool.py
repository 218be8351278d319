"""Pooling with torch's padding conventions."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._conv import _pair


def _phases(x: Array, kernel, stride, padding, fill: float, out_hw) -> Array:
    """`x` padded as the pool pads it and cut into stride phases:
    `(B, C, Mh, sh, Mw, sw)` with `Mh = out_h + (kh - 1) // sh`, so the tap `(i, j)` of every
    window is the contiguous slice `[i // sh : i // sh + out_h, i % sh, ...]`."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    mh, mw = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    batch, channels, h, w = x.shape
    # Pad as torch does, then pad or crop the far side to exactly mh * sh rows (rows past
    # the last window are never read).
    xp = jnp.pad(
        x,
        ((0, 0), (0, 0), (ph, max(0, mh * sh - h - ph)), (pw, max(0, mw * sw - w - pw))),
        constant_values=fill,
    )[:, :, : mh * sh, : mw * sw]
    return xp.reshape(batch, channels, mh, sh, mw, sw)


def _tap(phases: Array, i: int, j: int, stride, out_hw) -> Array:
    (sh, sw), (oh, ow) = stride, out_hw
    return phases[:, :, i // sh : i // sh + oh, i % sh, j // sw : j // sw + ow, j % sw]


def _reduce_max(x: Array, kernel, stride, padding) -> Array:
    (ph, pw) = padding
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, 1, *kernel),
        window_strides=(1, 1, *stride),
        padding=((0, 0), (0, 0), (ph, ph), (pw, pw)),
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool2d(x: Array, kernel, stride, padding) -> Array:
    """Max pooling with `-inf` padding; its derivative routes each output's tangent (and
    gradient) to the first maximal element of its window in row-major order, as torch's
    CPU and CUDA kernels do. Why custom: XLA:CPU's gradient of `reduce_window`
    (`select_and_scatter`) is ~3x slower than this phase-split form (benchmarks/README.md)."""
    return _reduce_max(x, kernel, stride, padding)


@max_pool2d.defjvp
def _max_pool2d_jvp(kernel, stride, padding, primals, tangents):
    (x,), (dx,) = primals, tangents
    out = _reduce_max(x, kernel, stride, padding)
    out_hw = out.shape[2:]
    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    xs = _phases(x, kernel, stride, padding, -jnp.inf, out_hw)
    # The index of the first tap equal to the max (scanning backwards keeps the first).
    first = jnp.full(out.shape, len(taps) - 1, jnp.int8)
    for t in reversed(range(len(taps) - 1)):
        first = jnp.where(_tap(xs, *taps[t], stride, out_hw) == out, jnp.int8(t), first)
    # The tangent is a selection of contiguous slices of the phase-split input, whose
    # transpose (the gradient) is a few small pads and one reshape, not a scatter.
    dxs = _phases(dx, kernel, stride, padding, 0.0, out_hw)
    dout = jnp.zeros_like(out)
    for t, (i, j) in enumerate(taps):
        dout = jnp.where(first == t, _tap(dxs, i, j, stride, out_hw), dout)
    return out, dout


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
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(eqx.Module):
    """`torch.nn.AdaptiveAvgPool2d((1, 1))`: the global average over height and width.

    Only the `(1, 1)` output used by torchvision's classifiers is supported.
    """

    def __call__(
        self, x: Float[Array, "batch channels height width"]
    ) -> Float[Array, "batch channels 1 1"]:
        return jnp.mean(x, axis=(2, 3), keepdims=True)
