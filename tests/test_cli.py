"""The `zoo` command line: `zoo.cli.main([...])` in-process, and the installed script once."""

import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch

import weights_convert as wc
import zoo
from zoo.cli import main


@pytest.fixture(scope="module")
def cnn():
    return zoo.load("cnn", framework="equinox", num_classes=3)


@pytest.fixture(scope="module")
def cnn_pth(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cnn.pth"
    torch.save(dict(wc.to_state_dict(cnn)), path)
    return path


def _same(model, path: Path) -> bool:
    theirs = safetensors.torch.load_file(path)
    ours = wc.to_state_dict(model)
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_list(capsys):
    assert main(["list", "resnet1*"]) == 0
    assert capsys.readouterr().out.split() == ["resnet101", "resnet152", "resnet18"]
    assert main(["list", "nothing*"]) == 1
    assert "no architecture matches" in capsys.readouterr().err


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "hf-hub:ORG/NAME" in out and "convert" in out and "examples:" in out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["convert", "only-one-arg"]) == 2
    capsys.readouterr()


def test_info_registry_name_and_folder(cnn, tmp_path, capsys):
    assert main(["info", "cnn"]) == 0
    out = capsys.readouterr().out
    assert "architecture: cnn" in out and "parameters:   94,762" in out
    assert '"classifier": "fc"' in out
    folder = zoo.save_pretrained(cnn, tmp_path / "exp", name="cnn")
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"source:       {folder}" in out and '"num_classes": 3' in out


def test_convert_file_to_folder_and_safetensors(cnn, cnn_pth, tmp_path, capsys):
    out_dir = tmp_path / "exported"
    assert main(["convert", str(cnn_pth), str(out_dir), "--arch", "cnn"]) == 0
    assert _same(cnn, out_dir / "model.safetensors")
    assert json.loads((out_dir / "config.json").read_text())["zoo"]["num_classes"] == 3
    # Folder -> single file, through the local-dir: source.
    single = tmp_path / "single.safetensors"
    assert main(["convert", f"local-dir:{out_dir}", str(single)]) == 0
    assert _same(cnn, single)
    assert main(["convert", f"local-dir:{out_dir}", str(single)]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", f"local-dir:{out_dir}", str(single), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "single.safetensors"]


def test_convert_from_the_hub(cnn, tmp_path, monkeypatch):
    folder = zoo.save_pretrained(cnn, tmp_path / "repo", name="cnn")
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(folder / name)
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["convert", "hf-hub:org/cnn", str(tmp_path / "out.safetensors")]) == 0
    assert _same(cnn, tmp_path / "out.safetensors")


def test_convert_errors_are_one_line_without_traceback(cnn_pth, tmp_path, capsys):
    assert main(["convert", str(cnn_pth), str(tmp_path / "o")]) == 2  # no --arch
    err = capsys.readouterr().err
    assert "pass --arch NAME" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(cnn_pth), str(tmp_path / "o"), "--arch", "resnet18"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo convert: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["convert", str(tmp_path / "none.pth"), "x", "--arch", "cnn"]) == 1
    assert "no weights file at" in capsys.readouterr().err
    assert main(["info", "resnet81"]) == 1
    assert "Did you mean 'resnet18'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_push(cnn, tmp_path, monkeypatch, capsys):
    folder = zoo.save_pretrained(cnn, tmp_path / "exp", name="cnn")
    seen = {}
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: seen.update(repo=kw)
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_branch", lambda self, repo_id, **kw: seen.update(branch=kw)
    )

    def upload_folder(self, **kw):
        files = {f.name: f.read_bytes() for f in Path(kw["folder_path"]).iterdir()}
        seen.update(upload=kw, token=self.token, files=files)
        return huggingface_hub.CommitInfo(
            commit_url="https://huggingface.co/org/cnn/commit/abc",
            commit_message=kw["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    args = ["push", str(folder), "org/cnn", "--private", "--revision", "dev", "--token", "t"]
    assert main(args) == 0
    assert "https://huggingface.co/org/cnn/commit/abc" in capsys.readouterr().out
    assert seen["repo"]["private"] is True and seen["token"] == "t"
    assert seen["branch"]["branch"] == "dev"
    # A checked copy of the export's files is uploaded (see test_hardening.py).
    assert seen["files"] == {f.name: f.read_bytes() for f in folder.iterdir()}
    assert seen["upload"]["revision"] == "dev"
    assert main(["push", str(tmp_path), "org/cnn"]) == 1  # not an exported folder
    assert "config.json does not exist" in capsys.readouterr().err


def test_installed_console_script():
    script = Path(sys.executable).parent / "zoo"
    result = subprocess.run(
        [str(script), "list", "cnn"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cnn"]
