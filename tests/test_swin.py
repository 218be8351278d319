"""Swin Transformer V1 and V2 against torchvision at a tiny configuration (torchvision's
`SwinTransformer` class, V2 with `block=SwinTransformerBlockV2,
downsample_layer=PatchMergingV2`): float64 eval and train-mode parity (logits and
gradients), the shifted-window mask, and the integer (and V2's float) buffers through load,
casts, train mode, export, gradients and the torch face.

The registry tests cover `swin_t` at its test size; its float64 train step (a minute to
compile) runs with `-m large` only, train mode is covered here."""

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models import swin_transformer as tv

import weights_convert as wc
import zoo
import zoo._registry
from zoo.models import _swin
from zoo.models._swin import SwinTransformer

# Stage 1 has a shifted block (the second) on a 16x12 map (from 65x49), larger than the
# window: the cyclic shift, its -100 mask and the padding to window multiples all run;
# stage 2's 8x6 map is padded too (V1: to 14x7, shifted along the height only in
# `swin_t`'s deeper blocks; here one unshifted block).
_TINY = {"embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2]}
_SIZE = (65, 49)


def _pair(v2: bool, seed: int = 0, **kwargs):
    """torchvision's tiny Swin (every parameter randomised, V2's `logit_scale` partly past
    its clamp) and the zoo's loaded with its state_dict (eval mode)."""
    torch.manual_seed(seed)
    blocks = {"block": tv.SwinTransformerBlockV2, "downsample_layer": tv.PatchMergingV2}
    window = [8, 8] if v2 else [7, 7]
    options = {"stochastic_depth_prob": 0.0, "num_classes": 10} | kwargs
    reference = tv.SwinTransformer(
        [4, 4], window_size=window, **_TINY, **options, **(blocks if v2 else {})
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("logit_scale"):  # log(10) at init; some past log(100)
                p.copy_(torch.rand(p.shape, generator=gen) * 3.0 + 2.5)
            elif p.ndim == 1:  # LayerNorm affines at (1, 0), biases at 0
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + name.endswith("norm.weight"))
    state = reference.state_dict()
    model = SwinTransformer(
        [4, 4], window_size=window, v2=v2, key=jax.random.key(0), **_TINY, **options
    )
    assert list(wc.named_arrays(model)) == list(state)  # torchvision's keys, in order
    model, _ = wc.load_state_dict(model, state)
    return reference.eval(), zoo.eval_mode(model)


def _input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *_SIZE, generator=torch.Generator().manual_seed(seed))


@eqx.filter_jit
def _logits(model, x):
    return model(x)[0]


@eqx.filter_jit
def _loss_and_grads(model, x, labels):
    return zoo.loss_and_grads(model, x, labels)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_float64_eval_and_train_parity(v2):
    """Logits in eval mode (V2: V1's is the registry's swin_t test), and logits and every
    parameter's gradient over two train-mode steps, float64 on both sides."""
    reference, model = _pair(v2)
    labels = torch.tensor([1, 0, 3, 2])
    reference.double()
    with jax.enable_x64(True):
        model = zoo.cast_floats(model, jnp.float64)
        if v2:
            x = _input(seed=5).double()
            with torch.no_grad():
                expected = reference(x).numpy()
            ours = np.asarray(_logits(model, jnp.asarray(x.numpy())))
            assert float(np.abs(ours - expected).max()) <= 1e-10
        reference.train()
        model = zoo.train_mode(model)
        for step in range(2):
            x = _input(batch=4, seed=step).double()
            reference.zero_grad()
            logits_ref = reference(x)
            torch.nn.functional.cross_entropy(logits_ref, labels).backward()
            (_, logits, model), grads = _loss_and_grads(
                model, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy())
            )
            assert float(np.abs(np.asarray(logits) - logits_ref.detach().numpy()).max()) <= 1e-10
            ours = wc.named_arrays(grads)
            expected = {k: p.grad.numpy() for k, p in reference.named_parameters()}
            assert ours.keys() == expected.keys()  # no gradient for any buffer
            scale = max(float(np.abs(g).max()) for g in expected.values())
            for key, g in expected.items():
                np.testing.assert_allclose(ours[key], g, rtol=1e-9, atol=1e-12 * scale, err_msg=key)


