"""The Lightning examples run end to end at their --quick size (the CIFAR-10 one on its
offline synthetic stand-in: CIFAR-10 itself needs the network)."""

import json
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
    # One progress line per epoch and mode, with the epoch's numbers.
    epochs = re.findall(
        r"^\[(torch|jax)\] epoch (\d)/2: train loss ([0-9.]+), held-out loss ([0-9.]+), "
        r"held-out accuracy ([0-9.]+)",
        proc.stdout,
        re.M,
    )
    assert [(m, int(e)) for m, e, *_ in epochs] == [
        ("torch", 1),
        ("torch", 2),
        ("jax", 1),
        ("jax", 2),
    ], proc.stdout
    assert all(0 <= float(acc) <= 1 for *_, acc in epochs)
    # The last epoch's validation is the held-out set the summary scores.
    last = {m: float(acc) for m, _, _, _, acc in epochs}
    assert all(abs(last[m] - float(accs[m])) < 1e-3 for m in accs), (last, accs)
    assert "log_every_n_steps" not in proc.stderr, proc.stderr
    assert (tmp_path / "digits_cnn_curves.png").stat().st_size > 1000
    from zoo.lightning import digits_preprocessing

    trained_with = digits_preprocessing(size=16)  # --quick trains at 16x16
    for mode in ("torch", "jax"):
        # zoo.save_pretrained's folder: weights, config and model card.
        for name in ("model.safetensors", "config.json", "README.md"):
            assert (tmp_path / f"cnn_{mode}" / name).exists(), (mode, name)
        # They record the normalisation the model was trained with, not the registry's.
        cfg = json.loads((tmp_path / f"cnn_{mode}" / "config.json").read_text())
        assert cfg["pretrained_cfg"]["mean"] == list(trained_with["mean"]), cfg
        assert cfg["pretrained_cfg"]["std"] == list(trained_with["std"]), cfg
        card = (tmp_path / f"cnn_{mode}" / "README.md").read_text()
        assert f"mean {list(trained_with['mean'])}" in card, card
    # The exported and reloaded model scores what the trained one did.
    for line in proc.stdout.splitlines():
        if line.startswith("[") and "reloaded accuracy" in line:
            held, reloaded = re.findall(r"accuracy ([0-9.]+)", line)
            assert abs(float(held) - float(reloaded)) < 1e-3, line


@pytest.mark.slow
def test_finetune_cifar10_quick(tmp_path):
    proc = run_python(
        [str(EXAMPLES / "finetune_cifar10.py"), "--quick", "--out", str(tmp_path)],
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    # The stand-in says what it is: a newcomer must not read its accuracy as CIFAR-10's.
    assert lines[0].startswith("data: synthetic stand-in for CIFAR-10"), lines[0]
    summary = lines[-1]
    match = re.fullmatch(r"SUMMARY synthetic \(--quick, not CIFAR-10\) jax=([0-9.]+)", summary)
    assert match, summary
    assert float(match.group(1)) > 0.5, summary  # chance is 0.1
    assert list((tmp_path / "ckpt_jax").glob("*.ckpt")), "no Lightning checkpoint written"
    assert "log_every_n_steps" not in proc.stderr, proc.stderr
