"""`zoo.jit`: `eqx.filter_jit` with the XLA options under which the zoo's models run fastest, and
`zoo.fusion_barrier`, which keeps XLA:CPU from re-fusing a value's producers into its users."""

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default; for ResNet's 3x3
# convolutions its own Eigen kernels are 1.3-2x faster (forward and both gradients; see
# benchmarks/README.md). Dots stay with YNNPACK. These are per-computation DebugOptions:
# no process-wide flag is changed. Off the CPU, `jit` adds nothing.
CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
"""The `compiler_options` `zoo.jit` adds: XLA:CPU keeps convolutions on its Eigen kernels
(YNNPACK only for dots)."""


def _is_traced(args: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


@functools.cache
def _cpu_options_apply() -> bool:
    """Whether `CPU_COMPILER_OPTIONS` apply here: the default backend is the CPU, and this
    jaxlib knows the option (older ones reject unknown option names at compile time).
    Asked at the first call of a `zoo.jit` function, never at import, so importing the zoo
    does not start a JAX backend."""
    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(lambda: 0, compiler_options=CPU_COMPILER_OPTIONS).lower().compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def jit(
    fun: Callable[..., Any],
    *,
    donate_argnums: int | Sequence[int] = (),
    compiler_options: dict[str, Any] | None = None,
) -> Any:
    """`eqx.filter_jit(fun)` with `CPU_COMPILER_OPTIONS` added to its `compiler_options`
    (options given by the caller win).

    As in `eqx.filter_jit`, every JAX or NumPy array in the arguments is traced and every
    other leaf (the layers' `inference` flags, Python numbers, functions inside
    `eqx.nn.Lambda`) is held static, so models mixing zoo and `eqx.nn` layers work; outputs
    may hold non-array leaves too (a model returned by a train step).

    Every jitted entry point of the zoo (the JAX face, the torch face, `zoo.make_train_step`,
    the Lightning steps) is built with it; use it for your own functions over zoo models to
    get the same CPU speed. Under a plain `eqx.filter_jit` the models compute the same
    function.

    JAX accepts compiler options only on the outermost computation, so a call made while
    tracing (inside your own `jax.jit`, `jax.grad` or `jax.vmap`) runs as a plain
    `eqx.filter_jit` and the outer transformation's options apply. Off the CPU, or with a
    jaxlib that lacks the option, it is a plain `eqx.filter_jit` too.

    **Arguments:**

    - `fun`: the function to compile.
    - `donate_argnums`: positional arguments whose arrays XLA may reuse for the outputs (do
      not use them after the call).
    - `compiler_options`: more XLA options for the top-level computation.

    **Returns:** the jitted function; `.lower(...)` lowers the top-level version.
    """
    donated = frozenset((donate_argnums,) if isinstance(donate_argnums, int) else donate_argnums)
    caller_options = dict(compiler_options or {})

    def split(args: tuple) -> tuple[tuple, tuple]:
        kept = tuple(None if i in donated else a for i, a in enumerate(args))
        given = tuple(a if i in donated else None for i, a in enumerate(args))
        return kept, given

    def inner(kept_and_kwargs: tuple, given: tuple) -> Any:
        kept, kwargs = kept_and_kwargs
        args = [g if i in donated else k for i, (k, g) in enumerate(zip(kept, given, strict=True))]
        return fun(*args, **kwargs)

    # eqx.filter_jit donates every argument but the first: the kept ones travel there.
    donate = "all-except-first" if donated else "none"
    nested = eqx.filter_jit(inner, donate=donate)

    @functools.cache
    def top_level() -> Any:
        if not _cpu_options_apply():
            return eqx.filter_jit(inner, donate=donate, compiler_options=caller_options or None)
        options = CPU_COMPILER_OPTIONS | caller_options
        return eqx.filter_jit(inner, donate=donate, compiler_options=options)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        kept, given = split(args)
        compiled = nested if _is_traced((args, kwargs)) else top_level()
        return compiled((kept, kwargs), given)

    def lower(*args: Any, **kwargs: Any) -> "Lowered":
        kept, given = split(args)
        return Lowered(top_level().lower((kept, kwargs), given), split)

    call.lower = lower  # type: ignore[attr-defined]
    return call


class Lowered:
    """`zoo.jit(f).lower(*args)`: as `jax.stages.Lowered` (`as_text`, `compile`), over
    the same arguments as `f`."""

    def __init__(self, lowered: Any, split: Callable[[tuple], tuple[tuple, tuple]]):
        self._lowered, self._split = lowered, split

    def as_text(self) -> str:
        return self._lowered.as_text()

    def compile(self, compiler_options: dict[str, Any] | None = None) -> "Compiled":
        return Compiled(self._lowered.compile(compiler_options=compiler_options), self._split)


class Compiled:
    """A compiled `zoo.jit` function: call it as the original; `as_text()` is its HLO."""

    def __init__(self, compiled: Any, split: Callable[[tuple], tuple[tuple, tuple]]):
        self._compiled, self._split = compiled, split

    def as_text(self) -> str:
        return self._compiled.compiled.as_text()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kept, given = self._split(args)
        return self._compiled((kept, kwargs), given)


def _identity(x: Any) -> Any:
    return x


def _cpu_fusion_barrier(x: jax.Array) -> jax.Array:
    if x.size == 0:
        return x
    # XLA's fusion passes never cross a conditional's boundary. Both branches return `x`,
    # so the predicate (which the compiler cannot evaluate) does not change the result; the
    # copy keeps JAX from forwarding `x` around a conditional whose branches both forward it.
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, _identity, jnp.copy, x)


def fusion_barrier(x: jax.Array) -> jax.Array:
    """Return `x` unchanged, computed once: XLA:CPU may not recompute its producers inside
    the operations that use it.

    Why: XLA fuses cheap elementwise producers (BatchNorm, ReLU, residual adds) into every
    consumer, duplicating them. In a ResNet's backward pass the consumers include the
    transposes that feed each weight gradient; XLA:CPU emits those as plain loops, and with
    a whole residual chain recomputed in them they cost up to 200 ms each. Materialising
    each block's output takes a ResNet18 train step at 224x224 batch 32 from ~2.8 to ~2.5 s
    (benchmarks/README.md). `jax.lax.optimization_barrier` does not help here: XLA:CPU
    removes it before fusion.

    The value, its gradient and forward-mode derivatives are those of the identity. Off the
    CPU this is the identity (no conditional is compiled); under `jax.vmap` with a batched
    `x` it becomes a `select` of `x` and its copy: the barrier may be lost, never the result.

    **Arguments:**

    - `x`: any array.

    **Returns:** `x`.
    """
    return jax.lax.platform_dependent(x, cpu=_cpu_fusion_barrier, default=_identity)


__all__ = ["CPU_COMPILER_OPTIONS", "enable_compilation_cache", "fusion_barrier", "jit"]


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, so a second process compiles nothing the
    first compiled: in `$ZOO_COMPILATION_CACHE`, else `$XDG_CACHE_HOME/equizoo/jax` (default
    `~/.cache/equizoo/jax`). Called when a model is loaded; a cache directory the user
    configured (`jax_compilation_cache_dir`, `JAX_COMPILATION_CACHE_DIR`) is kept, and
    `ZOO_COMPILATION_CACHE=0` turns this off.

    **Returns:** the cache directory in use, or `None`.
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    choice = os.environ.get("ZOO_COMPILATION_CACHE", "")
    if choice.lower() in ("0", "off", "false", "no"):
        return None
    if not choice:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        choice = os.path.join(base, "equizoo", "jax")
    jax.config.update("jax_compilation_cache_dir", choice)
    return choice
