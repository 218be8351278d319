"""Torch-face overhead over the bare jitted JAX function (median ms), no-grad and fwd+bwd.

Run: `python -m benchmarks.face_overhead` (2 threads; about a minute on a 2-core CPU).
"""

import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import torch

import zoo


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(name: str, shape: tuple[int, ...], repeats: int) -> None:
    face, jax_face = zoo.load(name, framework="torch"), zoo.load(name)
    x = torch.randn(*shape)
    xj = jnp.asarray(x.numpy())
    params, static = eqx.partition(jax_face.model, eqx.is_inexact_array)
    grad = jax.jit(lambda p, x: jax.grad(lambda p: eqx.combine(p, static)(x)[0].sum())(p))

    def torch_no_grad() -> None:
        with torch.no_grad():
            face(x)

    def torch_backward() -> None:
        face.zero_grad(set_to_none=True)
        face(x).sum().backward()

    jax_fwd = median_ms(lambda: jax_face(xj).block_until_ready(), repeats)
    torch_fwd = median_ms(torch_no_grad, repeats)
    jax_bwd = median_ms(lambda: jax.block_until_ready(grad(params, xj)), max(3, repeats // 2))
    torch_bwd = median_ms(torch_backward, max(3, repeats // 2))
    print(
        f"{name} {shape}: no-grad jax {jax_fwd:.2f} ms, torch face {torch_fwd:.2f} ms "
        f"({(torch_fwd / jax_fwd - 1) * 100:+.1f}%, {torch_fwd - jax_fwd:+.2f} ms); "
        f"fwd+bwd jax {jax_bwd:.1f} ms, torch face {torch_bwd:.1f} ms "
        f"({(torch_bwd / jax_bwd - 1) * 100:+.1f}%)"
    )


def main() -> None:
    torch.set_num_threads(2)
    measure("cnn", (1, 3, 32, 32), 50)
    measure("resnet18", (1, 3, 224, 224), 15)
    measure("resnet18", (32, 3, 224, 224), 5)


if __name__ == "__main__":
    main()
