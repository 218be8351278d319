"""RegNet beyond the registry-driven tests: the width arithmetic (`BlockParams`) against
torchvision's for every registered size and a seeded sweep, each size's module tree (keys,
shapes, convolution and BatchNorm settings) against torchvision's, torchvision's
initialisation, the named containers, parity of small custom RegNets (the X block, other
options), the feature maps against timm's RegNet, and the timm key maps (against timm's own
torchvision filter; the registry tests export every size's timm layout and load timm's
state_dict back).
"""

import copy
import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import eval_logits, max_abs_diff, randomize_batchnorm, to_float64
from torchvision.models import regnet as tv_regnet

import weights_convert as wc
import zoo
from zoo.layers import NamedSequential
from zoo.models import _regnet
from zoo.models._regnet import BlockParams, RegNet

NAMES = zoo.list_models("regnet_*")
FIELDS = ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides", "se_ratio")


def as_lists(params) -> dict:
    return {f: getattr(params, f) if f == "se_ratio" else list(getattr(params, f)) for f in FIELDS}


def torchvision_block_params(name: str, monkeypatch) -> tuple[dict, BlockParams]:
    """The keyword arguments torchvision's builder gives `from_init_params`, and its result
    (no model is built)."""
    calls = []
    real = tv_regnet.BlockParams.from_init_params.__func__

    def spy(cls, **kwargs):
        calls.append(kwargs)
        return real(cls, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(tv_regnet.BlockParams, "from_init_params", classmethod(spy))
        patch.setattr(tv_regnet, "_regnet", lambda params, weights, progress, **kw: params)
        params = getattr(tv_regnet, name)()
    (kwargs,) = calls
    return kwargs, params


def zoo_block_params(name: str, monkeypatch) -> tuple[dict, BlockParams]:
    """The same for the zoo's builder."""
    calls = []

    def spy(key, kwargs, **init_params):
        calls.append(init_params)
        return BlockParams.from_init_params(**init_params)

    with monkeypatch.context() as patch:
        patch.setattr(_regnet, "_regnet", spy)
        params = getattr(zoo.models, name)()
    (kwargs,) = calls
    return kwargs, params


def test_every_torchvision_regnet_is_registered():
    expected = sorted(n for n in tv_regnet.__all__ if n.startswith("regnet_"))
    assert NAMES == expected and len(NAMES) == 15
    assert [n for n in NAMES if not zoo.get_model_info(n).test_cfg["slow"]] == ["regnet_y_400mf"]
    for name in NAMES:
        info = zoo.get_model_info(name)
        assert info.torchvision_weights in tv_regnet.__all__, name
        assert info.timm_name is None  # timm's names differ (stem.conv, s1.b1): compared below


@pytest.mark.parametrize("name", NAMES)
def test_block_params_equal_torchvisions(name, monkeypatch):
    """The builder's settings and the widths, depths and group widths computed from them."""
    theirs_kwargs, theirs = torchvision_block_params(name, monkeypatch)
    ours_kwargs, ours = zoo_block_params(name, monkeypatch)
    assert ours_kwargs == theirs_kwargs
    assert as_lists(ours) == as_lists(theirs)
    # No stage boundary hangs on the last bit of a float32 log (torch's kernel varies with
    # the build): every block's log ratio is thousands of ulps from a rounding tie.
    depth, w_0, w_a, w_m = (ours_kwargs[k] for k in ("depth", "w_0", "w_a", "w_m"))
    ratios = np.log((np.arange(depth) * w_a + w_0) / w_0) / np.log(w_m)
    assert np.abs(ratios - np.floor(ratios) - 0.5).min() > 1e-3


def _sweep(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {
            "depth": int(rng.integers(1, 40)),
            "w_0": 8 * int(rng.integers(1, 60)),
            "w_a": round(float(rng.uniform(0, 250)), int(rng.integers(0, 4))),
            "w_m": round(float(rng.uniform(1.05, 3.5)), int(rng.integers(1, 4))),
            "group_width": int(rng.choice([1, 8, 16, 24, 48, 56, 112, 264])),
            "bottleneck_multiplier": float(rng.choice([1.0, 0.5, 2.0, 0.25])),
            "se_ratio": [None, 0.25][int(rng.integers(0, 2))],
        }


# Settings whose block widths fall within a float32 ulp of a rounding tie: NumPy's float32
# `pow` rounds these differently from torch. (Exact ties, such as w_m = 3.24 = 1.8 ** 2 with
# a width ratio of 1.8, depend on the last bit of torch's float32 log: not tested.)
_TIES = [
    {"depth": 24, "w_0": 40, "w_a": 281.28, "w_m": 2.268, "group_width": 8},
    {"depth": 54, "w_0": 400, "w_a": 47.273, "w_m": 2.9, "group_width": 8},
]


def test_block_params_sweep_equals_torchvisions():
    """Seeded random settings (and rounding ties) give torchvision's block parameters."""
    for init in [*_TIES, *_sweep(400)]:
        theirs = tv_regnet.BlockParams.from_init_params(**init)
        assert as_lists(BlockParams.from_init_params(**init)) == as_lists(theirs), init
    for bad in ({"w_a": -1.0}, {"w_0": 0}, {"w_m": 1.0}, {"w_0": 12}):
        init = {"depth": 4, "w_0": 16, "w_a": 8.0, "w_m": 2.0, "group_width": 8} | bad
        with pytest.raises(ValueError, match="Invalid RegNet settings"):
            tv_regnet.BlockParams.from_init_params(**init)
        with pytest.raises(ValueError, match="Invalid RegNet settings"):
            BlockParams.from_init_params(**init)


def _submodule(model, path: str):
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


# The 400MF sizes (Y and X blocks) by default, the others with `-m large` (2 s each).
TREE_NAMES = [
    n if n.endswith("_400mf") else pytest.param(n, marks=pytest.mark.large) for n in NAMES
]


@pytest.mark.parametrize("name", TREE_NAMES)
def test_module_tree_is_torchvisions(name, monkeypatch):
    """Every size, abstractly (no weights drawn on either side): the state_dict keys in
    order and their shapes, and each convolution's and BatchNorm's settings."""
    build = tv_regnet._regnet

    def on_meta(*args, **kwargs):  # the widths on the CPU, the modules on the meta device
        with torch.device("meta"):
            return build(*args, **kwargs)

    monkeypatch.setattr(tv_regnet, "_regnet", on_meta)
    reference = getattr(tv_regnet, name)(num_classes=10)
    model = eqx.filter_eval_shape(getattr(zoo.models, name), num_classes=10)
    ours = wc.named_arrays(model)
    theirs = reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in theirs.items())
    for path, module in reference.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            conv = _submodule(model, path)
            settings = ("stride", "padding", "dilation", "groups")
            assert [getattr(conv, s) for s in settings] == [getattr(module, s) for s in settings]
        elif isinstance(module, torch.nn.BatchNorm2d):
            bn = _submodule(model, path)
            assert (bn.eps, bn.momentum) == (module.eps, module.momentum), path
    assert model.num_features == reference.fc.in_features
    assert [f.module for f in model.feature_info] == [
        "stem",
        *(f"trunk_output.{n}" for n, _ in reference.trunk_output.named_children()),
    ]
    last_blocks = [list(stage.children())[-1] for stage in reference.trunk_output.children()]
    assert [f.num_chs for f in model.feature_info] == [
        reference.stem[0].out_channels,
        *(block.f.c[0].out_channels for block in last_blocks),
    ]
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 32]


