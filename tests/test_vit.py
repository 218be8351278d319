"""The Vision Transformer beyond the registry's tests: every parameter random (torchvision
initialises the head to zeros, so the registry's logits are zeros), float64 train-mode
parity at a tiny configuration, position-embedding interpolation as torchvision's, timm's
names both ways, the wrong-size error, and the torch face's features-only fallback."""

import dataclasses
import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import committed, max_abs_diff, randomize_parameters, to_float64
from torchvision.models import vision_transformer as tv_vit

import weights_convert as wc
import zoo
from zoo._load import build
from zoo._registry import ModelInfo
from zoo.models import VisionTransformer, timm_vit_to_torchvision, torchvision_vit_to_timm
from zoo.models._vit import vit_checkpoint, vit_timm_layout

# Two layers, two heads, width 16, 16-pixel patches: 32x32 inputs are a 2x2 grid.
TINY = {"patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def _tiny_info(**options) -> ModelInfo:
    """An unregistered model entry for the tiny configuration, with the ViTs' adapter."""
    builder = functools.partial(VisionTransformer, **TINY, **options)
    return ModelInfo(
        "vit_tiny", builder, model_class_hint=VisionTransformer, checkpoint_adapter=vit_checkpoint
    )


def _load_tiny(state_dict, **kwargs):
    """`zoo.load`'s second half on the tiny configuration (the registered names' path)."""
    return build(_tiny_info(), state_dict, owned=False, adapt=False, framework="equinox", **kwargs)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the head's zeros, the LayerNorms' ones and the class token's
    zeros would hide a swapped or missing array), at scales that keep activations O(1)."""
    return randomize_parameters(model, seed, only_constant=False)


def _tiny_torchvision(image_size: int = 32, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = tv_vit.VisionTransformer(image_size=image_size, num_classes=5, **TINY, **options)
    return _randomise(model, seed).eval()


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@eqx.filter_jit
def _logits(model, x):
    return model(x)[0]


@eqx.filter_jit
def _loss_and_grads(model, x, labels):
    return zoo.loss_and_grads(model, x, labels)


@pytest.mark.parametrize("representation_size", [None, 12])
def test_random_weights_eval_and_train_parity(representation_size):
    """Eval logits in fp32 and float64, and two float64 train steps' logits and gradients
    (dropout 0: torch's and JAX's draws differ), against torchvision's."""
    reference = _tiny_torchvision(representation_size=representation_size)
    model = _load_tiny(reference.state_dict(), representation_size=representation_size)
    assert list(wc.to_state_dict(model)) == list(reference.state_dict())
    x = _images(32)
    # Without heads.head, what it reads: after pre_logits and tanh where they exist.
    hidden = 16 if representation_size is None else representation_size
    assert model.head_hidden_size == hidden
    for classes, width in ((0, hidden), (3, 3)):
        headless = model.reset_classifier(classes)
        assert eqx.filter_eval_shape(_logits, headless, jnp.zeros((2, 3, 32, 32))).shape == (
            2,
            width,
        )
    with torch.no_grad():
        ref32, ref64 = reference(x), reference.double()(x.double())
    torch_error = max_abs_diff(ref32.double(), ref64)
    assert max_abs_diff(_logits(model, jnp.asarray(x.numpy())), ref64) <= max(1e-5, 2 * torch_error)
    labels = torch.tensor([1, 0, 3])
    with jax.enable_x64(True):
        assert max_abs_diff(_logits(to_float64(model), jnp.asarray(x.double().numpy())), ref64) <= (
            1e-10
        )
        model = committed(zoo.train_mode(to_float64(model)))  # one compile for both steps
        reference.train()
        for step in range(2):
            x = _images(32, batch=3, seed=step + 1).double()
            reference.zero_grad()
            logits_ref = reference(x)
            torch.nn.functional.cross_entropy(logits_ref, labels).backward()
            (_, logits, model), grads = _loss_and_grads(
                model, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy())
            )
            assert max_abs_diff(logits, logits_ref) <= 1e-10, step
            ours = wc.named_arrays(grads)
            expected = {k: p.grad.numpy() for k, p in reference.named_parameters()}
            assert ours.keys() == expected.keys()
            for key, g in expected.items():
                np.testing.assert_allclose(ours[key], g, rtol=1e-9, atol=1e-12, err_msg=key)


