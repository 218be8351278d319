"""Torch-style names for the arrays of an Equinox model: the attribute path, dotted.

`model.layer1[0].bn1.running_mean` is named `layer1.0.bn1.running_mean`, torchvision's
state_dict key for the same tensor. Non-array leaves (flags such as `inference`) have no name.
"""

from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, PyTree

T = TypeVar("T")
# torch's buffers (state, not trainable): BatchNorm's, and the attention windows' constant
# tables (Swin's, MaxViT's `relative_position_index`, integers; Swin V2's float
# `relative_coords_table`).
BUFFER_NAMES = frozenset(
    {
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "relative_position_index",
        "relative_coords_table",
    }
)
# The float buffers the zoo stores as the bits of their values (int32 for float32, int64 for
# float64; see `zoo.layers.BatchNorm2d`), which Equinox's filters leave out (no gradient, no
# optimizer update); torch sees them as floats: BatchNorm's running statistics, Swin V2's
# coordinates table.
STATISTIC_NAMES = frozenset({"running_mean", "running_var", "relative_coords_table"})
_FLOAT_OF_BITS = {
    np.dtype(np.int32): np.dtype(np.float32),
    np.dtype(np.int64): np.dtype(np.float64),
}
# What wrappers put in front of every key: DDP/DataParallel, torch.compile, a LightningModule's
# `self.model`. They nest (`module._orig_mod.`) in any order.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _path_to_name(path: tuple) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        else:  # FlattenedIndexKey and friends: not part of the torch naming scheme
            parts.append(str(getattr(entry, "key", entry)))
    return ".".join(parts)


def _is_array(leaf: object) -> bool:
    return eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)


def named_arrays(model: PyTree) -> dict[str, Array]:
    """Every array of `model` under its torch state_dict name, in state_dict order
    (field declaration order, which the models keep equal to torch's registration order).
    An abstract model (`eqx.filter_eval_shape(builder)`) names its `ShapeDtypeStruct`s."""
    leaves = jax.tree_util.tree_flatten_with_path(model)[0]
    return {_path_to_name(path): leaf for path, leaf in leaves if _is_array(leaf)}


def named_values(model: PyTree) -> dict[str, Any]:
    """`named_arrays`, with the BatchNorm statistics as their float values (the values
    torch's buffers hold) instead of the bits the zoo stores: NumPy views on host arrays (no
    compilation), a bitcast for traced ones."""
    out = {}
    for name, array in named_arrays(model).items():
        float_dtype = statistic_float_dtype(name, array)
        if float_dtype is not None:
            if isinstance(array, jax.core.Tracer):
                array = jax.lax.bitcast_convert_type(array, float_dtype)
            elif not isinstance(array, jax.ShapeDtypeStruct):
                array = np.asarray(array).view(float_dtype)
            else:
                array = jax.ShapeDtypeStruct(array.shape, float_dtype)
        out[name] = array
    return out


def is_buffer_name(name: str) -> bool:
    """True for buffers (`BUFFER_NAMES`: state), False for trainable parameters."""
    return name.rsplit(".", 1)[-1] in BUFFER_NAMES


def statistic_float_dtype(name: str, array: Any) -> np.dtype | None:
    """The float dtype whose bits the array named `name` stores (a BatchNorm statistic held
    as int32/int64 bits), or `None` for an array that holds its values as they are."""
    if name.rsplit(".", 1)[-1] not in STATISTIC_NAMES:
        return None
    return _FLOAT_OF_BITS.get(np.dtype(array.dtype))


def replace_arrays(model: PyTree, new: Mapping[str, Array]) -> PyTree:
    """Return `model` with the arrays named in `new` replaced; other leaves untouched."""
    if not new:
        return model
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model)
    out = []
    for path, leaf in leaves:
        name = _path_to_name(path) if eqx.is_array(leaf) else None
        out.append(new[name] if name in new else leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def split_params_buffers(model: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """Partition into `(params, buffers, static)`: two pytrees holding the trainable arrays and
    the BatchNorm buffers (the other leaves `None`), and the non-array rest.
    Recombine with `equinox.combine(params, buffers, static)`."""
    dynamic, static = eqx.partition(model, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(dynamic)
    is_buf = [is_buffer_name(_path_to_name(p)) for p, _ in leaves]
    params = [None if b else leaf for (_, leaf), b in zip(leaves, is_buf, strict=True)]
    buffers = [leaf if b else None for (_, leaf), b in zip(leaves, is_buf, strict=True)]
    return (
        jax.tree_util.tree_unflatten(treedef, params),
        jax.tree_util.tree_unflatten(treedef, buffers),
        static,
    )


def strip_prefixes(
    state_dict: Mapping[str, T], names: Collection[str] | None = None
) -> dict[str, T]:
    """Remove the prefixes that wrappers add to every key: `module.` (DataParallel, DDP),
    `_orig_mod.` (`torch.compile`) and `model.` (a LightningModule's `self.model`), repeatedly,
    so `module._orig_mod.conv1.weight` becomes `conv1.weight`.

    A prefix is stripped only when every key has it (a Lightning checkpoint that also saved a
    loss's weights is not a bare model) and no name in `names` starts with it (a model whose
    own attribute is `model`).

    **Arguments:**

    - `state_dict`: `{key: value}`; the values are passed through untouched.
    - `names`: the model's own state_dict names, or `None` if no model is known.

    **Returns:** a new dict with the stripped keys, in the same order.
    """
    names = () if names is None else names
    out = dict(state_dict)
    stripped = True
    while out and stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            # A key that is no string (a malformed state_dict) has no prefix to strip.
            if all(isinstance(k, str) and k.startswith(prefix) for k in out) and not any(
                n.startswith(prefix) for n in names
            ):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
                break
    return out
