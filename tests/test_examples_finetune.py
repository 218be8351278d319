"""The fine-tuning examples run end to end (the digits one at its --quick size)."""

import re

import pytest
from conftest import ROOT, run_python

EXAMPLES = ROOT / "examples"


@pytest.mark.slow
def test_finetune_digits_quick(tmp_path):
    proc = run_python(
        [str(EXAMPLES / "finetune_digits.py"), "--out", str(tmp_path)],
        cwd=tmp_path,
        env={"ZOO_EXAMPLE_QUICK": "1"},
    )
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY")]
    assert summary, proc.stdout
    accs = dict(re.findall(r"(torch|jax)=([0-9.]+)", summary[0]))
    assert set(accs) == {"torch", "jax"}
    for mode, acc in accs.items():
        assert float(acc) > 0.5, (mode, summary)  # two short epochs: well above chance (0.1)
    assert (tmp_path / "digits_cnn_curves.png").stat().st_size > 1000
    for mode in ("torch", "jax"):
        # zoo.save_pretrained's folder: weights, config and model card.
        for name in ("model.safetensors", "config.json", "README.md"):
            assert (tmp_path / f"cnn_{mode}" / name).exists(), (mode, name)
    # The exported and reloaded model scores what the trained one did.
    for line in proc.stdout.splitlines():
        if line.startswith("[") and "reloaded accuracy" in line:
            held, reloaded = re.findall(r"accuracy ([0-9.]+)", line)
            assert abs(float(held) - float(reloaded)) < 1e-3, line


def test_finetune_cifar10_help(tmp_path):
    proc = run_python([str(EXAMPLES / "finetune_cifar10.py"), "--help"], cwd=tmp_path)
    assert "--mode" in proc.stdout and "--weights" in proc.stdout