def test_attention_dropout_drops_attention_probabilities():
    """Train mode with attention dropout: random (each key its own draw), mean-preserving,
    and the identity in eval mode."""
    reference = _tiny_torchvision()
    model = _load_tiny(reference.state_dict(), attention_dropout=0.5)
    x = jnp.asarray(_images(32).numpy())
    train = zoo.train_mode(model)
    call = eqx.filter_jit(lambda m, x, k: m(x, key=k)[0])
    a, b = call(train, x, jax.random.key(0)), call(train, x, jax.random.key(1))
    assert max_abs_diff(a, b) > 1e-3
    with torch.no_grad():
        assert max_abs_diff(_logits(model, x), reference(_images(32))) <= 1e-5


def test_position_embeddings_interpolate_as_torchvisions():
    """A 32-pixel checkpoint built for 48 pixels: torchvision's `interpolate_embeddings`
    (bicubic, align_corners), and the logits of torchvision's 48-pixel model loading its
    result, in float64. Without image_size the checkpoint's own (32) is taken."""
    small = _tiny_torchvision(32).double()
    state = small.state_dict()
    expected_state = tv_vit.interpolate_embeddings(48, 16, dict(state))
    large = tv_vit.VisionTransformer(image_size=48, num_classes=5, **TINY).double().eval()
    large.load_state_dict(expected_state)
    with jax.enable_x64(True):
        model = _load_tiny(state, image_size=48, dtype=jnp.float64)
        ours = wc.to_state_dict(model)["encoder.pos_embedding"]
        assert ours.shape == (1, 10, 16)
        assert max_abs_diff(ours, expected_state["encoder.pos_embedding"]) == 0.0
        x = _images(48).double()
        with torch.no_grad():
            assert max_abs_diff(_logits(model, jnp.asarray(x.numpy())), large(x)) <= 1e-10
    assert state["encoder.pos_embedding"].shape == (1, 5, 16)  # the caller's dict untouched
    assert _load_tiny(state).image_size == 32
    # The registered builders take the same path.
    kwargs = {}
    adapted = zoo.get_model_info("vit_b_16").checkpoint_adapter(state, kwargs)
    assert kwargs == {"image_size": 32} and adapted is state


