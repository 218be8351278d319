"""GoogLeNet and Inception v3 beyond the registry tests: the auxiliary classifiers (kept in the
state_dict in torchvision's order, run in train mode, returned by `forward_with_aux` as
torchvision's namedtuples), what torchvision's builders do when they load their weights (the
`torchvision_checkpoint` hooks, with only the download mocked), and Inception v3's train-mode
parity and timm feature maps (`pytest -m large`: it is a `slow` model)."""

import copy
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import eval_logits, max_abs_diff, randomize_batchnorm, to_float64

import weights_convert as wc
import zoo

# torchvision warns that GoogLeNet's and Inception's default initialisation will change.
pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")

AUX = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def reference_pair(name: str, seed: int = 0, **kwargs):
    """torchvision's model (random weights, randomised BatchNorm statistics) and the zoo's,
    loaded from its state_dict (eval mode)."""
    torch.manual_seed(seed)
    reference = randomize_batchnorm(zoo.get_model_info(name).torch_builder(**kwargs), seed)
    return reference, zoo.load(name, framework="equinox", weights=reference.state_dict(), **kwargs)


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
@pytest.mark.parametrize("aux_logits", [True, False])
def test_state_dict_is_torchvisions_in_order(name, aux_logits):
    """Keys (auxiliary classifiers included or not), order and shapes, built without drawing
    torch's weights; the parameter counts are torchvision's (GoogLeNet's 6.6M without, 13.0M
    with its auxiliary classifiers)."""
    with torch.device("meta"):
        theirs = zoo.get_model_info(name).torch_builder(aux_logits=aux_logits).state_dict()
    model = zoo.load(name, framework="equinox", aux_logits=aux_logits)
    ours = wc.named_arrays(model)
    assert list(ours) == list(theirs)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in theirs.items())
    assert model.aux_logits == aux_logits
    assert any(k.startswith(AUX[name]) for k in ours) == aux_logits


@eqx.filter_jit
def _train_outputs(model, x):
    (outputs, new), (logits, called) = model.forward_with_aux(x), model(x)
    return outputs, new, logits, called


def _buffers(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in wc.named_values(model).items() if wc.is_buffer_name(k)}


def test_googlenet_forward_with_aux_is_torchvisions_train_mode_call():
    """In train mode, `forward_with_aux` returns torchvision's `GoogLeNetOutputs(logits,
    aux_logits2, aux_logits1)` and the call the same logits alone; both leave every
    BatchNorm's buffers as torchvision's call does (the auxiliary classifiers' too). In eval
    mode the auxiliary entries are `None` (torchvision returns the bare logits)."""
    no_dropout = {"dropout": 0.0, "dropout_aux": 0.0}
    reference, model = reference_pair("googlenet", **no_dropout)
    # Eval mode: the auxiliary classifiers do not run.
    eval_outputs = eqx.filter_eval_shape(
        lambda m, x: m.forward_with_aux(x)[0], model, jnp.zeros((2, 3, 79, 79))
    )
    assert eval_outputs.aux_logits1 is None and eval_outputs.aux_logits2 is None
    reference.double().train()
    x = images(79, batch=4).double()
    expected = reference(x)
    assert type(expected).__name__ == "GoogLeNetOutputs"
    with jax.enable_x64(True):
        model = zoo.train_mode(to_float64(model))
        outputs, new, logits, called = _train_outputs(model, jnp.asarray(x.numpy()))
    assert type(outputs) is zoo.models.GoogLeNetOutputs and outputs._fields == expected._fields
    for ours, theirs in zip(outputs, expected, strict=True):
        assert max_abs_diff(ours, theirs.detach()) <= 1e-10
    assert max_abs_diff(logits, outputs.logits) == 0.0
    state = reference.state_dict()
    for buffers in (_buffers(new), _buffers(called)):
        assert buffers.keys() == {k for k in state if wc.is_buffer_name(k)}
        for key, value in buffers.items():
            assert float(np.abs(value - state[key].numpy()).max()) <= 1e-10, key  # counters too


