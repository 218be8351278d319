"""Data helpers that keep images as NumPy arrays until they reach JAX (or torch)."""

import multiprocessing
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


def worker_context() -> str:
    """The start method for `DataLoader` workers: `"forkserver"` where the platform has it
    (Linux, macOS), else `"spawn"`.

    Not `"fork"` (Linux's default): JAX and torch run thread pools as soon as they compute,
    and a process forked from a multi-threaded one can deadlock on a lock some other thread
    held at the fork (JAX warns about it). A forkserver's workers are forked from a clean
    single-threaded server instead. Like `"spawn"`, it needs the script's entry point under
    `if __name__ == "__main__":` and a picklable dataset and `collate_fn`.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


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

    With `num_workers > 0` the workers start with `worker_context()` (not `fork`) and are
    persistent (started once per `fit`, not once per epoch).

    **Arguments:**

    - `dataset`: any map-style dataset of `(image, label)` (e.g. `ArrayDataset`).
    - `batch_size`, `sampler`, `shuffle`, `drop_last`, `num_workers`: as `DataLoader`'s.
    - `**kwargs`: more `DataLoader` arguments; they override the defaults above
      (`multiprocessing_context`, `persistent_workers`, `collate_fn`).

    **Returns:** the `DataLoader`.
    """
    options: dict[str, Any] = {"collate_fn": numpy_collate, "num_workers": num_workers}
    if num_workers > 0:
        options |= {"multiprocessing_context": worker_context(), "persistent_workers": True}
    options |= kwargs
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
