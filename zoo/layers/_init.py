"""Initialisers that reproduce torch's defaults (same distributions, not the same draws)."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def torch_default_uniform(
    key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int
) -> Float[Array, "..."]:
    """`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: torch's default for Conv/Linear weights and biases.

    (`kaiming_uniform_(a=sqrt(5))` reduces to this bound for the weights.)
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def kaiming_normal_fan_out(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
    """torch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, used by torchvision's ResNet.

    torch's fan-out of an OIHW weight is `O * kh * kw` (groups are not divided out).
    """
    fan_out = shape[0] * math.prod(shape[2:])
    return jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / fan_out)
