"""Shared fixtures: reference torch models with randomised weights *and* BatchNorm statistics."""

import os

# Two host devices, so sharding tests have a mesh to split over (must precede JAX's start).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import copy
import inspect
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import zoo

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` each worker is one of N processes sharing the cores: torch's own
    # thread pool would oversubscribe them (a float64 forward took 1-16 s instead of 0.1 s).
    torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    """One persistent JAX compilation cache per test run, shared by the xdist workers (they
    inherit the directory from the controller, which makes it): the suite compiles the same
    programs in many tests (a model's eval forward for parity, faces and export), and a
    compile found in the cache takes milliseconds. A fresh directory each run, so no run
    depends on an earlier one. JAX still logs "Compiling ..." on a cache hit, so the
    compiles-nothing tests keep their meaning."""
    if "PYTEST_XDIST_WORKER" not in os.environ and "ZOO_TEST_JAX_CACHE" not in os.environ:
        os.environ["ZOO_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="zoo-jax-cache-")
        config.stash[_CACHE_OWNER] = os.environ["ZOO_TEST_JAX_CACHE"]
    jax.config.update("jax_compilation_cache_dir", os.environ["ZOO_TEST_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# The registry tests that each take tens of seconds (float64 train steps, both faces with
# hooks, feature maps, Hub round trips).
_HEAVY = frozenset(
    {
        "test_train_mode_parity_float64",
        "test_both_faces_compute_torchvisions_logits",
        "test_feature_info_describes_the_maps",
        "test_hub_round_trip",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests first (`slow`, then the heavy registry tests), the rest in file order:
    xdist hands tests out from the front, so the short ones fill in around the long ones and
    the workers finish together instead of one running a long test alone at the end."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if getattr(item, "originalname", "") in _HEAVY else 2

    items.sort(key=rank)


def pytest_unconfigure(config: pytest.Config) -> None:
    owned = config.stash.get(_CACHE_OWNER, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)
        os.environ.pop("ZOO_TEST_JAX_CACHE", None)


_CACHE_OWNER = pytest.StashKey[str]()


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
    if "ZOO_TEST_JAX_CACHE" in os.environ:  # zoo.load's compilation cache: this run's, not ~
        full_env.setdefault("ZOO_COMPILATION_CACHE", os.environ["ZOO_TEST_JAX_CACHE"])
        # ... holding what takes 0.5 s or more to compile, as in this process.
        full_env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
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


def committed(tree: Any) -> Any:
    """`tree` with its arrays committed to the default device. A jitted function's outputs
    are committed and fresh arrays are not, and JAX compiles the two apart: a train step fed
    its own outputs compiles twice (seconds for a deep model in float64) unless its first
    inputs are committed too."""
    arrays, rest = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, jax.devices()[0]), rest)


def randomize_parameters(
    model: torch.nn.Module, seed: int = 0, *, only_constant: bool = True
) -> torch.nn.Module:
    """Give every parameter that torch initialises to a single value (or, with
    `only_constant=False`, every parameter) a random one: a constant hides a swapped,
    transposed or missing array (torchvision's ViT head is zeros, so its logits would be
    zeros on both sides whatever the body computed; ConvNeXt's layer scale of 1e-6 silences
    its blocks; LayerNorm's ones and zeros commute with a transpose). Scales (1-D weights)
    become 1 + N(0, 0.2²), matrices and kernels N(0, 1/fan_in) so activations stay O(1), the
    rest (biases, tokens, position embeddings, layer scales) N(0, 0.1²)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only_constant and p.numel() > 1 and bool((p != p.reshape(-1)[0]).any()):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and name.endswith("weight"):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * noise)
    return model


def randomize_batchnorm(
    model: torch.nn.Module, seed: int = 0, size: tuple[int, int] | None = None
) -> torch.nn.Module:
    """Give every BatchNorm random affine parameters and random, *realistic* running
    statistics, so parity tests see ported statistics rather than the (0, 1) defaults that
    hide eval-mode bugs.

    The statistics are calibrated in eval mode, layer by layer: each BatchNorm's are measured
    on the input it gets from the (already randomised) layers before it, on one random batch,
    then perturbed relative to that input's spread (mean + 0.1 std noise, variance x
    U(0.75, 1.25)). So activations stay O(1) at any depth and an absolute tolerance means
    something. (An absolute perturbation of statistics measured in train mode made
    EfficientNet's depthwise BatchNorms, of variance ~1e-4, shift by many standard
    deviations: its logits reached 1e3-1e4.)

    The calibration batch is `size` (height, width): a model's test input size; by default
    64x64 (75x75 for Inception v3, its smallest).
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:  # nothing to calibrate (a ViT's forward takes its one image size only)
        return model
    was_training = model.training

    def calibrate(module: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        x, n = inputs[0], module.num_features
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
        module.running_mean.copy_(mean + torch.randn(n, generator=gen) * 0.1 * var.sqrt())
        module.running_var.copy_(var * (torch.rand(n, generator=gen) * 0.5 + 0.75))

    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        handles = [m.register_forward_pre_hook(calibrate) for m in norms]
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        if size is None:  # Inception v3 needs 75x75 or more (its unpadded stem)
            size = (75, 75) if type(model).__name__ == "Inception3" else (64, 64)
        try:
            model.eval()(torch.randn(8, first_conv.in_channels, *size, generator=gen))
        finally:
            for handle in handles:
                handle.remove()
        for m in norms:
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model.train(was_training)


_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_MAX_POOLS = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
_MAX_POOL_ARGS = inspect.signature(F.max_pool2d_with_indices)


def _max_pool_gap(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> float:
    """The smallest gap between a pool window's largest and second-largest element, over the
    windows whose largest is > 0 (in these models a pool follows a ReLU, so a tie at zero
    routes the gradient to an element whose ReLU gradient is zero either way)."""
    pair = torch.nn.modules.utils._pair
    if ceil_mode or pair(dilation) != (1, 1):
        raise NotImplementedError("kink_margin: max-pool with ceil_mode or dilation")
    kernel, pad = pair(kernel_size), pair(padding)
    padded = F.pad(x, (pad[1], pad[1], pad[0], pad[0]), value=-torch.inf)
    windows = F.unfold(padded, kernel, stride=pair(stride or kernel_size))
    top2 = windows.unflatten(1, (x.shape[1], -1)).topk(2, dim=2).values
    gaps = (top2[:, :, 0] - top2[:, :, 1])[top2[:, :, 0] > 0]
    return float(gaps.min()) if gaps.numel() else torch.inf


class _KinkMargins(TorchFunctionMode):
    """Records the distance to each ReLU and max-pool kink as the functions are called, so
    `torch.relu` in a forward counts as much as an `nn.ReLU` module (modules call these too)."""

    def __init__(self):
        super().__init__()
        self.relu = self.pool = torch.inf
        self.relus = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:  # before the call: an inplace ReLU overwrites its input
            self.relu = min(self.relu, float(args[0].abs().min()))
            self.relus += 1
        elif func in _MAX_POOLS:
            bound = _MAX_POOL_ARGS.bind(*args, **kwargs).arguments
            self.pool = min(self.pool, _max_pool_gap(bound.pop("input"), **bound))
        return func(*args, **kwargs)


def kink_margin(model: torch.nn.Module, x: torch.Tensor, train: bool) -> float:
    """How far the forward pass on `x` stays from ReLU and max-pool kinks, in float64: the
    smallest |ReLU input| and the smallest gap between a max-pool window's two largest
    elements (windows with a largest > 0). A gradient test is well conditioned if this is
    well above fp32 rounding of the activations; closer, a correct fp32 implementation may
    take the other branch and switch an element's gradient on or off.

    Runs a float64 deep copy of `model` (in train mode if `train`), so the caller's model and
    its BatchNorm buffers are untouched. ReLUs and max-pools are caught whether called as
    modules or as functions (`torch.relu`, `F.max_pool2d`).
    """
    reference = copy.deepcopy(model).double().train(train)
    margins = _KinkMargins()
    with torch.no_grad(), margins:
        reference(x.double())
    assert margins.relus, "kink_margin saw no ReLU: does the model call another activation?"
    return min(margins.relu, margins.pool)


# The smallest kink_margin an fp32 gradient comparison with torch accepts. Near zero, fp32
# rounding moves ResNet18's activations by ~1e-6 in the stem and up to ~2e-5 in layer4 (torch
# fp32 against fp64); below 1e-5 a correct fp32 implementation may well take the other branch.
KINK_MARGIN = 1e-5


def assert_far_from_kinks(model: torch.nn.Module, x: torch.Tensor, train: bool, what: str) -> None:
    """Fail, before any comparison, unless `kink_margin(model, x, train) >= KINK_MARGIN`: an
    fp32 gradient test on an input closer to a kink tests rounding, not semantics."""
    margin = kink_margin(model, x, train)
    assert margin >= KINK_MARGIN, (
        f"{what}: an activation is {margin:.1e} from a ReLU or max-pool kink (< {KINK_MARGIN}), "
        "so fp32 rounding may flip its gradient on or off: choose another input seed"
    )


def to_float64(model):
    """`model` (any JAX pytree) with its float32 arrays cast to float64 (the BatchNorm
    statistics' bits too); the counters stay. Use under `jax.enable_x64(True)`."""
    return zoo.cast_floats(model, jnp.float64)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def in_layout(layer, channels_last: bool):
    """`layer` as a function of NCHW arrays. With `channels_last` it runs in NHWC inside: its
    input is transposed to NHWC and its output (the first element of a tuple) back."""
    if not channels_last:
        return layer

    def call(x):
        out = layer(x.transpose(0, 2, 3, 1), channels_last=True)
        if isinstance(out, tuple):
            return (out[0].transpose(0, 3, 1, 2), *out[1:])
        return out.transpose(0, 3, 1, 2)

    return call


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(to_numpy(a) - to_numpy(b))))


@pytest.fixture
def images():
    """A seeded NCHW float batch factory: images(batch, channels, height, width)."""

    def make(*shape: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    return make


@eqx.filter_jit
def eval_logits(model, x):
    """Eval-mode logits of an Equinox model, jitted."""
    return zoo.eval_mode(model)(x)[0]


def assert_deep_parity(reference, model, x: torch.Tensor, label: str, fp32=None) -> None:
    """Eval logits against torch's: in float64 <= 1e-10 (the same computation), and in fp32
    against torch's fp64 result within twice torch's own fp32 error, or 1e-5 if smaller.
    `fp32`: what computes the fp32 logits from a NumPy batch (the model's JAX face, say),
    instead of the model under `eqx.filter_jit`."""
    reference = reference.eval()
    with torch.no_grad():
        ref32 = reference(x).numpy()
        ref64 = reference.double()(x.double()).numpy()
    reference.float()
    if fp32 is None:
        ours32 = np.asarray(eval_logits(model, jnp.asarray(x.numpy())))
    else:
        ours32 = np.asarray(fp32(x.numpy()))
    with jax.enable_x64(True):
        ours64 = np.asarray(eval_logits(to_float64(model), jnp.asarray(x.double().numpy())))
    torch_fp32_error = float(np.abs(ref32 - ref64).max())
    fp64_diff = float(np.abs(ours64 - ref64).max())
    fp32_diff = float(np.abs(ours32 - ref64).max())
    print(
        f"{label}: fp64 diff {fp64_diff:.1e}; fp32 diff vs torch fp64 {fp32_diff:.1e} "
        f"(torch fp32 own error {torch_fp32_error:.1e}); fp32 vs torch fp32 "
        f"{np.abs(ours32 - ref32).max():.1e}"
    )
    assert fp64_diff <= 1e-10
    assert fp32_diff <= max(1e-5, 2 * torch_fp32_error)
