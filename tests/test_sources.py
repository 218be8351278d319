"""Weight sources and bad input: torchvision and timm checkpoint files, code-running pickles,
corrupt files, mismatched architectures, incomplete folders. Every error names the file and
the fix."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from conftest import randomize_batchnorm

import weights_convert as wc
import zoo


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(5)
    return randomize_batchnorm(torchvision.models.resnet18()).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return zoo.save_pretrained(zoo.load("cnn"), tmp_path_factory.mktemp("src") / "cnn")


def _same(model, state_dict) -> bool:
    ours = wc.to_state_dict(model)
    return ours.keys() == state_dict.keys() and all(
        torch.equal(ours[k], v) for k, v in state_dict.items()
    )


def test_torchvision_checkpoint_file(tv18, tmp_path):
    # torchvision's download format: a plain state_dict pickle named <arch>-<hash>.pth.
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv18.state_dict(), path)
    assert _same(zoo.load("resnet18", weights=path, framework="equinox"), tv18.state_dict())


def test_timm_checkpoint_file(tv18, tmp_path):
    # timm's train.py checkpoints: {"state_dict": ..., "state_dict_ema": ..., "epoch": ...}.
    path = tmp_path / "model_best.pth.tar.pth"
    torch.save({"state_dict": tv18.state_dict(), "epoch": 90, "arch": "resnet18"}, path)
    assert _same(zoo.load("resnet18", weights=str(path), framework="equinox"), tv18.state_dict())


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(zoo.WeightsError, match=r"refused to load .*evil\.pth.*safetensors"):
        zoo.load("cnn", weights=path)
    assert not marker.exists()
    # Also through torch.save's zip format.
    torch.save({"conv1.weight": _Exploit(marker)}, tmp_path / "evil_zip.pt")
    with pytest.raises(zoo.WeightsError, match="refused to load"):
        zoo.load("cnn", weights=tmp_path / "evil_zip.pt")
    assert not marker.exists()


def test_truncated_and_corrupt_safetensors(exported, tmp_path):
    data = (exported / "model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(zoo.WeightsError, match=r"truncated\.safetensors .*export it again"):
        zoo.load("cnn", weights=truncated)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    with pytest.raises(zoo.WeightsError, match=r"corrupt\.safetensors"):
        zoo.load("cnn", weights=corrupt)
    folder = tmp_path / "folder"
    shutil.copytree(exported, folder)
    (folder / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(zoo.WeightsError, match=r"folder/model\.safetensors .*corrupt"):
        zoo.load(f"local-dir:{folder}")


def test_config_naming_an_unknown_architecture(exported, tmp_path):
    folder = tmp_path / "unknown"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = config["zoo"]["name"] = "resnet19"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(zoo.WeightsError, match=r"config\.json names architecture 'resnet19'.*"
                       r"Did you mean.*register_model"):  # fmt: skip
        zoo.load(f"local-dir:{folder}")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(zoo.WeightsError, match=r"config\.json is not readable JSON"):
        zoo.load(f"local-dir:{folder}")


def test_state_dict_of_another_architecture(tmp_path):
    r50 = torchvision.models.resnet50().state_dict()
    path = tmp_path / "r50.safetensors"
    safetensors.torch.save_file(r50, path)
    expected = r"does not fit the model:\n  unexpected key 'layer1\.0\.bn3"
    with pytest.raises(wc.ConversionError, match=expected):
        zoo.load("resnet18", weights=path)
    # In a folder whose config says resnet18, the error names both files.
    folder = zoo.save_pretrained(zoo.load("resnet18"), tmp_path / "r18")
    shutil.copy(path, folder / "model.safetensors")
    with pytest.raises(zoo.WeightsError, match=r"(?s)r18/model\.safetensors does not fit 'resnet18'"
                       r" as .*r18/config\.json describes it.*export the model again"):  # fmt: skip
        zoo.load(f"local-dir:{folder}")


def test_empty_and_missing_folders(tmp_path, exported):
    with pytest.raises(zoo.WeightsError, match=r"config\.json does not exist.*save_pretrained"):
        zoo.load(f"local-dir:{tmp_path}")
    with pytest.raises(zoo.WeightsError, match="no folder at"):
        zoo.load(f"local-dir:{tmp_path / 'nope'}")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(exported / "config.json", half)
    with pytest.raises(zoo.WeightsError, match=r"half/model\.safetensors does not exist"):
        zoo.load(f"local-dir:{half}")


def test_missing_file_in_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsError) as e:
        zoo.load("resnet18", weights="hf-hub:org/missing@v2")
    message = str(e.value)
    assert "'config.json' of hf-hub:org/missing@v2" in message
    assert "offline" in message and "HF_HOME" in message
    assert not os.listdir(tmp_path) or "models--org--missing" not in os.listdir(tmp_path / "hub")
