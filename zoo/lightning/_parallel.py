"""Data parallelism for the JAX train step with `jax.sharding`: the batch is split over a
1-D `Mesh` of devices, parameters, BatchNorm buffers and optimizer state are replicated.

XLA's SPMD partitioner inserts the collectives: the loss mean, the gradient sum and the
BatchNorm batch statistics all reduce over the *global* batch, so a sharded step computes
the same numbers as the unsharded one (BatchNorm is synchronised for free).
"""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .._compile import jit
from .._functional import LossFn, cross_entropy, make_train_step
from .._modes import eval_mode

M = TypeVar("M")


class DataParallel:
    """Place arrays on a data-parallel mesh and run jitted train/eval steps there.

    **Arguments:**

    - `devices`: the devices to split the batch over (default: all of `jax.devices()`).
      A batch whose size the device count does not divide is replicated instead (same
      result, no speed-up).
    """

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.devices = list(jax.devices() if devices is None else devices)
        self.mesh = Mesh(np.asarray(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharded = NamedSharding(self.mesh, P("data"))

    def replicate(self, tree: Any) -> Any:
        """Every array leaf of `tree` replicated over the mesh."""
        return jax.tree_util.tree_map(
            lambda a: jax.device_put(a, self.replicated) if eqx.is_array(a) else a, tree
        )

    def shard_batch(self, *arrays: Any) -> tuple[jax.Array, ...]:
        """NumPy (or JAX) arrays split along their first axis over the mesh."""
        n = len(self.devices)
        sharding = self.batch_sharded if arrays[0].shape[0] % n == 0 else self.replicated
        return tuple(jax.device_put(a, sharding) for a in arrays)


def make_data_parallel_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    *,
    devices: Sequence[jax.Device] | None = None,
    donate: bool = True,
    set_mode: Callable[[M], M] | None = None,
) -> tuple[DataParallel, Callable[..., tuple[Any, Any, jax.Array, jax.Array]]]:
    """A jitted train step (`zoo.make_train_step`) that takes NumPy batches and runs
    data-parallel over `devices`.

    `set_mode`: where the model's layers are not all in one mode (a frozen backbone in eval
    mode, its head in train mode), the function that puts it in that mode; the step then
    runs and returns `set_mode(model)` (`zoo.make_train_step`'s `set_mode`).

    **Returns:** `(placement, step)`; put the model and optimizer state on the mesh once with
    `placement.replicate(...)`, then call
    `step(model, opt_state, x, labels, key) -> (model, opt_state, loss, logits)` with NumPy
    `x`/`labels` (sharded here) as often as you like.
    """
    placement = DataParallel(devices)
    inner = make_train_step(optimizer, loss_fn, donate=donate, set_mode=set_mode)

    def step(model, opt_state, x, labels, key):
        x, labels = placement.shard_batch(x, labels)
        return inner(model, opt_state, x, labels, key)

    return placement, step


@jit
def eval_logits(model: Any, x: jax.Array) -> jax.Array:
    """Eval-mode logits (running BatchNorm statistics, no dropout)."""
    return eval_mode(model)(x)[0]
