"""torch state_dict <-> Equinox model, by name.

The model's attribute paths are the state_dict keys (see `named_arrays`), so conversion is a
checked rename: each key's shape, dtype and finiteness are verified, and tensors cross through
DLPack, sharing memory where the layout allows.
"""

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jaxtyping import Array

from ._adapt import adapt_input_conv
from ._names import named_arrays, replace_arrays, statistic_float_dtype, strip_prefixes
from ._report import ConversionError, LoadReport, LoadWarning

M = TypeVar("M")

_JAX_TO_TORCH = {
    jnp.dtype(jnp.float32): torch.float32,
    jnp.dtype(jnp.float16): torch.float16,
    jnp.dtype(jnp.bfloat16): torch.bfloat16,
    jnp.dtype(jnp.float64): torch.float64,
    # JAX keeps integers in 32 bits unless x64 is enabled; torch's BatchNorm counter is int64.
    jnp.dtype(jnp.int32): torch.int64,
    jnp.dtype(jnp.int64): torch.int64,
}


def torch_dtype_for(array: Array, name: str = "") -> torch.dtype:
    """The torch dtype a model array is stored as in a state_dict (`name`: its state_dict
    key, for the BatchNorm statistics the zoo stores as bits: float32/float64 in torch)."""
    float_dtype = statistic_float_dtype(name, array)
    return _JAX_TO_TORCH[jnp.dtype(array.dtype if float_dtype is None else float_dtype)]


def _bits_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The integer dtype of a float tensor's width (the zoo's storage of a statistic)."""
    return torch.int64 if tensor.dtype == torch.float64 else torch.int32


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.int64) == jnp.int64


def torch_to_jax(tensor: torch.Tensor, dtype: Any = None, *, copy: bool = False) -> jax.Array:
    """A torch tensor as a JAX array, through DLPack: zero-copy when the tensor is contiguous
    and aligned, else (or with `copy=True`) exactly one copy. `dtype` casts first (used for
    the int64 -> int32 counter; an int64 tensor becomes int32 without x64 anyway)."""
    tensor = tensor.detach()
    if dtype is None and tensor.dtype == torch.int64 and not _x64():
        # JAX holds int32 without x64 (a relative position index): cast in torch, once, not
        # by an XLA conversion whose result a caller would wait on (the torch face's alias
        # check, `unsafe_buffer_pointer`, hung on it once under load).
        dtype = torch.int32
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    elif copy or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    try:
        return jax.dlpack.from_dlpack(tensor)
    except Exception:  # unsupported layout or alignment: copy rather than fail
        return jax.dlpack.from_dlpack(tensor.clone(memory_format=torch.contiguous_format))


# dtypes NumPy can view without a copy (bfloat16 and friends go through DLPack instead).
_NUMPY_VIEWABLE = frozenset(
    {
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    }
)


def tensors_to_jax(
    tensors: list[torch.Tensor], dtypes: list[Any] | None = None, *, copy: bool = False
) -> list[jax.Array]:
    """`torch_to_jax` over many tensors at once.

    CPU tensors go to JAX in one batched `jax.device_put` of their NumPy views, which aliases
    what is aligned and contiguous (as DLPack does) at a third of DLPack's per-array Python
    cost (~20 us instead of ~30 us: most of the time of converting a ResNet's 122 arrays).
    Tensors on other devices, and dtypes NumPy cannot view (bfloat16), go through
    `torch_to_jax` one by one. Results are committed to the tensor's device, as with DLPack.

    **Arguments:**

    - `tensors`: the tensors.
    - `dtypes`: per tensor, a torch dtype to cast to first, or `None` (used for the int64 ->
      int32 BatchNorm counters).
    - `copy`: copy instead of sharing memory.

    **Returns:** the JAX arrays, in order.
    """
    dtypes = dtypes if dtypes is not None else [None] * len(tensors)
    out: list[Any] = [None] * len(tensors)
    batch, where = [], []
    for i, (tensor, dtype) in enumerate(zip(tensors, dtypes, strict=True)):
        tensor = tensor.detach()
        cast = dtype is not None and tensor.dtype != dtype
        if cast:
            tensor = tensor.to(dtype)  # a new tensor: the copy, if one was asked for
        needs_copy = copy and not cast
        if tensor.device.type == "cpu" and tensor.dtype in _NUMPY_VIEWABLE:
            # `may_alias=False` does not force a copy on CPU (jaxlib 0.10), so copy here, with
            # torch: its buffers are 64-byte aligned, which JAX needs to alias the copy
            # (a NumPy copy is not, and JAX would copy it a second time).
            if needs_copy:
                tensor = tensor.clone(memory_format=torch.contiguous_format)
            batch.append(tensor.numpy())
            where.append(i)
        else:
            out[i] = torch_to_jax(tensor, copy=needs_copy)
    if batch:
        cpu = jax.devices("cpu")[0]
        for i, array in zip(where, jax.device_put(batch, cpu), strict=True):
            out[i] = array
    return out


def jax_to_torch(
    array: jax.Array, dtype: torch.dtype | None = None, *, copy: bool = False
) -> torch.Tensor:
    """A JAX array as a torch tensor, through DLPack (zero-copy unless `copy` or a cast)."""
    tensor = torch.from_dlpack(array)
    if dtype is not None and tensor.dtype != dtype:
        return tensor.to(dtype)
    return tensor.clone() if copy else tensor


def unusable_tensor(value: Any) -> str | None:
    """Why a state_dict value cannot be loaded as weights, as a phrase that completes
    "state_dict['conv1.weight'] is ..." and says the fix; `None` if it can: a dense torch
    tensor with values, or a NumPy/JAX array of numbers."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            return (
                "a meta tensor: a shape without values (saved from a model built on the "
                "'meta' device); save the state_dict of a model that holds real weights"
            )
        if value.is_nested or value.layout != torch.strided:
            return (
                f"a sparse or nested tensor ({value.layout}); save it dense, "
                "e.g. {k: v.to_dense() for k, v in state_dict.items()}"
            )
        if value.is_quantized:
            return "a quantized tensor; save it dequantized (tensor.dequantize())"
        return None
    if isinstance(value, np.ndarray | jax.Array):
        if np.dtype(value.dtype).kind in "biufc":
            return None
        # Strings, objects, and ml_dtypes' bfloat16/float8 (which torch.from_numpy refuses).
        return (
            f"an array of {value.dtype}, which torch cannot take from NumPy; pass torch "
            "tensors (torch.from_dlpack(array) for a JAX array)"
        )
    return f"a {type(value).__name__}, not a tensor"


