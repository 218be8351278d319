"""Fine-tune a zoo model on CIFAR-10 (torchvision's download; needs the network) with
`zoo.lightning.ImageClassifier`, in torch mode and/or JAX mode.

    python examples/finetune_cifar10.py --model resnet18 --weights torchvision --mode jax
    python examples/finetune_cifar10.py --model cnn --epochs 10 --mode both

Images reach the model as NumPy arrays (`numpy_loader`), so JAX mode never builds torch
tensors for the batches; the loaders use worker processes (started with forkserver, not
fork) for decoding and augmentation.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a zoo model name (cnn, resnet18, ...)")
    parser.add_argument("--weights", default=None, help="e.g. torchvision, or a checkpoint file")
    parser.add_argument("--mode", choices=["torch", "jax", "both"], default="jax")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--data", default="data", help="where torchvision keeps CIFAR-10")
    parser.add_argument("--out", default="artifacts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import lightning as L
    import torchvision

    from zoo.lightning import EpochShuffleSampler, ImageClassifier, numpy_loader

    to_array = ToNormalizedArray()
    train_set = torchvision.datasets.CIFAR10(
        args.data,
        train=True,
        download=True,
        transform=torchvision.transforms.Compose([RandomCropFlip(), to_array]),
    )
    test_set = torchvision.datasets.CIFAR10(
        args.data, train=False, download=True, transform=to_array
    )
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
            logger=L.pytorch.loggers.CSVLogger(args.out, name=f"cifar10_{args.model}_{mode}"),
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(Path(args.out) / f"ckpt_{mode}")],
        )
        start = time.perf_counter()
        trainer.fit(module, train_loader, test_loader)
        acc = trainer.test(module, test_loader, verbose=False)[0]["test_acc"]
        results[mode] = acc
        seconds = time.perf_counter() - start
        print(f"[{mode}] {args.model}: CIFAR-10 test accuracy {acc:.4f} ({seconds:.0f}s)")
    print("SUMMARY cifar10 " + ", ".join(f"{m}={a:.4f}" for m, a in results.items()))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
