"""Input validation shared by the models: fail before any computation, and say what was expected."""

import jax.numpy as jnp
from jaxtyping import Array


def check_image_batch(x: Array, in_chans: int, model_name: str) -> None:
    """Raise unless `x` is a floating NCHW batch with `in_chans` channels."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        got = f"shape {tuple(shape)}" if shape is not None else type(x).__name__
        hint = " (add a batch axis with x[None])" if shape is not None and len(shape) == 3 else ""
        raise ValueError(
            f"{model_name} expects an NCHW batch of shape (batch, {in_chans}, height, width); "
            f"got {got}{hint}."
        )
    if shape[1] != in_chans:
        nhwc = shape[-1] == in_chans
        hint = " (NHWC input? transpose with x.transpose(0, 3, 1, 2))" if nhwc else ""
        raise ValueError(
            f"{model_name} expects {in_chans} input channels at axis 1; got shape "
            f"{tuple(shape)}{hint}. Build the model with in_chans={shape[1]} to change it."
        )
    is_float = getattr(x, "is_floating_point", None)  # a torch tensor
    if not (is_float() if callable(is_float) else jnp.issubdtype(x.dtype, jnp.floating)):
        raise TypeError(
            f"{model_name} expects floating-point images; got dtype {x.dtype}. Convert and "
            "normalise first, e.g. x.astype(jnp.float32) / 255 (x.float() / 255 in torch)."
        )