def _as_tensor(value: Any, key: str) -> torch.Tensor:
    problem = unusable_tensor(value)
    if problem is not None:
        raise (TypeError if "not a tensor" in problem else ValueError)(
            f"state_dict[{key!r}] is {problem}"
        )
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.asarray(value))


def non_finite_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """The keys whose floating tensor (or array) holds a NaN or an infinity, in order.

    `load_state_dict` refuses such tensors (`check_finite`); an export checks with this
    first, so that it never writes a file that would be refused on load.
    """
    return [k for k, v in state_dict.items() if not _all_finite(_as_tensor(v, k))]


def _class_path(model: Any, fact: str) -> str | None:
    # The model contract's `first_conv_path`/`classifier_path` (timm's `first_conv`/
    # `classifier` on older classes); only a string counts: a model may have a submodule
    # named `classifier`.
    for name in (f"{fact}_path", fact):
        value = getattr(type(model), name, None)
        if isinstance(value, str):
            return value
    return None


def load_state_dict(
    model: M,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    adapt: bool = False,
    first_conv: str | None = None,
    classifier: str | None = None,
    copy: bool = True,
    check_finite: bool = True,
    warn: bool = True,
) -> tuple[M, LoadReport]:
    """Load a torch state_dict (torchvision, timm, or the zoo's CNN twin) into an Equinox model.

    **Arguments:**

    - `model`: the template; its arrays fix the expected keys, shapes and dtypes.
    - `state_dict`: `{key: tensor}` with torch's names. Wrapper prefixes (`module.`,
      `_orig_mod.`, `model.`) are stripped (see `strip_prefixes`). Floating tensors are cast
      to the model's floating dtype (a bfloat16 checkpoint loads into a float32 model), as
      torch does; the casts are listed in `report.cast`. A missing `num_batches_tracked`
      keeps the model's counter, as torch's BatchNorm does (`report.filled`).
    - `strict`: raise `ConversionError` on any missing, unexpected, mis-shaped, mis-typed
      (integer for float or the reverse) or non-finite entry. With `strict=False` what fits
      is loaded and the rest reported, with a warning.
    - `adapt`: let a differing classifier shape re-initialise the head (the template's values
      are kept) and a differing first-conv channel count be adapted by timm's rule.
    - `first_conv`, `classifier`: module names for `adapt` (default: the model class's
      `first_conv_path` / `classifier_path`, or `first_conv` / `classifier`, timm's names).
    - `copy`: copy each tensor once (the default). With `copy=False` the model shares memory
      with the state_dict where DLPack allows (no copy at all): only safe when nothing
      writes to those tensors afterwards, e.g. a state_dict freshly read from a file. A torch
      model that keeps training would change the JAX arrays under JAX's feet.
    - `check_finite`: treat NaN/inf in a tensor (after any cast) as a problem.
    - `warn`: with `strict=False`, warn (`LoadWarning`, a `UserWarning` carrying the
      report) when the report is not ok, so a partial load is never silent. Pass `False`
      when the caller handles the report.

    **Raises:** `ConversionError` (strict); `TypeError` for a key that is not a string or a
    value that is not a tensor, `ValueError` for a tensor without usable values (meta,
    sparse, quantized), naming the key.

    **Returns:** `(model, report)`: the loaded model and a `LoadReport`.
    """
    bad_key = next((k for k in state_dict if not isinstance(k, str)), None)
    if bad_key is not None:
        raise TypeError(
            f"state_dict key {bad_key!r} is a {type(bad_key).__name__}, not a name: a state_dict "
            "maps torch's parameter names ('conv1.weight', ...) to tensors"
        )
    names = named_arrays(model)
    state_dict = strip_prefixes(state_dict, names)
    first_conv = first_conv or _class_path(model, "first_conv")
    classifier = classifier or _class_path(model, "classifier")
    report = LoadReport()
    # Tensors cast here are fresh copies the model may own: they cross without another copy.
    accepted: list[tuple[str, torch.Tensor, torch.dtype | None]] = []
    owned: list[tuple[str, torch.Tensor, torch.dtype | None]] = []
    for name, target in names.items():
        if name not in state_dict:
            if name.rsplit(".", 1)[-1] == "num_batches_tracked":
                report.filled.append(name)  # older checkpoints predate the counter
            else:
                report.missing_keys.append(name)
            continue
        tensor = _as_tensor(state_dict[name], name)
        expected_dtype = torch_dtype_for(target, name)
        if tuple(tensor.shape) != tuple(target.shape):
            if adapt and classifier and name.startswith(classifier + "."):
                report.reinitialized.append(name)
                continue
            if (
                adapt
                and first_conv
                and name == f"{first_conv}.weight"
                and tensor.ndim == 4
                and tensor.shape[0] == target.shape[0]
                and tensor.shape[2:] == target.shape[2:]
            ):
                tensor = adapt_input_conv(target.shape[1], tensor)
                report.adapted.append(name)
            else:
                report.shape_mismatches[name] = (tuple(target.shape), tuple(tensor.shape))
                continue
        cast = tensor.dtype != expected_dtype
        if cast and not (tensor.is_floating_point() and expected_dtype.is_floating_point):
            report.dtype_mismatches[name] = (str(expected_dtype), str(tensor.dtype))
            continue
        if cast:
            # Once, in torch, before the crossing; checked for finiteness after, since a
            # float64 value can overflow float32.
            report.cast[name] = (str(tensor.dtype), str(expected_dtype))
            tensor = tensor.detach().to(expected_dtype)
        if check_finite and not _all_finite(tensor):
            report.non_finite.append(name)
            continue
        if statistic_float_dtype(name, target) is not None:
            # Stored as its bits: a view, no copy (one if the tensor is not contiguous).
            tensor = tensor.detach().contiguous().view(_bits_dtype(tensor))
            (owned if cast else accepted).append((name, tensor, None))
            continue
        (owned if cast else accepted).append((name, tensor, _jax_storage_dtype(target)))
    new = {}
    for group, group_copy in ((accepted, copy), (owned, False)):
        arrays = tensors_to_jax([t for _, t, _ in group], [d for _, _, d in group], copy=group_copy)
        new |= {name: array for (name, _, _), array in zip(group, arrays, strict=True)}
    report.unexpected_keys = [k for k in state_dict if k not in names]
    if strict and not report.ok:
        raise ConversionError(
            report,
            "Pass strict=False to load what fits and get the report; for another num_classes "
            "or in_chans pass adapt=True (zoo.load does).",
        )
    if warn and not report.ok:
        message = (
            f"load_state_dict(strict=False): {report.summary()}\n(the returned report, also "
            "this warning's .report, lists every problem; pass warn=False if you handle it)"
        )
        warnings.warn(LoadWarning(message, report), stacklevel=2)
    return replace_arrays(model, new), report


