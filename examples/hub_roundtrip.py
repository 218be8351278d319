"""Export a zoo model to a Hub-ready folder and load it back, in both faces and in plain
torchvision, checking that every path computes bit-identical logits.

The folder (`model.safetensors`, `config.json`, `README.md`) is what `zoo.push_to_hub` uploads;
pushing needs a Hugging Face token and the network, so it is only printed here, not run.

    python examples/hub_roundtrip.py                 # ResNet18, 5 classes, 64x64
    python examples/hub_roundtrip.py --quick         # the small CNN (also ZOO_EXAMPLE_QUICK=1)
    python examples/hub_roundtrip.py --out exported  # keep the folder
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small CNN (the tests' run)")
    parser.add_argument("--out", default=None, help="folder to export to (default: temporary)")
    args = parser.parse_args()
    # Imported after parsing, so `--help` answers without seconds of imports.
    import jax
    import safetensors.torch
    import torch

    import zoo

    quick = args.quick or os.environ.get("ZOO_EXAMPLE_QUICK") == "1"
    name, size = ("cnn", 32) if quick else ("resnet18", 64)
    labels = ["cat", "dog", "bird", "fish", "frog"]

    # A model that is not the default initialisation, with a 5-class head.
    face = zoo.load(name, framework="jax", num_classes=len(labels), key=jax.random.key(42))
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    expected = np.asarray(face(x))

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(args.out) if args.out else Path(tmp) / f"{name}-pets"
        folder = zoo.save_pretrained(
            face, target, label_names=labels, license="apache-2.0", overwrite=True
        )
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        print(f"exported {name} to {folder}: {files}")
        config = json.loads((folder / "config.json").read_text())
        print(
            f"config.json: architecture={config['architecture']!r}, "
            f"num_classes={config['num_classes']}, label_names={config.get('label_names')}"
        )

        source = f"local-dir:{folder}"
        jax_face = zoo.load(source)  # the architecture and options come from config.json
        torch_face = zoo.load(source, framework="torch").eval()  # built in train mode
        # The weights file is plain: torch's own model (torchvision's ResNet, or the CNN's
        # torch twin) loads it with load_state_dict, no zoo involved.
        plain = zoo.get_model_info(name).torch_builder(num_classes=len(labels)).eval()
        plain.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"))

        xt = torch.from_numpy(x)
        with torch.no_grad():
            results = {
                "zoo.load (JAX face)": np.asarray(jax_face(x)),
                "zoo.load (torch face)": torch_face(xt).numpy(),
            }
            torch_ref = plain(xt).numpy()
        for label, value in results.items():
            print(f"  {label:24s} bit-identical: {np.array_equal(value, expected)}")
        torch_diff = float(np.abs(torch_ref - expected).max())
        print(f"  {'plain torch module':24s} max abs diff {torch_diff:.1e} (torch's kernels)")

    print(
        f"to publish: zoo.push_to_hub(face, 'your-org/{name}-pets', label_names=...)"
        f"  or  zoo push {args.out or 'EXPORTED_DIR'} your-org/{name}-pets"
    )
    ok = all(np.array_equal(v, expected) for v in results.values()) and torch_diff < 1e-4
    print(f"{'PASS' if ok else 'FAIL'}: round trip through {folder.name} is bit-identical")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
