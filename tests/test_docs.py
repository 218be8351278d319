"""The documentation runs: every ```python block of README.md and docs/**/*.md executes, and
the MkDocs site builds with `--strict` (broken links, anchors or API references fail).

A file's blocks run in order, in one namespace, with a temporary folder of its own as the
working directory (files the examples write land there); the files run one after another in
one fresh subprocess. A block preceded by the line
`<!-- no-run -->` is skipped (network-only operations such as pushing to the Hub).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_python

NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
ALL_DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order, without those marked no-run."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if before != NO_RUN:
            blocks.append(match.group(1))
    return blocks


# Only files that have code to run become test cases: a skipped case must not pass as a test.
DOC_FILES = [p for p in ALL_DOC_FILES if python_blocks(p.read_text(encoding="utf-8"))]


def test_readme_and_quickstart_have_runnable_blocks():
    assert ROOT / "README.md" in DOC_FILES and ROOT / "docs" / "index.md" in DOC_FILES


def test_extractor():
    text = (
        "intro\n```python\na = 1\n```\n\n<!-- no-run -->\n```python\nraise SystemExit(1)\n```\n"
        "```bash\nls\n```\n```python\nb = a + 1\n```\n"
    )
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def _script(files: list[Path], root: Path) -> str:
    # Each file in its own namespace and working directory, each block compiled under its own
    # name, so a traceback says which file and block failed.
    lines = ["import os"]
    for n, path in enumerate(files):
        lines += [
            f"os.makedirs({str(root / str(n))!r}); os.chdir({str(root / str(n))!r})",
            "namespace = {'__name__': '__main__'}",
        ]
        for i, block in enumerate(python_blocks(path.read_text(encoding="utf-8")), 1):
            name = f"{path.relative_to(ROOT)} [python block {i}]"
            lines.append(f"exec(compile({block!r}, {name!r}, 'exec'), namespace)")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_code_blocks_run(tmp_path: Path):
    """Every file's blocks, in one interpreter (a fresh one per file cost 6 s of imports
    each): the files in order, each with its own namespace and working directory."""
    run_python(["-c", _script(DOC_FILES, tmp_path)], cwd=tmp_path, timeout=900)


def _mkdocs() -> list[str]:
    exe = Path(sys.executable).with_name("mkdocs")
    if exe.exists():
        return [str(exe)]
    if shutil.which("mkdocs"):
        return ["mkdocs"]
    pytest.fail("mkdocs is not installed: pip install -e '.[dev]'")


def test_site_builds_strict(tmp_path: Path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [*_mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "zoo" / "index.html").exists()