def _all_finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point():
        return True
    # A finite sum implies finite elements (NaN and inf propagate), and costs no temporary;
    # only a non-finite sum (a real NaN, or an overflow) pays for the element-wise check.
    # NumPy's single-threaded sum for CPU tensors: as fast as torch's on an idle machine, and
    # immune to OpenMP's spin-waiting when the cores are busy (torch's took 70x longer then).
    if tensor.device.type == "cpu" and tensor.dtype in _NUMPY_VIEWABLE:
        values = tensor.detach().numpy().reshape(-1)
        return bool(np.isfinite(np.add.reduce(values))) or bool(np.isfinite(values).all())
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _jax_storage_dtype(target: Array) -> torch.dtype | None:
    # The counter crosses as int32 (JAX without x64); floats cross as they are.
    return torch.int32 if jnp.dtype(target.dtype) == jnp.int32 else None


def to_state_dict(model: Any, *, copy: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """The model's arrays as a torch state_dict: torchvision's keys, order and dtypes
    (`num_batches_tracked` as int64). `torchvision.models.resnet18().load_state_dict(...,
    strict=True)` accepts the result.

    Each tensor is a copy by default. With `copy=False` float tensors share memory with the
    JAX arrays: fine for saving or `load_state_dict` (which copies), but JAX assumes its
    arrays immutable, so nothing may write to such tensors in place.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, array in named_arrays(model).items():
        if statistic_float_dtype(name, array) is not None:  # its bits, viewed as floats
            tensor = jax_to_torch(array).view(torch_dtype_for(array, name))
            out[name] = tensor.clone() if copy else tensor
        else:
            out[name] = jax_to_torch(array, torch_dtype_for(array), copy=copy)
    return out
