"""Export (`zoo.save_pretrained`, `zoo.push_to_hub`) and loading back (`hf-hub:`,
`local-dir:`). Only the network is mocked: the Hub cache layout, safetensors, torchvision and
timm run for real."""

import json
import os
import shutil
from pathlib import Path

import equinox as eqx
import huggingface_hub
import pytest
import safetensors.torch
import torch
import torchvision
from conftest import max_abs_diff, randomize_batchnorm

import weights_convert as wc
import zoo


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(3)
    return randomize_batchnorm(torchvision.models.resnet18()).eval()


@pytest.fixture(scope="module")
def r18(tv18):
    return zoo.load("resnet18", weights=tv18.state_dict())


@pytest.fixture(scope="module")
def exported(r18, tmp_path_factory):
    return zoo.save_pretrained(
        r18,
        tmp_path_factory.mktemp("export") / "resnet18-export",
        label_names=[f"class{i}" for i in range(1000)],
        license="bsd-3-clause",
        datasets=["imagenet-1k"],
        metrics={"top1": 69.76},
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _same_arrays(a, b) -> bool:
    sa = wc.to_state_dict(a.model if isinstance(a, zoo.JaxModel) else a)
    sb = dict(b.state_dict()) if isinstance(b, torch.nn.Module) else wc.to_state_dict(b.model)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_folder_layout_config_and_card(exported):
    assert sorted(os.listdir(exported)) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert (config["num_classes"], config["num_features"], config["global_pool"]) == (
        1000,
        512,
        "avg",
    )
    assert config["label_names"][:2] == ["class0", "class1"]
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 224, 224] and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert (cfg["crop_pct"], cfg["first_conv"], cfg["classifier"]) == (0.875, "conv1", "fc")
    assert config["zoo"] | {"version": None} == {
        "format": 1,
        "name": "resnet18",
        "num_classes": 1000,
        "in_chans": 3,
        "kwargs": {},
        "version": None,
    }
    card = (exported / "README.md").read_text()
    header = huggingface_hub.ModelCard(card).data
    assert header.library_name == "equizoo" and header.pipeline_tag == "image-classification"
    assert header.license == "bsd-3-clause" and header.datasets == ["imagenet-1k"]
    assert header.metrics == ["top1"] and "resnet18" in header.tags
    assert 'zoo.load("local-dir:' in card and "torchvision.models.resnet18" in card


def test_export_records_the_preprocessing_it_was_trained_with(tmp_path):
    grey = zoo.load("cnn", framework="equinox", in_chans=1)
    folder = zoo.save_pretrained(
        grey, tmp_path / "grey", name="cnn", pretrained_cfg={"mean": [0.3], "std": [0.25]}
    )
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"], cfg["input_size"][0]) == ([0.3], [0.25], 1)
    assert "mean [0.3] and std [0.25]" in (folder / "README.md").read_text()
    assert zoo.load(f"local-dir:{folder}").in_chans == 1
    for bad, match in [
        ({"mean": [0.3, 0.3]}, "one value per input channel"),
        ({"std": [0.0]}, "one positive value"),
        ({"num_classes": 3}, "not preprocessing fields"),
        ({"input_size": (3, 32, 32)}, r"\(1, height, width\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            zoo.save_pretrained(grey, tmp_path / "bad", name="cnn", pretrained_cfg=bad)
    assert not (tmp_path / "bad").exists()


def test_exported_weights_load_in_torchvision_strictly(exported, r18, tv18, images):
    sd = safetensors.torch.load_file(exported / "model.safetensors")
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    reference = tv18.state_dict()
    assert sd.keys() == reference.keys()  # safetensors stores keys sorted
    assert all(sd[k].shape == v.shape and sd[k].dtype == v.dtype for k, v in reference.items())
    native = torchvision.models.resnet18()
    native.load_state_dict(sd, strict=True)
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(native.eval()(x), r18(x.numpy())) <= 1e-5


def test_exported_weights_load_in_timm(exported, r18, images):
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "resnet18",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(exported / "model.safetensors")},
    ).eval()
    x = images(2, 3, 64, 64, seed=1)
    with torch.no_grad():
        theirs32 = model(x)
        theirs64 = model.double()(x.double())
    # Against timm's fp64 logits: timm's own fp32 result is 8.3e-6 from them on this input
    # and ours 5.8e-6, on opposite sides, so the two fp32 results are 1.02e-5 apart.
    own_error = max_abs_diff(theirs32, theirs64)
    assert max_abs_diff(r18(x.numpy()), theirs64) <= max(1e-5, 2 * own_error)
    assert max_abs_diff(theirs32, r18(x.numpy())) <= 2e-5


