"""The JAX face: a zoo model with jitted entry points, still a plain Equinox pytree."""

from collections.abc import Callable, Sequence
from typing import Any, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from weights_convert import split_params_buffers

from .._compile import _is_traced, jit
from .._functional import LossFn, cross_entropy, make_train_step, trainable
from .._modes import eval_mode, train_mode
from ..layers import Conv2d
from ..models import FeatureInfo


@jit
def _eval_logits(model: Any, x: Array) -> Array:
    return eval_mode(model)(x)[0]


def _is_conv(node: Any) -> bool:
    return isinstance(node, Conv2d)


def _convs(model: Any) -> list[Conv2d]:
    return [n for n in jax.tree_util.tree_leaves(model, is_leaf=_is_conv) if _is_conv(n)]


@jit
def _hwio_kernels(model: Any) -> tuple[Array, ...]:
    return tuple(conv.weight.transpose(2, 3, 1, 0) for conv in _convs(model))


@jit
def _eval_logits_hwio(kernels: tuple[Array, ...], model: Any, x: Array) -> Array:
    # Each OIHW weight is rebuilt as a transpose of its HWIO copy; the convolution transposes
    # it back to HWIO, and XLA folds the two transposes away: the weights are read, not copied.
    weights = [k.transpose(3, 2, 0, 1) for k in kernels]
    model = eqx.tree_at(lambda m: [conv.weight for conv in _convs(m)], model, weights)
    return eval_mode(model)(x)[0]


@jit
def _eval_features(model: Any, x: Array) -> Array:
    return eval_mode(model).forward_features(x)[0]


@jit
def _eval_head(model: Any, x: Array, pre_logits: bool) -> Array:
    return eval_mode(model).forward_head(x, pre_logits=pre_logits)


@jit
def _eval_intermediates(
    model: Any, x: Array, indices: Any, intermediates_only: bool, stop_early: bool
) -> Any:
    out, _ = eval_mode(model).forward_intermediates(
        x, indices=indices, intermediates_only=intermediates_only, stop_early=stop_early
    )
    return out


def _empty_batch(fn: Callable[..., Any], model: Any, x: Array, *rest: Any) -> Any:
    """`fn(model, x, *rest)` for a batch of zero images: the outputs of a one-image batch
    (their shapes only, nothing is computed), with zero rows, as torchvision returns them.
    (The models' flattening reshapes cannot infer a dimension of an empty batch.)"""
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    out = eqx.filter_eval_shape(fn, model, one, *rest)
    return jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape[1:]), s.dtype), out)


def _is_empty(x: Array) -> bool:
    return x.ndim == 4 and x.shape[0] == 0


@jit
def _train_forward(model: Any, x: Array, key: PRNGKeyArray | None) -> tuple[Array, Any]:
    return train_mode(model)(x, key=key)


