"""Run the zoo's benchmarks and write `results.md`, `results.json` and `results.png`.

    python -m benchmarks.run [--quick] [--out artifacts/benchmarks] [--threads N]
                             [--device auto|cpu|cuda] [--dtypes fp32,bf16]
                             [--models resnet18,cnn,convnext_tiny,...]

The throughput tables cover ResNet18 and the small CNN at several batch sizes, and one
common variant of each other family (`FAMILY_MODELS`: eval and train at batch 8, 224x224);
`--models` picks any registered names instead (`--quick`: ResNet18 and the CNN only).

Every (model, framework) pair, the conversion benchmark, each compile-cache process and each
Lightning-epoch run (`benchmarks/lightning_epoch.py`) run in their own subprocess, so thread
pools, allocators and compile caches are never shared (`--quick` runs all frameworks of a
model in one process, to save imports).

On a machine where torch sees a CUDA GPU (`--device auto`, the default) the throughput tables
run there, in fp32 and bf16 (mixed precision: see `benchmarks/_throughput.py`); JAX must then
have its GPU backend too (`pip install -e ".[cuda]"`). The conversion, compile-cache,
torch-face-overhead and Lightning sections always run on the CPU.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import lightning_epoch
from benchmarks._common import available_cpus, thread_env

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = {
    "jax": "JAX face (jit)",
    "torch_face": "torch face (zoo.load)",
    "eager": "torch eager",
    "channels_last": "torch channels_last",
    "compile": "torch.compile",
}
CORE_MODELS = ("resnet18", "cnn")
# One common variant per family: the one people fine-tune most.
FAMILY_MODELS = (
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "vgg16",
    "alexnet",
    "squeezenet1_1",
    "densenet121",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "googlenet",
    "inception_v3",
    "vit_b_16",
    "swin_t",
    "maxvit_t",
)
TITLES = {"resnet18": "ResNet18", "cnn": "SmallCNN"}


DTYPES = ("fp32", "bf16")
# On every --quick report (results.md and the PNG): its tiny cases make ratios like 97x.
QUICK_CAVEAT = "--quick: tiny sizes and few repeats, numbers meaningless"


def _case(mode: str, batch: int, size: int, dtype: str) -> dict[str, Any]:
    return {"mode": mode, "batch": batch, "size": size, "dtype": dtype}


def title(model: str) -> str:
    return TITLES.get(model, model)


def default_models(quick: bool) -> list[str]:
    """ResNet18 and the CNN, and in a full run each family's common variant."""
    import zoo

    if quick:
        return list(CORE_MODELS)
    registered = set(zoo.list_models())
    return [*CORE_MODELS, *(m for m in FAMILY_MODELS if m in registered)]


