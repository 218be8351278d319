"""The `inference` flag as a Python bool, with an error that says how a flag became an array."""

import jax


def inference_flag(value: object, layer: str) -> bool:
    """`value` (a layer's `inference` leaf) as a bool.

    **Raises:** `TypeError` when it is a traced array: the model went through `jax.jit` or
    `jax.device_put` whole, which turn its Python-bool flags into arrays.
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{layer}.inference is a traced array, so train/eval mode cannot be chosen: the "
            "model's Python-bool flags were made arrays, by a plain jax.jit over the model or "
            "by jax.device_put of the whole model. Use eqx.filter_jit (or zoo.jit), and put "
            "only the arrays on devices: eqx.combine(jax.device_put(eqx.filter(model, "
            "eqx.is_array), sharding), eqx.filter(model, eqx.is_array, inverse=True))."
        )
    return bool(value)
