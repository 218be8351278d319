"""BatchNorm with torch's exact semantics, its buffers held as fields named like torch's.

The running statistics are stored as the *bits* of their float values (int32 for float32,
int64 for float64): Equinox's filters (`eqx.is_inexact_array`) then leave them out, so an
optimizer set up the usual Equinox way (`optimizer.init(eqx.filter(model,
eqx.is_inexact_array))`) can neither decay nor train them, and `eqx.filter_grad` never
differentiates them. Reading them is a free bitcast (`running_stats`); the converter and the
torch face present them as torch's float buffers.
"""

from collections.abc import Callable, Hashable, Sequence
from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._flags import inference_flag


class BatchNorm2d(eqx.Module):
    """`torch.nn.BatchNorm2d` for NCHW batches (NHWC with `channels_last=True`), buffers
    included.

    Why not `equinox.nn.BatchNorm`: its `ema` mode is not torch's update, its `batch` mode
    debiases by a counter (which breaks on ported statistics), and it stores the biased
    variance. This layer follows torch exactly:

    - train mode (`inference=False`): normalise with the batch mean and *biased* variance;
      update `running_mean`/`running_var` as `(1 - momentum) * old + momentum * new` with the
      *unbiased* batch variance; add one to `num_batches_tracked`. With `momentum=None` the
      update is the cumulative average `1 / num_batches_tracked`, as in torch.
    - eval mode (`inference=True`): normalise with the running statistics.

    Buffers are ordinary fields, so their attribute paths are torch's state_dict keys. A call
    returns the output and the layer with its updated buffers: `y, bn = bn(x)`.
    `running_mean`/`running_var` hold the statistics' bits (see the module's docstring):
    read their values with `bn.running_stats()`; `weights_convert.to_state_dict` exports
    them as floats. A float array assigned there (`eqx.tree_at`) is read as it is.

    **Arguments:**

    - `num_features`: the channel count `C`.
    - `eps`, `momentum`: as in torch (`1e-5`, `0.1`).
    - `inference`: start in eval mode. Toggle with `zoo.eval_mode` / `zoo.train_mode` (or
      `eqx.nn.inference_mode`).
    - `axis_name`: in train mode, reduce the batch statistics over this mapped axis too
      (`jax.vmap`, `shard_map`, `pmap`), as `eqx.nn.BatchNorm` and torch's `SyncBatchNorm`
      do: the statistics of the global batch. `None`: this batch only. Under `jax.jit` with
      a sharded batch no axis name is needed (the statistics are global already).
    """

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    # The float32 (float64) statistics' bits, as int32 (int64): see the module's docstring.
    running_mean: Int[Array, " channels"]
    running_var: Int[Array, " channels"]
    # int32 here (JAX's default integer); exported back to torch as int64.
    num_batches_tracked: Int[Array, ""]
    # A leaf, as in `eqx.nn.BatchNorm`, so `eqx.nn.inference_mode` flips it; `eqx.filter_jit`
    # (and `zoo.jit`) hold it static.
    inference: bool
    num_features: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    momentum: float | None = eqx.field(static=True)
    axis_name: Hashable | Sequence[Hashable] | None = eqx.field(static=True)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        *,
        inference: bool = False,
        axis_name: Hashable | Sequence[Hashable] | None = None,
    ):
        self.num_features = num_features
        self.axis_name = axis_name
        self.eps = eps
        self.momentum = momentum
        self.inference = inference
        # From NumPy: `jnp.ones`/`jnp.zeros` would compile one kernel per new channel count.
        # One NumPy array per field: `device_put` may alias its memory, and two fields on one
        # buffer would break donation and the torch face's in-place updates.
        self.weight, self.bias, self.running_mean, self.running_var = jax.device_put(
            [fill(num_features, np.float32) for fill in (np.ones, np.zeros)]
            + [fill(num_features, np.float32).view(np.int32) for fill in (np.zeros, np.ones)]
        )
        self.num_batches_tracked = jax.device_put(np.zeros((), np.int32))

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, channels_last: bool = False
    ) -> tuple[Float[Array, "batch channels height width"], Self]:
        """**Arguments:**

        - `x`: an NCHW batch, or NHWC with `channels_last=True`.
        - `channels_last`: the layout of `x` and of the result.

        **Returns:** `(y, bn)`: the normalised batch in the layout of `x`, and the layer
        with its updated buffers (itself in eval mode).
        """
        if channels_last:
            # As one (N*H*W, C) matrix: XLA:CPU reduces and broadcasts this 2-D view much
            # faster than the 4-D batch (see `_channel_sums`).
            y, updated = self._forward(x.reshape(-1, x.shape[-1]), _channel_sums, _last)
            return y.reshape(x.shape), updated
        return self._forward(x, _nchw_sums, _second)

    def _forward(
        self,
        x: Array,
        channel_sums: Callable[[Array], Array],
        expand: Callable[[Array], Array],
    ) -> tuple[Array, Self]:
        """The layer on `x`, whose per-channel sums are `channel_sums(x)` and against which a
        per-channel vector `v` broadcasts as `expand(v)`."""
        running_mean, running_var = self.running_stats()
        if inference_flag(self.inference, "BatchNorm2d"):
            return self._normalise(x, running_mean, running_var, expand), self
        # Statistics in at least fp32, as torch does for half inputs.
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        count = x.size // self.num_features
        if self.axis_name is not None:
            count = count * jax.lax.axis_size(self.axis_name)  # a Python int: static
        mean = self._sync(channel_sums(xs)) / count
        # One centred batch serves the variance and the output, and `centred * centred`
        # (not `jnp.square`, whose derivative keeps `2 * centred` as well) makes it the only
        # batch-sized array `jax.vjp` saves here: the torch face's backward reads them all.
        centred = xs - expand(mean)
        var = self._sync(channel_sums(centred * centred)) / count
        if count < 2:
            raise ValueError(
                "BatchNorm2d in train mode needs more than one value per channel (got "
                f"{count} per channel, input of shape {x.shape}); use a batch larger than 1 or "
                "eval mode."
            )
        num_batches = self.num_batches_tracked + 1
        factor = 1.0 / num_batches if self.momentum is None else self.momentum
        unbiased_var = var * (count / (count - 1))
        new_mean = (1 - factor) * running_mean + factor * mean
        new_var = (1 - factor) * running_var + factor * unbiased_var
        updated = eqx.tree_at(
            lambda bn: (bn.running_mean, bn.running_var, bn.num_batches_tracked),
            self,
            (
                _stored_like(new_mean, self.running_mean),
                _stored_like(new_var, self.running_var),
                num_batches.astype(self.num_batches_tracked.dtype),
            ),
        )
        return self._scale_shift(centred, var, expand).astype(x.dtype), updated

    def running_stats(self) -> tuple[Float[Array, " channels"], Float[Array, " channels"]]:
        """**Returns:** `(running_mean, running_var)` as floats (float32, or float64 in a
        float64 model): the values torch's buffers hold."""
        return statistic_value(self.running_mean), statistic_value(self.running_var)

    def _sync(self, sums: Array) -> Array:
        return sums if self.axis_name is None else jax.lax.psum(sums, self.axis_name)

    def _normalise(
        self, x: Array, mean: Array, var: Array, expand: Callable[[Array], Array]
    ) -> Array:
        return self._scale_shift(x - expand(mean.astype(x.dtype)), var, expand)

    def _scale_shift(self, centred: Array, var: Array, expand: Callable[[Array], Array]) -> Array:
        # Centre first, as torch does: folding the mean into a shift (x * scale + shift)
        # matches in the forward but makes the backward cancel large sums, which cost ~1e-2
        # relative error on gradients of layers whose mean is large against their spread.
        inv = 1.0 / jnp.sqrt(var + self.eps)
        scale = (self.weight * inv).astype(centred.dtype)
        return centred * expand(scale) + expand(self.bias.astype(centred.dtype))


