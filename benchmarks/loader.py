"""Seconds of short Lightning fits with each way of loading data: no workers, `fork` workers (a
plain `DataLoader`), and `numpy_loader`'s forkserver workers (`zoo.lightning.worker_context`).

    python -m benchmarks.loader [--quick] [--out rows.json]

Each (data, loader) runs in its own process, as a user's script would: build the loader, then
`ImageClassifier("cnn", mode="jax")` fits one epoch (fit 1: the workers start, the step
compiles), then a new `Trainer` fits two more epochs (fit 2: the workers start again; the
compiled step is reused). Batch 32, 2 workers where there are workers, threads pinned as in
`benchmarks.run`. The data:

- **digits**: scikit-learn's digits upsampled to 32x32 (1,437 training images, in memory);
- **synthetic 32x32**: 4,096 RGB images made per item (a seeded draw and a 3x3 blur per
  image, ~0.1 ms of NumPy each), standing in for decoding and augmentation.

It also records whether JAX warned that `os.fork()` was called in its multithreaded process.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks._common import available_cpus, emit, pin_threads

LOADERS = {
    "none": "no workers",
    "fork": "fork workers (plain DataLoader)",
    "forkserver": "numpy_loader workers (forkserver)",
}
DATA = {"digits": "digits 32x32 (in memory)", "synthetic": "synthetic 32x32 (made per item)"}


class SyntheticImages:
    """RGB 32x32 images made per item: a seeded normal draw, blurred 3x3 (some per-item NumPy
    work, as decoding and augmentation are)."""

    def __init__(self, n: int = 4096, size: int = 32):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import numpy as np

        rng = np.random.default_rng(i)
        x = rng.standard_normal((3, self.size + 2, self.size + 2), dtype=np.float32)
        blurred = sum(
            x[:, dy : dy + self.size, dx : dx + self.size] for dy in range(3) for dx in range(3)
        )
        return (blurred / 9).astype(np.float32), np.int64(i % 10)


def run_worker(data: str, loader: str, quick: bool) -> dict[str, Any]:
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.lightning import (
        ArrayDataset,
        EpochShuffleSampler,
        ImageClassifier,
        digits_arrays,
        numpy_collate,
        numpy_loader,
    )

    if data == "digits":
        x, y, _, _ = digits_arrays(size=32)
        dataset, channels = ArrayDataset(x, y), 1
    else:
        dataset, channels = SyntheticImages(512 if quick else 4096), 3
    sampler = EpochShuffleSampler(len(dataset))
    start = time.perf_counter()
    if loader == "fork":
        batches = DataLoader(
            dataset,
            32,
            sampler=sampler,
            drop_last=True,
            collate_fn=numpy_collate,
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context="fork",
        )
    else:
        batches = numpy_loader(
            dataset, 32, sampler=sampler, drop_last=True, num_workers=0 if loader == "none" else 2
        )
    L.seed_everything(0, verbose=False)
    module = ImageClassifier("cnn", mode="jax", num_classes=10, in_chans=channels)
    fits = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epochs in (1, 3):  # fit 2 runs epochs 2 and 3
            trainer = L.Trainer(
                max_epochs=epochs,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(module, batches)
            fits.append(time.perf_counter() - start)
            start = time.perf_counter()
    fork_warning = any("os.fork()" in str(w.message) for w in caught)
    return {
        "data": data,
        "loader": loader,
        "status": "ok",
        "fit1_s": fits[0],
        "fit2_s": fits[1],
        "steps_per_epoch": trainer.num_training_batches,
        "jax_fork_warning": fork_warning,
    }


def collect(quick: bool, threads: int, timeout: float) -> list[dict[str, Any]]:
    from benchmarks.run import run_worker as run_subprocess

    rows = []
    for data in DATA:
        for loader in LOADERS:
            args = ["--worker", "--data", data, "--loader", loader] + ["--quick"] * quick
            result, error = run_subprocess("benchmarks.loader", args, threads, timeout)
            base = {"data": data, "loader": loader}
            rows.append(result or base | {"status": "error", "reason": error})
            print(f"done: loader {data} / {loader}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "## Short fits by data loader (seconds; CNN, JAX mode, batch 32)",
        "",
        "Fit 1: one epoch from a fresh process's first fit (loader built just before; the "
        "workers start, the step compiles). Fit 2: two more epochs with a new Trainer (the "
        "workers start again).",
        "",
        "| data | " + " | ".join(LOADERS.values()) + " |",
        "|---" * (len(LOADERS) + 1) + "|",
    ]
    grid = {(r["data"], r["loader"]): r for r in rows}
    for data, title in DATA.items():
        cells = []
        for loader in LOADERS:
            r = grid.get((data, loader), {"status": "missing"})
            if r["status"] != "ok":
                cells.append(r.get("reason", r["status"]))
                continue
            warn = ", JAX's fork warning" if r["jax_fork_warning"] else ""
            cells.append(f"{r['fit1_s']:.1f} / {r['fit2_s']:.1f}{warn}")
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller synthetic set")
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    parser.add_argument("--timeout", type=float, default=300.0, help="s per worker")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", choices=list(DATA), help=argparse.SUPPRESS)
    parser.add_argument("--loader", choices=list(LOADERS), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        threads = pin_threads()  # before torch or JAX starts
        from benchmarks._common import set_torch_threads

        set_torch_threads(threads)
        emit(run_worker(opts.data, opts.loader, opts.quick))
        return
    rows = collect(opts.quick, opts.threads, opts.timeout)
    if opts.out:
        opts.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
