"""Running a torch `nn.Sequential`'s members in order, threading buffers and randomness.

A zoo model holds a torch `nn.Sequential` as a tuple of layers (`features.3.block.1.0`: the
tuple's indices are torch's), and `run_sequential` calls them in turn with one calling
convention. Layers with buffers or randomness inside (BatchNorm, dropout, the blocks built of
them) return themselves updated beside their output; those updates come back in the tuple.
"""

import abc
from collections.abc import Sequence
from typing import Any, Self

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from ._activation import _Activation
from ._conv import Conv2d
from ._dropout import Dropout
from ._linear import Linear
from ._norm import BatchNorm2d
from ._pool import AdaptiveAvgPool2d, MaxPool2d


class Layer(eqx.Module):
    """A layer with the sequential calling convention: `y, layer = layer(x, channels_last=,
    key=)`, the layer returned with its updated buffers (itself if it has none).

    Blocks (an inverted residual, a squeeze-excitation, a ConvNeXt block) subclass it, so
    `run_sequential` calls them like BatchNorm.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Self]:
        """**Arguments:** `x`, NCHW (NHWC with `channels_last=True`; 2-D where the layer is a
        classifier's); `key`, needed in train mode where there is randomness.

        **Returns:** `(y, layer)`."""


def apply_layer(
    layer: Any, x: Array, *, channels_last: bool = False, key: PRNGKeyArray | None = None
) -> tuple[Array, Any]:
    """Call one member of a sequential with its own convention.

    **Returns:** `(y, layer)`, the layer carrying its updated buffers.
    """
    if isinstance(layer, tuple):
        return run_sequential(layer, x, channels_last=channels_last, key=key)
    if isinstance(layer, Layer):
        return layer(x, channels_last=channels_last, key=key)
    if isinstance(layer, BatchNorm2d):
        return layer(x, channels_last=channels_last)
    if isinstance(layer, (Conv2d, MaxPool2d, AdaptiveAvgPool2d)):
        return layer(x, channels_last=channels_last), layer
    if isinstance(layer, Dropout):
        return layer(x, key=key), layer
    if isinstance(layer, (Linear, _Activation)):
        return layer(x), layer
    raise TypeError(
        f"run_sequential cannot call a {type(layer).__name__}: subclass zoo.layers.Layer "
        "(`y, layer = layer(x, channels_last=..., key=...)`) to put it in a sequential"
    )


def run_sequential(
    layers: Sequence[Any],
    x: Array,
    *,
    channels_last: bool = False,
    key: PRNGKeyArray | None = None,
) -> tuple[Array, tuple[Any, ...]]:
    """`torch.nn.Sequential`'s forward over `layers` (a tuple, nested for nested sequentials).

    **Arguments:**

    - `layers`: the members, in order.
    - `x`: the input (NCHW, NHWC with `channels_last=True`).
    - `key`: split so each member gets its own (only dropout and stochastic depth use them).

    **Returns:** `(y, layers)`, the members carrying their updated buffers.
    """
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
    new = []
    for layer, k in zip(layers, keys, strict=True):
        x, layer = apply_layer(layer, x, channels_last=channels_last, key=k)
        new.append(layer)
    return x, tuple(new)