class JaxModel(eqx.Module):
    """`zoo.load(..., framework="jax")`: the Equinox model plus jitted functions over it.

    Calling it on an NCHW float batch (JAX or NumPy) returns eval-mode logits (the list of
    feature maps after `features_only`) from a jitted computation; an empty batch (zero
    images) returns empty outputs, `(0, num_classes)`, as torchvision does. The model contract's
    methods (`forward_features`, `forward_head`, `forward_intermediates`, `feature_info`,
    `reset_classifier`, ...) are here too, jitted. It is a pytree, so it also works inside
    `eqx.filter_jit`, `eqx.filter_vmap` and `eqx.filter_grad` (its `inference` flags are
    Python bools, as in `eqx.nn`), and `eqx.nn.inference_mode` switches it.

    **Fields:** `model` (the Equinox module, e.g. `zoo.models.ResNet`), `name` (registry name).

    **Memory:** the first call keeps a copy of the convolution weights in the HWIO layout
    that XLA's convolutions read (44 MB for ResNet18), so that later calls do not transpose
    them from torch's OIHW every time: at 224x224 that transpose was ~20 of ~45 ms at batch
    1 on a 2-core CPU. The model's arrays are immutable, so the copy cannot go stale; a new
    face (`replace`, `train_forward`, `eqx.tree_at`) starts without it. Calls inside your own
    `jax.jit`/`jax.grad`/`jax.vmap` use the model's weights directly.
    """

    model: Any
    name: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "batch channels height width"]) -> Array:
        x = jnp.asarray(x)
        if _is_empty(x):  # (0, classes), as torchvision; the input is still checked
            return _empty_batch(_eval_logits, self.model, x)
        memo = self.__dict__.get("_hwio_cache")
        # A memo exists only on a concrete face; without one, look for tracers in the face.
        traced = isinstance(x, jax.core.Tracer) or (memo is None and _is_traced(self))
        kernels = None if traced else self._inference_kernels(memo)
        if kernels is None:
            return _eval_logits(self.model, x)
        return _eval_logits_hwio(kernels, self.model, x)

    def _inference_kernels(self, memo: tuple | None) -> tuple[Array, ...] | None:
        """The HWIO copies of the conv weights, made on the first call and kept with the
        weights they came from; `None` (the plain path) where the weights are not JAX
        arrays, or were donated (deleted), so that the call fails as it would without it.
        (On a first call, deleted weights fail in `_hwio_kernels` with the same error.)"""
        if memo is None:
            weights = tuple(conv.weight for conv in _convs(self.model))
            # Only immutable JAX arrays can be memoised against (a NumPy weight could change).
            if not weights or not all(isinstance(w, jax.Array) for w in weights):
                return None
            memo = (weights, _hwio_kernels(self.model))
            # Not a field: outside the pytree, so every JAX transformation and `eqx.tree_at`
            # drop it (a deepcopy copies it with the arrays it came from).
            object.__setattr__(self, "_hwio_cache", memo)
        weights, kernels = memo
        return None if any(w.is_deleted() for w in weights) else kernels

    # -- the model contract, jitted in eval mode (see `zoo.models.ZooModel`) ---------------
    def forward_features(self, x: Float[Array, "batch channels height width"]) -> Array:
        """The final NCHW feature map before pooling."""
        x = jnp.asarray(x)
        if _is_empty(x):
            return _empty_batch(_eval_features, self.model, x)
        return _eval_features(self.model, x)

    def forward_head(self, x: Array, *, pre_logits: bool = False) -> Array:
        """Pool an NCHW feature map and classify it (`pre_logits`: what the classifier sees)."""
        x = jnp.asarray(x)
        if _is_empty(x):
            return _empty_batch(_eval_head, self.model, x, pre_logits)
        return _eval_head(self.model, x, pre_logits)

    def forward_intermediates(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
    ) -> Any:
        """timm's `forward_intermediates` (see `ZooModel.forward_intermediates`), without
        the returned model: `intermediates`, or `(final_features, intermediates)`."""
        indices = tuple(indices) if isinstance(indices, Sequence) else indices
        x = jnp.asarray(x)
        if _is_empty(x):
            return _empty_batch(
                _eval_intermediates, self.model, x, indices, intermediates_only, stop_early
            )
        return _eval_intermediates(self.model, x, indices, intermediates_only, stop_early)

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """The feature maps a call returns after `features_only` (else all the model offers)."""
        return self.model.selected_feature_info

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def num_features(self) -> int:
        return self.model.num_features

    @property
    def in_chans(self) -> int:
        return self.model.in_chans

    def get_classifier(self) -> Any:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int, *, key: PRNGKeyArray | None = None) -> Self:
        """This face with a new classifier (`ZooModel.reset_classifier`)."""
        return self.replace(self.model.reset_classifier(num_classes, key=key))

    def train_forward(self, x: Array, *, key: PRNGKeyArray | None = None) -> tuple[Array, Self]:
        """Train-mode logits (batch statistics, dropout with `key`) and the face with its
        BatchNorm buffers updated, as torch's in-place update would leave them. An empty
        batch gives empty logits and leaves the buffers as they were (zero images have no
        statistics)."""
        x = jnp.asarray(x)
        if _is_empty(x):
            return _empty_batch(_eval_logits, self.model, x), self
        logits, model = _train_forward(self.model, x, key)
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
