"""DenseNet beyond the registry-driven tests: each size's module tree against torchvision's,
torchvision's initialisation, its old-style checkpoints (`denselayer1.norm.1.weight`) loaded
through a mocked download, small custom DenseNets against torchvision in train mode (with
and without `memory_efficient`), the dense layers' dropout, and the feature maps against
timm's `features_only` DenseNet.
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
from torchvision.models import densenet as tv_densenet

import weights_convert as wc
import zoo
from zoo.layers import Dropout
from zoo.models._densenet import DenseBlock, DenseLayer, DenseNet, torchvision_checkpoint

NAMES = zoo.list_models("densenet*")


def _submodule(model, path: str):
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def test_every_torchvision_densenet_is_registered():
    expected = sorted(n for n in tv_densenet.__all__ if n.startswith("densenet"))
    assert NAMES == expected and len(NAMES) == 4
    assert [n for n in NAMES if not zoo.get_model_info(n).test_cfg["slow"]] == ["densenet121"]
    for name in NAMES:
        info = zoo.get_model_info(name)
        assert info.torchvision_weights in tv_densenet.__all__, name
        assert info.torchvision_checkpoint is torchvision_checkpoint
        # timm's `features_only` DenseNet flattens `features` (`features_norm0.weight`), so
        # the registry's timm test cannot load torchvision's keys: compared below instead.
        assert info.timm_name is None


@pytest.mark.parametrize("name", NAMES)
def test_module_tree_is_torchvisions(name):
    """Every size, abstractly (no weights drawn on either side): the state_dict keys in order
    and their shapes, each convolution's, pool's and BatchNorm's settings, `feature_info`."""
    with torch.device("meta"):
        reference = getattr(tv_densenet, name)(num_classes=10)
    model = eqx.filter_eval_shape(getattr(zoo.models, name), num_classes=10)
    ours, theirs = wc.named_arrays(model), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in theirs.items())
    assert model.features.names == tuple(n for n, _ in reference.features.named_children())
    for path, module in reference.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            conv = _submodule(model, path)
            settings = ("stride", "padding", "dilation", "groups")
            assert [getattr(conv, s) for s in settings] == [getattr(module, s) for s in settings]
        elif isinstance(module, torch.nn.BatchNorm2d):
            bn = _submodule(model, path)
            assert (bn.eps, bn.momentum) == (module.eps, module.momentum), path
        elif isinstance(module, torch.nn.MaxPool2d | torch.nn.AvgPool2d):
            pool = _submodule(model, path)
            pair = torch.nn.modules.utils._pair
            assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (
                pair(module.kernel_size),
                pair(module.stride),
                pair(module.padding),
                module.ceil_mode,
            ), path
    assert model.num_features == reference.classifier.in_features
    # A dense block's output is what its transition normalises.
    block_out = [getattr(reference.features, f"transition{i}").norm.num_features for i in (1, 2, 3)]
    assert [(f.module, f.num_chs, f.reduction) for f in model.feature_info] == [
        ("features.relu0", reference.features.conv0.out_channels, 2),
        ("features.denseblock1", block_out[0], 4),
        ("features.denseblock2", block_out[1], 8),
        ("features.denseblock3", block_out[2], 16),
        ("features.norm5", reference.features.norm5.num_features, 32),
    ]


def test_initialisation_is_torchvisions():
    """Convolutions `kaiming_normal_` (fan in), BatchNorm ones and zeros, the classifier's
    weight torch's default uniform and its bias zero: each tensor's spread against
    torchvision's (same distributions, not the same draws)."""
    torch.manual_seed(0)
    theirs = tv_densenet.densenet121().state_dict()
    ours = wc.to_state_dict(zoo.models.densenet121(key=jax.random.key(1)))
    assert ours.keys() == theirs.keys()
    for key, t in theirs.items():
        o, t = ours[key].double(), t.double()
        if key.endswith("num_batches_tracked") or float(t.std()) == 0.0:
            assert torch.equal(o, t), key
            continue
        n = t.numel()
        assert abs(float(o.std() / t.std()) - 1) < 6 / n**0.5, key
        assert abs(float(o.mean() - t.mean())) < 6 * float(t.std()) / n**0.5, key
    bound = 1 / theirs["classifier.weight"].shape[1] ** 0.5
    assert float(ours["classifier.weight"].abs().max()) <= bound


