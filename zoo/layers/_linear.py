"""A fully connected layer with torch's weight layout."""

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ._init import torch_default_uniform


class Linear(eqx.Module):
    """`torch.nn.Linear` on a batch: `y = x @ weight.T + bias`, weight stored `(out, in)`.

    **Arguments:**

    - `in_features`, `out_features`, `bias`: as in torch.
    - `key`: a JAX PRNG key for torch's default initialisation.
    """

    weight: Float[Array, "out_features in_features"]
    bias: Float[Array, " out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, key: PRNGKeyArray
    ):
        wkey, bkey = jax.random.split(key)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = torch_default_uniform(wkey, (out_features, in_features), in_features)
        self.bias = torch_default_uniform(bkey, (out_features,), in_features) if bias else None

    def __call__(self, x: Float[Array, "batch in_features"]) -> Float[Array, "batch out_features"]:
        y = x @ self.weight.astype(x.dtype).T
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y
