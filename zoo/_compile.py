"""`zoo.jit`: `jax.jit` with the XLA options under which the zoo's models run fastest."""

import functools
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
"""The `compiler_options` `zoo.jit` adds: XLA:CPU keeps convolutions on its Eigen kernels
(YNNPACK only for dots)."""


def _is_traced(args: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


def jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Any:
    """`jax.jit(fun, **jit_kwargs)` with `CPU_COMPILER_OPTIONS` added to its
    `compiler_options` (options given by the caller win).

    Every jitted entry point of the zoo (the JAX face, the torch face, `zoo.make_train_step`,
    the Lightning steps) is built with it; use it for your own functions over zoo models to
    get the same CPU speed. Under a plain `jax.jit` the models compute the same function.

    JAX accepts compiler options only on the outermost computation, so a call made while
    tracing (inside your own `jax.jit`, `jax.grad` or `jax.vmap`) runs as a plain `jax.jit`
    and the outer transformation's options apply.

    **Arguments:**

    - `fun`: the function to compile.
    - `**jit_kwargs`: anything `jax.jit` takes (`static_argnums`, `donate_argnums`, ...).

    **Returns:** the jitted function; `.lower(...)` lowers the top-level version.
    """
    options = CPU_COMPILER_OPTIONS | dict(jit_kwargs.pop("compiler_options", None) or {})
    top_level = jax.jit(fun, compiler_options=options, **jit_kwargs)
    nested = jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        return (nested if _is_traced((args, kwargs)) else top_level)(*args, **kwargs)

    call.lower = top_level.lower  # type: ignore[attr-defined]
    return call


__all__ = ["CPU_COMPILER_OPTIONS", "jit"]
