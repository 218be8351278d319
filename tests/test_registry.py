"""Every registered architecture, tested because it is registered: eval parity, train-mode
parity (outputs, running statistics, gradients), both faces, the model contract, feature maps
against timm, and the Hub round trip.

Each model runs at its `test_cfg["input_size"]` (declared beside its registration). Models
whose `test_cfg["slow"]` is set (the deep variants) are compared in float64 at that size, with
`pytest -m large`; the default run covers the smallest variant of each family at full fidelity.
"""

import functools
import json
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import (
    assert_deep_parity,
    committed,
    eval_logits,
    max_abs_diff,
    randomize_batchnorm,
    randomize_parameters,
    to_float64,
)

import weights_convert as wc
import zoo

ALL = zoo.list_models()
DEFAULT = [n for n in ALL if not zoo.get_model_info(n).test_cfg["slow"]]
LARGE = [n for n in ALL if zoo.get_model_info(n).test_cfg["slow"]]
WITH_TIMM = [n for n in DEFAULT if zoo.get_model_info(n).timm_name]
TIMM_LAYOUT = [n for n in ALL if zoo.get_model_info(n).timm_layout]


@functools.lru_cache(maxsize=4)  # VGG's is 0.5 GB
def _reference_state(name: str, seed: int, options: tuple) -> dict[str, torch.Tensor]:
    """The torch twin's state_dict (random weights, none of them constant, randomised
    BatchNorm statistics), made once per test session: torch's initialisers take seconds on
    the large models (VGG)."""
    torch.manual_seed(seed)
    info = zoo.get_model_info(name)
    reference = randomize_parameters(info.torch_builder(**dict(options)), seed)
    # BatchNorm statistics measured at 64x64 (8 values a channel at 33x33's 1x1 maps gave
    # EfficientNet tiny variances and logits of ~1e2), or the one size a model takes.
    size = None if info.test_cfg["any_size"] else info.test_cfg["input_size"][1:]
    reference = randomize_batchnorm(reference, seed, size=size)
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


def built_for_test(name: str) -> dict:
    """Constructor options the test size needs (`test_cfg["kwargs"]`: a ViT's `image_size`,
    MaxViT's `input_size` and `partition_size`), passed to every build of `name` here."""
    return dict(zoo.get_model_info(name).test_cfg.get("kwargs", {}))


def reference_pair(name: str, seed: int = 0, **kwargs):
    """The torch twin (random weights, randomised BatchNorm statistics) and the zoo model
    loaded with its state_dict (eval mode), both built with `built_for_test(name)` and
    `kwargs`. Each call gets its own copies."""
    info = zoo.get_model_info(name)
    kwargs = built_for_test(name) | kwargs
    state = _reference_state(name, seed, tuple(sorted(kwargs.items())))
    try:
        with torch.device("meta"):  # a module tree without drawing its weights
            reference = info.torch_builder(**kwargs)
        reference.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
        on_meta = any(t.is_meta for t in (*reference.parameters(), *reference.buffers()))
    except NotImplementedError:  # a constructor that computes with tensors (RegNet's widths)
        on_meta = True
    if on_meta:  # or a non-persistent buffer, not in the state_dict: build it for real
        reference = info.torch_builder(**kwargs)
        reference.load_state_dict(state)
    model = zoo.load(name, framework="equinox", weights=state, **kwargs)
    return reference, model


def sample_input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    channels, height, width = zoo.get_model_info(name).test_cfg["input_size"]
    return torch.randn(
        batch, channels, height, width, generator=torch.Generator().manual_seed(seed)
    )


def fp32_tolerance(reference: torch.nn.Module, x: torch.Tensor) -> float:
    """1e-5, or twice torchvision's own fp32 error on `x` (its fp32 against its fp64 logits)
    where that is larger: the bar for an fp32 result against torchvision's fp64 one."""
    ref32, ref64 = torch_logits(reference, x)
    return max(1e-5, 2 * float((ref32.double() - ref64).abs().max()))


def torch_logits(reference: torch.nn.Module, x: torch.Tensor) -> tuple:
    """torchvision's eval-mode logits on `x`, in fp32 and in float64 (the model is left in
    fp32)."""
    reference = reference.eval()
    with torch.no_grad():
        ref32 = reference(x)
        ref64 = reference.double()(x.double())
    reference.float()
    return ref32, ref64


