"""Torch-face overhead over the bare jitted JAX function (median ms), no-grad and fwd+bwd.

    python -m benchmarks.face_overhead [--quick]

Also a section of `python -m benchmarks.run`. Threads: what the parent sets (2 when run
alone on this machine). Cases: the CNN at batch 1 (the fixed cost per call), ResNet18 at
batch 1 and 32 (224x224).
"""

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import torch

import zoo
from benchmarks._common import emit, median_ms


def measure(name: str, shape: tuple[int, ...], repeats: int) -> dict:
    face, jax_face = zoo.load(name, framework="torch"), zoo.load(name)
    x = torch.randn(*shape)
    xj = jnp.asarray(x.numpy())
    # The bare function: the jitted eval forward over the same OIHW weights the torch face
    # holds (the JAX face's own call reads a memoised HWIO copy; benchmarks/README.md).
    bare_model, bare_forward = zoo.eval_mode(jax_face.model), zoo.jit(zoo.forward)
    params, static = eqx.partition(jax_face.model, eqx.is_inexact_array)
    grad = zoo.jit(lambda p, x: jax.grad(lambda p: eqx.combine(p, static)(x)[0].sum())(p))

    def torch_no_grad() -> None:
        with torch.no_grad():
            face(x)

    def torch_backward() -> None:
        face.zero_grad(set_to_none=True)
        face(x).sum().backward()

    backward_repeats = max(3, repeats // 2)
    row = {
        "model": name,
        "shape": list(shape),
        "jax_no_grad_ms": median_ms(
            lambda: bare_forward(bare_model, xj).block_until_ready(), repeats
        ),
        "face_no_grad_ms": median_ms(torch_no_grad, repeats),
        "jax_grad_ms": median_ms(lambda: jax.block_until_ready(grad(params, xj)), backward_repeats),
        "face_grad_ms": median_ms(torch_backward, backward_repeats),
    }
    print(
        f"{name} {shape}: no-grad jax {row['jax_no_grad_ms']:.2f} ms, torch face "
        f"{row['face_no_grad_ms']:.2f} ms; fwd+bwd jax {row['jax_grad_ms']:.1f} ms, "
        f"torch face {row['face_grad_ms']:.1f} ms",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CNN only, few repeats")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    rows = [measure("cnn", (1, 3, 32, 32), 5 if args.quick else 50)]
    if not args.quick:
        rows.append(measure("resnet18", (1, 3, 224, 224), 15))
        rows.append(measure("resnet18", (32, 3, 224, 224), 5))
    emit(rows)


if __name__ == "__main__":
    main()
