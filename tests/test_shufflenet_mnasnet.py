"""What the registry tests do not cover for ShuffleNet V2 and MNASNet: ShuffleNet's channel
shuffle in both layouts; MNASNet's checkpoint versions (torchvision's weight tags as
torchvision's builder loads them, a version-1 checkpoint of another width refused), its torch
builder's loading of state_dicts without torch's `_metadata`, and its feature maps against
timm's `mnasnet_*` (another implementation of the same network, under other names)."""

import copy
import io
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_batchnorm, to_float64
from torchvision.models import _api as torchvision_api, shufflenetv2 as tv_shufflenetv2

import weights_convert as wc
import zoo
from zoo.models._shufflenetv2 import channel_shuffle


@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle_is_torchvisions_in_both_layouts(groups):
    x = torch.randn(2, 6 * groups, 3, 5, generator=torch.Generator().manual_seed(0))
    expected = tv_shufflenetv2.channel_shuffle(x, groups).numpy()
    nchw = channel_shuffle(jnp.asarray(x.numpy()), groups)
    nhwc = channel_shuffle(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), groups, channels_last=True)
    assert np.array_equal(np.asarray(nchw), expected)
    assert np.array_equal(np.asarray(nhwc).transpose(0, 3, 1, 2), expected)


# -- MNASNet's checkpoint versions --------------------------------------------------------------
def _served(state_dict) -> dict:
    """A state_dict as torch's hub returns a download: saved, then read with
    `weights_only=True`, which keeps torch's `_metadata` (the module versions)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _with_version(state_dict, version: int):
    state_dict._metadata[""]["version"] = version
    return state_dict


# The version each tag's file carries by its history: 1.0's (2019) predates `_version = 2`;
# 0.5's was retrained for version 2 (pytorch/vision#1224); 0.75's and 1.3's date from 2022.
FILE_VERSIONS = {"mnasnet0_5": 2, "mnasnet0_75": 2, "mnasnet1_0": 1, "mnasnet1_3": 2}


@pytest.mark.parametrize("name", list(FILE_VERSIONS))
def test_every_mnasnet_tag_loads_as_torchvisions_builder_loads_it(name, monkeypatch):
    """Each tag's download (mocked: the network only), through torchvision's own builder and
    through `zoo.load`, gives the same tensors under the same names."""
    torch.manual_seed(0)
    served = _with_version(
        _served(getattr(torchvision.models, name)().state_dict()), FILE_VERSIONS[name]
    )
    asked = []

    def download(url, *args, **kwargs):
        asked.append(url)
        return copy.deepcopy(served)  # keeps `_metadata`, as each download would carry it

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", download)
    info = zoo.get_model_info(name)
    enum = info.weights_enum()
    for tag in info.weight_tags():
        theirs = getattr(torchvision.models, name)(weights=enum[tag]).state_dict()
        ours = wc.to_state_dict(zoo.load(name, weights=tag, framework="equinox"))
        assert asked == [enum[tag].url] * 2
        asked.clear()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), tag


def test_a_version_1_mnasnet_checkpoint_of_another_width_is_refused(tmp_path):
    """torchvision loads a version-1 checkpoint of `alpha != 1.0` into its old 32/16 stem;
    the zoo builds version 2 only, and its converter names the stem's shapes."""
    tv = torchvision.models.mnasnet0_5()
    with pytest.raises(RuntimeError, match="size mismatch"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "new version" notice
        tv.load_state_dict(_with_version(tv.state_dict(), 1))  # swaps in the old stem
    old = tv.state_dict()  # the old stem's widths, saved as version 1 (as torchvision does)
    assert old._metadata[""]["version"] == 1 and old["layers.0.weight"].shape[0] == 32
    path = tmp_path / "mnasnet0.5_top1_67.592-7c6cb539b9.pth"
    torch.save(old, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torchvision.models.mnasnet0_5().load_state_dict(torch.load(path, weights_only=True))
    with pytest.raises(wc.ConversionError, match=r"'layers\.0\.weight': expected \(16, 3"):
        zoo.load("mnasnet0_5", weights=path)


def test_mnasnet_torch_builder_loads_state_dicts_without_metadata():
    """A state_dict without torch's `_metadata` (a safetensors file, `to_state_dict`), which
    torchvision's `MNASNet` refuses, loads into the registry's torch model as version 2,
    copies included; `zoo.to_torchvision` relies on it."""
    face = zoo.load("mnasnet0_5", num_classes=5)
    plain = wc.to_state_dict(face.model)
    assert not hasattr(plain, "_metadata")
    with pytest.raises(ValueError, match="version should be set to 1 or 2 instead of None"):
        torchvision.models.mnasnet0_5(num_classes=5).load_state_dict(plain)
    native = zoo.to_torchvision(face)
    assert isinstance(native, torchvision.models.MNASNet)
    assert all(torch.equal(native.state_dict()[k], v) for k, v in plain.items())
    built = zoo.get_model_info("mnasnet0_5").torch_builder(num_classes=5)
    twin = copy.deepcopy(built)
    twin.load_state_dict(plain)
    assert torch.equal(twin.classifier[1].weight, plain["classifier.1.weight"])
    assert not torch.equal(built.classifier[1].weight, plain["classifier.1.weight"])


# -- MNASNet's feature maps against timm's ------------------------------------------------------
def _timm_names(key: str) -> str:
    """A torchvision MNASNet state_dict key in timm's `mnasnet_*` names: the registry's
    `timm_layout`, which renames key by key (every width has the same names)."""
    (name,) = zoo.get_model_info("mnasnet0_5").timm_layout({key: None}, {})[1]
    return name


@pytest.mark.parametrize(
    ("name", "timm_name"), [("mnasnet0_75", "mnasnet_075"), ("mnasnet1_0", "mnasnet_100")]
)
def test_mnasnet_feature_info_is_timms(name, timm_name):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(timm_name, features_only=True, pretrained=False)
    template = eqx.filter_eval_shape(zoo.get_model_info(name).builder, key=jax.random.key(0))
    assert theirs.feature_info.channels() == [f.num_chs for f in template.feature_info]
    assert theirs.feature_info.reduction() == [f.reduction for f in template.feature_info]


def test_mnasnet_feature_maps_equal_timms():
    """The registry's timm test, with timm's names: the same weights in both, float64."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomize_batchnorm(torchvision.models.mnasnet0_5())
    trunk = {
        k: v
        for k, v in reference.state_dict().items()
        if not k.startswith(("layers.14", "layers.15", "classifier"))
    }
    theirs = timm.create_model("mnasnet_050", features_only=True, pretrained=False)
    theirs.load_state_dict({_timm_names(k): v for k, v in trunk.items()}, strict=True)
    model = zoo.load("mnasnet0_5", weights=reference.state_dict(), framework="equinox")
    assert theirs.feature_info.channels() == [f.num_chs for f in model.feature_info]
    assert theirs.feature_info.reduction() == [f.reduction for f in model.feature_info]
    x = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs.double().eval()(x.double())
    with jax.enable_x64(True):
        ours, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model.features_only())), jnp.asarray(x.double().numpy())
        )
    assert len(ours) == len(expected) == 5
    for a, b in zip(ours, expected, strict=True):
        assert float(np.abs(np.asarray(a) - b.numpy()).max()) <= 1e-10