def _old_style(state_dict: dict) -> dict:
    """A state_dict as torchvision's DenseNet checkpoints (ported from LuaTorch) store it:
    `denselayerN.norm.1.weight` for `denselayerN.norm1.weight`, and no `num_batches_tracked`
    (the checkpoints predate the counter)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if any(p.startswith("denselayer") for p in parts) and parts[-2][-1] in "12":
            parts[-2:-1] = [parts[-2][:-1], parts[-2][-1]]
        out[".".join(parts)] = value
    return out


class _Weights:
    """What torchvision's `_load_state_dict` reads of a weights enum member."""

    def __init__(self, state_dict: dict):
        self.state_dict = state_dict

    def get_state_dict(self, **kwargs) -> dict:
        return dict(self.state_dict)


def test_old_checkpoint_keys_load_through_the_mocked_download(monkeypatch, images):
    """`weights="DEFAULT"` renames the old keys of torchvision's checkpoint as torchvision's
    `_load_state_dict` does and gives torchvision's logits; only the download is mocked."""
    torch.manual_seed(0)
    reference = randomize_batchnorm(tv_densenet.densenet121(), 0).eval()
    old = _old_style(reference.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    assert "features.denseblock4.denselayer16.conv.2.weight" in old
    # torchvision's own loader accepts the same dict: it is what its checkpoints hold.
    twin = tv_densenet.densenet121()
    tv_densenet._load_state_dict(twin, _Weights(old), progress=False)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in twin.state_dict().items()
               if not k.endswith("num_batches_tracked"))  # fmt: skip
    renamed = torchvision_checkpoint(dict(old), {})
    assert list(renamed) == [k for k in reference.state_dict() if "num_batches" not in k]

    asked = []

    def download(url, *args, **kwargs):
        asked.append(url)
        return {k: v.clone() for k, v in old.items()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    model = zoo.load("densenet121", weights="DEFAULT", framework="equinox")
    assert asked == [tv_densenet.DenseNet121_Weights.DEFAULT.url]
    x = images(2, 3, 33, 33, seed=3)
    with torch.no_grad():
        expected = reference(x)
    assert max_abs_diff(eval_logits(model, jnp.asarray(x.numpy())), expected) <= 1e-5


# Small DenseNets through torchvision's own `DenseNet`: other growth rates, block depths,
# bottleneck widths and stems, and torch's checkpointing against `jax.checkpoint`.
_CUSTOM = [
    {"growth_rate": 8, "block_config": (2, 3, 1, 2), "num_init_features": 16, "bn_size": 2},
    {"growth_rate": 6, "block_config": (1, 2, 2), "num_init_features": 10, "num_classes": 5},
]


def _custom_pair(options: dict, seed: int = 0):
    torch.manual_seed(seed)
    reference = randomize_batchnorm(tv_densenet.DenseNet(**options), seed)
    model = DenseNet(key=jax.random.key(seed), **options)
    model, _ = wc.load_state_dict(model, reference.state_dict())
    return reference, model


@pytest.mark.parametrize(("options", "memory_efficient"), [(_CUSTOM[0], True), (_CUSTOM[1], False)])
def test_custom_densenets_match_torchvision(options, memory_efficient, images):
    """Eval logits in fp32; a float64 train step (logits, running statistics, counters,
    gradients) with `memory_efficient` on both sides (the statistics as torch's without it);
    `jax.checkpoint` only where asked."""
    options = options | {"memory_efficient": memory_efficient}
    reference, model = _custom_pair(options)
    assert model.config_kwargs() == {"drop_rate": 0.0, "memory_efficient": memory_efficient}
    x = images(4, 3, 37, 31)
    with torch.no_grad():
        ref32 = reference.eval()(x)
    assert max_abs_diff(eval_logits(model, jnp.asarray(x.numpy())), ref32) <= 1e-5
    reference.double().train()
    labels = torch.tensor([1, 0, 3, 2])
    logits_ref = reference(x.double())
    torch.nn.functional.cross_entropy(logits_ref, labels).backward()
    step = lambda m, x, y: zoo.loss_and_grads(m, x, y)  # noqa: E731
    with jax.enable_x64(True):
        args = (
            zoo.train_mode(to_float64(model)),
            jnp.asarray(x.double().numpy()),
            jnp.asarray(labels.numpy()),
        )
        jaxpr = str(eqx.filter_make_jaxpr(step)(*args)[0])
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == memory_efficient
        (_, logits, trained), grads = eqx.filter_jit(step)(*args)
        assert max_abs_diff(np.asarray(logits), logits_ref.detach().double()) <= 1e-10
        buffers = {k: v for k, v in wc.named_values(trained).items() if wc.is_buffer_name(k)}
        ours_grads = {k: np.asarray(g) for k, g in wc.named_arrays(grads).items()}
    expected_buffers = reference.state_dict()
    if memory_efficient:
        # torch's checkpoint reruns each `norm1` in train mode in the backward, updating its
        # running statistics a second time; the zoo's are those of one step, as without it.
        twin, _ = _custom_pair(options | {"memory_efficient": False})
        twin.double().train()(x.double())
        counter = "features.denseblock1.denselayer1.norm1.num_batches_tracked"
        assert int(expected_buffers[counter]) == int(twin.state_dict()[counter]) + 1
        expected_buffers = twin.state_dict()
    for key, value in expected_buffers.items():
        if wc.is_buffer_name(key):
            assert float(np.abs(np.asarray(buffers[key]) - value.numpy()).max()) <= 1e-10, key
    expected = {k: p.grad.numpy() for k, p in reference.named_parameters()}
    assert ours_grads.keys() == expected.keys()
    for key, g in expected.items():
        np.testing.assert_allclose(ours_grads[key], g, rtol=1e-9, atol=1e-12, err_msg=key)


def test_dense_layer_dropout_is_torchvisions():
    """`F.dropout` after the 3x3 convolution, in train mode only: each new feature is zero or
    the undropped value over `1 - drop_rate`, with a key; eval mode ignores it."""
    layer = zoo.train_mode(
        DenseLayer(16, 8, 2, 0.5, keys=iter(jax.random.split(jax.random.key(0), 9)))
    )
    plain = eqx.tree_at(lambda m: m.dropout, layer, Dropout(0.0))
    x = jax.random.normal(jax.random.key(1), (4, 16, 5, 5))
    undropped, _ = plain([x])
    dropped, _ = layer([x], key=jax.random.key(2))
    zero = np.asarray(dropped) == 0
    assert 0.3 < zero.mean() < 0.7
    np.testing.assert_allclose(
        np.asarray(dropped)[~zero], 2 * np.asarray(undropped)[~zero], rtol=1e-6
    )
    with pytest.raises(ValueError, match="needs a PRNG key"):
        layer([x])
    evaluated, _ = zoo.eval_mode(layer)([x])
    expected, _ = zoo.eval_mode(plain)([x])
    assert max_abs_diff(evaluated, expected) == 0.0
    model = zoo.models.densenet121(drop_rate=0.2)
    assert model.config_kwargs() == {"drop_rate": 0.2, "memory_efficient": False}
    assert all(layer.drop_rate == 0.2 for layer in model.features.denseblock3)


def test_dense_block_is_a_named_pytree():
    model = zoo.models.densenet121(num_classes=3)
    block = model.features.denseblock2
    assert isinstance(block, DenseBlock) and len(block) == 12
    assert block.names[0] == "denselayer1" and block.denselayer12 is block[11]
    replaced = eqx.tree_at(lambda m: m.features.denseblock2.denselayer3.conv1.weight, model,
                           jnp.ones(1))  # fmt: skip
    assert type(replaced.features.denseblock2) is DenseBlock
    assert replaced.features.denseblock2["denselayer3"].conv1.weight.shape == (1,)
    # Copies, pickles and mode switches keep the class (its call concatenates).
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), zoo.eval_mode(model)):
        assert type(clone.features.denseblock4) is DenseBlock
        assert wc.named_arrays(clone).keys() == wc.named_arrays(model).keys()