def test_timm_reads_a_torchvision_layout_export_only_where_it_is_timms_network(exported, tmp_path):
    """timm builds a torchvision-layout export by its `architecture`: a ResNet's is timm's
    `resnet18` (the same keys and network; `timm.create_model("local-dir:...")` reads it),
    while an Inception v3 with `transform_input` (timm has no such step: its `inception_v3`
    would load these keys strictly and compute another function) is named so that timm
    refuses it; the zoo reads both."""
    timm = pytest.importorskip("timm")
    assert json.loads((exported / "config.json").read_text())["architecture"] == "resnet18"
    timm.create_model(f"local-dir:{exported}", pretrained=True)
    face = zoo.load("inception_v3", num_classes=3, transform_input=True, aux_logits=False)
    folder = zoo.save_pretrained(face, tmp_path / "inception")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "inception_v3-torchvision-layout"
    with pytest.raises(RuntimeError, match=r"Unknown model \(inception_v3-torchvision-layout"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert zoo.load(f"local-dir:{folder}", framework="equinox").transform_input


def test_options_that_keep_every_shape_survive_the_export(tmp_path, images):
    """A dilation changes no weight's shape, so a checkpoint cannot tell it: the export
    records it (`config_kwargs`), `zoo.load` rebuilds it, and the card's torchvision code
    builds it too (MobileNet V3's `dilated`; ResNet's `replace_stride_with_dilation`)."""
    torch.manual_seed(0)
    reference = randomize_batchnorm(
        torchvision.models.mobilenet_v3_small(num_classes=3, dilated=True)
    ).eval()
    face = zoo.load("mobilenet_v3_small", weights=reference.state_dict(), dilated=True)
    folder = zoo.save_pretrained(face, tmp_path / "dilated")
    assert json.loads((folder / "config.json").read_text())["zoo"]["kwargs"]["dilated"] is True
    assert "dilated=True" in (folder / "README.md").read_text()
    back = zoo.load(f"local-dir:{folder}")
    x = images(2, 3, 48, 48, seed=2)
    with torch.no_grad():
        expected = reference(x)
    assert max_abs_diff(back(x.numpy()), expected) <= 1e-5
    dilated = [False, True, True]
    resnet = eqx.filter_eval_shape(
        lambda: zoo.load("resnet50", framework="equinox", replace_stride_with_dilation=dilated)
    )
    assert resnet.config_kwargs() == {"replace_stride_with_dilation": dilated}


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_local_dir_loads_back_bit_identical(exported, r18, framework, images):
    back = zoo.load(f"local-dir:{exported}", framework=framework)
    if framework == "torch":
        back.eval()  # built in train mode, as torch builds models
    assert back.name == "resnet18"
    assert _same_arrays(r18, back)
    x = images(1, 3, 32, 32)
    if framework == "jax":
        assert max_abs_diff(back(x.numpy()), r18(x.numpy())) == 0.0
    else:
        # The torch face runs the plain forward; the JAX face reads HWIO kernels, which at
        # 32x32 reorders the sums of the convolutions that run as matmuls (~1e-6 apart).
        plain = zoo.jit(zoo.forward)(zoo.eval_mode(r18.model), x.numpy())
        assert max_abs_diff(back(x).detach(), plain) == 0.0
        assert max_abs_diff(back(x).detach(), r18(x.numpy())) <= 1e-5


def test_torch_face_and_bare_equinox_export(tmp_path, images):
    face = zoo.load("cnn", framework="torch", in_chans=1, num_classes=4)
    folder = zoo.save_pretrained(face, tmp_path / "cnn")
    config = json.loads((folder / "config.json").read_text())
    assert config["zoo"]["in_chans"] == 1 and config["zoo"]["kwargs"] == {
        "drop_rate": 0.25,
        "bn_momentum": 0.3,
    }
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    back = zoo.load(f"local-dir:{folder}", framework="torch")
    assert back.state_dict().keys() == face.state_dict().keys()
    assert all(torch.equal(face.state_dict()[k], v) for k, v in back.state_dict().items())
    with pytest.raises(ValueError, match="pass name="):
        zoo.save_pretrained(zoo.load("cnn", framework="equinox"), tmp_path / "x")
    bare = zoo.save_pretrained(zoo.load("cnn", framework="equinox"), tmp_path / "bare", name="cnn")
    assert zoo.load(f"local-dir:{bare}").name == "cnn"


def test_named_architecture_takes_a_source_as_weights(exported, r18):
    assert _same_arrays(r18, zoo.load("resnet18", weights=f"local-dir:{exported}"))
    with pytest.raises(zoo.WeightsError, match="holds 'resnet18' weights, not 'resnet34'"):
        zoo.load("resnet34", weights=f"local-dir:{exported}")


def test_overrides_adapt_head_and_refuse_existing_target(exported, tmp_path):
    assert zoo.load(f"local-dir:{exported}", num_classes=7).model.num_classes == 7
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zoo.save_pretrained(zoo.load("cnn"), exported)
    target = zoo.save_pretrained(zoo.load("cnn"), tmp_path / "t")
    zoo.save_pretrained(zoo.load("cnn", num_classes=3), target, overwrite=True)
    assert zoo.load(f"local-dir:{target}").model.num_classes == 3
    assert sorted(os.listdir(tmp_path)) == ["t"]  # the replaced folder is gone too


def test_interrupted_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    target = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        zoo.save_pretrained(zoo.load("cnn"), target)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # no temporary folder left either
    with pytest.raises(zoo.WeightsError, match="no folder at"):
        zoo.load(f"local-dir:{target}")


# -- the Hub, up to the network ----------------------------------------------------------------


def _populate_hf_cache(hf_home: Path, repo_id: str, folder: Path, revision: str = "main"):
    """huggingface_hub's cache layout: refs/<revision> -> a commit, snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_hf_hub_loads_from_the_cache_offline(exported, r18, tmp_path, monkeypatch):
    _populate_hf_cache(tmp_path, "org/r18", exported, revision="v1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for framework in ("jax", "torch"):
        back = zoo.load("hf-hub:org/r18@v1", framework=framework)
        assert _same_arrays(r18, back)
    with pytest.raises(
        zoo.WeightsError, match=r"'config\.json' of hf-hub:org/r18: .*HF_HUB_OFFLINE"
    ):
        zoo.load("hf-hub:org/r18")  # only v1 is cached, not main


def test_hf_hub_offline_empty_cache_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsError) as e:
        zoo.load("hf-hub:org/absent")
    assert "'config.json' of hf-hub:org/absent" in str(e.value)
    assert "unset HF_HUB_OFFLINE" in str(e.value)


def test_hf_hub_offline_cache_missing_weights_file(exported, tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(exported / "config.json", partial)
    _populate_hf_cache(tmp_path / "home", "org/half", partial)
    with pytest.raises(zoo.WeightsError, match=r"'model\.safetensors' of hf-hub:org/half"):
        zoo.load("hf-hub:org/half", cache_dir=tmp_path / "home" / "hub", local_files_only=True)


def test_hf_hub_download_arguments(exported, r18, tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(exported / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    back = zoo.load("hf-hub:org/r18@refs/pr/1", cache_dir=tmp_path, token="tok")
    assert _same_arrays(r18, back)
    assert [c[:2] for c in calls] == [("org/r18", "config.json"), ("org/r18", "model.safetensors")]
    kwargs = calls[0][2]
    assert kwargs["revision"] == "refs/pr/1" and kwargs["cache_dir"] == tmp_path
    assert kwargs["token"] == "tok" and kwargs["local_files_only"] is False


def test_bad_hub_source_string():
    with pytest.raises(zoo.WeightsError, match="hf-hub:ORG/NAME"):
        zoo.load("hf-hub:just-a-name")
    with pytest.raises(TypeError, match="takes its weights from the source"):
        zoo.load("hf-hub:org/x", weights="torchvision")


def test_push_to_hub_uploads_exactly_the_export(r18, tmp_path, monkeypatch):
    seen = {}

    def create_repo(self, repo_id, **kwargs):
        seen["create_repo"] = (repo_id, kwargs, self.token)

    def create_branch(self, repo_id, **kwargs):
        seen["create_branch"] = (repo_id, kwargs)

    def upload_folder(self, **kwargs):
        seen["upload_folder"] = kwargs
        seen["files"] = _files(kwargs["folder_path"])
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    result = zoo.push_to_hub(
        r18, "org/r18", private=True, revision="dev", commit_message="first", token="tok"
    )
    assert result == "commit-info"
    assert seen["create_repo"] == (
        "org/r18",
        {"exist_ok": True, "private": True, "repo_type": "model"},
        "tok",
    )
    assert seen["create_branch"] == (
        "org/r18",
        {"branch": "dev", "exist_ok": True, "repo_type": "model"},
    )
    upload = seen["upload_folder"]
    assert (upload["repo_id"], upload["revision"], upload["create_pr"]) == ("org/r18", "dev", False)
    assert upload["commit_message"] == "first" and upload["repo_type"] == "model"
    expected = zoo.save_pretrained(r18, tmp_path / "expected", repo_id="org/r18")
    assert seen["files"] == _files(expected)
    assert 'zoo.load("hf-hub:org/r18"' in seen["files"]["README.md"].decode()
    assert not Path(upload["folder_path"]).exists()  # the temporary export is cleaned up