def test_auxiliary_classifiers_follow_the_classifier():
    """`reset_classifier` replaces the auxiliary classifiers' final `Linear`s too (as timm's
    Inception v3 does); without them `forward_with_aux` returns `None` there; a features_only
    model has no logits to give; `config_kwargs` rebuilds the same model."""
    x = jnp.zeros((2, 3, 79, 79))
    model = zoo.train_mode(zoo.load("googlenet", framework="equinox", dropout=0.0, dropout_aux=0.0))
    outputs = eqx.filter_eval_shape(
        lambda m, x: m.forward_with_aux(x)[0], model.reset_classifier(5), x
    )
    assert [o.shape for o in outputs] == [(2, 5)] * 3
    headless = model.reset_classifier(0)
    assert headless.aux1.fc2 is None and headless.aux2.fc2 is None
    outputs = eqx.filter_eval_shape(lambda m, x: m.forward_with_aux(x)[0], headless, x)
    assert [o.shape for o in outputs] == [(2, 1024)] * 3  # pooled features, fc1's features
    plain = zoo.load("googlenet", framework="equinox", aux_logits=False)
    outputs = eqx.filter_eval_shape(
        lambda m, x: m.forward_with_aux(x, key=jax.random.key(0))[0], zoo.train_mode(plain), x
    )
    assert outputs.aux_logits1 is None and outputs.aux_logits2 is None
    with pytest.raises(ValueError, match="features_only"):
        plain.features_only().forward_with_aux(x)
    inception = zoo.load("inception_v3", framework="equinox", num_classes=7)
    assert inception.reset_classifier(3).AuxLogits.fc.out_features == 3
    assert inception.reset_classifier(0).AuxLogits.fc is None
    for model in (plain, inception):
        rebuilt = zoo.load(
            "googlenet" if model is plain else "inception_v3",
            framework="equinox",
            num_classes=model.num_classes,
            **model.config_kwargs(),
        )
        assert rebuilt.config_kwargs() == model.config_kwargs()
        assert wc.named_arrays(rebuilt).keys() == wc.named_arrays(model).keys()


def test_transform_input_is_torchvisions():
    """`transform_input=True` remaps ImageNet-normalised channels as torchvision does (one
    multiply and one add per element); it needs 3 channels."""
    with torch.device("meta"):  # the remap reads no weights
        reference = torchvision.models.googlenet(transform_input=True, init_weights=False)
    model = zoo.load("googlenet", framework="equinox", transform_input=True)
    x = images(79)
    expected = reference._transform_input(x)
    ours = model._transform_input(jnp.asarray(x.numpy()).transpose(0, 2, 3, 1))
    assert max_abs_diff(ours.transpose(0, 3, 1, 2), expected) == 0.0
    with pytest.raises(ValueError, match="transform_input"):
        zoo.load("googlenet", framework="equinox", transform_input=True, in_chans=1)


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_to_torchvision_keeps_the_options_a_state_dict_does_not_record(framework):
    """`zoo.to_torchvision` builds the twin with the model's `config_kwargs()`: without the
    aux heads (a strict load needs that) and with `transform_input` (else other logits)."""
    face = zoo.load("googlenet", framework=framework, aux_logits=False, transform_input=True)
    native = zoo.to_torchvision(face)
    assert native.aux1 is None and native.transform_input
    if framework == "torch":
        face.eval()  # built in train mode, as torch builds models
    x = images(79)
    with torch.no_grad():
        ours = face(x) if framework == "torch" else face(x.numpy())
        assert max_abs_diff(ours, native(x)) <= 1e-4


def test_inception_auxiliary_classifier_needs_299_pixels_in_train_mode():
    """As torchvision's (whose 5x5 convolution fails on a smaller map), with an error that says
    what to do; eval mode, where it does not run, takes 75x75."""
    model = zoo.load("inception_v3", framework="equinox")
    x = jnp.zeros((2, 3, 75, 75))
    assert eqx.filter_eval_shape(lambda m, x: m(x)[0], model, x).shape == (2, 1000)
    with pytest.raises(ValueError, match="aux_logits=False"):
        eqx.filter_eval_shape(lambda m, x: m(x, key=jax.random.key(0)), zoo.train_mode(model), x)
    shapes = eqx.filter_eval_shape(
        lambda m, x: m.forward_with_aux(x, key=jax.random.key(0))[0],
        zoo.train_mode(model),
        jnp.zeros((2, 3, 299, 299)),
    )
    assert [o.shape for o in shapes] == [(2, 1000), (2, 1000)]


# -- torchvision's weights: the builders' behaviour, with only the download mocked -------------
@pytest.fixture(scope="module")
def checkpoints():
    """A stand-in for each torchvision checkpoint: the state_dict of a model built as
    torchvision's builder builds it before loading (`aux_logits=True`, `init_weights=False`),
    with random weights and BatchNorm statistics."""
    out = {}
    for name, seed in (("googlenet", 1), ("inception_v3", 2)):
        torch.manual_seed(seed)
        builder = getattr(torchvision.models, name)
        model = randomize_batchnorm(builder(aux_logits=True, init_weights=False), seed)
        out[name] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


@pytest.fixture
def download(checkpoints, monkeypatch):
    """Both torch's hub (the zoo's path) and torchvision's copy of its loader serve the
    stand-in checkpoint of the URL's model."""

    def serve(url, *args, **kwargs):
        name = "googlenet" if "googlenet" in url else "inception_v3"
        return copy.deepcopy(checkpoints[name])

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", serve)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", serve)


