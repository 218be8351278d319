"""2-D convolution with torch's layout, padding and initialisation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
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
    x: Array, weight: Array, stride: tuple[int, int], padding: tuple[int, int]
) -> Array:
    """An ungrouped, undilated NHWC convolution as im2col + one `(B*H*W, kh*kw*C) @
    (kh*kw*C, O)` matmul. Taps that only ever see padding are dropped, so a 3x3/pad-1
    convolution on a 1x1 map is a plain matmul with the centre tap."""
    batch, height, width, channels = x.shape
    out_channels, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    out_h = _output_size(height, kh, sh, ph, 1)
    out_w = _output_size(width, kw, sw, pw, 1)
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    taps, columns = [], []
    for i in range(kh):
        rows = range(i, i + sh * (out_h - 1) + 1, sh)
        if all(r < ph or r >= ph + height for r in rows):
            continue  # this kernel row only ever covers padding
        for j in range(kw):
            cols = range(j, j + sw * (out_w - 1) + 1, sw)
            if all(c < pw or c >= pw + width for c in cols):
                continue
            taps.append((i, j))
            columns.append(
                jax.lax.slice(
                    xp,
                    (0, i, j, 0),
                    (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, channels),
                    (1, sh, sw, 1),
                )
            )
    # (B, H', W', taps, C): tap-major rows, matching the (taps, C, O) kernel below; with
    # one tap (1x1 kernels) this is a reshape, no copy.
    patches = jnp.stack(columns, axis=3).reshape(batch * out_h * out_w, len(taps) * channels)
    kernel = jnp.stack([weight[:, :, i, j].T for i, j in taps])  # (taps, C, O)
    out = patches @ kernel.reshape(len(taps) * channels, out_channels)
    return out.reshape(batch, out_h, out_w, out_channels)


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
        (ph, pw) = self.padding
        weight = self.weight.astype(x.dtype)
        height, width = _height_width(x, channels_last)
        if lowers_to_matmul(self, height, width):
            if channels_last:
                y = _conv_as_matmul(x, weight, self.stride, self.padding)
            else:
                nhwc = x.transpose(0, 2, 3, 1)
                y = _conv_as_matmul(nhwc, weight, self.stride, self.padding).transpose(0, 3, 1, 2)
        else:
            layout = "NHWC" if channels_last else "NCHW"
            y = jax.lax.conv_general_dilated(
                x,
                weight,
                window_strides=self.stride,
                padding=((ph, ph), (pw, pw)),
                rhs_dilation=self.dilation,
                feature_group_count=self.groups,
                dimension_numbers=(layout, "OIHW", layout),
            )
        if self.bias is not None:
            bias = self.bias.astype(y.dtype)
            y = y + (bias if channels_last else bias[:, None, None])
        return y


__all__ = ["Conv2d"]
