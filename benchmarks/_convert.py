"""Worker: ResNet18 weight conversion, torch -> Equinox and back, with copy=True and False.

Time (median), peak and retained extra RSS (native memory: tracemalloc cannot see it), and the
share of arrays whose memory aliases the source. Prints one `BENCH_RESULT` JSON line.
"""

from benchmarks._common import pin_threads

THREADS = pin_threads()

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import weights_convert as wc  # noqa: E402
import zoo  # noqa: E402
from benchmarks._common import emit, proc_status, reset_peak_rss, set_torch_threads  # noqa: E402

MB = 1024 * 1024


def _block(result: Any) -> None:
    jax.block_until_ready(
        [x for x in jax.tree_util.tree_leaves(result) if isinstance(x, jax.Array)]
    )


def _memory(fn: Callable[[], Any]) -> tuple[Any, float | None, float]:
    """Run `fn` once: (result, peak extra MB or None, retained extra MB while result lives)."""
    gc.collect()
    _trim()
    before = proc_status("VmRSS")
    can_peak = reset_peak_rss()
    result = fn()
    _block(result)
    peak = (proc_status("VmHWM") - before) / MB if can_peak else None
    return result, peak, (proc_status("VmRSS") - before) / MB


def _trim() -> None:
    """Give freed heap memory back to the OS, so the next RSS delta starts from a clean slate."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _aliased(pairs: list[tuple[jax.Array, torch.Tensor]]) -> int:
    return sum(a.unsafe_buffer_pointer() == t.data_ptr() for a, t in pairs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    set_torch_threads(THREADS)
    torch.manual_seed(0)
    state_dict = torchvision.models.resnet18().state_dict()
    template = zoo.models.resnet18()
    jax_model, _ = wc.load_state_dict(template, state_dict, copy=True)
    configs: list[tuple[str, bool, Callable[[], Any], Callable[[Any], list]]] = []
    for copy in (False, True):
        configs += [
            (
                "torch -> equinox",
                copy,
                lambda copy=copy: wc.load_state_dict(template, state_dict, copy=copy)[0],
                lambda m: [(a, state_dict[k]) for k, a in wc.named_arrays(m).items()],
            ),
            (
                "equinox -> torch",
                copy,
                lambda copy=copy: wc.to_state_dict(jax_model, copy=copy),
                lambda sd: [(a, sd[k]) for k, a in wc.named_arrays(jax_model).items()],
            ),
        ]
    # The finiteness check is one sum over every tensor: timed apart, as the floor of the
    # conversion itself.
    configs.append(
        (
            "torch -> equinox, check_finite=False",
            False,
            lambda: wc.load_state_dict(template, state_dict, copy=False, check_finite=False)[0],
            lambda m: [(a, state_dict[k]) for k, a in wc.named_arrays(m).items()],
        )
    )
    rows = []
    for direction, copy, fn, pairs_of in configs:  # memory first, before any timing loop
        result, peak, retained = _memory(fn)
        pairs = pairs_of(result)
        aliased, total = _aliased(pairs), len(pairs)
        del result, pairs
        rows.append(
            {
                "direction": direction,
                "copy": copy,
                "peak_extra_mb": peak,
                "retained_extra_mb": retained,
                "aliased": aliased,
                "arrays": total,
                "aliased_share": aliased / total,
            }
        )
    for row, (_, _, fn, _) in zip(rows, configs, strict=True):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            _block(fn())
            times.append(time.perf_counter() - t)
        row.update(
            median_ms=statistics.median(times) * 1e3,
            min_ms=min(times) * 1e3,
            max_ms=max(times) * 1e3,
            runs=len(times),
        )
    params_mb = sum(t.numel() * t.element_size() for t in state_dict.values()) / MB
    emit({"model": "resnet18", "state_dict_mb": params_mb, "threads": THREADS, "rows": rows})


if __name__ == "__main__":
    main()
