"""2-D convolution with torch's layout, padding and initialisation."""

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._init import torch_default_uniform


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# XLA:CPU has no library kernel for convolutions whose output map is tiny (ResNet's layer3
# and layer4 on a 32x32 input: 2x2 and 1x1 maps, 256-512 channels) and falls back to a
# generic loop 20-60x slower than one matmul; a 1x1 convolution is a matmul at any size.
# Measured per shape in benchmarks/conv_lowering.py; see benchmarks/README.md.
_MATMUL_MAX_OUTPUT_PIXELS = 4


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _live_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, list[int]]:
    """Along one axis (undilated): the output size, and the kernel offsets that read some of
    the input (the others only ever cover padding)."""
    out = _output_size(size, kernel, stride, padding, 1)
    reads = lambda t: any(padding <= t + stride * o < padding + size for o in range(out))  # noqa: E731
    return out, [t for t in range(kernel) if reads(t)]


def _height_width(x: Array, channels_last: bool) -> tuple[int, int]:
    return (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])


def lowers_to_matmul(conv: "Conv2d", height: int, width: int) -> bool:
    """Whether `conv` on a `height x width` input is computed as one matmul (im2col) instead
    of XLA's convolution.

    True for ungrouped, undilated convolutions with a 1x1 kernel (any size) or an output of
    at most 4 pixels (ResNet's layer3/layer4 at 32x32), where XLA:CPU has no fast kernel. The
    choice is static (shapes are known at trace time) and changes speed, not results.

    **Arguments:**

    - `conv`: the layer.
    - `height`, `width`: its input's spatial size.

    **Returns:** `True` if `Conv2d.__call__` will use the matmul lowering.
    """
    if conv.groups != 1 or conv.dilation != (1, 1):
        return False
    if conv.kernel_size == (1, 1) and conv.padding == (0, 0):
        return True
    out_h = _output_size(height, conv.kernel_size[0], conv.stride[0], conv.padding[0], 1)
    out_w = _output_size(width, conv.kernel_size[1], conv.stride[1], conv.padding[1], 1)
    return out_h * out_w <= _MATMUL_MAX_OUTPUT_PIXELS


