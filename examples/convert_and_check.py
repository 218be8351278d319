"""Convert a (randomly initialised) torchvision ResNet18 into the zoo, check that the two
compute the same function, and that the weights round-trip bit-exactly.

BatchNorm statistics are randomised first: torchvision's defaults (mean 0, variance 1) would
hide eval-mode mistakes. No download; pass `--weights IMAGENET1K_V1` to use torchvision's
pretrained checkpoint instead (downloaded through torch's hub cache).

    python examples/convert_and_check.py             # 224x224, batch 4
    python examples/convert_and_check.py --quick     # 64x64, batch 2 (also ZOO_EXAMPLE_QUICK=1)
"""

import argparse
import os
import time

import numpy as np


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Random affine parameters and running statistics for every BatchNorm of a torch module."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 100, (), generator=gen)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small input (the tests' run)")
    parser.add_argument("--weights", default=None, help="e.g. IMAGENET1K_V1 (downloads)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    # Imported after parsing, so `--help` answers without seconds of imports.
    import jax.numpy as jnp
    import torch
    import torchvision

    import weights_convert as wc
    import zoo

    quick = args.quick or os.environ.get("ZOO_EXAMPLE_QUICK") == "1"
    size, batch = (64, 2) if quick else (224, 4)
    torch.manual_seed(0)

    reference = torchvision.models.resnet18(weights=args.weights).eval()
    if args.weights is None:
        randomize_batchnorm(reference)
    state_dict = reference.state_dict()

    # torch -> zoo, strictly checked: every key, shape, dtype, finiteness.
    start = time.perf_counter()
    template = zoo.load("resnet18", framework="equinox", num_classes=1000)
    model, report = wc.load_state_dict(template, state_dict)
    print(f"converted {len(state_dict)} tensors in {time.perf_counter() - start:.2f} s: {report}")

    # Parity: eval logits of the JAX face, the torch face and torchvision.
    face = zoo.JaxModel(model, name="resnet18")
    module = zoo.load("resnet18", framework="torch", weights=state_dict).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected = reference(x).numpy()
        torch_face = module(x).numpy()
    jax_face = np.asarray(face(jnp.asarray(x.numpy())))
    diff_jax = float(np.abs(jax_face - expected).max())
    diff_torch = float(np.abs(torch_face - expected).max())
    print(f"eval logits {size}x{size}, batch {batch}: max abs diff vs torchvision")
    print(f"  JAX face   {diff_jax:.2e}")
    print(f"  torch face {diff_torch:.2e}")
    same_top1 = bool((jax_face.argmax(-1) == expected.argmax(-1)).all())

    # Round trip: zoo -> torch state_dict -> torchvision, bit-exact.
    back = wc.to_state_dict(model)
    exact = list(back) == list(state_dict) and all(
        torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state_dict.items()
    )
    torchvision.models.resnet18().load_state_dict(back, strict=True)
    print(f"round trip zoo -> state_dict: {len(back)} tensors, bit-exact: {exact}")

    ok = exact and same_top1 and max(diff_jax, diff_torch) <= args.tolerance
    print(
        f"{'PASS' if ok else 'FAIL'}: max abs diff {max(diff_jax, diff_torch):.2e} "
        f"(tolerance {args.tolerance:g}), round trip bit-exact: {exact}"
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
