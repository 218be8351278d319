"""Map torch state_dicts into Equinox models and back, by name, verified."""

from ._adapt import adapt_input_conv as adapt_input_conv
from ._convert import (
    jax_to_torch as jax_to_torch,
    load_state_dict as load_state_dict,
    tensors_to_jax as tensors_to_jax,
    to_state_dict as to_state_dict,
    torch_dtype_for as torch_dtype_for,
    torch_to_jax as torch_to_jax,
)
from ._names import (
    is_buffer_name as is_buffer_name,
    named_arrays as named_arrays,
    replace_arrays as replace_arrays,
    split_params_buffers as split_params_buffers,
)
from ._report import ConversionError as ConversionError, LoadReport as LoadReport
