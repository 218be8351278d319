"""The zoo in one minute: a ResNet18 as a jitted JAX function, the same model as a torch
module, a few training steps in each, and an export that loads back.

    python examples/quickstart.py            # ResNet18 at 64x64
    python examples/quickstart.py --quick    # the small CNN at 32x32 (also ZOO_EXAMPLE_QUICK=1)
"""

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the tests' run)")
    args = parser.parse_args()
    # Imported after parsing, so `--help` answers without seconds of imports.
    import jax
    import optax
    import torch

    import zoo

    quick = args.quick or os.environ.get("ZOO_EXAMPLE_QUICK") == "1"
    name, size, batch = ("cnn", 32, 4) if quick else ("resnet18", 64, 8)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    start = time.perf_counter()

    # 1. The JAX face: a jitted eval-mode call.
    face = zoo.load(name, framework="jax", num_classes=10)
    logits = face(x)
    print(f"JAX face: {name} logits {logits.shape}, predictions {np.asarray(logits.argmax(-1))}")

    # 2. Three jitted optax steps (forward, gradients, BatchNorm update, optimizer).
    optimizer = optax.sgd(0.05, momentum=0.9)
    step = zoo.make_train_step(optimizer)
    model = zoo.train_mode(face.model)
    opt_state = optimizer.init(zoo.trainable(model))
    key = jax.random.key(0)
    for i in range(3):
        key, sub = jax.random.split(key)
        model, opt_state, loss, _ = step(model, opt_state, x, labels, sub)
        print(f"  JAX step {i}: loss {float(loss):.4f}")
    face = face.replace(model)

    # 3. The torch face: an nn.Module with the trained weights (torchvision's keys).
    module = zoo.load(name, framework="torch", weights=zoo.to_torchvision(face).state_dict())
    module.eval()  # torch builds models in train mode; compare in eval mode
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    with torch.no_grad():
        diff = float((module(xt) - torch.tensor(np.asarray(face(x)))).abs().max())
    print(f"torch face: same function as the JAX face, max abs diff {diff:.1e}")
    module.train()
    sgd = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    for i in range(3):
        sgd.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(xt), yt)
        loss.backward()  # a jitted JAX VJP
        sgd.step()
        print(f"  torch step {i}: loss {loss.item():.4f}")
    module.eval()

    # 4. Export and load back.
    with tempfile.TemporaryDirectory() as tmp:
        folder = zoo.save_pretrained(module, os.path.join(tmp, name))
        again = zoo.load(f"local-dir:{folder}")
        with torch.no_grad():
            same = np.array_equal(np.asarray(again(x)), module(xt).numpy())
        print(f"exported to {sorted(p.name for p in folder.iterdir())}; reloaded equal: {same}")
    assert diff < 1e-4 and same
    print(f"quickstart OK ({name}, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
