"""`zoo.load`, the registry and the weight sources it accepts."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import safetensors.torch
import torch
import torchvision
from conftest import max_abs_diff, randomize_batchnorm

import weights_convert as wc
import zoo


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(1)
    return randomize_batchnorm(torchvision.models.resnet18()).eval()


def test_list_models_and_patterns():
    names = zoo.list_models()
    assert {"cnn", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"} <= set(names)
    assert zoo.list_models("resnet*") == sorted(n for n in names if n.startswith("resnet"))


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'resnet18'"):
        zoo.load("resnet81")


def test_register_model_makes_an_architecture_loadable():
    zoo.register_model(
        "tiny_resnet",
        lambda key, **kw: zoo.models.ResNet(zoo.models.BasicBlock, (1, 1, 1, 1), key=key, **kw),
        overwrite=True,
        num_classes=5,
    )
    m = zoo.load("tiny_resnet", num_classes=5)
    assert m(jnp.zeros((2, 3, 32, 32))).shape == (2, 5)
    with pytest.raises(ValueError, match="registered already"):
        zoo.register_model("tiny_resnet", zoo.models.resnet18)


def test_fresh_init_is_seeded():
    a = zoo.load("cnn", framework="equinox")
    b = zoo.load("cnn", framework="equinox")
    c = zoo.load("cnn", framework="equinox", key=jax.random.key(1))
    assert bool(jnp.all(a.conv1.weight == b.conv1.weight))
    assert not bool(jnp.all(a.conv1.weight == c.conv1.weight))


def _assert_same_weights(model, state_dict):
    ours = wc.to_state_dict(model.model if isinstance(model, zoo.JaxModel) else model)
    assert all(torch.equal(ours[k], v) for k, v in state_dict.items())


def test_weights_from_state_dict_safetensors_and_pth(tv18, tmp_path, images):
    sd = tv18.state_dict()
    safetensors.torch.save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "timm_style.pth.tar.pt")
    x = images(2, 3, 48, 48)
    with torch.no_grad():
        ref = tv18(x)
    for source in [
        sd,
        tmp_path / "w.safetensors",
        str(tmp_path / "w.pth"),
        tmp_path / "timm_style.pth.tar.pt",
    ]:
        m = zoo.load("resnet18", weights=source)
        _assert_same_weights(m, sd)
        assert max_abs_diff(m(x.numpy()), ref) <= 1e-5


def test_state_dict_is_copied_not_shared(tv18):
    sd = tv18.state_dict()
    m = zoo.load("resnet18", weights=sd, framework="equinox")
    assert m.conv1.weight.unsafe_buffer_pointer() != sd["conv1.weight"].data_ptr()


def test_num_classes_and_in_chans_follow_the_checkpoint_or_adapt(tv18):
    sd = tv18.state_dict()
    assert zoo.load("resnet18", weights=sd).model.num_classes == 1000
    m = zoo.load("resnet18", weights=sd, num_classes=10, in_chans=1)
    assert m(jnp.zeros((1, 1, 32, 32))).shape == (1, 10)
    ten = dict(sd, **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    assert zoo.load("resnet18", weights=ten).model.num_classes == 10


def test_wrong_architecture_weights_fail_loudly():
    sd = torchvision.models.resnet34().state_dict()
    with pytest.raises(wc.ConversionError, match=r"unexpected key 'layer1\.2\.conv1\.weight'"):
        zoo.load("resnet18", weights=sd)


def test_non_finite_weights_fail_at_load(tv18):
    sd = dict(tv18.state_dict())
    sd["fc.weight"] = sd["fc.weight"].clone()
    sd["fc.weight"][0, 0] = float("inf")
    with pytest.raises(wc.ConversionError, match=r"non-finite values .* 'fc\.weight'"):
        zoo.load("resnet18", weights=sd, framework="torch")


def test_torchvision_weights_use_torchvisions_url_up_to_the_network(tv18, tmp_path, monkeypatch):
    """Only the download is mocked: torch's hub cache, its file naming and the
    `weights_only` load run for real."""
    requested = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        requested.append((url, hash_prefix))
        torch.save(tv18.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = zoo.load("resnet18", weights="IMAGENET1K_V1")
    # The hash prefix in torchvision's file name is checked (a mismatch is refused: see
    # test_hardening.py, which mocks only urlopen).
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert requested == [(url, "f37072fd")] and url.endswith("resnet18-f37072fd.pth")
    _assert_same_weights(m, tv18.state_dict())
    zoo.load("resnet18", weights="IMAGENET1K_V1")  # now from the cache: no second download
    assert len(requested) == 1


def test_to_torchvision_returns_the_native_model(tv18, images):
    x = images(2, 3, 40, 40)
    for framework in ("jax", "torch"):
        native = zoo.to_torchvision(
            zoo.load("resnet18", framework=framework, weights=tv18.state_dict())
        )
        assert type(native) is torchvision.models.ResNet
        with torch.no_grad():
            assert max_abs_diff(native(x), tv18(x)) == 0.0
    cnn = zoo.to_torchvision(zoo.load("cnn", in_chans=1))
    assert isinstance(cnn, zoo.models.SmallCNNTorch)


def test_bad_framework_and_bad_weights_type():
    with pytest.raises(ValueError, match="framework must be"):
        zoo.load("cnn", framework="tensorflow")
    with pytest.raises(TypeError, match="weights must be"):
        zoo.load("cnn", weights=42)
    with pytest.raises(zoo.WeightsError, match="no weights file"):
        zoo.load("cnn", weights="/nonexistent/w.safetensors")


def test_wrong_architecture_file_names_the_file(tmp_path):
    path = tmp_path / "r34.safetensors"
    safetensors.torch.save_file(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(wc.ConversionError, match=r"r34\.safetensors, loaded as 'resnet18'"):
        zoo.load("resnet18", weights=path)


def test_the_jax_path_never_imports_torch():
    # A JAX user's session: import, build, call, train. torch (~1 s to import) stays out
    # until a torch-facing name is used; then each such name resolves.
    script = """
