"""timm interop of the networks timm's EfficientNet builder makes (EfficientNet, MobileNet V2
and V3, MNASNet) beyond the registry tests (which export each family's default variant, load
timm's state_dict back, and compare every variant's keys and shapes): every variant's
BatchNorm options as timm builds them, train mode (running statistics: the momentum), the
other variants' logits (`-m large`), dropout and stochastic depth in timm's places, the
options refused, MobileNet V3's `classifier.0` as timm's 1x1 `conv_head`, and MNASNet 1.3,
which timm has not."""

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm, randomize_parameters

import zoo

timm = pytest.importorskip("timm")

FAMILIES = ("efficientnet", "mobilenet", "mnasnet")
LAYOUTS = [
    n for n in zoo.list_models() if n.startswith(FAMILIES) and zoo.get_model_info(n).timm_layout
]
# The float64 parity of the small ones by default, of the others with `-m large`.
DEFAULT = ("mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "efficientnet_b0")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's float64 convolutions on these tiny inputs in one thread: with two on a busy
    machine they took 10x as long (1.5 s instead of 0.13 s for MNASNet's four passes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(name: str, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's model and timm's from its `timm_layout` (`kwargs`, torchvision's
    options, as the export records them), built on the meta device."""
    info = zoo.get_model_info(name)
    with torch.device("meta"):
        reference = info.torch_builder(**kwargs)
        architecture, _, args = info.timm_layout(reference.state_dict(), kwargs)
        theirs = timm.create_model(architecture, **args)
    return reference, theirs


def _norms(model: torch.nn.Module) -> list[tuple[float, float]]:
    return [(m.eps, m.momentum) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("name", LAYOUTS)
def test_timm_batchnorms_are_torchvisions(name):
    """Each BatchNorm's eps and momentum (B5-B7's and MobileNet V3's TensorFlow ones, V2's
    eps, MNASNet's momentum): the registry's logits test sees the default variant's only."""
    reference, theirs = _pair(name)
    assert _norms(theirs) == _norms(reference)


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.large) for n in LAYOUTS]
)
def test_timm_computes_torchvisions_logits_in_both_modes(name):
    """timm's network loaded from the layout's state_dict: torchvision's float64 logits in
    eval mode and in train mode (batch statistics), and its running statistics after the
    train step (the momentum), with the dropouts off."""
    info = zoo.get_model_info(name)
    off = {"dropout": 0.0} | ({"stochastic_depth_prob": 0.0} if "efficientnet" in name else {})
    torch.manual_seed(0)
    reference = randomize_parameters(info.torch_builder(num_classes=6, **off))
    reference = randomize_batchnorm(reference, 0, (33, 33)).double()
    architecture, state, args = info.timm_layout(reference.state_dict(), off)
    theirs = timm.create_model(architecture, num_classes=6, **args).double()
    theirs.load_state_dict(state)
    x = torch.randn(2, 3, 35, 33, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.eval()(x)
        assert float(expected.abs().max()) > 0.1
        assert float((theirs.eval()(x) - expected).abs().max()) <= 1e-10
        assert float((theirs.train()(x) - reference.train()(x)).abs().max()) <= 1e-10
    back, ours = info.checkpoint_adapter(theirs.state_dict(), {}), reference.state_dict()
    assert list(back) == list(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize(
    ("name", "architecture"),
    [("efficientnet_b0", "efficientnet_b0"), ("efficientnet_v2_s", "efficientnetv2_s")],
)
def test_efficientnet_dropout_and_stochastic_depth_are_timms(name, architecture):
    """`dropout` is timm's `drop_rate` (before the classifier), `stochastic_depth_prob` its
    `drop_path_rate`: the same rate on each residual block's branch (the same expression,
    bit for bit), V2's fused blocks (timm's `ConvBnAct`, `EdgeResidual`) included."""
    layout = zoo.get_model_info(name).timm_layout
    bn = {"bn_eps": 0.001} if "v2" in name else {}
    assert layout({}, {"dropout": 0.0, "stochastic_depth_prob": 0.0})[::2] == (architecture, bn)
    reference, theirs = _pair(name, dropout=0.25, stochastic_depth_prob=0.3)
    residual = [b for b in reference.features.modules() if getattr(b, "use_res_connect", False)]
    ours = [b.stochastic_depth.p for b in residual]
    skips = [b for b in theirs.blocks.modules() if getattr(b, "has_skip", False)]
    timms = [getattr(b.drop_path, "drop_prob", 0.0) for b in skips]  # rate 0: an Identity
    assert len(ours) > 8 and ours == timms and ours[-1] > 0.25
    assert theirs.drop_rate == reference.classifier[0].p == 0.25


def test_mobilenet_v3_head_is_timms_conv_head_and_options_without_timm_equivalent_are_refused(
    tmp_path,
):
    """torchvision's `classifier.0` `Linear` is timm's `conv_head`, a 1x1 convolution with
    bias, key by key and for NumPy arrays too (as the export probes it), and back; a timm
    key with no place in torchvision's network, a dilated or reduced-tail or wider network
    (timm's are other models) and an option no layout knows are refused."""
    info = zoo.get_model_info("mobilenet_v3_small")
    weight = np.arange(6.0).reshape(3, 2)
    _, renamed, _ = info.timm_layout({"classifier.0.weight": weight}, {})
    assert list(renamed) == ["conv_head.weight"]
    assert renamed["conv_head.weight"].shape == (3, 2, 1, 1)
    back = info.checkpoint_adapter({"conv_stem.weight": 0, **renamed}, {})
    assert list(back) == ["features.0.0.weight", "classifier.0.weight"]
    assert np.array_equal(back["classifier.0.weight"], weight)
    with pytest.raises(ValueError, match=r"no place for blocks\.6\.0\.conv\.weight"):
        info.checkpoint_adapter({"conv_stem.weight": 0, "blocks.6.0.conv.weight": 0}, {})
    assert info.checkpoint_adapter({"features.0.0.weight": 0}, {}) == {"features.0.0.weight": 0}
    for option in ({"dilated": True}, {"reduced_tail": True}, {"width_mult": 0.75}):
        with pytest.raises(ValueError, match="layout='torchvision'"):
            info.timm_layout({}, option)
    assert info.timm_layout({}, {"dilated": False, "width_mult": 1.0})[2] == {
        "bn_eps": 0.001,
        "bn_momentum": 0.01,
    }
    with pytest.raises(ValueError, match=r"efficientnet_b0 has no option for norm_eps=0\.001"):
        zoo.get_model_info("efficientnet_b0").timm_layout({}, {"norm_eps": 1e-3})
    # As an export meets it: the options the user records beside `config_kwargs()`.
    model = zoo.load("mobilenet_v3_small", framework="equinox", num_classes=4)
    with pytest.raises(ValueError, match=r"dilated=True: export this model with layout='torch"):
        zoo.save_pretrained(
            model, tmp_path / "x", name="mobilenet_v3_small", layout="timm",
            model_kwargs={"dilated": True},
        )  # fmt: skip


def test_mnasnet_1_3_has_no_timm_layout(tmp_path):
    """timm's MNASNets are 0.5, 0.75, 1.0 and 1.4 wide, their width fixed by name."""
    assert "mnasnet_130" not in timm.list_models("mnasnet*")
    assert {n for n in LAYOUTS if "mnasnet" in n} == {"mnasnet0_5", "mnasnet0_75", "mnasnet1_0"}
    model = zoo.load("mnasnet1_3", framework="equinox", num_classes=4)
    with pytest.raises(ValueError, match="'mnasnet1_3' has no timm layout"):
        zoo.save_pretrained(model, tmp_path / "x", name="mnasnet1_3", layout="timm")


def test_a_timm_checkpoint_of_other_batchnorm_eps_warns_and_the_zoos_export_does_not(tmp_path):
    """timm builds `mobilenetv3_small_100` with BatchNorm eps 1e-5 unless asked for
    torchvision's 1e-3: its checkpoint loads into torchvision's network with a
    `TimmCheckpointWarning` (the file cannot say which it was trained as); MobileNet V2's
    eps is timm's default, and the zoo's own `layout="timm"` export records `bn_eps`, so
    neither warns."""
    import warnings

    theirs = timm.create_model("mobilenetv3_small_100", num_classes=5)
    with pytest.warns(zoo.models.TimmCheckpointWarning, match=r"bn_eps=0\.001"):
        face = zoo.load("mobilenet_v3_small", weights=theirs.state_dict())
    folder = zoo.save_pretrained(face, tmp_path / "v3", layout="timm")
    v2 = timm.create_model("mobilenetv2_100", num_classes=5).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.models.TimmCheckpointWarning)
        zoo.load(f"local-dir:{folder}")
        zoo.load("mobilenet_v2", weights=v2)
