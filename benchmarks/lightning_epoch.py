"""Images/s of one training epoch through a real Lightning `Trainer`: `ImageClassifier` in torch
mode and in JAX mode, and a user's plain `LightningModule` around the zoo's torch face, against
the plain torch model (torchvision's ResNet18; for the CNN its torch twin `SmallCNNTorch`) in
the same minimal `LightningModule`, at batch 32 and 128.

    python -m benchmarks.lightning_epoch [--quick] [--threads N] [--out results.json]

Every (model, framework, batch) runs in its own subprocess (threads pinned as in
`benchmarks.run`; `--quick` runs a model's four setups in one). All four train on the same
data through the same loader: scikit-learn's digits (all 1,797 images) upsampled to 32x32 (1
channel for the CNN, repeated to 3 for ResNet18, so torchvision's model runs unmodified),
NumPy batches (`numpy_loader`), no workers, `drop_last`; SGD with momentum 0.9 and a constant
learning rate; loss and accuracy logged every step in all four. The first epoch (tracing and
XLA compilation included) is reported apart; images/s is the median over the epochs after it.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

# Only stdlib and _common at import time: a worker pins its threads before torch/JAX start,
# and `benchmarks.run` imports this module for the driver side.
from benchmarks._common import available_cpus, emit, pin_threads

MODELS = {"resnet18": "ResNet18", "cnn": "SmallCNN"}
FRAMEWORKS = {
    "plain": "plain torch in Lightning",
    "face_plain": "torch face in the same module",
    "zoo_torch": "ImageClassifier torch mode",
    "zoo_jax": "ImageClassifier JAX mode",
}
LR, MOMENTUM, NUM_CLASSES = 0.05, 0.9, 10


def settings(quick: bool) -> dict[str, Any]:
    """Batch, image side, timed epochs and the models to run."""
    if quick:  # ResNet18's train step alone compiles for ~10 s: only the CNN runs
        return {"batches": [16], "size": 16, "epochs": 1, "limit_batches": 3, "models": ["cnn"]}
    return {
        "batches": [32, 128],
        "size": 32,
        "epochs": 3,
        "limit_batches": None,
        "models": list(MODELS),
    }


# ---------------------------------------------------------------------------- worker


def _plain_module(model: str, channels: int, face: bool = False):
    """The baseline: the plain torch model in a minimal LightningModule doing what
    ImageClassifier's torch mode does per step (same optimizer, loss and logging). With
    `face`, the same module around the zoo's torch face, as a user would write it."""
    import lightning as L
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if face:
        import zoo

        net = zoo.load(model, framework="torch", num_classes=NUM_CLASSES, in_chans=channels)
    elif model == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    else:
        from zoo.models import SmallCNNTorch

        net = SmallCNNTorch(num_classes=NUM_CLASSES, in_chans=channels)

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = net

        def training_step(self, batch, batch_idx):
            x, y = (torch.as_tensor(v) for v in batch)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y.long())
            acc = (logits.detach().argmax(-1) == y).float().mean()
            for name, value in (("train_loss", loss.detach()), ("train_acc", acc)):
                self.log(name, value, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    return Plain()


def _zoo_module(model: str, mode: str, channels: int):
    from zoo.lightning import ImageClassifier

    return ImageClassifier(
        model,
        mode=mode,
        num_classes=NUM_CLASSES,
        in_chans=channels,
        optimizer="sgd",
        lr=LR,
        momentum=MOMENTUM,
        scheduler=None,
        seed=0,
    )


def run_worker(model: str, framework: str, batch: int, quick: bool) -> dict[str, Any]:
    """One (model, framework, batch): fit for 1 + `epochs` epochs, time each."""
    import time

    import lightning as L
    import numpy as np

    from zoo.lightning import ArrayDataset, EpochShuffleSampler, digits_arrays, numpy_loader

    cfg = settings(quick)
    channels = 3 if model == "resnet18" else 1
    x_train, y_train, x_test, y_test = digits_arrays(size=cfg["size"], channels=channels)
    data = ArrayDataset(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]))
    loader = numpy_loader(
        data, batch, sampler=EpochShuffleSampler(len(data), seed=0), drop_last=True
    )
    L.seed_everything(0, verbose=False)
    if framework in ("plain", "face_plain"):
        module = _plain_module(model, channels, face=framework == "face_plain")
    else:
        module = _zoo_module(model, framework.removeprefix("zoo_"), channels)

    class EpochTimer(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1 + cfg["epochs"],
        limit_train_batches=cfg["limit_batches"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, loader)
    steps = trainer.num_training_batches
    images = steps * batch
    rates = [images / s for s in timer.seconds[1:]]
    return {
        "model": model,
        "framework": framework,
        "status": "ok",
        "batch": batch,
        "size": cfg["size"],
        "channels": channels,
        "steps_per_epoch": steps,
        "first_epoch_s": timer.seconds[0],
        "epoch_s": timer.seconds[1:],
        "images_per_s": statistics.median(rates),
        "range": [min(rates), max(rates)],
        "final_train_loss": float(trainer.callback_metrics["train_loss_epoch"]),
    }


# ---------------------------------------------------------------------------- driver


def collect(quick: bool, threads: int, timeout: float) -> list[dict[str, Any]]:
    """Run every (model, framework) worker, one at a time; rows with ratios to `plain`."""
    from benchmarks.run import run_worker as run_subprocess

    cfg = settings(quick)
    rows = []
    for model in MODELS:
        for batch in cfg["batches"]:
            for framework in FRAMEWORKS:
                base = {"model": model, "framework": framework, "batch": batch}
                if model not in cfg["models"]:
                    rows.append(base | {"status": "skipped", "reason": "skipped (--quick)"})
                    continue
                if quick and framework != next(iter(FRAMEWORKS)):
                    continue  # --quick: all of a model's setups ran in its first worker
                args = ["--worker", "--model", model, "--batch", str(batch)]
                args += ["--framework", "all" if quick else framework] + ["--quick"] * quick
                result, error = run_subprocess("benchmarks.lightning_epoch", args, threads, timeout)
                if quick:
                    failed = {"status": "error", "reason": error}
                    rows.extend(result or [base | {"framework": f} | failed for f in FRAMEWORKS])
                else:
                    rows.append(result or base | {"status": "error", "reason": error})
                print(
                    f"done: lightning {model} / {framework} / batch {batch}",
                    file=sys.stderr,
                    flush=True,
                )
    plain = {
        (r["model"], r["batch"]): r["images_per_s"]
        for r in rows
        if r["framework"] == "plain" and r["status"] == "ok"
    }
    for r in rows:
        if r["status"] == "ok" and plain.get((r["model"], r["batch"])):
            r["ratio_vs_plain"] = r["images_per_s"] / plain[r["model"], r["batch"]]
    return rows


def markdown(rows: list[dict[str, Any]], quick: bool = False) -> str:
    """The Markdown section: one row per model, one column per framework."""
    cfg = settings(quick)
    out = [
        "## One Lightning training epoch (images/s)",
        "",
        f"`Trainer.fit` on sklearn digits upsampled to {cfg['size']}x{cfg['size']}, "
        f"SGD momentum {MOMENTUM}, no DataLoader workers; median images/s over "
        f"{cfg['epochs']} epoch(s) after a first (compiling) epoch [min–max], **ratio to the "
        "plain torch model** (torchvision's ResNet18; `SmallCNNTorch` for SmallCNN) in an "
        "equivalent minimal LightningModule; first-epoch seconds in parentheses.",
        "",
        "| model | batch | " + " | ".join(FRAMEWORKS.values()) + " |",
        "|---" * (len(FRAMEWORKS) + 2) + "|",
    ]
    grid = {(r["model"], r["framework"], r.get("batch")): r for r in rows}
    for model, title in MODELS.items():
        for batch in cfg["batches"]:
            cells = []
            for fw in FRAMEWORKS:
                r = grid.get((model, fw, batch))
                if r is None:
                    cells.append("")
                elif r["status"] != "ok":
                    cells.append(r.get("reason", r["status"]))
                else:
                    ratio = f" **{r['ratio_vs_plain']:.2f}x**" if "ratio_vs_plain" in r else ""
                    lo, hi = r["range"]
                    cells.append(
                        f"{r['images_per_s']:.0f} [{lo:.0f}–{hi:.0f}]{ratio} "
                        f"({r['first_epoch_s']:.1f} s)"
                    )
            out.append(f"| {title} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CNN only, tiny sizes")
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    parser.add_argument("--timeout", type=float, default=None, help="s per worker (600/120)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=[*FRAMEWORKS, "all"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        threads = pin_threads()  # before torch or JAX starts
        from benchmarks._common import set_torch_threads

        set_torch_threads(threads)
        frameworks = list(FRAMEWORKS) if opts.framework == "all" else [opts.framework]
        rows = [run_worker(opts.model, f, opts.batch, opts.quick) for f in frameworks]
        emit(rows if opts.framework == "all" else rows[0])
        return
    timeout = opts.timeout or (120.0 if opts.quick else 600.0)
    rows = collect(opts.quick, opts.threads, timeout)
    if opts.out:
        opts.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows, opts.quick))


if __name__ == "__main__":
    main()
