"""`LayerNorm` and `LayerNorm2d` against torch's `nn.LayerNorm` and torchvision's
`LayerNorm2d`: values and gradients, float32 and float64, odd shapes, both layouts."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import in_layout, max_abs_diff, to_float64
from torchvision.models.convnext import LayerNorm2d as TorchLayerNorm2d

import weights_convert as wc
from zoo import layers

LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
DTYPES = pytest.mark.parametrize("dtype", ["float32", "float64"])
# Against torch in float64: float32 rounds (torch's own float32 kernel too, differently);
# float64 is the same computation.
TOL = {"float32": 1e-5, "float64": 1e-12}


def _randomise_affine(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Affine parameters away from torch's (1, 0) init, so a swapped or ignored one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return module


def _check_values_and_grads(apply, layer, theirs, x: torch.Tensor, dtype: str, seed: int):
    """`apply(layer, x)` in `dtype` against `theirs(x)` in float64, and the gradients of
    `sum(out * cotangent)` with respect to the input and the affine parameters."""
    theirs = theirs.double()
    x = x.double().requires_grad_()
    expected = theirs(x)
    cotangent = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed))
    (expected * cotangent.double()).sum().backward()
    expected = {"out": expected.detach(), "x": x.grad} | {
        k: p.grad for k, p in theirs.named_parameters()
    }

    with jax.enable_x64(dtype == "float64"):
        layer = to_float64(layer) if dtype == "float64" else layer
        params, static = eqx.partition(layer, eqx.is_array)
        x_j = jnp.asarray(x.detach().numpy()).astype(dtype)
        c_j = jnp.asarray(cotangent.numpy()).astype(dtype)

        def loss(params, x):
            out = apply(eqx.combine(params, static), x)
            return jnp.sum(out * c_j), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x_j)
        assert out.dtype == jnp.dtype(dtype)
    ours = {"out": out, "x": grads[1]} | wc.named_arrays(grads[0])
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        scale = max(1.0, float(value.abs().max()))
        diff = float(np.abs(np.asarray(ours[name], np.float64) - value.numpy()).max())
        assert diff <= TOL[dtype] * scale, (name, diff)


@DTYPES
@pytest.mark.parametrize(
    ("shape", "eps"),
    [((2, 5, 7, 13), 1e-6), ((3, 1), 1e-5), ((4, 9, 96), 1e-6), ((1, 2, 3, 1, 5), 1e-3)],
)
def test_layernorm_matches_torch_with_gradients(shape, eps, dtype):
    theirs = _randomise_affine(torch.nn.LayerNorm(shape[-1], eps=eps), seed=1)
    ours, _ = wc.load_state_dict(layers.LayerNorm(shape[-1], eps=eps), theirs.state_dict())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    _check_values_and_grads(lambda ln, x: ln(x), ours, theirs, x, dtype, seed=2)


@DTYPES
@LAYOUTS
@pytest.mark.parametrize("size", [(7, 5), (1, 1), (33, 2)])
def test_layernorm2d_matches_torchvisions_with_gradients(size, channels_last, dtype):
    channels = 11
    theirs = _randomise_affine(TorchLayerNorm2d(channels, eps=1e-6), seed=3)
    ours, _ = wc.load_state_dict(layers.LayerNorm2d(channels, eps=1e-6), theirs.state_dict())
    x = torch.randn(3, channels, *size, generator=torch.Generator().manual_seed(4))
    apply = lambda ln, x: in_layout(ln, channels_last)(x)[0]  # noqa: E731
    _check_values_and_grads(apply, ours, theirs, x, dtype, seed=5)


def test_layernorm2d_on_pooled_features_is_layernorm_over_the_channels():
    """ConvNeXt's classifier normalises `(batch, C)` means: torchvision's `(batch, C, 1, 1)`."""
    theirs = _randomise_affine(TorchLayerNorm2d(6, eps=1e-6), seed=6)
    ours, _ = wc.load_state_dict(layers.LayerNorm2d(6, eps=1e-6), theirs.state_dict())
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))
    expected = theirs(x[:, :, None, None])[:, :, 0, 0]
    for channels_last in (False, True):
        y, same = ours(jnp.asarray(x.numpy()), channels_last=channels_last)
        assert same is ours
        assert max_abs_diff(y, expected.detach()) <= 1e-6


def test_layernorm_centres_before_the_variance():
    """Values of ~1e3 spread by ~1e-2: a one-pass `E[x^2] - E[x]^2` variance cancels away in
    float32 (errors of ~10 here); centred first, the error is float32's rounding of the mean,
    as in torch's kernel (both against the float64 result on the same inputs)."""
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(8)) * 1e-2 + 1e3
    exact = torch.nn.functional.layer_norm(x.double(), (64,))
    torch_error = float((torch.nn.functional.layer_norm(x, (64,)).double() - exact).abs().max())
    ours = layers.LayerNorm(64)(jnp.asarray(x.numpy()))
    assert max_abs_diff(ours, exact) <= max(1e-5, 2 * torch_error)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layernorm_half_inputs_keep_their_dtype_with_float32_statistics(dtype):
    theirs = _randomise_affine(torch.nn.LayerNorm(40), seed=9)
    ours, _ = wc.load_state_dict(layers.LayerNorm(40), theirs.state_dict())
    x = (torch.randn(5, 40, generator=torch.Generator().manual_seed(10)) * 4 + 2).to(dtype)
    half = jnp.dtype(str(dtype).removeprefix("torch."))
    expected = theirs(x.float()).to(dtype)  # torch computes half inputs in float32 too
    got = ours(jnp.asarray(x.float().numpy()).astype(half))
    assert got.dtype == half
    # Within one bfloat16 rounding of the float32 result (outputs of magnitude < 4).
    assert max_abs_diff(got.astype(jnp.float32), expected.float()) <= 2e-2


