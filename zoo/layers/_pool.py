"""Pooling with torch's padding conventions."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._conv import _height_width, _pair


def _pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """torch's `pooling_output_shape`: with `ceil_mode` the division rounds up, but a window
    must start inside the input or its left padding (one starting in the right padding is
    dropped)."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _max_pool_output_hw(x: Array, kernel, stride, padding, ceil_mode, channels_last):
    return tuple(
        _pool_output_size(n, k, s, p, ceil_mode)
        for n, k, s, p in zip(_height_width(x, channels_last), kernel, stride, padding, strict=True)
    )


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def max_pool2d(
    x: Float[Array, "batch channels height width"],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    channels_last: bool = False,
    ceil_mode: bool = False,
) -> Float[Array, "batch channels out_height out_width"]:
    """Max pooling with `-inf` padding, in floor mode or torch's `ceil_mode` (where the last
    window may run past the right padding and sees `-inf` there). Its derivative sends each
    output's tangent (and gradient) to the first maximal element of its window in row-major
    order, as torch's CPU and CUDA kernels do (a NaN wins its window, the last one as in
    torch's CPU kernel).

    Why custom: XLA:CPU's gradient of `reduce_window` is a slow `select_and_scatter`. For
    ResNet's stem pool at 224x224 batch 32 (ReLU, pool, backward) it takes 432 ms; this form
    250 ms, torch 244 ms (benchmarks/README.md). The forward alone stays a `reduce_window`.
    """
    (ph, pw), (kh, kw), (sh, sw) = padding, kernel, stride
    (oh, ow) = _max_pool_output_hw(x, kernel, stride, padding, ceil_mode, channels_last)
    h, w = _height_width(x, channels_last)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"max_pool2d: a {h}x{w} input gives a {oh}x{ow} output with kernel {kernel}, "
            f"stride {stride} and padding {padding}: the input is too small (torch refuses it "
            "too); give the model a larger input"
        )
    # Far-side padding beyond torch's `padding`: what ceil mode's last window runs past.
    extra_h, extra_w = (
        max(0, (oh - 1) * sh + kh - h - 2 * ph),
        max(0, (ow - 1) * sw + kw - w - 2 * pw),
    )
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, kh, kw, 1) if channels_last else (1, 1, kh, kw),
        window_strides=(1, sh, sw, 1) if channels_last else (1, 1, sh, sw),
        padding=_spatial_pad((ph, ph + extra_h), (pw, pw + extra_w), channels_last),
    )


@max_pool2d.defjvp
def _max_pool2d_jvp(kernel, stride, padding, channels_last, ceil_mode, primals, tangents):
    (x,), (dx,) = primals, tangents
    out_hw = _max_pool_output_hw(x, kernel, stride, padding, ceil_mode, channels_last)
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
    """`torch.nn.MaxPool2d`: the padding is `-inf`, never zero, so a padded border can never
    win the max; this matters for inputs with negative values. NCHW, or NHWC with
    `pool(x, channels_last=True)`.

    **Arguments:**

    - `kernel_size`, `stride` (default: the kernel size), `padding`: as in torch (the
      padding at most half the kernel).
    - `ceil_mode`: round the output size up, as torch does (SqueezeNet): the last window may
      cover fewer than `kernel_size` elements, but never starts in the right padding.
    """

    kernel_size: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[int, int] = eqx.field(static=True)
    ceil_mode: bool = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
    ):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"MaxPool2d: padding {self.padding} should be at most half of the kernel "
                f"size {self.kernel_size} (torch refuses it too)"
            )

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch channels out_height out_width"]:
        return max_pool2d(
            x, self.kernel_size, self.stride, self.padding, channels_last, self.ceil_mode
        )


def _avg_divisors(size: int, kernel: int, stride: int, padding: int, out: int, with_pad: bool):
    """Each window's element count along one axis, as torch's CPU kernel counts it: the
    window clipped to the padded input (`with_pad`, torch's `count_include_pad`; a ceil-mode
    window running past the right padding is cut there) or to the input itself."""
    counts = []
    for i in range(out):
        lo = i * stride - padding
        hi = min(lo + kernel, size + padding)
        counts.append(hi - lo if with_pad else min(hi, size) - max(lo, 0))
    return counts


