"""The building blocks of `torchvision.ops.misc` and `torchvision.ops.stochastic_depth`:
`Conv2dNormActivation`, `SqueezeExcitation` and `StochasticDepth`, with torch's names."""

from collections.abc import Iterator
from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._activation import ReLU, Sigmoid, _Activation
from ._conv import Conv2d
from ._flags import inference_flag
from ._init import kaiming_normal_fan_out, zeros
from ._norm import BatchNorm2d
from ._sequential import Layer


def conv2d_kaiming(
    keys: Iterator[PRNGKeyArray],
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
) -> Conv2d:
    """`nn.Conv2d` as torchvision's convnets re-initialise it: `kaiming_normal_(mode=
    "fan_out")`, bias zero."""
    conv = Conv2d(
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        key=next(keys),
    )  # fmt: skip
    weight = kaiming_normal_fan_out(next(keys), conv.weight.shape)
    bias_value = None if conv.bias is None else zeros(conv.bias.shape)
    return eqx.tree_at(
        lambda c: (c.weight, c.bias), conv, (weight, bias_value), is_leaf=lambda x: x is None
    )


def conv_norm_activation(
    keys: Iterator[PRNGKeyArray],
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    activation: type[_Activation] | None = ReLU,
) -> tuple:
    """torchvision's `Conv2dNormActivation` with BatchNorm: `(conv, bn, activation)` (no
    activation member when `activation=None`), torch's padding `(kernel - 1) // 2 * dilation`
    and no conv bias. A tuple, so its members are named `.0`, `.1`, `.2` as in torch; run it
    with `run_sequential`."""
    padding = (kernel_size - 1) // 2 * dilation
    conv = conv2d_kaiming(
        keys, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, False
    )
    bn = BatchNorm2d(out_channels, eps=eps, momentum=momentum)
    return (conv, bn) if activation is None else (conv, bn, activation())


class SqueezeExcitation(Layer):
    """torchvision's `SqueezeExcitation`: `x * scale_activation(fc2(activation(fc1(avgpool(x)))))`
    with 1x1 convolutions `fc1`, `fc2` (torch's names)."""

    fc1: Conv2d
    fc2: Conv2d
    activation: _Activation
    scale_activation: _Activation

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: type[_Activation] = ReLU,
        scale_activation: type[_Activation] = Sigmoid,
        *,
        keys: Iterator[PRNGKeyArray],
    ):
        self.fc1 = conv2d_kaiming(keys, input_channels, squeeze_channels, 1)
        self.fc2 = conv2d_kaiming(keys, squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        del key
        scale = jnp.mean(x, axis=(1, 2) if channels_last else (2, 3), keepdims=True)
        scale = self.activation(self.fc1(scale, channels_last=channels_last))
        scale = self.scale_activation(self.fc2(scale, channels_last=channels_last))
        return scale * x, self


class StochasticDepth(Layer):
    """`torchvision.ops.StochasticDepth`: in train mode, zero the whole residual branch of a
    sample (`mode="row"`) or of the batch (`"batch"`) with probability `p`, scaling the
    survivors by `1 / (1 - p)`; the identity in eval mode. Torch's and JAX's draws differ:
    the same distribution, not the same samples."""

    p: float = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    inference: bool

    def __init__(self, p: float, mode: str = "row", *, inference: bool = False):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        if mode not in ("batch", "row"):
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
        self.p, self.mode, self.inference = p, mode, inference

    def __call__(
        self,
        x: Float[Array, "batch *rest"],
        *,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "batch *rest"], Self]:
        del channels_last  # the mask is per sample (or per batch): layout-free
        if inference_flag(self.inference, "StochasticDepth") or self.p == 0.0:
            return x, self
        if key is None:
            raise ValueError(
                "StochasticDepth in train mode needs a PRNG key: call the model with "
                "`key=jax.random.key(seed)`, or switch to eval mode with `zoo.eval_mode(model)`."
            )
        survival = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        noise = jax.random.bernoulli(key, survival, shape).astype(x.dtype)
        if survival > 0.0:
            noise = noise / survival
        return x * noise, self
