"""Fine-tune a zoo model on real data with Lightning, in torch mode and/or JAX mode.

The data are scikit-learn's bundled handwritten digits (1,797 real 8x8 grayscale scans, 10
classes; no download), upsampled bilinearly (to 16x16 by default: on a 2-core CPU it is 4x
cheaper than 32x32 and, with the small CNN's receptive field, more accurate; `--size 32` for
the CNN's native size) and split into training and held-out test sets (20%, stratified).
Each mode trains with `zoo.lightning.ImageClassifier`, reports held-out accuracy, exports the
weights, reloads them with `zoo.load` and checks the reloaded model's accuracy, and plots the
training curves to `<out>/digits_<model>_curves.png`.

    python examples/finetune_digits.py                      # CNN, both modes
    python examples/finetune_digits.py --model resnet18 --mode jax
    python examples/finetune_digits.py --quick              # tiny run (the test suite's)
"""

import argparse
import os
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

import zoo
from zoo.lightning import (
    ArrayDataset,
    EpochShuffleSampler,
    ImageClassifier,
    digits_arrays,
    numpy_collate,
)

# Per-model defaults: (optimizer, lr, epochs).
DEFAULTS = {"cnn": ("sgd", 0.05, 4), "resnet18": ("sgd", 0.05, 4)}


class History(L.Callback):
    """Per-epoch training loss and validation loss/accuracy, for the plot."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "train_loss": float(m.get("train_loss_epoch", m.get("train_loss", np.nan))),
                "val_loss": float(m["val_loss"]),
                "val_acc": float(m["val_acc"]),
            }
        )


def export_and_reload(module: ImageClassifier, name: str, directory: Path):
    """Save the fine-tuned weights and load them back as a fresh zoo model (JAX face)."""
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = module.model.state_dict()  # torchvision names: conv1.weight, fc.bias, ...
    if hasattr(zoo, "save_pretrained"):
        try:
            zoo.save_pretrained(module.model, directory)
            files = sorted(directory.glob("*.safetensors"))
            if files:
                return zoo.load(name, weights=files[0]), files[0]
        except Exception as err:  # the hub API is young: fall back to a plain file
            print(f"zoo.save_pretrained failed ({err}); saving a safetensors file instead")
    from safetensors.torch import save_file

    path = directory / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return zoo.load(name, weights=path), path


def accuracy(face, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        logits = np.asarray(face(x[i : i + batch]))
        correct += int((logits.argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def run(mode: str, args, data) -> dict:
    x_train, y_train, x_test, y_test = data
    L.seed_everything(args.seed, workers=True)
    optimizer, lr, _ = DEFAULTS[args.model]
    module = ImageClassifier(
        args.model,
        mode=mode,
        num_classes=10,
        in_chans=1,
        optimizer=args.optimizer or optimizer,
        lr=args.lr or lr,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        seed=args.seed,
    )
    train = ArrayDataset(x_train, y_train)
    test = ArrayDataset(x_test, y_test)
    loader_kw = {"collate_fn": numpy_collate, "num_workers": args.workers}
    if args.workers:
        loader_kw["persistent_workers"] = True
    train_loader = DataLoader(
        train,
        batch_size=args.batch_size,
        sampler=EpochShuffleSampler(len(train), seed=args.seed),
        drop_last=True,
        **loader_kw,
    )
    test_loader = DataLoader(test, batch_size=256, **loader_kw)
    history = History()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(args.out, name=f"digits_{args.model}_{mode}"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.quick,
        num_sanity_val_steps=0,
        callbacks=[history],
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, test_loader)
    seconds = time.perf_counter() - start
    test_acc = trainer.test(module, test_loader, verbose=False)[0]["test_acc"]
    reloaded, path = export_and_reload(module, args.model, Path(args.out) / f"{args.model}_{mode}")
    reload_acc = accuracy(reloaded, x_test, y_test)
    print(
        f"[{mode}] {args.model}: held-out accuracy {test_acc:.4f} after {args.epochs} epochs "
        f"in {seconds:.1f}s; exported to {path}, reloaded accuracy {reload_acc:.4f}"
    )
    return {"acc": test_acc, "reload_acc": reload_acc, "seconds": seconds, "history": history.rows}


def plot(results: dict, args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, r in results.items():
        epochs = [row["epoch"] for row in r["history"]]
        ax_loss.plot(
            epochs, [row["train_loss"] for row in r["history"]], "o-", label=f"{mode} train"
        )
        ax_loss.plot(
            epochs, [row["val_loss"] for row in r["history"]], "s--", label=f"{mode} held-out"
        )
        ax_acc.plot(epochs, [row["val_acc"] for row in r["history"]], "o-", label=mode)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="held-out accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"zoo {args.model} fine-tuned on sklearn digits ({args.size}x{args.size})")
    fig.tight_layout()
    path = Path(args.out) / f"digits_{args.model}_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["cnn", "resnet18"], default="cnn")
    parser.add_argument("--mode", choices=["torch", "jax", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--size", type=int, default=16, help="input side after upsampling (8x8 originals)"
    )
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="artifacts")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("ZOO_EXAMPLE_QUICK", "") not in ("", "0"),
        help="tiny run (2 epochs, 16x16, half the data) for smoke tests; or ZOO_EXAMPLE_QUICK=1",
    )
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else DEFAULTS[args.model][2]
    if args.quick:
        args.size = min(args.size, 16)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = digits_arrays(size=args.size, seed=args.seed)
    if args.quick:  # half the training data
        x_train, y_train, x_test, y_test = data
        data = (x_train[:768], y_train[:768], x_test, y_test)
    modes = ["torch", "jax"] if args.mode == "both" else [args.mode]
    results = {mode: run(mode, args, data) for mode in modes}
    figure = plot(results, args)
    summary = ", ".join(
        f"{m}={r['acc']:.4f} ({r['seconds']:.0f}s, reloaded {r['reload_acc']:.4f})"
        for m, r in results.items()
    )
    print(f"curves: {figure}")
    print(f"SUMMARY digits {args.model} held-out accuracy: {summary}")
    return results


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main(sys.argv[1:])