def cases(model: str, quick: bool, dtypes: list[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for dtype in dtypes or ["fp32"]:
        if quick:  # ResNet18's train step alone compiles for ~10 s: only the CNN trains
            out += [_case("eval", 2, 32, dtype)]
            out += [_case("train", 2, 32, dtype)] * (model == "cnn")
            continue
        if model not in CORE_MODELS:  # a family's row: ImageNet size, one batch
            out += [_case("eval", 8, 224, dtype), _case("train", 8, 224, dtype)]
            continue
        big = 224 if model == "resnet18" else 32  # the CNN is a 32x32 model
        out += [
            *(_case("eval", b, big, dtype) for b in (1, 8, 32)),
            _case("eval", 128, 32, dtype),
            _case("train", 32, big, dtype),
            _case("train", 128, 32, dtype),
        ]
    return out


def case_label(row: dict[str, Any]) -> str:
    dtype = row.get("dtype", "fp32")
    return f"{row['mode']} b{row['batch']} {row['size']}x{row['size']}" + (
        f" {dtype}" if dtype != "fp32" else ""
    )


def resolve_device(device: str) -> str:
    """`auto`: `cuda` where torch sees a CUDA GPU, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    if device != "cuda":
        return "CPU"
    import torch

    return torch.cuda.get_device_name(0)


def run_worker(
    module: str,
    args: list[str],
    threads: int,
    timeout: float,
    env_extra: dict | None = None,
    device: str = "cpu",
) -> tuple[Any, str]:
    """Run `python -m module args` and return (its BENCH_RESULT, or None; an error text)."""
    env = {**thread_env(threads, device), **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["BENCH_T0"] = repr(time.time())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :]), ""
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return None, f"exit {proc.returncode}: {tail[-1] if tail else ''}"[:200]


def throughput(model: str, frameworks: list[str], opts: argparse.Namespace) -> list[dict]:
    """Rows for `model` under `frameworks`, all run in one worker process."""
    model_cases = cases(model, opts.quick, opts.dtypes)
    rows: list[dict[str, Any]] = []
    if "compile" in frameworks and opts.quick:
        frameworks = [fw for fw in frameworks if fw != "compile"]
        reason = "skipped (--quick: compiling takes minutes on CPU)"
        rows += [
            {"model": model, "framework": "compile", **c, "status": "skipped", "reason": reason}
            for c in model_cases
        ]
    reps = (
        ["--warmup", "1", "--min-runs", "3", "--max-runs", "5", "--min-time", "0"]
        if opts.quick
        else ["--warmup", "1", "--min-runs", "10", "--max-runs", "50", "--min-time", "2"]
    )
    args = ["--model", model, "--frameworks", ",".join(frameworks), "--device", opts.device]
    args += ["--cases", json.dumps(model_cases), *reps]
    result, error = run_worker(
        "benchmarks._throughput", args, opts.threads, opts.timeout, device=opts.device
    )
    if result is not None:
        return rows + result
    for fw in frameworks:
        status = "skipped" if fw == "compile" else "error"
        rows += [
            {"model": model, "framework": fw, **c, "status": status, "reason": error}
            for c in model_cases
        ]
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    eager = {
        (r["model"], case_label(r)): r["images_per_s"]
        for r in rows
        if r["framework"] == "eager" and r["status"] == "ok"
    }
    for r in rows:
        base = eager.get((r["model"], case_label(r)))
        if r["status"] == "ok" and base:
            r["ratio_vs_eager"] = r["images_per_s"] / base


def compile_cache(opts: argparse.Namespace) -> list[dict[str, Any]]:
    model, size = ("cnn", "32") if opts.quick else ("resnet18", "224")
    rows = []
    with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache_dir:
        for process in ("1st process (empty cache)", "2nd process (warm cache)"):
            args = ["--cache-dir", cache_dir, "--size", size, "--model", model]
            result, error = run_worker("benchmarks._cache", args, opts.threads, opts.timeout)
            rows.append({"process": process, "model": model, **(result or {"reason": error})})
    return rows


def conversion(opts: argparse.Namespace) -> dict[str, Any]:
    args = ["--repeats", "3" if opts.quick else "10"]
    # A fixed mmap threshold makes freed tensors go back to the OS, so RSS deltas are honest.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    result, error = run_worker("benchmarks._convert", args, opts.threads, opts.timeout, env)
    return result or {"status": "error", "reason": error, "rows": []}


def face_overhead(opts: argparse.Namespace) -> list[dict[str, Any]]:
    args = ["--quick"] if opts.quick else []
    result, error = run_worker("benchmarks.face_overhead", args, opts.threads, opts.timeout)
    return result or [{"status": "error", "reason": error}]


def metadata(opts: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("jax", "jaxlib", "equinox", "torch", "torchvision", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu}, {len(available_cpus())} CPU cores available, {platform.system()}",
        "python": platform.python_version(),
        "versions": versions,
        "threads": opts.threads,
        "thread_settings": (
            f"torch.set_num_threads({opts.threads}), OMP_NUM_THREADS={opts.threads}; "
            f"XLA_FLAGS='{thread_env(opts.threads)['XLA_FLAGS']}' and each worker pinned to "
            f"{opts.threads} CPU(s) with sched_setaffinity (XLA:CPU sizes its pool to them)"
        ),
        "quick": opts.quick,
        "device": opts.device,
        "device_name": device_name(opts.device),
        "dtypes": opts.dtypes,
        "elapsed_s": elapsed,
    }


# ---------------------------------------------------------------------------- reports


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        reason = row.get("reason", "")
        return reason if reason.startswith(row["status"]) else f"{row['status']}: {reason}"
    lo, hi = row["iqr"]
    ratio = f" **{row['ratio_vs_eager']:.2f}x**" if "ratio_vs_eager" in row else ""
    return f"{row['images_per_s']:.1f} [{lo:.1f}–{hi:.1f}]{ratio}"


def _grid(rows: list[dict[str, Any]], model: str) -> tuple[list[str], dict]:
    labels = list(dict.fromkeys(case_label(r) for r in rows if r["model"] == model))
    grid = {(case_label(r), r["framework"]): r for r in rows if r["model"] == model}
    return labels, grid


def _sections_markdown(results: dict[str, Any]) -> list[str]:
    """The compile cache and conversion sections."""
    out: list[str] = []
    out += [
        "## JAX persistent compilation cache (`jax_compilation_cache_dir`)",
        "",
        "Two fresh processes share one new cache directory; batch 2. Time to first",
        "logits counts from the parent's `Popen` (interpreter start and imports included).",
        "",
        "| process | model, size | to first logits (s) | imports (s) | zoo.load (s) "
        "| first forward call (s) | first train-step call (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["compile_cache"]:
        if "to_first_logits_s" in r:
            out.append(
                f"| {r['process']} | {title(r['model'])}, {r['size']}x{r['size']} | "
                f"{r['to_first_logits_s']:.2f} | "
                f"{r['imports_s']:.2f} | {r.get('load_s', float('nan')):.2f} | "
                f"{r['first_forward_call_s']:.2f} | "
                f"{r['first_train_step_call_s']:.2f} |"
            )
        else:
            out.append(f"| {r['process']} | error: {r.get('reason', '')} | | | | | |")
    conv = results["conversion"]
    out += [
        "",
        f"## Weight conversion (ResNet18, {conv.get('state_dict_mb', 0):.1f} MB of tensors)",
        "",
        "`weights_convert.load_state_dict` (torch -> equinox) and `to_state_dict` (equinox ->",
        "torch). Peak extra = VmHWM - VmRSS before the call (native memory included); retained",
        "= RSS growth while the result is alive. Aliased = arrays whose JAX buffer pointer equals",
        "the tensor's `data_ptr()` (the int64 `num_batches_tracked` counters are always cast).",
        "",
        "| direction | copy | median ms [min–max] | peak extra MB | retained MB | aliased |",
        "|---|---|---|---|---|---|",
    ]
    for r in conv.get("rows", []):
        peak = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        out.append(
            f"| {r['direction']} | {r['copy']} | {r['median_ms']:.1f} "
            f"[{r['min_ms']:.1f}–{r['max_ms']:.1f}] | {peak} | {r['retained_extra_mb']:.1f} | "
            f"{r['aliased']}/{r['arrays']} ({100 * r['aliased_share']:.0f}%) |"
        )
    if conv.get("status") == "error":
        out.append(f"\nConversion benchmark failed: {conv['reason']}")
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = [
        "# equizoo benchmarks" + f" ({QUICK_CAVEAT})" * meta["quick"],
        "",
        f"- Date: {meta['date']}; machine: {meta['machine']}; Python {meta['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Threads: {meta['threads']} for both frameworks: {meta['thread_settings']}",
        f"- Throughput on {meta['device_name']} ({meta['device']}), "
        f"{' and '.join(meta['dtypes'])}"
        + (" (bf16: mixed precision, torch.autocast vs a bf16 batch)" * ("bf16" in meta["dtypes"]))
        + f"; random weights and inputs; suite took {meta['elapsed_s']:.0f} s",
        "",
        "## Throughput (images/s)",
        "",
        "Median images/s [interquartile range] and **ratio to torch eager** (torchvision's",
        "model; for SmallCNN its torch twin `SmallCNNTorch`). eval = forward under",
        "`no_grad`/eval mode; train = forward, backward and SGD-momentum update.",
        "",
    ]
    rows = results["throughput"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        labels, grid = _grid(rows, model)
        runs = sorted({r["runs"] for r in rows if r["model"] == model and "runs" in r})
        out += [f"### {title(model)}", "", "| case | " + " | ".join(FRAMEWORKS.values()) + " |"]
        out.append("|---" * (len(FRAMEWORKS) + 1) + "|")
        for label in labels:
            cells = [_cell(grid.get((label, fw))) for fw in FRAMEWORKS]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        if runs:
            out += ["", f"Timed runs per cell: {runs[0]} to {runs[-1]} (after 1 warm-up call)."]
        out.append("")
    out += [
        "## Compile time: first call (s)",
        "",
        "Time of the first call (trace + compile + one run for JAX and torch.compile; eager's",
        "first call shows the cost of a plain first run). torch.compile uses `dynamic=True` and",
        "one compiled module per mode, so only the first case of each mode compiles.",
        "",
    ]
    for model in models:
        labels, grid = _grid(rows, model)
        out += [f"### {title(model)}", "", "| case | " + " | ".join(FRAMEWORKS.values()) + " |"]
        out.append("|---" * (len(FRAMEWORKS) + 1) + "|")
        for label in labels:
            cells = []
            for fw in FRAMEWORKS:
                r = grid.get((label, fw))
                cells.append(f"{r['first_call_s']:.2f}" if r and "first_call_s" in r else "–")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    if "compile_cache" in results:  # not with --throughput-only
        out += _sections_markdown(results)
    if "lightning_epoch" in results:
        out += ["", lightning_epoch.markdown(results["lightning_epoch"], meta["quick"])]
    if "face_overhead" in results:
        out += ["", *overhead_markdown(results["face_overhead"])]
    return "\n".join(out) + "\n"


def overhead_markdown(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Torch-face overhead over the bare jitted JAX function",
        "",
        "Median ms of the same model and input: `zoo.jit(zoo.forward)` over the model's OIHW",
        "weights against the torch face (`no_grad` forward; forward + `backward()` with",
        "`zero_grad` each call) and a jitted `jax.grad` of the summed logits. Targets: <= 3%",
        "(no grad) and <= 10% (with grad) at batch 32, <= 2 ms fixed cost per call. (The JAX",
        "face's own call reads a memoised HWIO copy of the conv weights, so it is faster still",
        "at small batches; the torch face cannot memoise one safely: `.data` and NumPy writes",
        "to its tensors leave no trace.)",
        "",
        "| model, input | JAX no-grad | torch face no-grad | overhead | JAX grad | torch face "
        "grad | overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "jax_no_grad_ms" not in r:
            out.append(f"| error: {r.get('reason', '')} | | | | | | |")
            continue
        a, b = r["jax_no_grad_ms"], r["face_no_grad_ms"]
        c, d = r["jax_grad_ms"], r["face_grad_ms"]
        out.append(
            f"| {r['model']} {'x'.join(map(str, r['shape']))} | {a:.2f} | {b:.2f} | "
            f"{b - a:+.2f} ms ({(b / a - 1) * 100:+.1f}%) | {c:.1f} | {d:.1f} | "
            f"{d - c:+.2f} ms ({(d / c - 1) * 100:+.1f}%) |"
        )
    return out


def chart_figure(results: dict[str, Any]):
    """The throughput ratios as a Matplotlib figure, one panel per model; a `--quick` run's
    says so in its title, as its results.md does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["throughput"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = min(len(models), 3)
    grid_rows = -(-len(models) // columns)
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(7 * columns, 4.5 * grid_rows), squeeze=False
    )
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models, strict=False):
        labels, grid = _grid(rows, model)
        width = 0.8 / len(FRAMEWORKS)
        for i, (fw, name) in enumerate(FRAMEWORKS.items()):
            values = [grid.get((lb, fw), {}).get("ratio_vs_eager", 0.0) for lb in labels]
            xs = [j + (i - (len(FRAMEWORKS) - 1) / 2) * width for j in range(len(labels))]
            ax.bar(xs, values, width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")  # ratios span 0.05x to 100x
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("images/s relative to torch eager")
        meta = results["meta"]
        ax.set_title(
            f"{title(model)}, {'+'.join(meta['dtypes'])} on {meta['device']}, "
            f"{meta['threads']} threads (missing bar = not run)"
        )
    axes[0][0].legend(fontsize=8)
    if results["meta"]["quick"]:
        # The PNG travels without results.md: a tiny run's absurd ratios must say what they are.
        fig.suptitle(QUICK_CAVEAT, color="darkred", fontsize=13, fontweight="bold")
    fig.tight_layout()
    return fig


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = chart_figure(results)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and repeats (< 60 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks")
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    parser.add_argument("--jobs", type=int, help="workers at once (default: 1, --quick: 2)")
    parser.add_argument("--timeout", type=float, help="seconds per worker (600, --quick 120)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="for the throughput"
    )
    parser.add_argument("--dtypes", help="comma-separated: fp32, bf16 (default: fp32; GPU: both)")
    parser.add_argument(
        "--models", help="comma-separated registered names (default: ResNet18, the CNN, families)"
    )
    parser.add_argument(
        "--frameworks", help=f"comma-separated, of {', '.join(FRAMEWORKS)} (default: all)"
    )
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the throughput table (no Lightning epochs, compile cache, conversion, overhead)",
    )
    opts = parser.parse_args(argv)
    frameworks = opts.frameworks.split(",") if opts.frameworks else list(FRAMEWORKS)
    if unknown := set(frameworks) - set(FRAMEWORKS):
        parser.error(f"unknown --frameworks {sorted(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    opts.device = resolve_device(opts.device)
    opts.dtypes = (
        opts.dtypes.split(",")
        if opts.dtypes
        else (list(DTYPES) if opts.device == "cuda" else ["fp32"])
    )
    if unknown := set(opts.dtypes) - set(DTYPES):
        parser.error(f"unknown --dtypes {sorted(unknown)}; choose from {', '.join(DTYPES)}")
    import zoo

    models = opts.models.split(",") if opts.models else default_models(opts.quick)
    if unknown := set(models) - set(zoo.list_models()):
        parser.error(f"unknown --models {sorted(unknown)}; see `zoo list`")
    opts.jobs = opts.jobs or (2 if opts.quick else 1)
    opts.timeout = opts.timeout or (120.0 if opts.quick else 600.0)
    start = time.time()
    # One process per (model, framework); --quick shares one process per model, to save the
    # ~4 s of imports per process.
    if opts.quick:
        groups = [(m, frameworks) for m in models]
    else:
        groups = [(m, [fw]) for m in models for fw in frameworks]
    others = not opts.throughput_only
    with ThreadPoolExecutor(opts.jobs) as pool:
        # Lightning epochs first: one process per (model, framework), one after the other, the
        # longest chain of the run; started last, it ran alone at the end of a --jobs 2 run.
        if others:
            lightning = pool.submit(lightning_epoch.collect, opts.quick, opts.threads, opts.timeout)
        futures = [pool.submit(throughput, m, fws, opts) for m, fws in groups]
        if others:
            conv = pool.submit(conversion, opts)
            cache = pool.submit(compile_cache, opts)  # its two processes run one after another
            overhead = pool.submit(face_overhead, opts)
        rows = []
        for (m, fws), future in zip(groups, futures, strict=True):
            rows += future.result()
            print(f"done: {m} / {','.join(fws)}", file=sys.stderr, flush=True)
    add_ratios(rows)
    results = {"meta": metadata(opts, time.time() - start), "throughput": rows}
    if others:
        results |= {
            "compile_cache": cache.result(),
            "conversion": conv.result(),
            "lightning_epoch": lightning.result(),
            "face_overhead": overhead.result(),
        }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=1))
    (opts.out / "results.md").write_text(markdown(results))
    chart(results, opts.out / "results.png")
    print(markdown(results))
    print(f"wrote {opts.out}/results.{{md,json,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