def no_dropout(name: str) -> dict:
    """Constructor options that turn dropout off: torch's and JAX's draws differ by design."""
    return dict(zoo.get_model_info(name).test_cfg.get("no_dropout", {}))


def no_aux(name: str) -> dict:
    """Constructor options that remove auxiliary classifiers (GoogLeNet's): with them
    torchvision's train-mode call returns a namedtuple. tests/test_googlenet_inception.py
    tests them."""
    return dict(zoo.get_model_info(name).test_cfg.get("no_aux", {}))


def test_every_model_declares_its_facts():
    assert {"cnn", "resnet18"} <= set(DEFAULT) and "resnet50" in LARGE
    for name in ALL:
        info = zoo.get_model_info(name)
        assert issubclass(info.model_class, zoo.models.ZooModel), name
        assert info.torch_builder is not None, name
        channels, height, width = info.test_cfg["input_size"]
        # 80x80 admits Inception v3 (75x75, its smallest input) and GoogLeNet (79x79).
        assert channels == 3 and height * width <= 80 * 80, name


# -- parity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEFAULT)
def test_eval_parity(name):
    """The model in float64, and its JAX face (the jitted function users call) in fp32."""
    reference, model = reference_pair(name)
    jax_face = zoo.JaxModel(model, name=name)
    assert_deep_parity(reference, model, sample_input(name), name, fp32=jax_face)


@pytest.mark.large
@pytest.mark.parametrize("name", LARGE)
def test_eval_parity_large_float64(name):
    """The deep variants, in float64 only (their fp32 error is torch's own rounding)."""
    reference, model = reference_pair(name)
    x = sample_input(name)
    # One copy of the weights per side at a time (regnet_y_128gf: 645M parameters): torch
    # converts in place, and the fp32 model is dropped as its fp64 copy is made.
    with torch.no_grad():
        ref64 = reference.double().eval()(x.double()).numpy()
    del reference
    with jax.enable_x64(True):
        model = to_float64(model)
        ours = np.asarray(eval_logits(model, jnp.asarray(x.double().numpy())))
    assert float(np.abs(ours - ref64).max()) <= 1e-10


@eqx.filter_jit
def _loss_and_grads(model, x, labels):
    return zoo.loss_and_grads(model, x, labels)


def _large_if(flag: str) -> list:
    """`DEFAULT`, the models whose `test_cfg` sets `flag` marked `large` (`-m large` only)."""
    return [
        pytest.param(n, marks=pytest.mark.large) if zoo.get_model_info(n).test_cfg.get(flag) else n
        for n in DEFAULT
    ]


# A model whose float64 train step needs GBs (VGG) runs it with -m large only.
TRAIN = _large_if("train_parity_large")


@pytest.mark.parametrize("name", TRAIN)
def test_train_mode_parity_float64(name):
    """Two train-mode steps' logits, running statistics and counters, and the gradients, in
    float64 on both sides (no fp32 rounding near a ReLU or max-pool kink to dodge)."""
    reference, model = reference_pair(name, **no_dropout(name), **no_aux(name))
    reference.double().train()
    labels = torch.tensor([1, 0, 3, 2])
    with jax.enable_x64(True):
        model = zoo.train_mode(to_float64(model))
        model = committed(model)  # as the step's outputs are: both steps share one compile
        for step in range(2):
            x = sample_input(name, batch=4, seed=step).double()
            reference.zero_grad()
            logits_ref = reference(x)
            torch.nn.functional.cross_entropy(logits_ref, labels).backward()
            (_, logits, model), grads = _loss_and_grads(
                model, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy())
            )
            assert max_abs_diff(logits, logits_ref) <= 1e-10, step
            # Buffers only: VGG's 133M parameters in float64 would be another gigabyte.
            buffers = {k: v for k, v in wc.named_values(model).items() if wc.is_buffer_name(k)}
            for key, value in reference.state_dict().items():
                if key.endswith("num_batches_tracked"):
                    assert int(buffers[key]) == int(value), key
                elif "running" in key:
                    assert float(np.abs(np.asarray(buffers[key]) - value.numpy()).max()) <= 1e-10
            ours_grads = wc.named_arrays(grads)
            expected = {k: p.grad.numpy() for k, p in reference.named_parameters()}
            assert ours_grads.keys() == expected.keys()
            # The floor is the model's largest gradient: some are zero in exact arithmetic
            # (a BatchNorm bias whose shift the next train-mode BatchNorm removes), and both
            # sides then hold rounding noise, not a scale of their own.
            scale = max(float(np.abs(g).max()) for g in expected.values())
            for key, g in expected.items():
                assert_close_in_chunks(ours_grads[key], g, rtol=1e-9, atol=1e-12 * scale, key=key)


