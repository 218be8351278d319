"""Worker: images/s of one model under one framework, for a list of cases, in its own process.

`python -m benchmarks._throughput --model resnet18 --frameworks jax --device cpu --cases
'[...]'`; prints one `BENCH_RESULT` JSON line (a list of rows). Several frameworks run one
after the other. `--model` is any registered name: the torch side is the registry's torch
twin (torchvision's model, or the zoo's own twin for the CNN), the JAX side its builder.

A case's `dtype` is `fp32` or `bf16`. bf16 is mixed precision on both sides, the way each
framework's users run it: torch under `torch.autocast(device, torch.bfloat16)` (bf16
convolutions and matmuls, float32 weights, BatchNorm and loss), the JAX models on a bf16
batch (the zoo's layers cast their float32 weights to the batch's dtype and keep BatchNorm's
statistics and the loss in float32). The torch face gets the bf16 batch too, since autocast
cannot reach its JAX computation.
"""

from benchmarks._common import pin_threads

THREADS = pin_threads()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import emit, measure, set_torch_threads, summarize  # noqa: E402

LR, MOMENTUM, NUM_CLASSES = 0.01, 0.9, 10
Step = Callable[[], None]


def _data(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    return x, rng.integers(0, NUM_CLASSES, batch).astype(np.int64)


def _options(model: str) -> dict:
    """Build options: `num_classes`, and no auxiliary classifiers (GoogLeNet's and Inception
    v3's: torchvision's train-mode call returns a namedtuple with them, and Inception's needs
    299x299 inputs), so every row times one network's logits."""
    import zoo

    return {"num_classes": NUM_CLASSES, **zoo.get_model_info(model).test_cfg.get("no_aux", {})}


def _torch_model(model: str) -> torch.nn.Module:
    """The registry's torch twin of `model` (torchvision's model for torchvision's names)."""
    import zoo

    torch.manual_seed(0)
    return zoo.get_model_info(model).torch_builder(**_options(model))


def _torch_steps(
    module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, autocast: bool
) -> tuple[Step, Step]:
    """(eval forward, train step) closures for a torch module (plain, compiled or JAX-backed).
    Each call returns when its work is done (on a GPU: after `torch.cuda.synchronize`, which
    waits for every stream of the device, JAX's included)."""

    def precision() -> contextlib.AbstractContextManager:
        if autocast:
            return torch.autocast(device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def forward() -> None:
        with torch.no_grad(), precision():
            module(x)
        sync()

    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with precision():
            loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        sync()

    return forward, train


class Runner:
    """Builds the (eval, train) step for one case under one framework."""

    def __init__(self, model: str, framework: str, device: str):
        self.model, self.framework, self.device = model, framework, device
        self.compiled: dict[str, Any] = {}
        if framework == "jax":
            import jax

            import zoo

            backend = jax.default_backend()
            if (device == "cuda") != (backend == "gpu"):
                raise RuntimeError(
                    f"asked for {device} but JAX's default backend is {backend}: install "
                    "JAX for the GPU (`pip install -e '.[cuda]'`) or pass --device cpu"
                )
            self.eqx_model = zoo.get_model_info(model).builder(**_options(model))
        elif framework == "torch_face":
            import zoo

            if not hasattr(zoo, "load"):
                raise NotAvailable("n/a (not yet available: zoo.load is missing)")
            self.module = zoo.load(model, framework="torch", **_options(model))
        else:
            self.module = _torch_model(model)
            if framework == "channels_last":
                self.module = self.module.to(memory_format=torch.channels_last)
        if framework != "jax":
            self.module = self.module.to(device)

    def step(self, mode: str, batch: int, size: int, dtype: str = "fp32") -> Step:
        x_np, y_np = _data(batch, size)
        if self.framework == "jax":
            return self._jax_step(mode, x_np, y_np, dtype)
        x, y = torch.from_numpy(x_np).to(self.device), torch.from_numpy(y_np).to(self.device)
        module = self.module.train(mode == "train")
        if self.framework == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = dtype == "bf16"
        if autocast and self.framework == "torch_face":
            x, autocast = x.to(torch.bfloat16), False  # autocast cannot reach JAX's compute
        if self.framework == "compile":
            # One compiled module per mode, dynamic shapes: compiling every shape of the suite
            # statically would take longer than the whole benchmark budget on 2 cores.
            if mode not in self.compiled:
                self.compiled[mode] = torch.compile(module, dynamic=True)
            module = self.compiled[mode]
        forward, train = _torch_steps(module, x, y, self.device, autocast)
        return forward if mode == "eval" else train

    def _jax_step(self, mode: str, x_np: np.ndarray, y_np: np.ndarray, dtype: str) -> Step:
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import optax

        import zoo

        x, y = jnp.asarray(x_np), jnp.asarray(y_np, dtype=jnp.int32)
        if dtype == "bf16":
            x = x.astype(jnp.bfloat16)
        if mode == "eval":
            # The face users call (`zoo.load(name)(x)`): a jitted eval forward that reads its
            # HWIO copy of the conv weights.
            face = zoo.JaxModel(zoo.eval_mode(self.eqx_model), name=self.model)
            return lambda: face(x).block_until_ready()
        optimizer = optax.sgd(LR, momentum=MOMENTUM)
        train_step = zoo.make_train_step(optimizer)
        # The step donates its model: train a copy so the next case still has the original.
        arrays, flags = eqx.partition(zoo.train_mode(self.eqx_model), eqx.is_array)
        model = eqx.combine(jax.tree_util.tree_map(jnp.copy, arrays), flags)
        state = {"model": model, "opt": optimizer.init(zoo.trainable(model))}
        key = jax.random.key(0)

        def train() -> None:
            state["model"], state["opt"], loss, _ = train_step(
                state["model"], state["opt"], x, y, key
            )
            loss.block_until_ready()

        return train


class NotAvailable(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a registered name (zoo.list_models())")
    parser.add_argument("--frameworks", required=True, help="comma-separated, run in order")
    parser.add_argument("--cases", required=True, help="JSON list of {mode, batch, size, dtype}")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--max-runs", type=int, default=50)
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    set_torch_threads(THREADS)
    cases = json.loads(args.cases)
    rows: list[dict[str, Any]] = []
    for framework in args.frameworks.split(","):
        rows += run_framework(args, framework, cases)
    emit(rows)


def run_framework(
    args: argparse.Namespace, framework: str, cases: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    base = {"model": args.model, "framework": framework, "threads": THREADS, "device": args.device}
    try:
        runner = Runner(args.model, framework, args.device)
    except NotAvailable as e:
        return [{**base, **c, "status": "n/a", "reason": str(e)} for c in cases]
    except Exception as e:
        return [{**base, **c, "status": "error", "reason": _reason(e)} for c in cases]
    rows = []
    for case in cases:
        row = {**base, **case}
        try:
            fn = runner.step(case["mode"], case["batch"], case["size"], case.get("dtype", "fp32"))
            t = time.perf_counter()
            fn()  # the first call: tracing and compilation (JAX, torch.compile) plus one run
            row["first_call_s"] = time.perf_counter() - t
            times = measure(
                fn,
                warmup=args.warmup,
                min_runs=args.min_runs,
                max_runs=args.max_runs,
                min_time=args.min_time,
            )
            row.update(status="ok", **summarize(times, case["batch"]))
        except Exception as e:
            traceback.print_exc()
            row.update(status="skipped" if framework == "compile" else "error", reason=_reason(e))
        rows.append(row)
    return rows


def _reason(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


if __name__ == "__main__":
    main()
