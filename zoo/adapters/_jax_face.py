"""The JAX face: a zoo model with jitted entry points, still a plain Equinox pytree."""

from collections.abc import Callable
from typing import Any, Self

import equinox as eqx
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from weights_convert import split_params_buffers

from .._compile import jit
from .._functional import LossFn, cross_entropy, make_train_step, trainable
from .._modes import eval_mode, train_mode


@jit
def _eval_logits(model: Any, x: Array) -> Array:
    return eval_mode(model)(x)[0]


@jit
def _train_forward(model: Any, x: Array, key: PRNGKeyArray | None) -> tuple[Array, Any]:
    return train_mode(model)(x, key=key)


class JaxModel(eqx.Module):
    """`zoo.load(..., framework="jax")`: the Equinox model plus jitted functions over it.

    Calling it on an NCHW float batch (JAX or NumPy) returns eval-mode logits from a jitted
    computation. It is a pytree, so it also works inside `jax.jit` and `jax.vmap`, and under
    `jax.grad` with respect to its float arrays (`eqx.filter_grad`, or `eqx.partition` with
    `eqx.is_inexact_array`: the BatchNorm counters are integers).

    **Fields:** `model` (the Equinox module, e.g. `zoo.models.ResNet`), `name` (registry name).
    """

    model: Any
    name: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "batch channels height width"]) -> Array:
        return _eval_logits(self.model, jnp.asarray(x))

    def train_forward(self, x: Array, *, key: PRNGKeyArray | None = None) -> tuple[Array, Self]:
        """Train-mode logits (batch statistics, dropout with `key`) and the face with its
        BatchNorm buffers updated, as torch's in-place update would leave them."""
        logits, model = _train_forward(self.model, jnp.asarray(x), key)
        return logits, eqx.tree_at(lambda f: f.model, self, eval_mode(model))

    @property
    def params(self) -> PyTree:
        """The trainable arrays (a pytree with `None` at buffers)."""
        return trainable(self.model)

    @property
    def state(self) -> PyTree:
        """The BatchNorm buffers (a pytree with `None` at parameters)."""
        return split_params_buffers(self.model)[1]

    def init_optimizer(self, optimizer: optax.GradientTransformation) -> PyTree:
        """`optimizer.init` over the trainable parameters."""
        return optimizer.init(self.params)

    def make_train_step(
        self, optimizer: optax.GradientTransformation, loss_fn: LossFn = cross_entropy
    ) -> Callable[..., tuple[Any, Any, Array, Array]]:
        """A jitted train step over the Equinox model (see `zoo.make_train_step`):
        `step(model, opt_state, x, labels, key) -> (model, opt_state, loss, logits)`.
        Start from `train_mode(face.model)`; wrap the result back with `face.replace(model)`."""
        return make_train_step(optimizer, loss_fn)

    def replace(self, model: Any) -> Self:
        """This face around another model of the same architecture (e.g. after training)."""
        return eqx.tree_at(lambda f: f.model, self, eval_mode(model))
