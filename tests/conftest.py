"""Shared fixtures: reference torch models with randomised weights *and* BatchNorm statistics."""

import os

# Two host devices, so sharding tests have a mesh to split over (must precede JAX's start).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import numpy as np
import pytest
import torch


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