def test_initialisation_is_torchvisions():
    """Conv weights `normal(0, sqrt(2 / fan_out))`, the squeeze-excitation biases at torch's
    default uniform, BatchNorm ones and zeros, `fc` `normal(0, 0.01)` with a zero bias:
    each tensor's spread against torchvision's (same distributions, not the same draws)."""
    torch.manual_seed(0)
    theirs = tv_regnet.regnet_y_1_6gf().state_dict()
    ours = wc.to_state_dict(zoo.models.regnet_y_1_6gf(key=jax.random.key(1)))
    assert ours.keys() == theirs.keys()
    for key, t in theirs.items():
        o = ours[key].double()
        t = t.double()
        if key.endswith("num_batches_tracked") or float(t.std()) == 0.0:
            assert torch.equal(o, t), key
            continue
        n = t.numel()
        assert abs(float(o.std() / t.std()) - 1) < 6 / n**0.5, key
        assert abs(float(o.mean() - t.mean())) < 6 * float(t.std()) / n**0.5, key
    model = zoo.models.regnet_y_1_6gf()
    for block in model.trunk_output.block1:
        fc1 = block.f.se.fc1
        bound = 1 / fc1.in_channels**0.5
        assert 0 < float(jnp.abs(fc1.bias).max()) <= bound


def test_named_containers_behave_as_pytrees():
    model = zoo.models.regnet_x_400mf(num_classes=4)
    stage = model.trunk_output.block2
    assert model.trunk_output.names == ("block1", "block2", "block3", "block4")
    assert stage.names[:2] == ("block2-0", "block2-1")
    assert stage["block2-1"] is stage[1] is getattr(stage, "block2-1")
    assert list(stage) == [stage[i] for i in range(len(stage))]
    with pytest.raises(AttributeError):
        stage.x = 1
    with pytest.raises(AttributeError, match="no member"):
        _ = stage.block9
    # eqx.tree_at reaches inside, by name as by index.
    replaced = eqx.tree_at(lambda m: m.trunk_output.block2[1].f.a[1].bias, model, jnp.ones(1))
    assert replaced.trunk_output.block2["block2-1"].f.a[1].bias.shape == (1,)
    # Copies and pickles keep the names (the treedef carries them).
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert jax.tree_util.tree_structure(clone) == jax.tree_util.tree_structure(model)
        assert wc.named_arrays(clone).keys() == wc.named_arrays(model).keys()
    with pytest.raises(ValueError, match="unique"):
        NamedSequential([("a", None), ("a", None)])


