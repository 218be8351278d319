"""Shared fixtures: reference torch models with randomised weights *and* BatchNorm statistics."""

import os

# Two host devices, so sharding tests have a mesh to split over (must precede JAX's start).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def run_python(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python *args` in a fresh interpreter, as a user would run an example or a doc's
    code: the repository on `PYTHONPATH`, the Hub offline, Matplotlib without a display
    (`env` adds to or overrides that). Fails the calling test, showing both output streams,
    if the process exits non-zero. Tests import it with `from conftest import run_python`.

    **Returns:** the `CompletedProcess` (text `stdout`/`stderr`).
    """
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    full_env |= dict(env or {})
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"python {' '.join(args)[:200]} exited {result.returncode}:\n"
            f"--- stdout ---\n{result.stdout[-5000:]}\n--- stderr ---\n{result.stderr[-5000:]}",
            pytrace=False,
        )
    return result


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm random affine parameters and random, *realistic* running
    statistics, so parity tests see ported statistics rather than the (0, 1) defaults that
    hide eval-mode bugs.

    The statistics are measured on one random batch (so activations stay O(1) and an absolute
    tolerance means something), then perturbed per channel.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    was_training = model.training
    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            m.momentum, m.saved_momentum = 1.0, m.momentum
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        model.train()(torch.randn(8, first_conv.in_channels, 64, 64, generator=gen))
        for m in norms:
            n = m.num_features
            m.momentum = m.saved_momentum
            del m.saved_momentum
            m.running_mean.add_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.mul_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model.train(was_training)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(to_numpy(a) - to_numpy(b))))


@pytest.fixture
def images():
    """A seeded NCHW float batch factory: images(batch, channels, height, width)."""

    def make(*shape: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    return make
