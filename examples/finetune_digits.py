"""Train a zoo model from scratch on real data with Lightning, in torch mode and/or JAX mode.

The data are scikit-learn's bundled handwritten digits (1,797 real 8x8 grayscale scans, 10
classes; no download), upsampled bilinearly to 32x32 (`--size`) and split into training and
held-out test sets (20%, stratified). Each mode trains a randomly initialised model with
`zoo.lightning.ImageClassifier` (the same module fine-tunes a checkpoint given `weights=`),
prints one line per epoch (training loss, held-out loss and accuracy), then its held-out
accuracy and wall time, exports the model with `zoo.save_pretrained`, reloads the folder with
`zoo.load("local-dir:...")` and checks the reloaded model's accuracy; the training curves go
to `<out>/digits_<model>_curves.png`.

Defaults: the small CNN, AdamW (lr 3e-3, cosine), 6 epochs of batch 32. On an idle 2-core
CPU (x86) training took 14.4 s (torch mode) and 12.2 s (JAX mode, its first epoch with
compilation 2.2 s) after the ~15 s of imports and data, and reached 98.9% held-out accuracy in
both modes. `--model resnet18` trains ResNet18 instead (SGD, lr 0.05, 4 epochs). With other
work sharing the 2 cores, runs take up to three or four times as long.

    python examples/finetune_digits.py                      # CNN, both modes
    python examples/finetune_digits.py --model resnet18 --mode jax
    python examples/finetune_digits.py --quick              # tiny run (the test suite's)
"""

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# jax, torch, Lightning and zoo are imported inside the functions that use them, so `--help`
# answers at once instead of after seconds of imports.

# Per-model defaults: (optimizer, lr, epochs). At 32x32 the CNN's receptive field covers about
# a third of a digit and SGD needs ~8 epochs for 95%; AdamW gets there in 5-6.
DEFAULTS = {"cnn": ("adamw", 3e-3, 6), "resnet18": ("sgd", 0.05, 4)}
TARGET = 0.95  # the held-out accuracy the defaults are tuned to reach
COLOURS = {"torch": "tab:blue", "jax": "tab:orange"}  # one colour per mode in both panels


