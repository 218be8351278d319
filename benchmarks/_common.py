"""Helpers shared by the benchmark workers. Importing this module imports neither torch nor JAX,
so a worker can pin its threads before either starts."""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

THREADS_ENV = "BENCH_THREADS"


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def thread_env(threads: int, device: str = "cpu") -> dict[str, str]:
    """Environment for a worker: the same intra-op thread count for torch and XLA, and JAX kept
    on the CPU unless the worker is to run on the GPU (`device="cuda"`)."""
    env = dict(os.environ)
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    env[THREADS_ENV] = str(threads)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    # XLA:CPU has no intra-op thread-count flag; the worker pins its CPU affinity instead, and a
    # single thread also turns off Eigen's multi-threading.
    multi = "true" if threads > 1 else "false"
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={multi}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def pin_threads() -> int:
    """Call first in a worker: pin to `BENCH_THREADS` CPUs (before torch/JAX start)."""
    threads = int(os.environ.get(THREADS_ENV, len(available_cpus())))
    cpus = available_cpus()
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
    return threads


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int,
    min_runs: int,
    max_runs: int,
    min_time: float,
) -> list[float]:
    """Seconds per call of `fn` (which must block until its result is ready): `warmup` untimed
    calls, then at least `min_runs` timed ones, more (up to `max_runs`) until `min_time` s."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (
        len(times) < max_runs and time.perf_counter() - start < min_time
    ):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_ms(fn: Callable[[], Any], runs: int, *, warmup: int = 2) -> float:
    """Median milliseconds of exactly `runs` timed calls of `fn` (which must block until its
    result is ready), after `warmup` untimed ones."""
    times = measure(fn, warmup=warmup, min_runs=runs, max_runs=runs, min_time=0.0)
    return statistics.median(times) * 1e3


def summarize(times: list[float], batch: int) -> dict[str, Any]:
    """Images/s: median over runs, interquartile range and min/max."""
    rates = sorted(batch / t for t in times)
    q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else (rates[0],) * 3
    return {
        "images_per_s": statistics.median(rates),
        "iqr": [q1, q3],
        "min": rates[0],
        "max": rates[-1],
        "runs": len(rates),
        "median_s": statistics.median(times),
    }


def emit(result: Any) -> None:
    """Hand the result to the parent: one JSON line on stdout, marked."""
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def proc_status(field: str) -> int:
    """A `/proc/self/status` field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
