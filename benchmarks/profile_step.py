"""Where a jitted ResNet18 train step spends its time on XLA:CPU, by kind of XLA operation.

    .venv/bin/python -m benchmarks.profile_step [--size 224 --batch 32] [--steps 2]

Runs `zoo.make_train_step` (SGD momentum) twice to warm up, then `--steps` steps under
`jax.profiler.trace`, and sums the trace's XLA op events per kind (the fusion name without
its number: `transpose_copy_fusion`, `multiply_reduce_fusion`, ...), in ms per step. Eigen's
convolutions run inside thunks the trace does not name, so they show as the gap between the
step time and the sum of the named ops. benchmarks/README.md has what it showed.
"""

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    model = zoo.train_mode(zoo.load("resnet18", framework="equinox", num_classes=10))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, 3, args.size, args.size), np.float32))
    labels = jnp.arange(args.batch) % 10
    optimizer = optax.sgd(0.01, momentum=0.9)
    step = zoo.make_train_step(optimizer)
    state = optimizer.init(zoo.trainable(model))

    def run(model, state):
        model, state, loss, _ = step(model, state, x, labels, jax.random.key(0))
        loss.block_until_ready()
        return model, state

    for _ in range(2):
        model, state = run(model, state)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            for _ in range(args.steps):
                model, state = run(model, state)
            step_ms = (time.perf_counter() - start) / args.steps * 1e3
        (trace_file,) = Path(trace_dir).rglob("*.trace.json.gz")
        events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]

    per_kind: collections.Counter[str] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        # Complete events of XLA ops only: not Python frames ($...), executor or dispatch spans.
        if event.get("ph") != "X" or name.startswith("$") or "Thunk" in name or "Pjit" in name:
            continue
        per_kind[re.sub(r"\.\d+$", "", name)] += event["dur"] / 1e3 / args.steps
    named = sum(per_kind.values())
    print(f"ResNet18 train step, {args.size}x{args.size} batch {args.batch}: {step_ms:.0f} ms/step")
    print("| XLA op kind | ms/step | share |")
    print("|---|---|---|")
    for kind, ms in per_kind.most_common(args.top):
        print(f"| {kind} | {ms:.1f} | {ms / step_ms:.0%} |")
    print(f"| (all named ops) | {named:.0f} | {named / step_ms:.0%} |")
    print(f"| (unnamed: convolutions, waits) | {step_ms - named:.0f} | {1 - named / step_ms:.0%} |")


if __name__ == "__main__":
    main()
