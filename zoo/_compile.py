"""`zoo.jit`: `jax.jit` with the XLA options under which the zoo's models run fastest."""

from collections.abc import Callable
from typing import Any

import jax

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default; for ResNet's 3x3
# convolutions its own Eigen kernels are 1.3-2x faster (forward and both gradients; see
# benchmarks/README.md). Dots stay with YNNPACK. These are per-computation DebugOptions:
# no process-wide flag is changed, and backends other than CPU ignore `xla_cpu_*` fields.
CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Any:
    """`jax.jit(fun, **jit_kwargs)` with `CPU_COMPILER_OPTIONS` added to its
    `compiler_options` (options given by the caller win).

    Every jitted entry point of the zoo (the JAX face, the torch face, `zoo.make_train_step`,
    the Lightning steps) is built with it; use it for your own functions over zoo models to
    get the same CPU speed. Under a plain `jax.jit` the models are just as correct.

    **Arguments:**

    - `fun`: the function to compile.
    - `**jit_kwargs`: anything `jax.jit` takes (`static_argnums`, `donate_argnums`, ...).

    **Returns:** the jitted function.
    """
    options = CPU_COMPILER_OPTIONS | dict(jit_kwargs.pop("compiler_options", None) or {})
    return jax.jit(fun, compiler_options=options, **jit_kwargs)


__all__ = ["CPU_COMPILER_OPTIONS", "jit"]
