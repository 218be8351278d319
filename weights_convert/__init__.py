"""Map torch state_dicts into Equinox models and back, by name, verified.

The naming half (`named_arrays`, `split_params_buffers`, ...) and the reports import no
torch; the conversions do, on first use, so JAX-only code that names arrays (the zoo's JAX
face) does not pay torch's import.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._names import (
    is_buffer_name as is_buffer_name,
    named_arrays as named_arrays,
    named_values as named_values,
    replace_arrays as replace_arrays,
    split_params_buffers as split_params_buffers,
    statistic_float_dtype as statistic_float_dtype,
    strip_prefixes as strip_prefixes,
)
from ._report import (
    ConversionError as ConversionError,
    LoadReport as LoadReport,
    LoadWarning as LoadWarning,
)

if TYPE_CHECKING:
    from ._adapt import adapt_input_conv as adapt_input_conv
    from ._convert import (
        jax_to_torch as jax_to_torch,
        load_state_dict as load_state_dict,
        non_finite_keys as non_finite_keys,
        tensors_to_jax as tensors_to_jax,
        to_state_dict as to_state_dict,
        torch_dtype_for as torch_dtype_for,
        torch_to_jax as torch_to_jax,
        unusable_tensor as unusable_tensor,
    )

_TORCH_SOURCES = {"adapt_input_conv": "._adapt"} | dict.fromkeys(
    (
        "jax_to_torch",
        "load_state_dict",
        "non_finite_keys",
        "tensors_to_jax",
        "to_state_dict",
        "torch_dtype_for",
        "torch_to_jax",
        "unusable_tensor",
    ),
    "._convert",
)


def __getattr__(name: str) -> Any:  # PEP 562: the torch-facing names load on first use
    if name not in _TORCH_SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_TORCH_SOURCES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_TORCH_SOURCES})