# A statistic's float dtype by the width of its stored bits.
_FLOAT_OF_BITS = {
    np.dtype(np.int32): np.dtype(np.float32),
    np.dtype(np.int64): np.dtype(np.float64),
}
_BITS_OF_FLOAT = {f: i for i, f in _FLOAT_OF_BITS.items()}


def statistic_value(stored: Array) -> Array:
    """A statistic's float values from its stored bits (a float array is returned as it
    is). Free under `jit`: a bitcast."""
    float_dtype = _FLOAT_OF_BITS.get(np.dtype(stored.dtype))
    if float_dtype is None:
        return stored
    return jax.lax.bitcast_convert_type(stored, float_dtype)


def statistic_bits(value: Array) -> Array:
    """The bits BatchNorm stores for float `value` (float32 or float64; a half-precision
    value is widened to float32, as torch keeps statistics in at least float32 under
    autocast)."""
    value = value.astype(jnp.promote_types(value.dtype, jnp.float32))
    return jax.lax.bitcast_convert_type(value, _BITS_OF_FLOAT[np.dtype(value.dtype)])


def _stored_like(value: Array, stored: Array) -> Array:
    """`value` stored as `stored` is: as bits of the same width, or as a float of its
    dtype (a float array a user put there)."""
    float_dtype = _FLOAT_OF_BITS.get(np.dtype(stored.dtype))
    if float_dtype is None:
        return value.astype(stored.dtype)
    return jax.lax.bitcast_convert_type(value.astype(float_dtype), stored.dtype)


# Row width (elements) that `_channel_sums` folds an NHWC batch to.
_FOLD_WIDTH = 1024


def _channel_sums(x: Array) -> Array:
    """Per-channel sums of an `(N*H*W, C)` matrix (an NHWC batch, flattened).

    XLA:CPU reduces an NHWC batch over `(N, H, W)` slowly. On the flat matrix, with `k` rows
    folded into one, `(N*H*W / k, k*C)` with `k*C <= 1024`, and the `k` partial rows summed
    after, a ResNet18 train step is ~20% faster at 224x224 batch 32 and ~9% at 32x32 batch
    128 (benchmarks/README.md). Only the summation order changes.
    """
    rows, channels = x.shape
    k = 1
    while rows % (2 * k) == 0 and 2 * k * channels <= _FOLD_WIDTH:
        k *= 2
    return x.reshape(rows // k, k * channels).sum(axis=0).reshape(k, channels).sum(axis=0)


def _nchw_sums(x: Array) -> Array:
    return jnp.sum(x, axis=(0, 2, 3))


def _second(v: Array) -> Array:
    """A per-channel vector shaped to broadcast over NCHW."""
    return v[None, :, None, None]


def _last(v: Array) -> Array:
    """A per-channel vector shaped to broadcast over NHWC or `(N*H*W, C)`: as it is."""
    return v