def assert_close_in_chunks(actual, expected: np.ndarray, *, rtol: float, atol: float, key: str):
    """`np.testing.assert_allclose`'s test, |actual - expected| <= atol + rtol |expected|, a
    million elements at a time: on VGG's 103M-element gradient its temporaries took GBs."""
    actual, expected = np.asarray(actual).reshape(-1), expected.reshape(-1)
    assert actual.shape == expected.shape, key
    for start in range(0, expected.size, 1 << 20):
        a, e = actual[start : start + (1 << 20)], expected[start : start + (1 << 20)]
        excess = np.abs(a - e) - (atol + rtol * np.abs(e))
        assert not np.any(excess > 0), (key, float(excess.max()))


# -- faces --------------------------------------------------------------------------------------
# Shared machinery (both faces, the feature maps), tested on every default model; VGG's
# (`generic_large`: each compile of its 103M-parameter classifier costs seconds) with -m large.
GENERIC = _large_if("generic_large")


@pytest.mark.parametrize("name", GENERIC)
def test_both_faces_compute_torchvisions_logits(name):
    """The torch face against torchvision's float64 logits, within twice torchvision's own
    fp32 error (the JAX face's fp32 logits are `test_eval_parity`'s, one compile fewer), and
    both faces' contract."""
    reference, model = reference_pair(name)
    x = sample_input(name)
    ref32, expected = torch_logits(reference, x)
    jax_face = zoo.JaxModel(model, name=name)
    torch_face = zoo.TorchModel(model, name=name)
    # The torch face compiles with zoo.jit's options: it may reorder a convolution's sums,
    # which deep nets amplify as torch's fp32 does.
    tol = max(1e-5, 2 * float((ref32.double() - expected).abs().max()))
    # The torch face is the twin's own module tree, in train mode as torch builds models.
    assert isinstance(torch_face, type(reference)) and torch_face.training
    assert (
        repr(torch_face) == repr(reference)
        and type(torch_face).__name__ == type(reference).__name__
    )
    with torch.no_grad():
        assert max_abs_diff(torch_face.eval()(x), expected) <= tol
    # In order, not as sets: torch pairs parameters and gradients by registration order.
    assert list(torch_face.state_dict()) == list(reference.state_dict())
    # With a hook on each top-level module, torchvision's forward runs and each of them
    # computes in JAX (no fallback warning): the hooks see torchvision's tensors.
    seen: dict[str, list] = {"ours": [], "theirs": []}
    for side, model_ in (("ours", torch_face), ("theirs", reference.eval())):
        for child_name, child in model_.named_children():
            child.register_forward_hook(
                lambda m, a, out, side=side, n=child_name: seen[side].append((n, out))
            )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", zoo.ZooTorchFallbackWarning)
        hooked = torch_face(x)
        assert max_abs_diff(hooked, expected) <= tol
        reference(x)  # its hooks record torchvision's module outputs
    assert [n for n, _ in seen["ours"]] == [n for n, _ in seen["theirs"]]
    for (n, ours), (_, theirs) in zip(seen["ours"], seen["theirs"], strict=True):
        # Each module's own output, relative to its size, 1e-4: the logits above carry the
        # fp32 bar; a module computing another function would be off by O(1).
        if isinstance(theirs, torch.Tensor):
            assert max_abs_diff(ours, theirs) <= 1e-4 * max(1.0, float(theirs.abs().max())), n
    for face in (jax_face, torch_face):
        assert (face.num_classes, face.in_chans) == (model.num_classes, model.in_chans)
        assert face.num_features == model.num_features