def test_feature_maps_equal_timms_densenet(images):
    """timm's `features_only` DenseNet, given these weights under its flattened names
    (`features_denseblock1...`), gives the same five maps at the same indices (float64):
    its `norm0` and `norm5` are BatchNorm with ReLU, torchvision's `relu0` output and
    `norm5` after the forward's ReLU."""
    timm = pytest.importorskip("timm")
    options = {"growth_rate": 8, "block_config": (2, 3, 1, 2), "num_init_features": 16}
    reference, model = _custom_pair(options)
    theirs = timm.create_model(
        "densenet121", features_only=True, pretrained=False,
        growth_rate=8, block_config=(2, 3, 1, 2),
    )  # fmt: skip
    state = {
        k.replace("features.", "features_", 1): v
        for k, v in reference.state_dict().items()
        if not k.startswith("classifier.")
    }
    theirs.load_state_dict(state, strict=True)
    assert theirs.feature_info.channels() == [f.num_chs for f in model.feature_info]
    assert theirs.feature_info.reduction() == [f.reduction for f in model.feature_info]
    assert theirs.feature_info.module_name() == [
        "features.norm0",
        *(f.module for f in model.feature_info[1:]),
    ]
    x = images(2, 3, 33, 33, seed=1)
    with torch.no_grad():
        expected = theirs.double().eval()(x.double())
    with jax.enable_x64(True):
        maps, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model.features_only())), jnp.asarray(x.double().numpy())
        )
    assert len(maps) == len(expected) == 5
    for a, b in zip(maps, expected, strict=True):
        assert float(np.abs(np.asarray(a) - b.numpy()).max()) <= 1e-10
