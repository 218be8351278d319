"""Pooling with torch's padding conventions."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._conv import _height_width, _output_size, _pair


def _spatial_pad(pad_h: tuple[int, int], pad_w: tuple[int, int], channels_last: bool):
    none = (0, 0)
    return (none, pad_h, pad_w, none) if channels_last else (none, none, pad_h, pad_w)


def _phases(x: Array, kernel, stride, padding, fill: float, out_hw, channels_last) -> Array:
    """`x` padded as the pool pads it and cut into stride phases:
    `(B, C, Mh, sh, Mw, sw)` (NCHW) or `(B, Mh, sh, Mw, sw, C)` (NHWC) with
    `Mh = out_h + (kh - 1) // sh`, so the tap `(i, j)` of every window is the contiguous
    slice `[i // sh : i // sh + out_h, i % sh, ...]`."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    mh, mw = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    h, w = _height_width(x, channels_last)
    # Pad as torch does, then pad or crop the far side to exactly mh * sh rows (rows past
    # the last window are never read).
    pad = _spatial_pad(
        (ph, max(0, mh * sh - h - ph)), (pw, max(0, mw * sw - w - pw)), channels_last
    )
    xp = jnp.pad(x, pad, constant_values=fill)
    if channels_last:
        batch, channels = x.shape[0], x.shape[3]
        return xp[:, : mh * sh, : mw * sw].reshape(batch, mh, sh, mw, sw, channels)
    batch, channels = x.shape[:2]
    return xp[:, :, : mh * sh, : mw * sw].reshape(batch, channels, mh, sh, mw, sw)


def _tap(phases: Array, i: int, j: int, stride, out_hw, channels_last) -> Array:
    (sh, sw), (oh, ow) = stride, out_hw
    rows, cols = slice(i // sh, i // sh + oh), slice(j // sw, j // sw + ow)
    if channels_last:
        return phases[:, rows, i % sh, cols, j % sw, :]
    return phases[:, :, rows, i % sh, cols, j % sw]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def max_pool2d(
    x: Float[Array, "batch channels height width"],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    channels_last: bool = False,
) -> Float[Array, "batch channels out_height out_width"]:
    """Max pooling with `-inf` padding (floor mode). Its derivative sends each output's
    tangent (and gradient) to the first maximal element of its window in row-major order, as
    torch's CPU and CUDA kernels do (a NaN wins its window, the last one as in torch's CPU kernel).

    Why custom: XLA:CPU's gradient of `reduce_window` is a slow `select_and_scatter`. For
    ResNet's stem pool at 224x224 batch 32 (ReLU, pool, backward) it takes 432 ms; this form
    250 ms, torch 244 ms (benchmarks/README.md). The forward alone stays a `reduce_window`.
    """
    (ph, pw) = padding
    (kh, kw), (sh, sw) = kernel, stride
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, kh, kw, 1) if channels_last else (1, 1, kh, kw),
        window_strides=(1, sh, sw, 1) if channels_last else (1, 1, sh, sw),
        padding=_spatial_pad((ph, ph), (pw, pw), channels_last),
    )


@max_pool2d.defjvp
def _max_pool2d_jvp(kernel, stride, padding, channels_last, primals, tangents):
    (x,), (dx,) = primals, tangents
    out_hw = tuple(
        _output_size(n, k, s, p, dilation=1)
        for n, k, s, p in zip(_height_width(x, channels_last), kernel, stride, padding, strict=True)
    )
    layout = (stride, out_hw, channels_last)
    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    xs = _phases(x, kernel, stride, padding, -jnp.inf, out_hw, channels_last)
    # One pass computes the max and the index of its first tap from the *same* values: an
    # argmax found by comparing taps with a separately computed max can miss, because XLA
    # may round two copies of the pool's input differently.
    index_dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
    out = _tap(xs, *taps[0], *layout)
    first = jnp.zeros(out.shape, index_dtype)
    for t in range(1, len(taps)):
        value = _tap(xs, *taps[t], *layout)
        better = (value > out) | jnp.isnan(value)
        out = jnp.where(better, value, out)
        first = jnp.where(better, jnp.asarray(t, index_dtype), first)
    # The tangent picks, per output, the winning tap's contiguous slice of the phase-split
    # tangent. Its transpose (the gradient) is one masked pad per tap, summed: ~2x faster than
    # XLA:CPU's select_and_scatter, where a chain of `where`s transposed into ~1.5x slower.
    # One `select_n` on the tap index leaves `jax.vjp` a single int8 residual; a sum of
    # `where(first == t, tap, 0)` left a mask and an array of zeros per tap (18 arrays).
    dxs = _phases(dx, kernel, stride, padding, 0.0, out_hw, channels_last)
    d_out = jax.lax.select_n(first, *(_tap(dxs, i, j, *layout) for i, j in taps))
    return out, d_out


class MaxPool2d(eqx.Module):
    """`torch.nn.MaxPool2d` (floor mode): the padding is `-inf`, never zero, so a padded
    border can never win the max; this matters for inputs with negative values. NCHW, or
    NHWC with `pool(x, channels_last=True)`.
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
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch channels out_height out_width"]:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, channels_last)


class AdaptiveAvgPool2d(eqx.Module):
    """`torch.nn.AdaptiveAvgPool2d((1, 1))`: the global average over height and width.

    Only the `(1, 1)` output used by torchvision's classifiers is supported. NCHW, or NHWC
    (returning `(batch, 1, 1, channels)`) with `pool(x, channels_last=True)`.
    """

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch channels 1 1"]:
        return jnp.mean(x, axis=(1, 2) if channels_last else (2, 3), keepdims=True)