import sys
import jax, jax.numpy as jnp, optax
import zoo, weights_convert
face = zoo.load("resnet18", num_classes=10)
face(jnp.zeros((2, 3, 32, 32))).block_until_ready()
model = zoo.train_mode(face.model)
opt = optax.sgd(0.1)
step = zoo.make_train_step(opt)
x, y = jnp.zeros((2, 3, 32, 32)), jnp.zeros(2, jnp.int32)
step(model, opt.init(zoo.trainable(model)), x, y, jax.random.key(0))
assert "torch" not in sys.modules, "the JAX path imported torch"
names = ["TorchModel", "WeightsError", "push_to_hub", "save_pretrained", "hub"]
assert set(names) <= set(dir(zoo)) and "load_state_dict" in dir(weights_convert)
assert isinstance(zoo.load("cnn", framework="torch"), zoo.TorchModel)
assert all(getattr(zoo, n) is not None for n in names)
assert zoo.models.SmallCNNTorch and weights_convert.load_state_dict and "torch" in sys.modules
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_unknown_attributes_still_raise_attribute_errors():
    for module, name in ((zoo, "TorchModle"), (zoo.models, "SmallCNNTorc"), (wc, "to_state")):
        with pytest.raises(AttributeError, match=f"has no attribute '{name}'"):
            getattr(module, name)


def test_checkpoints_load_where_torch_loads_them(tmp_path):
    """zoo.load strips DDP/Lightning prefixes before inferring num_classes, from dicts and
    files, accepts half precision and missing counters, and warns on strict=False."""
    torch.manual_seed(0)
    ten = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    sd = ten.state_dict()
    ddp = {f"module.{k}": v for k, v in sd.items()}
    assert zoo.load("resnet18", weights=ddp).num_classes == 10
    lightning = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}
    from_dict = zoo.load("resnet18", weights=lightning)
    torch.save(lightning, tmp_path / "last.ckpt")
    from_file = zoo.load("resnet18", weights=tmp_path / "last.ckpt")
    assert from_dict.num_classes == from_file.num_classes == 10
    _assert_same_weights(from_file, sd)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    no_counters = {k: v for k, v in half.items() if not k.endswith("num_batches_tracked")}
    loaded = zoo.load("resnet18", weights=no_counters, framework="equinox")
    assert loaded.conv1.weight.dtype == jnp.float32
    bf16 = zoo.load("resnet18", weights=sd, dtype=jnp.bfloat16, framework="equinox")
    assert bf16.fc.weight.dtype == jnp.bfloat16 and bf16.bn1.num_batches_tracked.dtype == jnp.int32
    partial = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.warns(UserWarning, match=r"(?s)strict=False.*fc\.bias"):
        zoo.load("resnet18", weights=partial, strict=False)
