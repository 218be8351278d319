"""Torch-face overhead over the bare jitted JAX function (median ms), no-grad and fwd+bwd,
and what freezing a backbone saves (train steps, torch face beside torchvision eager).

    python -m benchmarks.face_overhead [--quick]

Also a section of `python -m benchmarks.run`. Threads: what the parent sets (2 when run
alone on this machine). Cases: the CNN at batch 1 (the fixed cost per call), ResNet18 at
batch 1 and 32 (224x224); frozen-backbone steps of ResNet18 at batch 32, 64x64.
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
    face, jax_face = zoo.load(name, framework="torch").eval(), zoo.load(name)
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


def frozen_backbone(name: str, shape: tuple[int, ...], repeats: int) -> dict:
    """Train steps (forward, backward, SGD) with every parameter trainable and with only the
    classifier trainable, for the torch face and torchvision's eager model."""
    import torchvision

    face = zoo.load(name, framework="torch")
    eager = getattr(torchvision.models, name)()
    eager.load_state_dict(face.state_dict())
    x, y = torch.randn(*shape), torch.randint(0, 1000, (shape[0],))
    classifier = zoo.get_model_info(name).classifier
    row: dict = {"model": name, "shape": list(shape)}
    for label, model in (("face", face), ("torch", eager)):
        for frozen in (False, True):
            for pname, p in model.named_parameters():
                p.requires_grad_(not frozen or pname.startswith(classifier))
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

            def step(model=model, opt=opt) -> None:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

            key = f"{label}_{'frozen' if frozen else 'full'}_step_ms"
            row[key] = median_ms(step, repeats)
    print(
        f"{name} {shape} train step: torch face full {row['face_full_step_ms']:.0f} ms, "
        f"frozen backbone {row['face_frozen_step_ms']:.0f} ms; torchvision eager full "
        f"{row['torch_full_step_ms']:.0f} ms, frozen {row['torch_frozen_step_ms']:.0f} ms",
        flush=True,
    )
    return row


def first_calls(name: str, size: int) -> dict:
    """The first no-grad call at batch sizes the face has not seen (what a new batch size
    stalls), beside torchvision eager's first call at that size."""
    import time

    import torchvision

    face = zoo.load(name, framework="torch").eval()
    eager = getattr(torchvision.models, name)().eval()
    row: dict = {"model": name, "size": size}
    for batch in (3, 5):
        x = torch.randn(batch, 3, size, size)
        for label, model in (("face", face), ("torch", eager)):
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            row[f"{label}_first_call_batch{batch}_ms"] = (time.perf_counter() - start) * 1e3
    print(
        f"{name} {size}x{size} first call at a new batch size: torch face "
        f"{row['face_first_call_batch3_ms']:.0f} / {row['face_first_call_batch5_ms']:.0f} ms, "
        f"torchvision eager {row['torch_first_call_batch3_ms']:.0f} / "
        f"{row['torch_first_call_batch5_ms']:.0f} ms (batch 3 / 5; JAX compile cache: "
        f"{jax.config.jax_compilation_cache_dir or 'off'})",
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
        rows.append(frozen_backbone("resnet18", (32, 3, 64, 64), 5))
        rows.append(first_calls("resnet18", 224))
    emit(rows)


if __name__ == "__main__":
    main()
