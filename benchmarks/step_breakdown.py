"""Where a training step's time goes, in milliseconds (median of 10 after 3 warm-up calls), at
32x32: torchvision's model (or the CNN's torch twin) against the zoo's torch face, its fused
step (`zoo.fused_cross_entropy`), the same model as bare jitted JAX (`jax.value_and_grad` of
the Equinox model, no torch anywhere), and the torch SGD step that follows in Lightning.

    python -m benchmarks.step_breakdown [--models cnn resnet18] [--batches 32 128]

The numbers answer "is the face slower than torch because of the face or because of XLA's
kernels?": the face's cost is the gap between the face's columns and bare JAX; the kernels'
is the gap between bare JAX and torch. Runs in this process with `--threads` threads.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import available_cpus, pin_threads


def median_ms(fn: Callable[[], Any], runs: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def breakdown(name: str, batch: int) -> dict[str, float]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    import zoo

    channels = 1 if name == "cnn" else 3
    face = zoo.load(name, framework="torch", num_classes=10, in_chans=channels).train()
    twin = zoo.to_torchvision(face).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    optimizer = torch.optim.SGD(face.parameters(), lr=1e-3, momentum=0.9)

    def twin_step():
        twin.zero_grad()
        F.cross_entropy(twin(x), y).backward()

    def face_step():
        face.zero_grad()
        F.cross_entropy(face(x), y).backward()

    def fused_step():
        face.zero_grad()
        zoo.fused_cross_entropy(face, x, y)[0].backward()

    model = zoo.train_mode(face.to_equinox())
    params, static = eqx.partition(model, eqx.is_inexact_array)
    xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())

    @zoo.jit
    def value_and_grad(params, xj, yj):
        def loss(p):
            logits, _ = eqx.combine(p, static)(xj, key=jax.random.key(0))
            return zoo.cross_entropy(logits, yj)

        return jax.value_and_grad(loss)(params)

    return {
        "torch model, forward + backward": median_ms(twin_step),
        "torch face, forward + backward": median_ms(face_step),
        "fused_cross_entropy + backward": median_ms(fused_step),
        "bare JAX value_and_grad": median_ms(
            lambda: jax.block_until_ready(value_and_grad(params, xj, yj))
        ),
        "torch SGD step": median_ms(optimizer.step),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    opts = parser.parse_args(argv)
    import os

    from benchmarks._common import THREADS_ENV, set_torch_threads

    os.environ[THREADS_ENV] = str(opts.threads)
    set_torch_threads(pin_threads())
    rows = [(m, b, breakdown(m, b)) for m in opts.models for b in opts.batches]
    columns = list(rows[0][2])
    print("| model | batch | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for model, batch, r in rows:
        print(f"| {model} | {batch} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