# -- the contract -------------------------------------------------------------------------------
# Each full-network compile costs seconds: values are compared where one compiled call gives
# them, shapes are read with `eqx.filter_eval_shape` (traced, never compiled).
@eqx.filter_jit
def _call(model, x):
    return model(x)[0]


def _shape(model, x) -> tuple[int, ...]:
    return eqx.filter_eval_shape(_call, model, x).shape


@eqx.filter_jit
def _contract_outputs(model, x):
    features, _ = model.forward_features(x)
    head = model.forward_head(features)
    return features, head, model.forward_head(features, pre_logits=True), model(x)[0]


@eqx.filter_jit
def _head(model, features):
    return model.forward_head(features)


def _abstract_load(name: str, **kwargs):
    """`zoo.load(name, framework="equinox", **kwargs)` as shapes, built under
    `eqx.filter_eval_shape`: nothing is drawn (VGG's 133M parameters take seconds)."""
    options = built_for_test(name) | kwargs
    return eqx.filter_eval_shape(lambda: zoo.load(name, framework="equinox", **options))


@pytest.mark.parametrize("name", DEFAULT)
def test_contract_head_and_classifier(name):
    model = zoo.load(name, framework="equinox", num_classes=7, **built_for_test(name))
    x = jnp.asarray(sample_input(name).numpy())
    assert (model.num_classes, model.in_chans) == (7, 3)
    features, logits, pooled, called = _contract_outputs(model, x)
    # The channel axis of forward_features' layout: NCHW maps, or a ViT's NLC tokens.
    channel_axis = {"NCHW": 1, "NHWC": -1, "NLC": -1}[model.output_fmt]
    assert features.shape[0] == 2 and features.shape[channel_axis] == model.num_features
    assert max_abs_diff(logits, called) <= 1e-6
    assert logits.shape == (2, 7) and pooled.shape == (2, model.head_hidden_size)
    headless = model.reset_classifier(0)
    assert headless.num_classes == 0 and headless.get_classifier() is None
    assert max_abs_diff(_head(headless, features), pooled) <= 1e-6
    assert _shape(headless, x) == (2, model.head_hidden_size)
    five = model.reset_classifier(5, key=jax.random.key(3))
    assert five.num_classes == 5 and _head(five, features).shape == (2, 5)
    assert _shape(five, x) == (2, 5)
    assert _shape(_abstract_load(name, num_classes=0), x) == (2, model.head_hidden_size)
    grey = _abstract_load(name, in_chans=1, num_classes=7)
    assert grey.in_chans == 1 and _shape(grey, x[:, :1]) == (2, 7)
    with pytest.raises(ValueError, match="input channels"):
        grey(x)


@eqx.filter_jit
def _maps_and_features(model, x):
    """Every map, the last two maps with the final features, and `forward_features`, from
    one compile (XLA merges the three forwards, identical up to where each stops)."""
    maps, _ = model.forward_intermediates(x, intermediates_only=True)
    final_and_last_two, _ = model.forward_intermediates(x, indices=2)
    return maps, final_and_last_two, model.forward_features(x)[0]


@pytest.mark.parametrize("name", GENERIC)
def test_feature_info_describes_the_maps(name):
    model = zoo.load(name, framework="equinox", **built_for_test(name))
    test_cfg = zoo.get_model_info(name).test_cfg
    size = 64 if test_cfg["any_size"] else test_cfg["input_size"][1]
    x = jnp.zeros((2, 3, size, size))
    maps, (final, last_two), features = _maps_and_features(model, x)
    assert len(maps) == len(model.feature_info)
    for info, fmap in zip(model.feature_info, maps, strict=True):
        side = size // info.reduction
        assert fmap.shape == (2, info.num_chs, side, side), info
    assert all(max_abs_diff(a, b) == 0.0 for a, b in zip(last_two, maps[-2:], strict=True))
    assert max_abs_diff(final, features) == 0.0
    face = zoo.JaxModel(model, name=name)
    (final_early, early), _ = eqx.filter_eval_shape(
        lambda m, x: m.forward_intermediates(x, indices=[0, -2], stop_early=True), model, x
    )
    assert [m.shape for m in early] == [maps[0].shape, maps[-2].shape]
    assert final_early.shape == maps[-2].shape  # stopped at the deepest map asked for
    with pytest.raises(ValueError, match="out of range"):
        face.forward_intermediates(x, indices=[len(maps)])
    face = zoo.load(name, features_only=True, out_indices=(-2, -1), **built_for_test(name))
    assert face.feature_info == model.feature_info[-2:]
    shapes = eqx.filter_eval_shape(lambda m, x: m(x)[0], face.model, x)
    assert [m.shape for m in shapes] == [m.shape for m in maps[-2:]]
    torch_face = zoo.load(
        name, framework="torch", features_only=True, out_indices=(0,), **built_for_test(name)
    ).eval()
    with torch.no_grad():
        (first,) = torch_face(torch.zeros(2, 3, size, size))
    # Two compiled programs (the maps' fuses three forwards): fp32 rounding apart.
    assert max_abs_diff(first, maps[0]) <= 1e-5