def quiet_lightning() -> None:
    """Keep Lightning's warnings, drop its info lines: the accelerator banner, tips and "fit
    stopped" repeat for every Trainer and tell nothing this script does not print itself."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning 2.6's own call of a torch pytree API that torch has deprecated: not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def progress_callback(mode: str, epochs: int):
    """A Lightning callback that prints one line per epoch (training loss, held-out loss and
    accuracy, elapsed time), flushed, so a log or a pipe shows progress as it happens; it keeps
    the rows for the plot in `.rows`."""
    import lightning as L

    class Progress(L.Callback):
        def __init__(self):
            self.rows: list[dict[str, float]] = []
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            # Called after the epoch's validation, once the epoch averages are in.
            m = trainer.callback_metrics
            row = {
                "epoch": trainer.current_epoch + 1,
                "train_loss": float(m["train_loss_epoch"]),
                "val_loss": float(m["val_loss"]),
                "val_acc": float(m["val_acc"]),
            }
            self.rows.append(row)
            print(
                f"[{mode}] epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
                f"held-out loss {row['val_loss']:.4f}, held-out accuracy {row['val_acc']:.4f} "
                f"({time.perf_counter() - self.start:.1f} s)"
                + (", compilation included" if row["epoch"] == 1 else ""),
                flush=True,
            )

    return Progress()


def export_and_reload(module, directory: Path, args):
    """Export the trained model with `zoo.save_pretrained` (safetensors under torchvision's
    names, config.json, model card), recording the normalisation it was trained with, and
    load the folder back as a fresh zoo model (JAX face)."""
    import zoo
    from zoo.lightning import digits_preprocessing

    preprocessing = digits_preprocessing(size=args.size, seed=args.seed)
    zoo.save_pretrained(module.model, directory, overwrite=True, pretrained_cfg=preprocessing)
    return zoo.load(f"local-dir:{directory}"), directory / "model.safetensors"


def accuracy(face, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        logits = np.asarray(face(x[i : i + batch]))
        correct += int((logits.argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def run(mode: str, args, data) -> dict:
    import lightning as L

    from zoo.lightning import ArrayDataset, EpochShuffleSampler, ImageClassifier, numpy_loader

    x_train, y_train, x_test, y_test = data
    start = time.perf_counter()
    L.seed_everything(args.seed, workers=True, verbose=False)
    module = ImageClassifier(
        args.model,
        mode=mode,
        num_classes=10,
        in_chans=1,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        seed=args.seed,
    )
    train = ArrayDataset(x_train, y_train)
    test = ArrayDataset(x_test, y_test)
    # NumPy batches; workers (if any) start with forkserver, not fork (see numpy_loader).
    train_loader = numpy_loader(
        train,
        args.batch_size,
        sampler=EpochShuffleSampler(len(train), seed=args.seed),
        drop_last=True,
        num_workers=args.workers,
    )
    test_loader = numpy_loader(test, 256, num_workers=args.workers)
    progress = progress_callback(mode, args.epochs)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(args.out, name=f"digits_{args.model}_{mode}"),
        # Step losses to the CSV log every 10 steps; Lightning's default of 50 is more than an
        # epoch here (44 steps, 24 with --quick), which it warns about.
        log_every_n_steps=min(10, len(train_loader)),
        enable_checkpointing=False,
        enable_model_summary=False,
        # The per-epoch lines are the progress: they read the same on a terminal and in a log.
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=[progress],
    )
    trainer.fit(module, train_loader, test_loader)
    fit_seconds = time.perf_counter() - start
    test_acc = trainer.test(module, test_loader, verbose=False)[0]["test_acc"]
    reloaded, path = export_and_reload(module, Path(args.out) / f"{args.model}_{mode}", args)
    reload_acc = accuracy(reloaded, x_test, y_test)
    seconds = time.perf_counter() - start
    print(
        f"[{mode}] {args.model}: held-out accuracy {test_acc:.4f} after {args.epochs} epochs; "
        f"training {fit_seconds:.1f}s (compilation included), {seconds:.1f}s with model "
        f"construction, test, export and reload; exported to {path}, reloaded accuracy "
        f"{reload_acc:.4f}",
        flush=True,
    )
    return {
        "acc": test_acc,
        "reload_acc": reload_acc,
        "fit_seconds": fit_seconds,
        "seconds": seconds,
        "history": progress.rows,
    }


def plot(results: dict, args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, r in results.items():
        epochs = [row["epoch"] for row in r["history"]]
        colour = COLOURS[mode]
        train_loss = [row["train_loss"] for row in r["history"]]
        val_loss = [row["val_loss"] for row in r["history"]]
        ax_loss.plot(epochs, train_loss, "o-", color=colour, label=f"{mode} train")
        ax_loss.plot(epochs, val_loss, "s--", color=colour, label=f"{mode} held-out")
        val_acc = [row["val_acc"] for row in r["history"]]
        ax_acc.plot(epochs, val_acc, "o-", color=colour, label=mode)
    ax_acc.axhline(TARGET, color="gray", linestyle=":", label=f"{TARGET:.0%} target")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="held-out accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(
        f"zoo {args.model} trained from scratch on scikit-learn's digits "
        f"({args.size}x{args.size}{', --quick' * args.quick})"
    )
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
        "--size", type=int, default=32, help="input side after upsampling (8x8 originals)"
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
    optimizer, lr, epochs = DEFAULTS[args.model]
    args.optimizer = args.optimizer or optimizer
    args.lr = args.lr or lr
    if args.epochs is None:
        args.epochs = 2 if args.quick else epochs
    if args.quick:
        args.size = min(args.size, 16)

    modes = ["torch", "jax"] if args.mode == "both" else [args.mode]
    print(f"importing JAX, torch and Lightning; then {', '.join(modes)} mode", flush=True)
    from zoo.lightning import digits_arrays

    quiet_lightning()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = digits_arrays(size=args.size, seed=args.seed)
    if args.quick:  # half the training data
        x_train, y_train, x_test, y_test = data
        data = (x_train[:768], y_train[:768], x_test, y_test)
    print(
        f"digits {args.size}x{args.size}: {len(data[0])} training, {len(data[2])} held-out "
        f"images; {args.model} from random weights, {args.optimizer} lr {args.lr:g} (cosine), "
        f"{args.epochs} epochs of {len(data[0]) // args.batch_size} batches of "
        f"{args.batch_size}",
        flush=True,
    )
    results = {mode: run(mode, args, data) for mode in modes}
    figure = plot(results, args)
    summary = ", ".join(
        f"{m}={r['acc']:.4f} ({r['seconds']:.0f}s, reloaded {r['reload_acc']:.4f})"
        for m, r in results.items()
    )
    print(f"curves: {figure}")
    print(f"SUMMARY digits {args.model} held-out accuracy: {summary}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
