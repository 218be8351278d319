"""Dropout with an explicit key, torch's inverted scaling."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._flags import inference_flag


class Dropout(eqx.Module):
    """`torch.nn.Dropout`: in train mode zero each element with probability `p` and scale the
    survivors by `1 / (1 - p)`; the identity in eval mode (`inference=True`) or when `p == 0`.

    Randomness is explicit: a train-mode call needs `key=`.
    """

    p: float = eqx.field(static=True)
    # A leaf, as in `eqx.nn.Dropout`, so `eqx.nn.inference_mode` flips it.
    inference: bool

    def __init__(self, p: float = 0.5, *, inference: bool = False):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}.")
        self.p = p
        self.inference = inference

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if inference_flag(self.inference, "Dropout") or self.p == 0.0:
            return x
        if key is None:
            raise ValueError(
                "Dropout in train mode needs a PRNG key: call the model with "
                "`key=jax.random.key(seed)`, or switch to eval mode with `zoo.eval_mode(model)`."
            )
        keep = jax.random.bernoulli(key, 1.0 - self.p, x.shape)
        return jnp.where(keep, x / (1.0 - self.p), jnp.zeros((), x.dtype))
