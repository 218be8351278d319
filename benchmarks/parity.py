"""The model table of docs/models.md: every registered model's parameter count and its
measured eval parity with its torch twin (torchvision's model), in fp32 and float64.

    python -m benchmarks.parity [--models resnet18,convnext_tiny] [--max-params 150]
                                [--out artifacts/parity.md]

Each model gets random weights (none constant) and randomised BatchNorm statistics (the
tests' recipe, `tests/conftest.py`), and a batch of 2 at its `test_cfg["input_size"]`, built
with its `test_cfg["kwargs"]` (a ViT's `image_size`). Columns: the zoo's
fp32 logits against torch's fp32 logits, torch's own fp32 error (its fp32 against its fp64
logits: the scale of rounding at that depth) and the zoo's float64 logits against torch's
float64 logits (the same computation: ~1e-13). Models over `--max-params` million
parameters get their count only (their float64 parity runs with `pytest -m large`).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: one recipe for both

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import (  # noqa: E402
    eval_logits,
    randomize_batchnorm,
    randomize_parameters,
    to_float64,
)

import zoo  # noqa: E402


def parameter_count(name: str) -> int:
    """Parameters of the model's torchvision state_dict (buffers excluded), read from
    shapes alone: nothing is drawn."""
    import weights_convert as wc

    template = eqx.filter_eval_shape(zoo.get_model_info(name).builder, key=jax.random.key(0))
    return sum(
        int(np.prod(a.shape))
        for key, a in wc.named_arrays(template).items()
        if not wc.is_buffer_name(key)
    )


def measure(name: str) -> dict[str, float]:
    info = zoo.get_model_info(name)
    channels, height, width = info.test_cfg["input_size"]
    options = dict(info.test_cfg.get("kwargs", {}))  # what the test size needs (image_size)
    torch.manual_seed(0)
    reference = randomize_parameters(info.torch_builder(**options), 0)
    reference = randomize_batchnorm(reference, 0, size=(height, width)).eval()
    model = zoo.load(name, framework="equinox", weights=reference.state_dict(), **options)
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref32 = reference(x).numpy()
        ref64 = reference.double()(x.double()).numpy()
    ours32 = np.asarray(eval_logits(model, jnp.asarray(x.numpy())))
    with jax.enable_x64(True):
        ours64 = np.asarray(eval_logits(to_float64(model), jnp.asarray(x.double().numpy())))
    return {
        "fp32": float(np.abs(ours32 - ref32).max()),
        "torch_fp32_error": float(np.abs(ref32 - ref64).max()),
        "fp64": float(np.abs(ours64 - ref64).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated (default: every registered model)")
    parser.add_argument("--max-params", type=float, default=150.0, help="millions")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "parity.md")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else zoo.list_models()
    lines = [
        "| model | parameters | input | fp32 vs torch fp32 | torch's own fp32 error | "
        "float64 vs torch float64 |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        count = parameter_count(name)
        size = "x".join(map(str, zoo.get_model_info(name).test_cfg["input_size"][1:]))
        if count > args.max_params * 1e6:
            cells = ["(`pytest -m large`)"] * 3
        else:
            start = time.perf_counter()
            r = measure(name)
            cells = [f"{r['fp32']:.1e}", f"{r['torch_fp32_error']:.1e}", f"{r['fp64']:.1e}"]
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        lines.append(f"| {name} | {count / 1e6:.1f}M | {size} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