def avg_pool2d(
    x: Float[Array, "batch channels height width"],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    channels_last: bool = False,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Float[Array, "batch channels out_height out_width"]:
    """`torch.nn.functional.avg_pool2d` (without `divisor_override`): each window's sum over
    the input (zero padding), divided by its element count as torch's kernels count it
    (`_avg_divisors`: height count times width count, one integer, as torch divides)."""
    (ph, pw), (kh, kw), (sh, sw) = padding, kernel, stride
    h, w = _height_width(x, channels_last)
    oh, ow = _max_pool_output_hw(x, kernel, stride, padding, ceil_mode, channels_last)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"avg_pool2d: a {h}x{w} input gives a {oh}x{ow} output with kernel {kernel}, "
            f"stride {stride} and padding {padding}: the input is too small (torch refuses it "
            "too)"
        )
    # Far-side zeros beyond torch's `padding`, for ceil mode's last window; they add nothing
    # to its sum, and its divisor stops at the padding.
    extra_h, extra_w = (
        max(0, (oh - 1) * sh + kh - h - 2 * ph),
        max(0, (ow - 1) * sw + kw - w - 2 * pw),
    )
    sums = jax.lax.reduce_window(
        x,
        np.zeros((), x.dtype),  # a constant: JAX then knows the sum (and its gradient)
        jax.lax.add,
        window_dimensions=(1, kh, kw, 1) if channels_last else (1, 1, kh, kw),
        window_strides=(1, sh, sw, 1) if channels_last else (1, 1, sh, sw),
        padding=_spatial_pad((ph, ph + extra_h), (pw, pw + extra_w), channels_last),
    )
    rows = _avg_divisors(h, kh, sh, ph, oh, count_include_pad)
    cols = _avg_divisors(w, kw, sw, pw, ow, count_include_pad)
    if len(set(rows)) == 1 and len(set(cols)) == 1:
        return sums / (rows[0] * cols[0])  # every window alike (the common case)
    divisors = np.outer(rows, cols).astype(np.float64)
    divisors = divisors[..., None] if channels_last else divisors
    return sums / jnp.asarray(divisors, x.dtype)


class AvgPool2d(eqx.Module):
    """`torch.nn.AvgPool2d`: zero padding; each window's sum is divided by its size counting
    the padding (`count_include_pad=True`, torch's default) or only the input's elements.
    In `ceil_mode` the last window may run past the right padding: it is divided by the part
    inside the padded input, as torch's CPU kernel does. NCHW, or NHWC with
    `pool(x, channels_last=True)`.

    **Arguments:**

    - `kernel_size`, `stride` (default: the kernel size), `padding`: as in torch (the
      padding at most half the kernel).
    - `ceil_mode`: round the output size up, as torch does (a window never starts in the
      right padding).
    - `count_include_pad`: divide by the window's size including the padding.
    """

    kernel_size: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[int, int] = eqx.field(static=True)
    ceil_mode: bool = eqx.field(static=True)
    count_include_pad: bool = eqx.field(static=True)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"AvgPool2d: padding {self.padding} should be at most half of the kernel "
                f"size {self.kernel_size} (torch refuses it too)"
            )

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch channels out_height out_width"]:
        return avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            channels_last,
            self.ceil_mode,
            self.count_include_pad,
        )


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive-pooling windows along one axis: `[floor(i * size / out),
    ceil((i + 1) * size / out))` for each output `i` (they overlap where `out` does not
    divide `size`, and repeat elements where `out > size`)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool2d(
    x: Float[Array, "batch channels height width"],
    output_size: tuple[int | None, int | None],
    channels_last: bool = False,
) -> Float[Array, "batch channels out_height out_width"]:
    """`torch.nn.functional.adaptive_avg_pool2d` (`None`: that axis keeps its size): each
    output averages its window of `_bins`, summed and divided by the window's height and
    then its width, as torch's kernels do."""
    axes = (1, 2) if channels_last else (2, 3)
    sizes = _height_width(x, channels_last)
    out = tuple(n if o is None else o for n, o in zip(sizes, output_size, strict=True))
    if out == (1, 1):
        return jnp.mean(x, axis=axes, keepdims=True)
    if out == sizes:
        return x  # one element per window: its sum divided by 1
    counts = []
    for axis, size, n in zip(axes, sizes, out, strict=True):
        bins = _bins(size, n)
        x = jnp.stack(
            [jax.lax.slice_in_dim(x, lo, hi, axis=axis).sum(axis) for lo, hi in bins], axis
        )
        shape = [1] * x.ndim
        shape[axis] = n
        counts.append(np.array([hi - lo for lo, hi in bins], x.dtype).reshape(shape))
    return x / counts[0] / counts[1]


class AdaptiveAvgPool2d(eqx.Module):
    """`torch.nn.AdaptiveAvgPool2d`: average over windows that tile the input so that the
    output has `output_size` (torch's bins; see `adaptive_avg_pool2d`). The default `(1, 1)`
    is the global average of torchvision's classifiers; VGG pools to `(7, 7)`, AlexNet to
    `(6, 6)`. NCHW, or NHWC (returning `(batch, out_height, out_width, channels)`) with
    `pool(x, channels_last=True)`.

    **Arguments:**

    - `output_size`: an int (square) or a pair; `None` keeps that axis's input size.
    """

    output_size: tuple[int | None, int | None] = eqx.field(static=True)

    def __init__(self, output_size: int | tuple[int | None, int | None] | None = 1):
        pair = tuple(output_size) if isinstance(output_size, tuple | list) else (output_size,) * 2
        if len(pair) != 2 or not all(o is None or (isinstance(o, int) and o >= 1) for o in pair):
            raise ValueError(
                f"AdaptiveAvgPool2d: output_size must be an int >= 1, None or a pair of them, "
                f"got {output_size!r}"
            )
        self.output_size = pair

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch channels out_height out_width"]:
        return adaptive_avg_pool2d(x, self.output_size, channels_last)