def test_wrong_image_size_says_how_to_fix():
    model = _load_tiny(_tiny_torchvision().state_dict())
    with pytest.raises(ValueError, match=r"Wrong image height! Expected 32 but got 48.*"):
        model(jnp.zeros((1, 3, 48, 48)))
    with pytest.raises(ValueError, match=r"zoo\.load\(name, image_size=48"):
        zoo.JaxModel(model, name="vit_b_16")(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(ValueError, match="Wrong image width! Expected 32 but got 64"):
        model.forward_features(jnp.zeros((1, 3, 32, 64)))
    with pytest.raises(ValueError, match="indivisible by patch size"):
        VisionTransformer(image_size=40, **TINY, key=jax.random.key(0))


def _tiny_timm(seed: int = 0, **options):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(seed)
    model = timm_vit.VisionTransformer(
        img_size=32,
        patch_size=16,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=5,
        **options,
    )
    return model


def test_timm_checkpoints_load_and_convert_back():
    """timm's ViT (LayerNorm eps 1e-6, exact GELU, token pooling) and torchvision's compute
    the same function: a timm state_dict loads into the zoo with timm's logits, the zoo's
    feature maps are timm's `forward_intermediates`, and `torchvision_vit_to_timm` loads
    strictly into timm with torchvision's logits (float64)."""
    theirs = _randomise(_tiny_timm()).double().eval()
    assert theirs.norm.eps == 1e-6 and theirs.blocks[0].mlp.act.approximate == "none"
    x = _images(32).double()
    with torch.no_grad():
        expected = theirs(x)
        maps = theirs.forward_intermediates(x, intermediates_only=True)
    with jax.enable_x64(True):
        model = _load_tiny(theirs.state_dict(), dtype=jnp.float64)
        xj = jnp.asarray(x.numpy())
        assert max_abs_diff(_logits(model, xj), expected) <= 1e-10
        ours = model.forward_intermediates(xj, intermediates_only=True)[0]
        assert len(ours) == len(maps)
        for a, b in zip(ours, maps, strict=True):
            assert a.shape == b.shape and max_abs_diff(a, b) <= 1e-10
    reference = tv_vit.VisionTransformer(image_size=32, num_classes=5, **TINY)
    reference = _randomise(reference, seed=1).double().eval()
    timm_state = torchvision_vit_to_timm(reference.state_dict())
    assert list(timm_state) == list(theirs.state_dict())
    back = _tiny_timm().double().eval()
    back.load_state_dict(timm_state, strict=True)
    with torch.no_grad():
        assert max_abs_diff(back(x), reference(x)) <= 1e-10
    assert list(timm_vit_to_torchvision(timm_state)) == list(reference.state_dict())


def test_timm_vit_base_loads_into_vit_b_16():
    """`zoo.load("vit_b_16", weights=<timm vit_base_patch16_224's state_dict>)` (at 32
    pixels) has timm's logits in fp32."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_patch16_224", img_size=32, pretrained=False).eval()
    x = _images(32)
    with torch.no_grad():
        expected = theirs(x)
    face = zoo.load("vit_b_16", weights=theirs.state_dict(), image_size=32)
    assert float(expected.abs().max()) > 0.1  # timm's head is random, not zeros
    assert max_abs_diff(face(x.numpy()), expected) <= 1e-5


def test_timm_layout_export_is_read_by_timm_and_the_zoo(tmp_path, monkeypatch):
    """`save_pretrained(..., layout="timm")` writes timm's keys, model name and options:
    `timm.create_model("local-dir:...", pretrained=True)` builds and loads it untouched with
    the zoo's logits, and `zoo.load` reads it back bit-identical. Architectures without a
    timm layout, and a ViT timm cannot hold, are refused before anything is written."""
    timm = pytest.importorskip("timm")
    tiny_args = {"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}

    def layout(state_dict, kwargs):
        name, timm_state, model_args = vit_timm_layout("vit_tiny_patch16_224", state_dict, kwargs)
        return name, timm_state, model_args | tiny_args

    defaults = zoo.get_model_info("vit_b_16").pretrained_cfg
    info = dataclasses.replace(_tiny_info(), timm_layout=layout, pretrained_cfg=defaults)
    monkeypatch.setitem(zoo._registry._REGISTRY, "vit_tiny", info)
    reference = _tiny_torchvision()
    face = zoo.JaxModel(_load_tiny(reference.state_dict(), image_size=32), name="vit_tiny")
    folder = zoo.save_pretrained(face, tmp_path / "timm", layout="timm")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_args"] == {"img_size": 32, **tiny_args}
    cfg = config["pretrained_cfg"]
    assert (cfg["first_conv"], cfg["classifier"]) == ("patch_embed.proj", "head")
    assert cfg["input_size"] == [3, 32, 32] and cfg["fixed_input_size"]
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _images(32)
    with torch.no_grad():
        expected = theirs(x)
    assert float(expected.abs().max()) > 0.1
    assert max_abs_diff(face(x.numpy()), expected) <= 1e-5
    back = zoo.load(f"local-dir:{folder}", framework="equinox")
    ours, again = wc.to_state_dict(face.model), wc.to_state_dict(back)
    assert list(ours) == list(again) and all(torch.equal(ours[k], again[k]) for k in ours)

    with pytest.raises(ValueError, match=r"has no timm layout.*vit_b_16"):
        zoo.save_pretrained(zoo.load("cnn"), tmp_path / "cnn", layout="timm")
    pre_logits = zoo.JaxModel(
        _load_tiny(
            _tiny_torchvision(representation_size=12).state_dict(),
            image_size=32,
            representation_size=12,
        ),
        name="vit_tiny",
    )
    with pytest.raises(ValueError, match="representation_size"):
        zoo.save_pretrained(pre_logits, tmp_path / "pre", layout="timm")
    assert not (tmp_path / "cnn").exists() and not (tmp_path / "pre").exists()


def test_timm_keys_without_a_place_are_refused():
    for options, key in (
        ({"global_pool": "avg"}, "fc_norm.weight"),
        ({"reg_tokens": 4}, "reg_token"),
        ({"init_values": 1e-5}, "blocks.0.ls1.gamma"),
        ({"qk_norm": True}, "blocks.0.attn.q_norm.weight"),
    ):
        with pytest.raises(ValueError, match=f"no place for .*{key}"):
            timm_vit_to_torchvision(_tiny_timm(**options).state_dict())
    with pytest.raises(ValueError, match="no_embed_class"):
        timm_vit_to_torchvision(_tiny_timm(no_embed_class=True).state_dict())
    with_pre_logits = tv_vit.VisionTransformer(
        image_size=32, num_classes=5, representation_size=8, **TINY
    )
    with pytest.raises(ValueError, match=r"no place for heads\.pre_logits\.weight"):
        torchvision_vit_to_timm(with_pre_logits.state_dict())


def test_features_only_torch_fallback_gives_the_patch_grids():
    """A hook inside the encoder makes the features-only torch face run torchvision's
    forward and collect the layers' outputs with hooks: tokens, which the model class's
    `torch_feature_map` turns into the NCHW grids the JAX program returns."""
    face = zoo.load(
        "vit_b_16", framework="torch", features_only=True, out_indices=(0, -1), image_size=32
    ).eval()
    x = _images(32)
    with torch.no_grad():
        expected = face(x)
        seen = []
        face.encoder.layers.encoder_layer_3.register_forward_hook(
            lambda m, a, out: seen.append(out.shape)
        )
        with pytest.warns(zoo.ZooTorchFallbackWarning, match="encoder runs in torch"):
            maps = face(x)
    assert seen == [(2, 5, 768)]
    assert [tuple(m.shape) for m in maps] == [(2, 768, 2, 2)] * 2
    for a, b in zip(maps, expected, strict=True):
        assert max_abs_diff(a, b) <= 1e-5
    assert zoo.models.ZooModel.torch_feature_map(expected[0], None) is expected[0]


# vit_h_14 (632M parameters) in float64 needs ~10 GB per side: fp32 only.
FLOAT64_VARIANTS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")


@pytest.mark.large
@pytest.mark.parametrize("name", [*FLOAT64_VARIANTS, "vit_h_14"])
def test_registered_variants_with_random_weights(name):
    """Each registered variant with every parameter random (the registry's parity tests see
    torchvision's zero head), at its test size: fp32 within twice torchvision's own fp32
    error (or 1e-5), float64 within 1e-10. One copy of the weights per side at a time."""
    info = zoo.get_model_info(name)
    size = info.test_cfg["input_size"][1]
    with torch.device("meta"):  # torch's initialisers take seconds: drawn once, below
        reference = info.torch_builder(image_size=size)
    reference = _randomise(reference.to_empty(device="cpu")).eval()
    x = _images(size)
    with torch.no_grad():
        ref32 = reference(x)
    model = zoo.load(name, framework="equinox", weights=reference.state_dict(), image_size=size)
    ours32 = np.asarray(_logits(model, jnp.asarray(x.numpy())))
    del model
    reference.double()
    with torch.no_grad():
        ref64 = reference(x.double())
    torch_error, fp32_diff = max_abs_diff(ref32.double(), ref64), max_abs_diff(ours32, ref64)
    fp64_diff = float("nan")
    if name in FLOAT64_VARIANTS:
        with jax.enable_x64(True):
            model = build(
                info,
                reference.state_dict(),
                owned=True,
                adapt=False,
                framework="equinox",
                dtype=jnp.float64,
                image_size=size,
            )
            del reference
            fp64_diff = max_abs_diff(_logits(model, jnp.asarray(x.double().numpy())), ref64)
    print(
        f"{name}: fp32 diff vs torch fp64 {fp32_diff:.1e} (torch fp32 own error "
        f"{torch_error:.1e}), fp32 vs torch fp32 {max_abs_diff(ours32, ref32):.1e}; "
        f"fp64 diff {fp64_diff:.1e}; logits up to {float(ref64.abs().max()):.2f}"
    )
    assert fp32_diff <= max(1e-5, 2 * torch_error)
    assert not fp64_diff > 1e-10  # nan: not run