def _conv_as_matmul(
    x: Array, weight: Array, stride: tuple[int, int], padding: tuple[int, int], groups: int = 1
) -> Array:
    """An undilated NHWC convolution as im2col + one `(B*H*W, kh*kw*C) @ (kh*kw*C, O)`
    matmul, or with `groups` one such matmul per group (a batched matmul). Taps that only
    ever see padding are dropped, so a 3x3/pad-1 convolution on a 1x1 map is a plain matmul
    with the centre tap."""
    batch, height, width, channels = x.shape
    out_channels, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    (out_h, rows), (out_w, cols) = _live_taps(height, kh, sh, ph), _live_taps(width, kw, sw, pw)
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    taps = [(i, j) for i in rows for j in cols]
    columns = [
        jax.lax.slice(
            xp,
            (0, i, j, 0),
            (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, channels),
            (1, sh, sw, 1),
        )
        for i, j in taps
    ]
    if not columns:  # every output reads padding only (a 1x1 kernel, stride > padding)
        return jnp.zeros((batch, out_h, out_w, out_channels), x.dtype)
    # (B, H', W', taps, C): tap-major rows, matching the (taps, C, O) kernel below; with
    # one tap (1x1 kernels) this is a reshape, no copy.
    patches = jnp.stack(columns, axis=3)
    kernel = jnp.stack([weight[:, :, i, j].T for i, j in taps])  # (taps, C / groups, O)
    if groups > 1:  # per group: (pixels, taps * C/G) @ (taps * C/G, O/G)
        patches = patches.reshape(batch, out_h, out_w, len(taps), groups, channels // groups)
        kernel = kernel.reshape(len(taps), channels // groups, groups, out_channels // groups)
        out = jnp.einsum("bhwtgc,tcgo->bhwgo", patches, kernel)
        return out.reshape(batch, out_h, out_w, out_channels)
    patches = patches.reshape(batch * out_h * out_w, len(taps) * channels)
    out = patches @ kernel.reshape(len(taps) * channels, out_channels)
    return out.reshape(batch, out_h, out_w, out_channels)


def is_depthwise(conv: "Conv2d") -> bool:
    """Whether `conv` is a depthwise convolution (`groups == in_channels ==
    out_channels`, undilated), which `Conv2d.__call__` computes tap by tap on the CPU."""
    return conv.groups == conv.in_channels == conv.out_channels > 1 and conv.dilation == (1, 1)


# A depthwise kernel with more taps (ConvNeXt's 7x7) is summed by a `lax.scan`: unrolled,
# its 49 taps ran the forward ~2x faster (the backward no faster) but compiled ~10x slower.
_UNROLLED_MAX_TAPS = 25


def _depthwise_taps(
    x: Array,
    weight: Float[Array, "channels 1 kernel_h kernel_w"],
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    channels_last: bool,
) -> Array:
    """A depthwise convolution as the sum over the kernel's taps of the padded input,
    shifted and scaled per channel; taps that only ever read padding are left out (on a 1x1
    map only the centre tap is left). Checkpointed: `jax.vjp` keeps the input only (as for
    a convolution), not one shifted copy per tap; the backward recomputes the cheap shifts.

    Why (XLA:CPU runs grouped convolutions in a generic loop; measured on 2 cores): on
    MBConv's depthwise shapes the taps are 4-14x faster forward and 3-10x with gradients
    in float32, 100x and more in float64; on ConvNeXt-tiny's 7x7 first stage (224x224,
    batch 32) 2.4x forward and 7x with gradients. The sums run in another order (in float32
    at least, as a convolution accumulates bfloat16), so results differ by rounding."""
    axes = (1, 2) if channels_last else (2, 3)
    pads = [(0, 0)] * 4
    for axis, p in zip(axes, padding, strict=True):
        pads[axis] = (p, p)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xp, weight = jnp.pad(x.astype(acc), pads), weight.astype(acc)
    # Per spatial axis: the output size and the taps that see some of the input.
    outs, kept = zip(
        *(
            _live_taps(x.shape[axis], k, st, p)
            for axis, k, st, p in zip(axes, weight.shape[2:], stride, padding, strict=True)
        ),
        strict=True,
    )
    taps = np.array([(i, j) for i in kept[0] for j in kept[1]], np.int32).reshape(-1, 2)
    scale_shape = [1] * 4
    scale_shape[3 if channels_last else 1] = weight.shape[0]
    out_shape = list(x.shape)
    for axis, out in zip(axes, outs, strict=True):
        out_shape[axis] = out

    def shifted(i, j):  # the input each output position reads through tap (i, j)
        start, size = [0] * 4, list(out_shape)
        for axis, t, st, out in zip(axes, (i, j), stride, outs, strict=True):
            start[axis], size[axis] = t, st * (out - 1) + 1
        window = jax.lax.dynamic_slice(xp, [jnp.asarray(s, jnp.int32) for s in start], size)
        steps = [slice(None)] * 4
        for axis, st in zip(axes, stride, strict=True):
            steps[axis] = slice(None, None, st)
        return window[tuple(steps)]

    if len(taps) == 0:  # every output reads padding only (a 1x1 kernel, stride > padding)
        return jnp.zeros(out_shape, x.dtype)
    scales = weight[:, 0, taps[:, 0], taps[:, 1]].T.reshape(len(taps), *scale_shape)
    if len(taps) <= _UNROLLED_MAX_TAPS:
        y = sum(shifted(int(i), int(j)) * w for (i, j), w in zip(taps, scales, strict=True))
    else:

        @jax.checkpoint
        def tap(y: Array, tap: tuple[Array, Array]) -> tuple[Array, None]:
            (i, j), w = tap
            return y + shifted(i, j) * w, None

        zeros = jnp.zeros(out_shape, acc)
        y, _ = jax.lax.scan(tap, zeros, (jnp.asarray(taps), scales))
    return y.astype(x.dtype)


class Conv2d(eqx.Module):
    """A batched convolution that mirrors `torch.nn.Conv2d`.

    Padding is explicit and symmetric, exactly as torch applies it (never XLA's 'SAME',
    which pads asymmetrically on even kernels or strides), so outputs match torch at any
    input size. Inputs are NCHW, as in torch; `conv(x, channels_last=True)` takes and
    returns NHWC instead (torch's `channels_last` memory format as a logical layout), which
    the zoo's models use inside, where XLA:CPU computes convolutions in NHWC anyway. The
    weight stays `(out, in, kh, kw)` either way, so state_dicts do not change.

    **Arguments:**

    - `in_channels`, `out_channels`, `kernel_size`, `stride`, `padding`, `dilation`,
      `groups`, `bias`: as in `torch.nn.Conv2d`.
    - `key`: a JAX PRNG key for torch's default initialisation
      (`kaiming_uniform_(a=sqrt(5))`, bias uniform in `±1/sqrt(fan_in)`).
    """

    weight: Float[Array, "out_channels in_per_group kernel_h kernel_w"]
    bias: Float[Array, " out_channels"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[int, int] = eqx.field(static=True)
    dilation: tuple[int, int] = eqx.field(static=True)
    groups: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        key: PRNGKeyArray,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must both be divisible by groups ({groups})."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        wkey, bkey = jax.random.split(key)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = math.prod(shape[1:])
        self.weight = torch_default_uniform(wkey, shape, fan_in)
        self.bias = torch_default_uniform(bkey, (out_channels,), fan_in) if bias else None

    def __call__(
        self, x: Float[Array, "batch in_channels height width"], *, channels_last: bool = False
    ) -> Float[Array, "batch out_channels out_height out_width"]:
        """**Arguments:**

        - `x`: an NCHW batch, or NHWC with `channels_last=True`.
        - `channels_last`: the layout of `x` and of the result.

        **Returns:** the convolution, in the layout of `x`.
        """
        weight = self.weight.astype(x.dtype)
        height, width = _height_width(x, channels_last)
        if is_depthwise(self):
            # The taps on the CPU; elsewhere XLA's grouped convolution has library kernels.
            y = jax.lax.platform_dependent(
                x,
                weight,
                cpu=jax.checkpoint(
                    functools.partial(
                        _depthwise_taps,
                        stride=self.stride,
                        padding=self.padding,
                        channels_last=channels_last,
                    )
                ),
                default=functools.partial(self._xla_conv, channels_last=channels_last),
            )
        elif self.groups > 1 and self.dilation == (1, 1):
            # Grouped (RegNet, ResNeXt) on the CPU: XLA's convolution forward, derivatives as
            # one matmul per group (XLA:CPU runs a grouped convolution's derivatives in a
            # generic loop: RegNet-Y 400MF's train step was 17x slower; its forward is fast).
            y = jax.lax.platform_dependent(
                x,
                weight,
                cpu=self._grouped_with_matmul_derivatives(channels_last),
                default=functools.partial(self._xla_conv, channels_last=channels_last),
            )
        elif lowers_to_matmul(self, height, width):
            if channels_last:
                y = _conv_as_matmul(x, weight, self.stride, self.padding)
            else:
                nhwc = x.transpose(0, 2, 3, 1)
                y = _conv_as_matmul(nhwc, weight, self.stride, self.padding).transpose(0, 3, 1, 2)
        else:
            y = self._xla_conv(x, weight, channels_last=channels_last)
        if self.bias is not None:
            bias = self.bias.astype(y.dtype)
            y = y + (bias if channels_last else bias[:, None, None])
        return y

    def _grouped_with_matmul_derivatives(self, channels_last: bool) -> Callable:
        """`(x, weight) -> y`: XLA's grouped convolution, whose derivatives (forward and,
        transposed, reverse mode) are those of the per-group matmul form."""

        def as_matmuls(x: Array, weight: Array) -> Array:
            nhwc = x if channels_last else x.transpose(0, 2, 3, 1)
            y = _conv_as_matmul(nhwc, weight, self.stride, self.padding, self.groups)
            return y if channels_last else y.transpose(0, 3, 1, 2)

        @jax.custom_jvp
        def conv(x: Array, weight: Array) -> Array:
            return self._xla_conv(x, weight, channels_last=channels_last)

        @conv.defjvp
        def conv_jvp(primals, tangents):
            (x, weight), (dx, dweight) = primals, tangents
            # Linear in the tangents: reverse mode transposes these matmuls.
            return conv(x, weight), as_matmuls(dx, weight) + as_matmuls(x, dweight)

        return conv

    def _xla_conv(self, x: Array, weight: Array, *, channels_last: bool) -> Array:
        layout = "NHWC" if channels_last else "NCHW"
        (ph, pw) = self.padding
        return jax.lax.conv_general_dilated(
            x,
            weight,
            window_strides=self.stride,
            padding=((ph, ph), (pw, pw)),
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
            dimension_numbers=(layout, "OIHW", layout),
        )


__all__ = ["Conv2d", "is_depthwise", "lowers_to_matmul"]