# Small RegNets through torchvision's own `RegNet`: the X block (no squeeze-excitation) with
# a bottleneck multiplier and three stages; a Y block whose group width exceeds the bottleneck
# width, with another stem width.
_CUSTOM = [
    (
        {"depth": 6, "w_0": 32, "w_a": 24.0, "w_m": 2.2, "group_width": 8},
        {"bottleneck_multiplier": 0.5},
        {"num_classes": 5},
    ),
    (
        {"depth": 5, "w_0": 16, "w_a": 12.5, "w_m": 1.8, "group_width": 64},
        {"se_ratio": 0.25},
        {"stem_width": 16},
    ),
]


def _custom_pair(init: dict, options: dict, seed: int = 0):
    torch.manual_seed(seed)
    reference = tv_regnet.RegNet(tv_regnet.BlockParams.from_init_params(**init), **options)
    randomize_batchnorm(reference, seed)
    model = RegNet(BlockParams.from_init_params(**init), key=jax.random.key(seed), **options)
    model, _ = wc.load_state_dict(model, reference.state_dict())
    return reference, model


@pytest.mark.parametrize(("widths", "block", "options"), _CUSTOM)
def test_custom_regnets_match_torchvision(widths, block, options, images):
    """Eval logits in fp32, and one train-mode step (logits, running statistics, counters)
    in fp64."""
    reference, model = _custom_pair(widths | block, options)
    x = images(3, 3, 23, 29)
    with torch.no_grad():
        ref32 = reference.eval()(x)
    assert max_abs_diff(eval_logits(model, jnp.asarray(x.numpy())), ref32) <= 1e-5
    reference.double().train()
    with torch.no_grad():
        ref = reference(x.double())
    with jax.enable_x64(True):
        logits, trained = eqx.filter_jit(lambda m, x: m(x))(
            zoo.train_mode(to_float64(model)), jnp.asarray(x.double().numpy())
        )
        assert float(np.abs(np.asarray(logits) - ref.numpy()).max()) <= 1e-10
        ours = wc.to_state_dict(trained)
    for key, value in reference.state_dict().items():
        assert float((ours[key].double() - value.double()).abs().max()) <= 1e-10, key


def test_feature_maps_equal_timms_regnet():
    """timm's `regnety_004` with these weights (in timm's names by the zoo's map) gives the
    same five maps (float64), and the same channels and reductions as `feature_info`."""
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    reference = randomize_batchnorm(tv_regnet.regnet_y_400mf(), 0)
    model = zoo.load("regnet_y_400mf", framework="equinox", weights=reference.state_dict())
    theirs = timm.create_model("regnety_004", features_only=True, pretrained=False)
    state = _regnet.torchvision_regnet_to_timm(reference.state_dict())
    theirs.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    assert theirs.feature_info.channels() == [f.num_chs for f in model.feature_info]
    assert theirs.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 32]
    x = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.double().eval()(x.double())
    with jax.enable_x64(True):
        maps, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model.features_only())), jnp.asarray(x.double().numpy())
        )
    assert len(maps) == len(expected) == 5
    for a, b in zip(maps, expected, strict=True):
        assert float(np.abs(np.asarray(a) - b.numpy()).max()) <= 1e-10


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnet_x_400mf"])
def test_timm_key_maps_agree_with_timms_filter_and_invert(name):
    """`torchvision_regnet_to_timm` gives the keys timm's own torchvision filter gives (the X
    block and the Y block's SE), in order; `timm_regnet_to_torchvision` inverts it, and each
    refuses what the other network has no place for."""
    pytest.importorskip("timm")
    from timm.models.regnet import _filter_fn

    state = getattr(tv_regnet, name)().state_dict()
    theirs = _regnet.torchvision_regnet_to_timm(state)
    assert list(theirs) == list(_filter_fn(dict(state)))
    back = _regnet.timm_regnet_to_torchvision(theirs)
    assert list(back) == list(state) and all(back[k] is state[k] for k in state)
    with pytest.raises(ValueError, match=r"no place for final_conv\.conv\.weight"):
        _regnet.timm_regnet_to_torchvision(theirs | {"final_conv.conv.weight": None})
    with pytest.raises(ValueError, match=r"no place for s1\.b0\.conv1\.conv\.weight"):
        _regnet.timm_regnet_to_torchvision({"s1.b0.conv1.conv.weight": None})
    with pytest.raises(ValueError, match=r"no place for trunk_output\.block1\.block2-0"):
        _regnet.torchvision_regnet_to_timm({"trunk_output.block1.block2-0.f.a.0.weight": None})