def test_the_shifted_window_block_and_its_mask(monkeypatch):
    """Stage 1's shifted block (shift 3 on a 16x12 map padded to 21x14) as torchvision's,
    in fp32; without the -100 mask (zeros in its place) off: the mask runs."""
    reference, model = _pair(v2=False)
    block, theirs = model.features[1][1], reference.features[1][1]
    assert block.attn.shift_size == (3, 3)
    x = np.random.default_rng(0).standard_normal((2, 16, 12, 16)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    run = eqx.filter_jit(lambda b, x: b(x)[0])
    assert float(np.abs(np.asarray(run(block, x)) - expected).max()) <= 1e-5
    mask = _swin._shift_mask((21, 14), (7, 7), (3, 3))
    assert mask.shape == (6, 1, 49, 49) and (mask == -100.0).any()
    original = _swin._shift_mask
    monkeypatch.setattr(_swin, "_shift_mask", lambda *a: np.zeros_like(original(*a)))
    # 150x the parity bound (the attention branch is small at torchvision's init).
    assert float(np.abs(np.asarray(block(jnp.asarray(x))[0]) - expected).max()) > 1e-4


def test_a_window_as_large_as_the_map_is_not_shifted():
    """torchvision shifts no side the (padded) map fits in one window along: a 7x7 map with
    window 7 and shift 3 computes as the unshifted block (and as torchvision)."""
    reference, model = _pair(v2=False)
    block = model.features[1][1]
    assert block.attn.shift_size == (3, 3)
    x_np = np.random.default_rng(0).standard_normal((1, 7, 5, 16)).astype(np.float32)
    x = jnp.asarray(x_np)
    attn = copy.copy(block.attn)
    object.__setattr__(attn, "shift_size", (0, 0))  # a static field: no tree_at
    unshifted = eqx.tree_at(lambda b: b.attn, block, attn)
    assert float(jnp.abs(block(x)[0] - unshifted(x)[0]).max()) == 0.0
    with torch.no_grad():
        expected = reference.features[1][1](torch.from_numpy(x_np)).numpy()
    assert float(np.abs(np.asarray(block(x)[0]) - expected).max()) <= 1e-5


@pytest.fixture
def tiny_v2_registered():
    """The tiny V2 configuration registered (a torch face needs a registry name), removed
    after the test."""
    blocks = {"block": tv.SwinTransformerBlockV2, "downsample_layer": tv.PatchMergingV2}

    def torch_builder(in_chans: int = 3, **kwargs):
        assert in_chans == 3
        kwargs.setdefault("stochastic_depth_prob", 0.0)
        return tv.SwinTransformer([4, 4], window_size=[8, 8], **_TINY, **blocks, **kwargs)

    def builder(*, key=None, **kwargs):
        kwargs.setdefault("stochastic_depth_prob", 0.0)
        key = jax.random.key(0) if key is None else key
        return SwinTransformer([4, 4], window_size=[8, 8], v2=True, key=key, **_TINY, **kwargs)

    name = "swin_v2_tiny_test"
    zoo.register_model(
        name, builder, torch_builder=torch_builder, model_class=SwinTransformer, overwrite=True
    )
    yield name
    zoo._registry._REGISTRY.pop(name)


def test_buffers_keep_their_dtypes_and_get_no_gradients(tiny_v2_registered):
    """`relative_position_index` (int64 in torch, int32 here) and V2's float
    `relative_coords_table` (held as its bits) are buffers: torch's dtypes and values on
    export, untouched by casts and train mode, left out of Equinox's filters and of the
    gradients."""
    reference, model = _pair(v2=True)
    names = wc.named_arrays(model)
    index, table = (
        "features.1.0.attn.relative_position_index",
        "features.1.0.attn.relative_coords_table",
    )
    assert names[index].dtype == jnp.int32 and names[table].dtype == jnp.int32
    assert wc.is_buffer_name(index) and wc.is_buffer_name(table)
    state = reference.state_dict()
    loaded = zoo.load(tiny_v2_registered, framework="equinox", weights=state, dtype=jnp.bfloat16)
    assert wc.named_arrays(loaded)[index].dtype == jnp.int32
    assert wc.named_arrays(loaded)["head.weight"].dtype == jnp.bfloat16
    for candidate in (model, zoo.train_mode(model), zoo.cast_floats(model, jnp.bfloat16), loaded):
        exported = wc.to_state_dict(candidate)
        assert exported[index].dtype == torch.int64 and torch.equal(exported[index], state[index])
        assert exported[table].dtype == torch.float32 and torch.equal(exported[table], state[table])
    with jax.enable_x64(True):
        wide = wc.to_state_dict(zoo.cast_floats(model, jnp.float64))
    assert wide[index].dtype == torch.int64 and torch.equal(wide[index], state[index])
    assert wide[table].dtype == torch.float64 and torch.equal(wide[table], state[table].double())
    # An int64 tensor crosses (the torch face's path) as JAX's int32, cast in torch.
    assert wc.torch_to_jax(state[index]).dtype == jnp.int32
    usual = wc.named_arrays(eqx.filter(model, eqx.is_inexact_array))
    assert not any(wc.is_buffer_name(k) for k in usual)
    assert set(usual) == {k for k, _ in reference.named_parameters()}
    params, buffers, _ = wc.split_params_buffers(model)
    assert set(wc.named_arrays(buffers)) == {k for k, _ in reference.named_buffers()}
    assert set(wc.named_arrays(params)) == set(usual)  # (the gradients': the parity test)
    # The values a fresh build holds are torchvision's own.
    fresh = wc.named_values(
        SwinTransformer([4, 4], window_size=[8, 8], v2=True, key=jax.random.key(1), **_TINY)
    )
    np.testing.assert_array_equal(fresh[index], state[index].numpy())
    np.testing.assert_allclose(fresh[table], state[table].numpy(), rtol=1e-6)


def test_torch_face_pairs_gradients_and_keeps_the_buffers(tiny_v2_registered):
    """A train-mode step of the torch face: torchvision's gradients for its parameters, none
    for the buffers, which keep their dtypes and values (an integer buffer is not written
    back as a float's bits). (Hooks on its NHWC top-level modules: the registry's face test.)"""
    reference, model = _pair(v2=True)
    face = zoo.TorchModel(model, name=tiny_v2_registered)
    before = {k: v.clone() for k, v in face.state_dict().items()}
    x, labels = _input(), torch.tensor([3, 1])
    reference.train()
    for module in (face, reference):
        torch.nn.functional.cross_entropy(module(x), labels).backward()
    for (name, p), (_, q) in zip(
        face.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in face.named_buffers():
        assert buffer.grad is None and buffer.dtype == before[name].dtype
        assert torch.equal(buffer, before[name]), name
    back = face.to_equinox()
    assert wc.named_arrays(back).keys() == wc.named_arrays(model).keys()
    for key, value in wc.to_state_dict(back).items():
        if wc.is_buffer_name(key):
            assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_dropouts_and_stochastic_depth_act_in_train_mode_only(v2):
    """A shifted block with every rate set: torchvision's in eval mode; in train mode
    (another draw than torch's, by design) a different output, finite, varying with the
    key, and the attention-weight dropout's path runs."""
    options = {"dropout": 0.3, "attention_dropout": 0.2, "stochastic_depth_prob": 0.5}
    reference, model = _pair(v2, **options)
    block, theirs = model.features[1][1], reference.features[1][1]
    assert block.attn.attn_drop.p == 0.2 and block.stochastic_depth.p > 0
    x = np.random.default_rng(1).standard_normal((2, 16, 12, 16)).astype(np.float32)
    with torch.no_grad():
        expected = theirs.eval()(torch.from_numpy(x)).numpy()
    run = eqx.filter_jit(lambda b, x, key: b(x, key=key)[0])
    assert float(np.abs(np.asarray(run(block, x, None)) - expected).max()) <= 1e-5
    trained = zoo.train_mode(block)
    one, two = (np.asarray(run(trained, x, jax.random.key(k))) for k in (0, 1))
    assert np.isfinite(one).all() and np.abs(one - expected).max() > 1e-3
    assert np.abs(one - two).max() > 1e-3
