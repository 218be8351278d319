"""The examples this suite owns run end to end in their quick mode (`--quick`) and finish with
a sensible last line. Each runs in a fresh subprocess, in a temporary working directory.
Every example answers `--help` before importing the frameworks."""

import re
from pathlib import Path

import pytest
from conftest import ROOT, run_python

EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
# What takes seconds to import; `--help` must not wait for it.
HEAVY = ("jax", "torch", "torchvision", "lightning", "sklearn", "zoo", "weights_convert")


def run_example(script: str, tmp_path: Path, *args: str) -> list[str]:
    result = run_python([str(EXAMPLES / script), "--quick", *args], cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed nothing"
    return lines


@pytest.mark.slow
def test_quickstart(tmp_path):
    lines = run_example("quickstart.py", tmp_path)
    assert lines[-1].startswith("quickstart OK"), lines[-1]
    assert any("reloaded equal: True" in line for line in lines)


@pytest.mark.slow
def test_convert_and_check(tmp_path):
    lines = run_example("convert_and_check.py", tmp_path)
    last = lines[-1]
    assert last.startswith("PASS: max abs diff"), last
    diff = float(re.search(r"max abs diff ([0-9.e+-]+)", last).group(1))
    assert diff < 1e-4
    assert last.endswith("round trip bit-exact: True")


@pytest.mark.slow
def test_jax_training_loop(tmp_path):
    lines = run_example("jax_training_loop.py", tmp_path)
    match = re.fullmatch(r"final held-out accuracy: ([0-9.]+) on (\d+) digits", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0.25  # chance is 0.1; one quick epoch reaches ~0.45
    assert int(match.group(2)) == 360


@pytest.mark.slow
def test_hub_roundtrip(tmp_path):
    lines = run_example("hub_roundtrip.py", tmp_path, "--out", str(tmp_path / "export"))
    assert lines[-1].startswith("PASS: round trip"), lines[-1]
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert (tmp_path / "export" / "config.json").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_parses_before_heavy_imports(script, tmp_path):
    """`--help` prints the usage, `--quick` included, without importing jax, torch or the zoo
    (checked in `sys.modules` after argparse exits, not by timing)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(EXAMPLES / script)!r}, '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "else:\n"
        "    raise AssertionError('--help did not exit')\n"
        f"print('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = run_python(["-c", code], cwd=tmp_path).stdout
    assert "usage:" in out and "--quick" in out, out
    assert out.splitlines()[-1] == "IMPORTED []", out.splitlines()[-1]
