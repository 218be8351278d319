"""Pure functions over zoo models: forward passes, the loss, gradients and a full train step.

Every function takes the model as an argument and returns new values; nothing is stored.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from weights_convert import split_params_buffers

from ._compile import jit
from ._modes import eval_mode, is_training, train_mode

M = TypeVar("M")
LossFn = Callable[[Array, Array], Array]


def cross_entropy(
    logits: Float[Array, "batch classes"], labels: Int[Array, " batch"]
) -> Float[Array, ""]:
    """Mean softmax cross-entropy over integer labels (`torch.nn.functional.cross_entropy`).

    Computed in at least float32, as under `torch.autocast`: bfloat16/float16 logits (a model
    run on a half-precision batch) are upcast first, so the loss and its gradient keep
    float32's precision.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def forward(model: Any, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
    """The model's logits in whatever mode it is in; updated buffers are dropped."""
    logits, _ = model(x, key=key)
    return logits


def loss_and_grads(
    model: M,
    x: Array,
    labels: Array,
    *,
    key: PRNGKeyArray | None = None,
    loss_fn: LossFn = cross_entropy,
    set_mode: Callable[[M], M] | None = None,
) -> tuple[tuple[Array, Array, M], PyTree]:
    """Loss and gradients with respect to the trainable parameters (not the buffers).

    `set_mode` puts the model in the mode to run it in (default: the mode it is in, wholly
    train or wholly eval); pass one for mixed modes, e.g. a frozen backbone in eval mode under
    a train-mode head.

    **Returns:** `((loss, logits, model_with_new_buffers), grads)`; `grads` has the model's
    structure, with `None` where a buffer or a non-array sits.
    """
    # Differentiate in a canonical (eval-mode) structure, so gradients and optimizer state
    # match `trainable(model)` whichever mode the model is in.
    params, buffers, static = _canonical_split(model)
    set_mode = set_mode or _current_mode(model)

    def objective(params):
        logits, new_model = set_mode(eqx.combine(params, buffers, static))(x, key=key)
        return loss_fn(logits, labels), (logits, new_model)

    (loss, (logits, new_model)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return (loss, logits, new_model), grads


def _current_mode(model: Any) -> Callable[[M], M]:
    """The mode switch that keeps `model` in the (whole-model) mode it is in."""
    return train_mode if is_training(model) else eval_mode


def _canonical_split(model: Any) -> tuple[PyTree, PyTree, PyTree]:
    return split_params_buffers(eval_mode(model))


def trainable(model: Any) -> PyTree:
    """The model's trainable parameters (buffers and static parts as `None`), in a structure
    that does not depend on train/eval mode: what an optax optimizer is initialised on,
    `optimizer.init(zoo.trainable(model))`."""
    return _canonical_split(model)[0]


def make_train_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    *,
    donate: bool = True,
    set_mode: Callable[[M], M] | None = None,
) -> Callable[..., tuple[M, Any, Array, Array]]:
    """A jitted step: train-mode forward, gradients, BatchNorm update and optax update in one
    XLA computation.

    **Arguments:**

    - `optimizer`: any optax transformation; its state comes from
      `optimizer.init(zoo.trainable(model))`.
    - `loss_fn`: `(logits, labels) -> scalar` (cross-entropy by default).
    - `donate`: donate the model and optimizer state buffers to the step, so XLA updates
      them in place (do not reuse the arguments after the call).
    - `set_mode`: the mode to run and return the model in (default: the mode it is in); for
      mixed modes such as a frozen eval-mode backbone under a train-mode head.

    **Returns:** `step(model, opt_state, x, labels, key) -> (model, opt_state, loss, logits)`.
    """

    def step(model, opt_state, x, labels, key):
        (loss, logits, new_model), grads = loss_and_grads(
            model, x, labels, key=key, loss_fn=loss_fn, set_mode=set_mode
        )
        params, buffers, static = _canonical_split(new_model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        restore = set_mode or _current_mode(model)
        return restore(eqx.combine(params, buffers, static)), opt_state, loss, logits

    # Zoo models hold only arrays as leaves (flags are static fields), so jit needs no filter.
    return jit(step, donate_argnums=(0, 1) if donate else ())
