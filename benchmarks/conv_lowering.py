"""Every convolution shape of ResNet18, four ways: XLA as a plain `jax.jit` compiles it
(YNNPACK for the shapes it takes), XLA under `zoo.jit` (convolutions on Eigen; a per-jit
compiler option), the im2col matmul (`zoo.layers.Conv2d`'s lowering, under `zoo.jit`) and
torch eager. The JAX columns run NHWC, the layout the zoo's models compute in; torch runs
NCHW, as torchvision does. Forward, and forward + both gradients (input and weight), median ms.

    .venv/bin/python -m benchmarks.conv_lowering [--size 32 --batch 128] [--runs 7]

It backs two choices in `zoo/`: which convolutions `Conv2d` lowers to a matmul
(`zoo.layers.lowers_to_matmul`) and `zoo.CPU_COMPILER_OPTIONS` (see benchmarks/README.md).
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

import zoo
from benchmarks._common import median_ms
from zoo.layers._conv import _conv_as_matmul


def resnet18_convs(size: int) -> list[tuple[str, int, int, int, int, int, int]]:
    """(name, in, out, kernel, stride, padding, input map size) of each distinct conv."""
    rows = [("conv1", 3, 64, 7, 2, 3, size)]
    hw = ((size + 6 - 7) // 2 + 1 + 2 - 3) // 2 + 1  # after the stem conv and max-pool
    inplanes = 64
    for i, planes in enumerate([64, 128, 256, 512]):
        stride = 1 if i == 0 else 2
        rows.append((f"layer{i + 1}.0.conv1", inplanes, planes, 3, stride, 1, hw))
        out = (hw + 2 - 3) // stride + 1
        if stride != 1:
            rows.append((f"layer{i + 1}.0.downsample", inplanes, planes, 1, stride, 0, hw))
        rows.append((f"layer{i + 1} 3x3 (x3)", planes, planes, 3, 1, 1, out))
        hw, inplanes = out, planes
    return rows


def jax_cells(conv, x, w, runs: int, jit) -> tuple[float, float]:
    def loss(x, w):
        return jnp.vdot(conv(x, w), conv(x, w))

    fwd = jit(conv)
    grads = jit(jax.grad(loss, argnums=(0, 1)))
    return (
        median_ms(lambda: jax.block_until_ready(fwd(x, w)), runs),
        median_ms(lambda: jax.block_until_ready(grads(x, w)), runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    print(
        f"ResNet18 convolutions at {args.size}x{args.size}, batch {args.batch}: median ms, "
        "forward / forward + input and weight gradients"
    )
    print(
        "| conv | in->out, k, s, map | XLA (jax.jit) | XLA (zoo.jit) | matmul (zoo.jit) "
        "| torch eager | zoo uses |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, cin, cout, k, s, p, hw in resnet18_convs(args.size):
        x_np = rng.standard_normal((args.batch, cin, hw, hw), dtype=np.float32)
        w_np = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.05
        x, w = jnp.asarray(x_np.transpose(0, 2, 3, 1)), jnp.asarray(w_np)

        def xla(x, w, s=s, p=p):
            return jax.lax.conv_general_dilated(
                x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "OIHW", "NHWC")
            )

        def matmul(x, w, s=s, p=p):
            return _conv_as_matmul(x, w, (s, s), (p, p))

        np.testing.assert_allclose(xla(x, w), matmul(x, w), rtol=2e-4, atol=2e-4)
        cells = [
            jax_cells(xla, x, w, args.runs, jax.jit),
            jax_cells(xla, x, w, args.runs, zoo.jit),
            jax_cells(matmul, x, w, args.runs, zoo.jit),
        ]
        tconv = torch.nn.Conv2d(cin, cout, k, s, p, bias=False)
        tx = torch.from_numpy(x_np).requires_grad_()

        def torch_fwd(tconv=tconv, tx=tx):
            with torch.no_grad():
                tconv(tx)

        def torch_grads(tconv=tconv, tx=tx):
            out = tconv(tx)
            out.backward(2 * out.detach())

        cells.append((median_ms(torch_fwd, args.runs), median_ms(torch_grads, args.runs)))
        conv = zoo.layers.Conv2d(cin, cout, k, s, p, bias=False, key=jax.random.key(0))
        uses = "matmul" if zoo.layers.lowers_to_matmul(conv, hw, hw) else "XLA"
        text = " | ".join(f"{f:.2f} / {b:.2f}" for f, b in cells)
        print(f"| {name} | {cin}->{cout}, {k}x{k}, s{s}, {hw}x{hw} | {text} | {uses} |", flush=True)


if __name__ == "__main__":
    main()
