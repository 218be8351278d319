"""`python -m benchmarks.run --quick` end to end: the three reports exist and hold positive
numbers for every expected row (the Lightning-epoch rows included). No timing threshold is
asserted."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --timeout: a worker's limit, raised from --quick's 120 s, which a worker can need on 2
    # cores shared with other work (a plumbing check must not fail on load).
    # fp32 only: the bf16 paths of both faces are tested in test_faces and test_torch_face.
    # The CNN only: ResNet18's rows run the same code, at seconds of compiles each.
    # --frameworks: all but torch.compile (which --quick would skip anyway).
    frameworks = "--frameworks=jax,torch_face,eager,channels_last"
    command = ["benchmarks.run", "--quick", "--dtypes=fp32", "--models=cnn", frameworks]
    command.append("--timeout=400")
    subprocess.run(
        [sys.executable, "-m", *command, f"--out={tmp_path}"],
        cwd=ROOT,
        check=True,
        timeout=1200,
        capture_output=True,
    )
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    meta = results["meta"]
    assert meta["quick"] and meta["threads"] > 0
    assert meta["device"] == "cpu" and meta["dtypes"] == ["fp32"]

    rows = {(r["model"], r["framework"], r["mode"], r["dtype"]): r for r in results["throughput"]}
    expected = [("cnn", "eval"), ("cnn", "train")]
    for (model, mode), dtype in itertools.product(expected, ("fp32",)):
        for framework in ("jax", "torch_face", "eager", "channels_last"):
            row = rows[model, framework, mode, dtype]
            assert row["status"] == "ok", row
            assert row["images_per_s"] > 0 and row["first_call_s"] > 0 and row["runs"] >= 3
            assert row["ratio_vs_eager"] > 0
        assert (model, "compile", mode, dtype) not in rows  # not asked for
    assert len(results["throughput"]) == len(rows) == 2 * 4

    cache = results["compile_cache"]
    assert len(cache) == 2 and all(r["to_first_logits_s"] > 0 for r in cache)
    assert all(r["load_s"] > 0 for r in cache)
    (overhead,) = results["face_overhead"]  # --quick: the CNN at batch 1 only
    assert overhead["model"] == "cnn"
    for key in ("jax_no_grad_ms", "face_no_grad_ms", "jax_grad_ms", "face_grad_ms"):
        assert overhead[key] > 0, key
    conversion = results["conversion"]["rows"]
    assert {(r["direction"], r["copy"]) for r in conversion} == {
        (d, c) for d in ("torch -> equinox", "equinox -> torch") for c in (False, True)
    } | {("torch -> equinox, check_finite=False", False)}
    for r in conversion:
        assert r["median_ms"] > 0 and r["retained_extra_mb"] is not None
        assert r["arrays"] > 0 and r["aliased"] == pytest.approx(r["aliased_share"] * r["arrays"])
        assert r["aliased"] > 0 if not r["copy"] else r["aliased"] == 0
    # The Lightning epochs: the CNN in all four setups (ResNet18 skipped in --quick).
    lightning = {(r["model"], r["framework"]): r for r in results["lightning_epoch"]}
    for framework in ("plain", "face_plain", "zoo_torch", "zoo_jax"):
        row = lightning["cnn", framework]
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["first_epoch_s"] > 0
        assert row["steps_per_epoch"] > 0 and len(row["epoch_s"]) >= 1
        assert row["ratio_vs_plain"] > 0 and math.isfinite(row["final_train_loss"])
        assert lightning["resnet18", framework]["status"] == "skipped"
    assert lightning["cnn", "plain"]["ratio_vs_plain"] == 1.0
    report = (tmp_path / "results.md").read_text()
    assert "One Lightning training epoch" in report
    assert "| train b2 32x32 |" in report  # fp32 rows carry no dtype
    assert "Torch-face overhead" in report
    # A --quick run's caveat is on the chart too (the PNG travels without results.md).
    assert report.startswith("# equizoo benchmarks (--quick: tiny sizes and few repeats")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.run import chart_figure

    assert "numbers meaningless" in chart_figure(results).get_suptitle()
    from benchmarks import run

    # --throughput-only's report (a family sweep): the table, no other section.
    alone = run.markdown({"meta": results["meta"], "throughput": results["throughput"]})
    assert "| train b2 32x32 |" in alone and "compilation cache" not in alone
    with pytest.raises(SystemExit):
        run.main(["--frameworks", "jax,nope"])
    results["meta"]["quick"] = False
    assert chart_figure(results).get_suptitle() == ""


@pytest.mark.slow
def test_profile_step_names_the_xla_ops(tmp_path: Path) -> None:
    """`benchmarks.profile_step` at a tiny size: its table lists op kinds with their times."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_step", "--size", "32", "--batch", "4"],
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    rows = [line.split("|")[1:3] for line in result.stdout.splitlines() if "_fusion |" in line]
    assert rows and all(float(ms) >= 0 for _, ms in rows), result.stdout
    assert "(unnamed: convolutions, waits)" in result.stdout


def test_throughput_worker_refuses_a_gpu_run_on_a_cpu_only_jax() -> None:
    """`--device cuda` with JAX on the CPU must fail with the install hint, not run on the CPU
    and report CPU numbers as GPU ones."""
    code = (
        "import jax; from benchmarks._throughput import Runner\n"
        "assert jax.default_backend() == 'cpu'\n"
        "try:\n    Runner('cnn', 'jax', 'cuda')\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "asked for cuda but JAX's default backend is cpu" in out
    assert "pip install -e '.[cuda]'" in out