@pytest.mark.parametrize(("affine", "bias"), [(True, True), (True, False), (False, True)])
def test_parameters_are_torchs(affine, bias):
    theirs = torch.nn.LayerNorm(7, elementwise_affine=affine, bias=bias)
    ours = layers.LayerNorm(7, elementwise_affine=affine, bias=bias)
    ours2d = layers.LayerNorm2d(7, elementwise_affine=affine, bias=bias)
    expected = {k: v.numpy() for k, v in theirs.state_dict().items()}
    for layer in (ours, ours2d):
        got = {k: np.asarray(v) for k, v in wc.named_arrays(layer).items()}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
    x = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(11))
    assert max_abs_diff(ours(jnp.asarray(x.numpy())), theirs(x).detach()) <= 1e-6


def test_layernorm2d_runs_in_a_sequential_in_either_layout():
    ln = _randomise_affine(TorchLayerNorm2d(5), seed=12)
    conv = torch.nn.Conv2d(5, 4, 2, stride=2)
    theirs = torch.nn.Sequential(ln, conv)
    ours = (layers.LayerNorm2d(5), layers.Conv2d(5, 4, 2, stride=2, key=jax.random.key(0)))
    ours, _ = wc.load_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 5, 9, 6, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = theirs(x)
    for channels_last in (False, True):
        run = in_layout(
            lambda x, channels_last=False: layers.run_sequential(
                ours, x, channels_last=channels_last
            ),
            channels_last,
        )
        y, members = run(jnp.asarray(x.numpy()))
        assert members[0] is ours[0] and max_abs_diff(y, expected) <= 1e-5


def test_shape_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="last axis"):
        layers.LayerNorm(8)(jnp.zeros((2, 3, 8, 4)))
    with pytest.raises(ValueError, match="NHWC"):
        layers.LayerNorm2d(8)(jnp.zeros((2, 8, 4, 4)), channels_last=True)
    with pytest.raises(ValueError, match="one axis"):
        layers.LayerNorm((4, 8))


def test_building_compiles_nothing_and_gives_each_array_its_own_buffer(caplog):
    layers.LayerNorm(3)  # JAX's own first-use work
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        built = (layers.LayerNorm(37), layers.LayerNorm2d(41, eps=1e-6))
    assert not [r.message for r in caplog.records if "Compiling" in r.message]
    leaves = jax.tree_util.tree_leaves(eqx.filter(built, eqx.is_array))
    assert len(leaves) == 4
    assert len({leaf.unsafe_buffer_pointer() for leaf in leaves}) == len(leaves)