def _theirs(name: str, **kwargs) -> torch.nn.Module:
    """`torchvision.models.NAME(weights=DEFAULT, **kwargs)`. It refuses `aux_logits=False`
    with weights (it builds with the heads to load them): that case is what its builder does
    itself when the heads are not wanted, which the zoo accepts as asked."""
    drop = kwargs.get("aux_logits", True) is False
    if drop:
        del kwargs["aux_logits"]
    builder = getattr(torchvision.models, name)
    model = builder(weights=zoo.get_model_info(name).weights_enum().DEFAULT, **kwargs).eval()
    if drop:
        model.aux_logits = False
        for prefix in AUX[name]:
            setattr(model, prefix[:-1], None)
    return model


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("googlenet", {}),
        ("googlenet", {"aux_logits": True}),
        ("googlenet", {"transform_input": False}),
        ("googlenet", {"aux_logits": False}),
        ("inception_v3", {}),
        ("inception_v3", {"aux_logits": False}),
    ],
)
def test_torchvision_weights_load_as_torchvisions_builder_loads_them(name, kwargs, download):
    """`zoo.load(name, weights="DEFAULT", **kwargs)` builds what `torchvision.models.NAME(
    weights=DEFAULT, **kwargs)` builds: `transform_input` on unless given, the auxiliary
    classifiers kept or dropped as torchvision decides (GoogLeNet drops them unless asked,
    with a warning when kept; Inception keeps them unless told not to), the same tensors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = _theirs(name, **kwargs)
        ours = zoo.load(name, weights="DEFAULT", framework="equinox", **kwargs)
    warned = [str(w.message) for w in caught if "NOT pretrained" in str(w.message)]
    assert len(warned) == (2 if name == "googlenet" and kwargs.get("aux_logits") else 0)
    assert ours.transform_input == theirs.transform_input == kwargs.get("transform_input", True)
    assert ours.aux_logits == theirs.aux_logits
    state = wc.to_state_dict(ours)
    assert list(state) == list(theirs.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in theirs.state_dict().items())


def test_googlenet_weights_compute_torchvisions_logits(download):
    """The default load's logits, transform_input included, against torchvision's (its fp32
    against its fp64 logits sets the bar)."""
    theirs = _theirs("googlenet")
    ours = zoo.load("googlenet", weights="DEFAULT", framework="equinox")
    x = images(79)
    with torch.no_grad():
        ref32, ref64 = theirs(x).numpy(), theirs.double()(x.double()).numpy()
    tolerance = max(1e-5, 2 * float(np.abs(ref32 - ref64).max()))
    assert max_abs_diff(eval_logits(ours, jnp.asarray(x.numpy())), ref64) <= tolerance


def test_auxiliary_classifiers_refuse_another_num_classes(download):
    """The zoo re-initialises `fc` for another `num_classes`, not the auxiliary classifiers a
    checkpoint gives 1000 rows: it says to drop them (torchvision refuses any other count)."""
    with pytest.raises(ValueError, match="aux_logits=False"):
        zoo.load("inception_v3", weights="DEFAULT", num_classes=10)
    with pytest.raises(ValueError, match="aux_logits=False"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zoo.load("googlenet", weights="DEFAULT", num_classes=10, aux_logits=True)
    model = zoo.load("inception_v3", weights="DEFAULT", num_classes=10, aux_logits=False).model
    assert model.num_classes == 10 and not model.aux_logits


# -- Inception v3 (slow): with pytest -m large ------------------------------------------------
@pytest.mark.large
def test_inception_weights_compute_torchvisions_logits(download):
    theirs = _theirs("inception_v3")
    ours = zoo.load("inception_v3", weights="DEFAULT", framework="equinox")
    x = images(75)
    with torch.no_grad():
        ref32, ref64 = theirs(x).numpy(), theirs.double()(x.double()).numpy()
    tolerance = max(1e-5, 2 * float(np.abs(ref32 - ref64).max()))
    assert max_abs_diff(eval_logits(ours, jnp.asarray(x.numpy())), ref64) <= tolerance


@eqx.filter_jit
def _aux_loss_and_grads(model, x, labels):
    """torchvision's reference training loss: the main loss plus 0.3 times each auxiliary
    loss."""

    def loss(model):
        outputs, new = model.forward_with_aux(x)
        losses = [zoo.cross_entropy(o, labels) for o in outputs]
        return losses[0] + 0.3 * sum(losses[1:]), (outputs, new)

    return eqx.filter_value_and_grad(loss, has_aux=True)(model)


def _torch_aux_step(reference: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor):
    reference.zero_grad()
    outputs = reference(x)
    losses = [torch.nn.functional.cross_entropy(o, labels) for o in outputs]
    (losses[0] + 0.3 * sum(losses[1:])).backward()
    grads = {k: p.grad.numpy().copy() for k, p in reference.named_parameters()}
    return [o.detach().numpy() for o in outputs], grads


@pytest.mark.large
@pytest.mark.parametrize(("name", "size"), [("googlenet", 79), ("inception_v3", 299)])
def test_train_step_with_auxiliary_losses_float64(name, size):
    """A float64 train step on torchvision's reference loss (`loss + 0.3 * aux_loss` per
    auxiliary head): outputs, buffers and every gradient against torchvision's.

    GoogLeNet meets the registry's bar (1e-10 on outputs, 1e-9 relative on gradients).
    Inception v3 cannot: in train mode a 1-ulp change of its input moves torchvision's own
    float64 gradients by ~1e-11 of the largest (its 94 BatchNorms amplify rounding), so the
    bar is 20 times that measured sensitivity: the zoo's differences, rounded in every
    layer rather than at the input, measure 3-5 times it (a wrong divisor, tap or order would
    be off by O(1) of the values)."""
    no_dropout = {"dropout": 0.0} | ({"dropout_aux": 0.0} if name == "googlenet" else {})
    reference, model = reference_pair(name, **no_dropout)
    reference.double().train()
    labels = torch.tensor([1, 0])
    x = images(size, batch=2).double()
    before = copy.deepcopy(reference.state_dict())
    expected, expected_grads = _torch_aux_step(reference, x, labels)
    state = {k: v.numpy().copy() for k, v in reference.state_dict().items() if wc.is_buffer_name(k)}
    if name == "googlenet":
        output_tolerance = buffer_tolerance = 1e-10
        grad_tolerance = None
    else:  # torchvision's own sensitivity to a 1-ulp change of the input
        reference.load_state_dict(before)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
        perturbed, perturbed_grads = _torch_aux_step(reference, x * (1 + 2e-16 * noise), labels)
        output_tolerance = 20 * max(
            float(np.abs(a - b).max()) for a, b in zip(perturbed, expected, strict=True)
        )
        grad_tolerance = 20 * max(
            float(np.abs(perturbed_grads[k] - g).max()) for k, g in expected_grads.items()
        )
        buffer_tolerance = 20 * max(
            float(np.abs(v.numpy() - state[k]).max())
            for k, v in reference.state_dict().items()
            if "running" in k
        )
        # The perturbation took effect.
        assert min(output_tolerance, grad_tolerance, buffer_tolerance) > 0
        del perturbed, perturbed_grads
    del reference, before  # float64 at 299x299: one model's activations at a time
    with jax.enable_x64(True):
        model = zoo.train_mode(to_float64(model))
        (_, (outputs, new)), grads = _aux_loss_and_grads(
            model, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy())
        )
    for ours, theirs in zip(outputs, expected, strict=True):
        assert max_abs_diff(ours, theirs) <= output_tolerance
    for key, value in _buffers(new).items():
        if "running" in key:
            assert float(np.abs(value - state[key]).max()) <= buffer_tolerance, key
        else:
            assert int(value) == int(state[key]), key
    # Parameters only: the running statistics' gradients are zero (train mode never reads them).
    ours_grads = {
        k: np.asarray(v) for k, v in wc.named_arrays(grads).items() if not wc.is_buffer_name(k)
    }
    assert ours_grads.keys() == expected_grads.keys()
    scale = max(float(np.abs(g).max()) for g in expected_grads.values())
    for key, g in expected_grads.items():
        if grad_tolerance is None:
            np.testing.assert_allclose(ours_grads[key], g, rtol=1e-9, atol=1e-12 * scale)
        else:
            assert float(np.abs(ours_grads[key] - g).max()) <= grad_tolerance, key


@pytest.mark.large
def test_inception_feature_maps_equal_timms():
    """timm's `inception_v3` (the same module names, without the auxiliary classifier): its
    `features_only` maps are the zoo's, in float64."""
    timm = pytest.importorskip("timm")
    reference, model = reference_pair("inception_v3", aux_logits=False)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    theirs = timm.create_model("inception_v3", features_only=True, pretrained=False)
    theirs.load_state_dict(state, strict=True)
    assert theirs.feature_info.channels() == [f.num_chs for f in model.feature_info]
    assert theirs.feature_info.reduction() == [f.reduction for f in model.feature_info]
    assert theirs.feature_info.module_name() == [f.module for f in model.feature_info]
    x = images(75).double()
    with torch.no_grad():
        expected = theirs.double().eval()(x)
    with jax.enable_x64(True):
        ours, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model.features_only())), jnp.asarray(x.numpy())
        )
    assert [tuple(m.shape) for m in ours] == [tuple(m.shape) for m in expected]
    for a, b in zip(ours, expected, strict=True):
        assert max_abs_diff(a, b) <= 1e-10
