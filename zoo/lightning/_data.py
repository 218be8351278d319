"""Data helpers that keep images as NumPy arrays until they reach JAX (or torch)."""

import multiprocessing
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ArrayDataset(Dataset):
    """`(image, label)` pairs from in-memory arrays, returned as NumPy (float32 NCHW images,
    int64 labels). Picklable, so it works with `num_workers > 0`.

    **Arguments:**

    - `images`: `(N, C, H, W)` array (any float or int dtype; cast to float32).
    - `labels`: `(N,)` integer class indices.
    """

    def __init__(self, images: Any, labels: Any):
        self.images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(
                f"expected (N, C, H, W) images and (N,) labels, got {self.images.shape} and "
                f"{self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        return self.images[index], self.labels[index]


def numpy_collate(batch: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """A `DataLoader` `collate_fn` stacking `(image, label)` samples into NumPy arrays
    `(float32 NCHW, int32 labels)` instead of torch tensors. Torch tensors in the samples
    (e.g. from torchvision transforms) are converted too."""
    images = np.stack([np.asarray(_numpy(x), dtype=np.float32) for x, _ in batch])
    labels = np.asarray([int(_numpy(y)) for _, y in batch], dtype=np.int32)
    return images, labels


def _numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


# What every DataLoader worker imports: the worker loop, and NumPy for our collate.
_WORKER_MODULES = ("numpy", "torch", "torch.utils.data")


def worker_context(*objects: Any) -> multiprocessing.context.BaseContext:
    """The multiprocessing context for `DataLoader` workers: `"forkserver"` where the platform
    has it (Linux, macOS), with the modules that define `objects` preloaded; else `"spawn"`.

    Not `"fork"` (Linux's default before Python 3.14): JAX and torch run thread pools as soon
    as they compute, and a process forked from a multi-threaded one can deadlock on a lock
    another thread held at the fork (JAX's `os.fork()` warning says so). A forkserver's
    workers are forked from a clean single-threaded server instead.

    The server starts here, once per program, and imports torch, what the main script
    imports and the modules of `objects` (the dataset, the `collate_fn`: what a worker
    unpickles) while the caller goes on. A worker then starts in tens of milliseconds, as a
    forked one does, instead of importing them itself (seconds for each worker of each
    `fit`: Lightning's imports alone take 5 s on 2 cores). Like `"spawn"`, it needs the
    script's entry point under `if __name__ == "__main__":` and picklable datasets and
    transforms.

    **Arguments:**

    - `*objects`: what the workers unpickle (their modules are preloaded; a module that is
      the main script is preloaded as `"__main__"`).

    **Returns:** the context, for `DataLoader(multiprocessing_context=...)`.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    modules = list(_WORKER_MODULES)
    # A worker re-runs the main script's top level, as under spawn (Python 3.11's forkserver
    # cannot preload it): with the modules it imports already in the server, that is quick.
    main = vars(sys.modules["__main__"]).values()
    for obj in [*objects, *main]:
        module = obj.__name__ if isinstance(obj, types.ModuleType) else _module_of(obj)
        if module and module not in modules and module not in ("__main__", "builtins"):
            modules.append(module)
    # Read when the server starts: a server already running keeps the modules it has.
    context.set_forkserver_preload(modules)
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


def _module_of(obj: Any) -> str | None:
    module = getattr(getattr(obj, "func", obj), "__module__", None)  # functools.partial too
    if not isinstance(module, str):
        module = type(obj).__module__
    return module


def numpy_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """A `DataLoader` whose batches are NumPy arrays (`numpy_collate`), so JAX mode receives
    NumPy all the way and torch mode converts once, in `training_step`.

    With `num_workers > 0` the workers start from `worker_context(dataset, collate_fn)` (a
    forkserver that has imported what they need; never `fork`) and are persistent (started
    once per `fit`, not once per epoch).

    **Arguments:**

    - `dataset`: any map-style dataset of `(image, label)` (e.g. `ArrayDataset`).
    - `batch_size`, `sampler`, `shuffle`, `drop_last`, `num_workers`: as `DataLoader`'s.
    - `**kwargs`: more `DataLoader` arguments; they override the defaults above
      (`multiprocessing_context`, `persistent_workers`, `collate_fn`).

    **Returns:** the `DataLoader`.
    """
    options: dict[str, Any] = {"collate_fn": numpy_collate, "num_workers": num_workers}
    options |= kwargs
    if num_workers > 0 and "multiprocessing_context" not in kwargs:
        context = worker_context(dataset, options["collate_fn"])
        options = {"multiprocessing_context": context, "persistent_workers": True} | options
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        drop_last=drop_last,
        **options,
    )


class EpochShuffleSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on `(seed, epoch)`.

    Lightning calls `set_epoch` at the start of every epoch, so a run resumed from a
    checkpoint sees exactly the batches an uninterrupted run sees (a plain `shuffle=True`
    draws its order from the global torch RNG, whose state a checkpoint does not hold).
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        return iter(rng.permutation(self.num_samples).tolist())


def _digits_split(
    size: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits in [0, 1] (value / 16), resized to `size`, split (stratified): not yet
    standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    return train_test_split(
        images.numpy(),
        digits.target,
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )


def digits_arrays(
    size: int = 32, test_fraction: float = 0.2, seed: int = 0, channels: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1,797 real 8x8 grayscale images, 10 classes), scaled
    to [0, 1], upsampled bilinearly to `size`x`size`, split (stratified) into a training and
    a held-out test set, and standardised with the training set's mean and std (which
    `digits_preprocessing` returns, for an export to record). No download.

    **Returns:** `(x_train, y_train, x_test, y_test)`, images float32 `(N, channels, size,
    size)`, labels int64.
    """
    x_train, x_test, y_train, y_test = _digits_split(size, test_fraction, seed)
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if channels != 1:
        x_train = np.repeat(x_train, channels, axis=1)
        x_test = np.repeat(x_test, channels, axis=1)
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        y_train.astype(np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        y_test.astype(np.int64),
    )


def digits_preprocessing(
    size: int = 32, test_fraction: float = 0.2, seed: int = 0, channels: int = 1
) -> dict[str, Any]:
    """The preprocessing `digits_arrays` applies with the same arguments, in timm's
    `pretrained_cfg` fields (for `zoo.save_pretrained(..., pretrained_cfg=...)`): the
    training set's mean and std of the [0, 1] pixels, the input size, bilinear resizing, no
    crop.
    """
    x_train, _, _, _ = _digits_split(size, test_fraction, seed)
    mean, std = float(x_train.mean()), float(x_train.std())
    return {
        "input_size": (channels, size, size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "mean": (mean,) * channels,
        "std": (std,) * channels,
    }
