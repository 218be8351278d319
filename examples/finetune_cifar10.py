"""Fine-tune a zoo model on CIFAR-10 (torchvision's download; needs the network) with
`zoo.lightning.ImageClassifier`, in torch mode and/or JAX mode.

    python examples/finetune_cifar10.py --model resnet18 --weights torchvision --mode jax
    python examples/finetune_cifar10.py --model cnn --epochs 10 --mode both
    python examples/finetune_cifar10.py --quick     # offline smoke run (also ZOO_EXAMPLE_QUICK=1)

Images reach the model as NumPy arrays (`numpy_loader`), so JAX mode never builds torch
tensors for the batches; the loaders use worker processes (started with forkserver, not
fork) for decoding and augmentation.

`--quick` downloads nothing: it trains the small CNN for 2 epochs on `SyntheticCIFAR10`, a
generated stand-in with CIFAR-10's format (32x32 RGB PIL images, 10 classes) but not its
images, through the same transforms, loaders and Trainer. Its accuracy checks that the
pipeline learns; it says nothing about CIFAR-10.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

# Lightning, torchvision and zoo are imported inside main(), so `--help` answers at once.

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)[:, None, None]
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)[:, None, None]


class ToNormalizedArray:
    """PIL image -> normalised float32 CHW NumPy array (picklable for worker processes)."""

    def __call__(self, image) -> np.ndarray:
        array = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
        return (array - MEAN) / STD


class RandomCropFlip:
    """CIFAR's standard augmentation on the PIL image: 4-pixel padded crop, horizontal flip."""

    def __init__(self):
        import torchvision.transforms as T

        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    def __call__(self, image):
        return self.transform(image)


class SyntheticCIFAR10:
    """`--quick`'s offline stand-in for `torchvision.datasets.CIFAR10`, **not CIFAR-10**: the
    same items (a 32x32 RGB PIL image, an int label in 0-9), generated. Each class is a fixed
    random 4x4 grid of colours (8-pixel cells); an image is its class's pattern plus Gaussian
    noise, so a small model learns it in an epoch or two. Train and test sets share the class
    patterns, not the images."""

    def __init__(self, size: int, train: bool, transform=None, seed: int = 0):
        patterns = np.random.default_rng(seed).uniform(0, 255, (10, 4, 4, 3))
        patterns = patterns.repeat(8, axis=1).repeat(8, axis=2)  # (10, 32, 32, 3)
        rng = np.random.default_rng([seed, int(train)])
        self.targets = rng.integers(0, 10, size)
        noisy = patterns[self.targets] + rng.normal(0, 64, (size, 32, 32, 3))
        self.images = np.clip(noisy, 0, 255).astype(np.uint8)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a zoo model name (resnet18, cnn, ...)")
    parser.add_argument("--weights", default=None, help="e.g. torchvision, or a checkpoint file")
    parser.add_argument("--mode", choices=["torch", "jax", "both"], default="jax")
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="default 4 (--quick: 0)")
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--data", default="data", help="where torchvision keeps CIFAR-10")
    parser.add_argument("--out", default="artifacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("ZOO_EXAMPLE_QUICK", "") not in ("", "0"),
        help="offline smoke run: the small CNN on a synthetic stand-in for CIFAR-10 (not "
        "CIFAR-10; no download), 512 training and 256 test images; or ZOO_EXAMPLE_QUICK=1",
    )
    args = parser.parse_args(argv)
    # --quick's defaults; what is given on the command line wins.
    model, epochs, batch_size, workers = (
        ("cnn", 2, 32, 0) if args.quick else ("resnet18", 5, 128, 4)
    )
    args.model = args.model or model
    args.epochs = epochs if args.epochs is None else args.epochs
    args.batch_size = args.batch_size or batch_size
    args.workers = workers if args.workers is None else args.workers

    import lightning as L
    import torchvision

    from zoo.lightning import EpochShuffleSampler, ImageClassifier, numpy_loader

    to_array = ToNormalizedArray()
    train_transform = torchvision.transforms.Compose([RandomCropFlip(), to_array])
    if args.quick:
        dataset = "synthetic stand-in for CIFAR-10 (--quick; not CIFAR-10)"
        train_set = SyntheticCIFAR10(512, train=True, transform=train_transform, seed=args.seed)
        test_set = SyntheticCIFAR10(256, train=False, transform=to_array, seed=args.seed)
    else:
        dataset = "CIFAR-10"
        train_set = torchvision.datasets.CIFAR10(
            args.data, train=True, download=True, transform=train_transform
        )
        test_set = torchvision.datasets.CIFAR10(
            args.data, train=False, download=True, transform=to_array
        )
    print(f"data: {dataset}, {len(train_set)} training and {len(test_set)} test images", flush=True)
    results = {}
    for mode in ["torch", "jax"] if args.mode == "both" else [args.mode]:
        L.seed_everything(args.seed, workers=True)
        module = ImageClassifier(
            args.model,
            mode=mode,
            num_classes=10,
            in_chans=3,
            weights=args.weights,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            scheduler="cosine",
            freeze_backbone=args.freeze_backbone,
            seed=args.seed,
        )
        # NumPy batches; persistent workers started with forkserver (not fork: this process
        # already runs JAX's and torch's threads).
        train_loader = numpy_loader(
            train_set,
            args.batch_size,
            sampler=EpochShuffleSampler(len(train_set), args.seed),
            drop_last=True,
            num_workers=args.workers,
        )
        test_loader = numpy_loader(test_set, 256, num_workers=args.workers)
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            limit_train_batches=args.limit_train_batches,
            # Lightning warns when an epoch has fewer steps than this (--quick has 16).
            log_every_n_steps=min(50, max(1, int(len(train_loader) * args.limit_train_batches))),
            enable_progress_bar=sys.stderr.isatty(),
            logger=L.pytorch.loggers.CSVLogger(args.out, name=f"cifar10_{args.model}_{mode}"),
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(Path(args.out) / f"ckpt_{mode}")],
        )
        start = time.perf_counter()
        trainer.fit(module, train_loader, test_loader)
        acc = trainer.test(module, test_loader, verbose=False)[0]["test_acc"]
        results[mode] = acc
        seconds = time.perf_counter() - start
        print(
            f"[{mode}] {args.model}: {dataset} test accuracy {acc:.4f} ({seconds:.0f}s)",
            flush=True,
        )
    label = "synthetic (--quick, not CIFAR-10)" if args.quick else "cifar10"
    print(f"SUMMARY {label} " + ", ".join(f"{m}={a:.4f}" for m, a in results.items()))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