@pytest.mark.parametrize("name", WITH_TIMM)
def test_feature_maps_equal_timms(name):
    """`features_only=True` gives timm's maps at timm's indices, for the same weights (both
    in float64: the deeper maps are unnormalised sums of ~1e2, where fp32 rounds at ~1e-5)."""
    timm = pytest.importorskip("timm")
    info = zoo.get_model_info(name)
    reference, model = reference_pair(name)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith(info.classifier)}
    theirs = timm.create_model(info.timm_name, features_only=True, pretrained=False)
    theirs.load_state_dict(state, strict=True)
    assert theirs.feature_info.channels() == [f.num_chs for f in model.feature_info]
    assert theirs.feature_info.reduction() == [f.reduction for f in model.feature_info]
    x = sample_input(name)
    with torch.no_grad():
        expected = theirs.double().eval()(x.double())
    with jax.enable_x64(True):
        ours, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model.features_only())), jnp.asarray(x.double().numpy())
        )
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected, strict=True):
        assert float(np.abs(np.asarray(a) - b.numpy()).max()) <= 1e-10


# -- timm's layout -------------------------------------------------------------------------------
# The ViT's export (344 MB) with -m large (tests/test_vit.py exports a tiny one by default).
@pytest.mark.parametrize(
    "name", [n for n in _large_if("hub_large") if getattr(n, "values", [n])[0] in TIMM_LAYOUT]
)
def test_timm_reads_the_timm_layout_and_its_checkpoints_load_back(name, tmp_path):
    """`save_pretrained(..., layout="timm")` is what `timm.create_model("local-dir:...",
    pretrained=True)` builds and loads strictly, computing torchvision's logits (float64);
    timm's state_dict loads back into the zoo (the `checkpoint_adapter`) bit for bit."""
    timm = pytest.importorskip("timm")
    reference, model = reference_pair(name, num_classes=6)
    folder = zoo.save_pretrained(zoo.JaxModel(model, name=name), tmp_path / name, layout="timm")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True)
    timm_state = {k: v.clone() for k, v in theirs.state_dict().items()}
    x = sample_input(name).double()
    # timm's Swin takes one input size only (its `img_size`, recorded by the export; timm
    # shifts windows before padding where torchvision pads first, so the two agree only
    # where no stage pads): a model whose test size timm cannot take declares timm's (a
    # larger one: one image).
    if (size := zoo.get_model_info(name).test_cfg.get("timm_input_size")) is not None:
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        expected = reference.double().eval()(x)
        assert float(expected.abs().max()) > 0.1  # a head that computes something
        assert max_abs_diff(theirs.double().eval()(x), expected) <= 1e-10
    back = zoo.load(name, framework="equinox", weights=timm_state, **built_for_test(name))
    ours, again = reference.float().state_dict(), wc.to_state_dict(back)
    assert list(ours) == list(again) and all(torch.equal(ours[k], again[k]) for k in ours)


