"""Activations with torch's definitions, as functions and as `nn.Sequential` members.

ReLU's derivative leaves nothing large behind for `jax.vjp` (see `relu`).
"""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float


def _zeros_from_tangent(g: Array) -> Array:
    """Zeros shaped like the tangent `g`, computed *from* it (`g` sliced to nothing, padded
    back): a linear function of `g`, so linearisation keeps it in the linear program. A plain
    `zeros_like(g)` depends on no tangent, so `jax.vjp` computes it with the primal and saves
    it as a residual: a full-size array of zeros written by the forward and read by the
    backward (526 MB of the 1.58 GB a ResNet18 train step at 224x224 batch 32 saved)."""
    if g.ndim == 0:
        return jnp.zeros_like(g)
    axis = g.ndim - 1
    empty = lax.slice_in_dim(g, 0, 0, axis=axis)
    config = [(0, 0, 0)] * axis + [(0, g.shape[axis], 0)]
    return lax.pad(empty, jnp.zeros((), g.dtype), config)


@jax.custom_jvp
def relu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.relu`: `max(x, 0)`, NaN kept. Its derivative is torch's: 0 where
    `x <= 0` (so 0 at 0), 1 elsewhere, NaN included (`jax.nn.relu` gives 0 at NaN).

    Why not `jax.nn.relu`: what `jax.vjp` saves. This saves a boolean mask; `jax.nn.relu`
    saves the mask and an array of zeros (see `_zeros_from_tangent`). The one-program
    gradient (`jax.grad` under `jit`) is the same either way; the torch face, which runs the
    forward and the backward as two programs, writes and reads less."""
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (g,) = primals, tangents
    return relu(x), lax.select(x <= 0, _zeros_from_tangent(g), g)


def relu6(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.relu6`: `min(max(x, 0), 6)`."""
    return jnp.minimum(relu(x), 6.0)


@jax.custom_jvp
def hardsigmoid(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.hardsigmoid`: `relu6(x + 3) / 6`.

    Its derivative is torch's: the slope `1/6` rounded to float32 in every dtype, as torch's
    CPU and CUDA kernels write it (`1.0f / 6.0f`), so float64 gradients match torch's to the
    last bits instead of 3e-8 apart; 0 outside `(-3, 3)`."""
    return relu6(x + 3.0) / 6.0


@hardsigmoid.defjvp
def _hardsigmoid_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (g,) = primals, tangents
    slope = jnp.asarray(np.float32(1.0) / np.float32(6.0), g.dtype)
    inside = (x > -3.0) & (x < 3.0)
    return hardsigmoid(x), lax.select(inside, g * slope, _zeros_from_tangent(g))


def hardswish(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.hardswish`: `x * relu6(x + 3) / 6`."""
    return x * relu6(x + 3.0) / 6.0


def silu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.silu`: `x * sigmoid(x)`."""
    return x * jax.nn.sigmoid(x)


def gelu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`torch.nn.functional.gelu` (exact, through `erf`; torch's default, not the tanh
    approximation that `jax.nn.gelu` defaults to)."""
    return jax.nn.gelu(x, approximate=False)


class _Activation(eqx.Module):
    """A parameter-free module that holds an activation's place in a torch `nn.Sequential`,
    so the indices (and state_dict keys) after it stay torch's."""

    fn: ClassVar[Callable[[Array], Array]]

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return type(self).fn(x)


class ReLU(_Activation):
    """`torch.nn.ReLU`."""

    fn = staticmethod(relu)


class ReLU6(_Activation):
    """`torch.nn.ReLU6`."""

    fn = staticmethod(relu6)


class Hardsigmoid(_Activation):
    """`torch.nn.Hardsigmoid`."""

    fn = staticmethod(hardsigmoid)


class Hardswish(_Activation):
    """`torch.nn.Hardswish`."""

    fn = staticmethod(hardswish)


class SiLU(_Activation):
    """`torch.nn.SiLU`."""

    fn = staticmethod(silu)


class GELU(_Activation):
    """`torch.nn.GELU()` (exact)."""

    fn = staticmethod(gelu)


class Sigmoid(_Activation):
    """`torch.nn.Sigmoid`."""

    fn = staticmethod(jax.nn.sigmoid)


class Tanh(_Activation):
    """`torch.nn.Tanh` (a ViT's `heads.act`, MaxViT's classifier)."""

    fn = staticmethod(jnp.tanh)
