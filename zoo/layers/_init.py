"""Initialisers that reproduce torch's defaults (same distributions, not the same draws).

The draws come from NumPy, seeded by the JAX key: eager `jax.random` compiles one kernel per
new shape, which made building a ResNet take over ten seconds on a CPU; NumPy takes
milliseconds and stays deterministic in the key. The draws reach JAX through
`jax.device_put`, which compiles nothing (`jnp.asarray` compiles a copy per new shape).

Under a transformation (`eqx.filter_vmap` over keys for an ensemble, `eqx.filter_eval_shape`
for a template, construction inside `jax.jit`) the key is a tracer NumPy cannot read, and the
draws come from `jax.random` instead: the same distributions, other values than an eager
build with the same key.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def _is_traced(key: PRNGKeyArray) -> bool:
    return isinstance(key, jax.core.Tracer)


def numpy_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A NumPy generator determined by a JAX key (new-style or raw uint32)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).astype(np.uint64).ravel().tolist())


def torch_default_uniform(
    key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int
) -> Float[Array, "..."]:
    """`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: torch's default for Conv/Linear weights and biases.

    (`kaiming_uniform_(a=sqrt(5))` reduces to this bound for the weights.)
    """
    bound = np.float32(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
    if _is_traced(key):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    unit = numpy_rng(key).random(shape, dtype=np.float32)  # float32 draws: 3x faster
    return jax.device_put((2 * unit - 1) * bound)


def kaiming_normal_fan_out(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
    """torch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, used by torchvision's ResNet.

    torch's fan-out of an OIHW weight is `O * kh * kw` (groups are not divided out).
    """
    fan_out = shape[0] * math.prod(shape[2:])
    std = math.sqrt(2.0 / fan_out)
    if _is_traced(key):
        return jax.random.normal(key, shape, jnp.float32) * np.float32(std)
    draws = numpy_rng(key).standard_normal(shape, dtype=np.float32)  # float32 draws: 3x faster
    return jax.device_put(draws * np.float32(std))


def normal(key: PRNGKeyArray, shape: tuple[int, ...], std: float) -> Float[Array, "..."]:
    """torch's `normal_(0, std)` (torchvision's classifiers: `std=0.01`)."""
    if _is_traced(key):
        return jax.random.normal(key, shape, jnp.float32) * np.float32(std)
    draws = numpy_rng(key).standard_normal(shape, dtype=np.float32)
    return jax.device_put(draws * np.float32(std))


def uniform(key: PRNGKeyArray, shape: tuple[int, ...], bound: float) -> Float[Array, "..."]:
    """torch's `uniform_(-bound, bound)`."""
    bound = np.float32(bound)
    if _is_traced(key):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    unit = numpy_rng(key).random(shape, dtype=np.float32)
    return jax.device_put((2 * unit - 1) * bound)


def zeros(shape: tuple[int, ...]) -> Float[Array, "..."]:
    """torch's `zeros_` (from NumPy, so that eager construction compiles nothing)."""
    return jax.device_put(np.zeros(shape, np.float32))


L = TypeVar("L")


def with_initial_weight(
    cls: type[L],
    *args: Any,
    keys: Iterator[PRNGKeyArray],
    weight: Callable[[PRNGKeyArray, tuple[int, ...]], Array],
    **kwargs: Any,
) -> L:
    """`cls(*args, **kwargs)`, a `Conv2d` or `Linear`, as a torchvision model's own
    `_init_weights` leaves it: its weight drawn by `weight(key, shape)` (ConvNeXt's and
    Swin's `trunc_normal_(std=0.02)`, MaxViT's `normal_(std=0.02)`), its bias zero. Built as
    shapes first: torch's default draws would be thrown away (a third of the build time).
    Takes two keys from `keys`."""
    layer = eqx.filter_eval_shape(cls, *args, key=next(keys), **kwargs)
    drawn = weight(next(keys), layer.weight.shape)
    bias = None if layer.bias is None else zeros(layer.bias.shape)
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (drawn, bias), is_leaf=lambda x: x is None
    )
