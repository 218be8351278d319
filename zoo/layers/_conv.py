"""2-D convolution with torch's layout, padding and initialisation."""

import math

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ._init import torch_default_uniform


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class Conv2d(eqx.Module):
    """A batched NCHW convolution that mirrors `torch.nn.Conv2d`.

    Padding is explicit and symmetric, exactly as torch applies it (never XLA's 'SAME',
    which pads asymmetrically on even kernels or strides), so outputs match torch at any
    input size.

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
        self, x: Float[Array, "batch in_channels height width"]
    ) -> Float[Array, "batch out_channels out_height out_width"]:
        (ph, pw) = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=self.stride,
            padding=((ph, ph), (pw, pw)),
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)[None, :, None, None]
        return y


__all__ = ["Conv2d"]
