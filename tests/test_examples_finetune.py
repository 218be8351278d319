"""The fine-tuning examples run end to end (the digits one at its --quick size)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.mark.slow
def test_finetune_digits_quick(tmp_path):
    env = os.environ | {"ZOO_EXAMPLE_QUICK": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "finetune_digits.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY")]
    assert summary, proc.stdout
    accs = dict(re.findall(r"(torch|jax)=([0-9.]+)", summary[0]))
    assert set(accs) == {"torch", "jax"}
    for mode, acc in accs.items():
        assert float(acc) > 0.5, (mode, summary)  # two short epochs: well above chance (0.1)
    assert (tmp_path / "digits_cnn_curves.png").stat().st_size > 1000
    for mode in ("torch", "jax"):
        assert list((tmp_path / f"cnn_{mode}").glob("*.safetensors")), mode
    # The exported and reloaded model scores what the trained one did.
    for line in proc.stdout.splitlines():
        if line.startswith("[") and "reloaded accuracy" in line:
            held, reloaded = re.findall(r"accuracy ([0-9.]+)", line)
            assert abs(float(held) - float(reloaded)) < 1e-3, line


def test_finetune_cifar10_help():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "finetune_cifar10.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--mode" in proc.stdout and "--weights" in proc.stdout
