"""Proposal probe: 3x3 stride-1 convolutions of ResNet18 on a 32x32 input (8x8 down to 1x1
maps), XLA's convolution against an im2col lowering (nine shifted slices + one matmul).

    .venv/bin/python -m benchmarks.conv_lowering [--batch 128] [--runs 10]

Standalone: it changes nothing in `zoo/`; the numbers go into benchmarks/README.md.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [(64, 8), (128, 4), (256, 2), (512, 1)]  # (channels, map size) of layer1..layer4


def xla_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))


def im2col_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same 3x3/pad-1 convolution as one (B*H*W, 9C) @ (9C, O) matmul."""
    b, c, h, wd = x.shape
    if h == wd == 1:  # only the centre tap sees data: a 1x1 convolution
        return jnp.einsum("bc,oc->bo", x[:, :, 0, 0], w[:, :, 1, 1])[:, :, None, None]
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = jnp.stack([xp[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], 2)
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(b * h * wd, c * 9)  # (B*H*W, C*9)
    out = cols @ w.reshape(w.shape[0], c * 9).T
    return out.reshape(b, h, wd, -1).transpose(0, 3, 1, 2)


def bench(fn: Callable[..., object], args: tuple, runs: int) -> float:
    """Median ms of `fn(*args)` after two untimed calls."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| channels, map | XLA fwd ms | im2col fwd ms | XLA fwd+bwd ms | im2col fwd+bwd ms |")
    print("|---|---|---|---|---|")
    for c, hw in SHAPES:
        x = jnp.asarray(rng.standard_normal((args.batch, c, hw, hw), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.05)
        np.testing.assert_allclose(xla_conv(x, w), im2col_conv(x, w), rtol=1e-4, atol=1e-4)
        ms = []
        for conv in (xla_conv, im2col_conv):
            ms.append(bench(jax.jit(conv), (x, w), args.runs))
        for conv in (xla_conv, im2col_conv):
            grad = jax.jit(jax.grad(lambda x, w, conv=conv: conv(x, w).sum(), argnums=(0, 1)))
            ms.append(bench(grad, (x, w), args.runs))
        print(f"| {c}, {hw}x{hw} | " + " | ".join(f"{m:.2f}" for m in ms) + " |")


if __name__ == "__main__":
    main()