@pytest.mark.parametrize("name", TIMM_LAYOUT)
def test_timm_layout_names_the_same_network(name):
    """Every variant's `timm_layout` names a timm model (built with its `model_args`, on the
    meta device) whose state_dict has exactly the renamed keys and shapes."""
    timm = pytest.importorskip("timm")
    info = zoo.get_model_info(name)
    kwargs = built_for_test(name)
    try:
        with torch.device("meta"):
            state = info.torch_builder(**kwargs).state_dict()
    except NotImplementedError:
        # A constructor that computes with tensors (RegNet's widths; regnet_y_128gf has 645M
        # parameters): the zoo model's shapes under its names, torchvision's keys (the
        # parity tests compare them).
        abstract = wc.named_arrays(_abstract_load(name))
        state = {k: torch.empty(v.shape, device="meta") for k, v in abstract.items()}
    architecture, timm_state, model_args = info.timm_layout(state, kwargs)
    with torch.device("meta"):
        # num_classes as the export's config.json gives it (timm's vit_huge has no head)
        theirs = timm.create_model(architecture, num_classes=1000, **model_args)
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in timm_state.items()} == expected


# -- Hub round trip -----------------------------------------------------------------------------
# A model whose export writes and reads half a gigabyte (VGG) runs it with -m large only.
HUB = _large_if("hub_large")


def _as_the_card_says(folder) -> torch.nn.Module | None:
    """The model the card's "With torchvision alone" code builds and loads (strictly), run
    as written in the folder; `None` for a card without it (the zoo's own architectures)."""
    card = (folder / "README.md").read_text()
    if "With torchvision alone:" not in card:
        return None
    code = card.split("With torchvision alone:")[1].split("```python")[1].split("```")[0]
    scope: dict = {}
    exec(code.replace("model.safetensors", str(folder / "model.safetensors")), scope)
    return scope["model"]


@pytest.mark.parametrize("name", HUB)
def test_hub_round_trip(name, tmp_path):
    _, model = reference_pair(name, num_classes=6)
    # Without num_classes, a checkpoint's own head decides it (a Linear's or a conv's rows).
    state = wc.to_state_dict(model)
    reloaded = zoo.load(name, framework="equinox", weights=state, **built_for_test(name))
    assert reloaded.num_classes == 6
    face = zoo.JaxModel(model, name=name)
    folder = zoo.save_pretrained(face, tmp_path / name)
    back = zoo.load(f"local-dir:{folder}")
    ours, theirs = wc.to_state_dict(model), wc.to_state_dict(back.model)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_classes"], config["num_features"]) == (6, model.num_features)
    native = _as_the_card_says(folder)
    if native is None:  # the zoo's own architectures (the CNN): the registry's torch twin
        native = zoo.get_model_info(name).torch_builder(num_classes=6, **built_for_test(name))
        native.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"))
    x = sample_input(name)
    with torch.no_grad():
        assert max_abs_diff(native.eval()(x), face(x.numpy())) <= fp32_tolerance(native, x)


# -- torchvision's weights ----------------------------------------------------------------------
class _Downloaded(Exception):
    """Raised by the mocked download: the URL was chosen, nothing needs to load."""


WITH_WEIGHTS = [n for n in ALL if zoo.get_model_info(n).torchvision_weights]


@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_every_torchvision_weight_tag_reaches_its_url(name, monkeypatch):
    """Every tag of the model's torchvision weights enum (read from torchvision), as a tag, as
    `Enum.TAG` and as the enum member, asks torch's hub for that tag's URL; an unknown tag is
    refused with the list. Only the download is mocked."""
    info = zoo.get_model_info(name)
    enum = info.weights_enum()
    assert info.weight_tags() == list(enum.__members__) and info.weight_tags()
    asked = []

    def download(url, *args, **kwargs):
        asked.append(url)
        raise _Downloaded

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    for tag in info.weight_tags():
        for weights in (tag, f"{info.torchvision_weights}.{tag}", enum[tag]):
            with pytest.raises(_Downloaded):
                zoo.load(name, weights=weights)
            assert asked.pop() == enum[tag].url, weights
    with pytest.raises(_Downloaded):
        zoo.load(name, weights="DEFAULT")
    assert asked.pop() == enum.DEFAULT.url
    with pytest.raises(zoo.WeightsError, match=r"has no tag 'IMAGENET9K_V9'") as refused:
        zoo.load(name, weights="IMAGENET9K_V9")
    listed = str(refused.value).split("its tags are ")[1].split(", ")
    assert sorted(listed) == sorted({"torchvision", *info.weight_tags()}), listed  # each once
    with pytest.raises(zoo.WeightsError, match="torchvision has no pretrained weights"):
        zoo.load("cnn", weights="DEFAULT")
