"""Each layer against its torch.nn counterpart, at the sizes where conventions differ."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import in_layout, max_abs_diff, to_float64

import weights_convert as wc
from zoo import eval_mode, layers, models
from zoo.layers import lowers_to_matmul

TOL = 1e-5
# Every layer that the models run in NHWC is checked in both layouts.
LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "size"),
    [
        (7, 2, 3, 1, 1, (97, 131)),  # ResNet stem at odd sizes
        (3, 2, 1, 1, 1, (33, 33)),
        (3, 1, 2, 2, 1, (10, 15)),  # dilated, as replace_stride_with_dilation builds
        (3, 2, 1, 1, 4, (17, 12)),  # grouped, as ResNeXt builds
        (1, 2, 0, 1, 1, (9, 9)),  # the 1x1 stride-2 downsample
        (4, 2, 1, 1, 1, (8, 8)),  # even kernel: where 'SAME' padding would differ
    ],
)
@LAYOUTS
def test_conv2d_matches_torch(
    kernel, stride, padding, dilation, groups, size, channels_last, images
):
    torch_conv = torch.nn.Conv2d(8, 12, kernel, stride, padding, dilation, groups, bias=True)
    conv = layers.Conv2d(8, 12, kernel, stride, padding, dilation, groups, key=jax.random.key(0))
    conv, _ = wc.load_state_dict(conv, torch_conv.state_dict())
    x = images(2, 8, *size)
    assert (
        max_abs_diff(in_layout(conv, channels_last)(jnp.asarray(x.numpy())), torch_conv(x)) <= TOL
    )


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(3, 2, 1, (33, 33)), (3, 2, 1, (97, 131)), (2, 2, 0, (9, 7))],
)
@LAYOUTS
def test_maxpool_pads_with_minus_infinity(kernel, stride, padding, size, channels_last, images):
    # All-negative input: zero padding would win the max at the border; -inf must not.
    x = -images(2, 3, *size).abs() - 1.0
    ref = torch.nn.MaxPool2d(kernel, stride, padding)(x)
    pool = in_layout(layers.MaxPool2d(kernel, stride, padding), channels_last)
    out = pool(jnp.asarray(x.numpy()))
    assert out.shape == tuple(ref.shape)
    assert max_abs_diff(out, ref) == 0.0


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [
        (3, 1, 1, (2, 2)),  # layer3 of ResNet at 32x32
        (3, 1, 1, (1, 1)),  # layer4: only the centre tap sees data
        (3, 2, 1, (4, 4)),  # stride 2 into a 2x2 map
        (3, 2, 1, (2, 2)),  # stride 2 into a 1x1 map
        (3, 2, 1, (3, 3)),  # odd size, some taps read padding only on one side
        (7, 2, 3, (2, 3)),  # the stem on a tiny, non-square input
        (1, 2, 0, (7, 7)),  # 1x1 stride-2 downsample, any size
        (1, 1, 0, (5, 6)),  # 1x1 stride-1 (Bottleneck), any size
        ((3, 1), (1, 2), (1, 0), (2, 3)),  # non-square kernel, stride, padding
    ],
)
@LAYOUTS
def test_conv2d_matmul_lowering_matches_torch_with_gradients(
    kernel, stride, padding, size, channels_last, images
):
    """The convolutions computed as im2col + matmul (see `lowers_to_matmul`) agree with torch
    in the forward, the input gradient and the weight/bias gradients."""
    torch_conv = torch.nn.Conv2d(8, 12, kernel, stride, padding, bias=True)
    conv = layers.Conv2d(8, 12, kernel, stride, padding, key=jax.random.key(0))
    conv, _ = wc.load_state_dict(conv, torch_conv.state_dict())
    assert lowers_to_matmul(conv, *size)
    x = images(3, 8, *size).requires_grad_()
    ref = torch_conv(x)
    cotangent = images(*ref.shape, seed=1)
    (ref * cotangent).sum().backward()

    out, vjp = jax.vjp(
        lambda c, x: in_layout(c, channels_last)(x), conv, jnp.asarray(x.detach().numpy())
    )
    conv_grad, x_grad = vjp(jnp.asarray(cotangent.numpy()))
    assert out.shape == tuple(ref.shape)
    assert max_abs_diff(out, ref) <= TOL
    assert max_abs_diff(x_grad, x.grad) <= TOL
    assert max_abs_diff(conv_grad.weight, torch_conv.weight.grad) <= 1e-4
    assert max_abs_diff(conv_grad.bias, torch_conv.bias.grad) <= 1e-4


@pytest.mark.parametrize(
    ("channels", "groups", "kernel", "stride", "padding", "size"),
    [
        ((6, 6), 6, 3, 1, 1, (5, 7)),  # depthwise (MobileNet): the taps, unrolled
        ((6, 6), 6, 5, 2, 2, (9, 4)),  # depthwise, stride 2 (EfficientNet's 5x5)
        ((6, 6), 6, 7, 1, 3, (4, 6)),  # depthwise 7x7 (ConvNeXt): the taps' scan
        ((6, 6), 6, 3, 1, 1, (1, 1)),  # a 1x1 map: only the centre tap reads data
        ((6, 6), 6, 1, 2, 1, (1, 1)),  # every output reads padding only
        ((8, 16), 2, 3, 2, 1, (5, 7)),  # grouped (RegNet, ResNeXt): matmul derivatives
        ((12, 12), 3, 3, 1, 1, (8, 8)),
        ((16, 8), 4, 1, 2, 0, (7, 7)),
    ],
)
@LAYOUTS
def test_depthwise_and_grouped_convolutions_match_torch_in_both_autodiff_modes(
    channels, groups, kernel, stride, padding, size, channels_last, images
):
    """The CPU's own paths for depthwise (shifted taps) and grouped (per-group matmul
    derivatives) convolutions, in float64 against torch: the forward, the input and weight
    gradients, and forward mode (a `jax.jvp` is torch's convolution of the tangents)."""
    cin, cout = channels
    torch_conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups)
    conv = layers.Conv2d(cin, cout, kernel, stride, padding, groups=groups, key=jax.random.key(0))
    conv, _ = wc.load_state_dict(conv, torch_conv.state_dict())
    torch_conv = torch_conv.double()  # the fp32 weights, exactly
    x = images(2, cin, *size).double().requires_grad_()
    ref = torch_conv(x)
    cotangent = images(*ref.shape, seed=1).double()
    (ref * cotangent).sum().backward()
    with jax.enable_x64(True):
        conv = to_float64(conv)
        call = eqx.filter_jit(lambda c, x: in_layout(c, channels_last)(x))
        xj = jnp.asarray(x.detach().numpy())
        out, vjp = eqx.filter_vjp(call, conv, xj)
        conv_grad, x_grad = vjp(jnp.asarray(cotangent.numpy()))
        tangent = images(*x.shape, seed=2).double()
        _, jvp = jax.jvp(lambda x: call(conv, x), (xj,), (jnp.asarray(tangent.numpy()),))
        assert max_abs_diff(out, ref) <= 1e-12
        assert max_abs_diff(x_grad, x.grad) <= 1e-12
        assert max_abs_diff(conv_grad.weight, torch_conv.weight.grad) <= 1e-12
        with torch.no_grad():  # linear in x: the tangent's image without the bias
            expected = torch_conv(tangent) - torch_conv.bias[:, None, None]
        assert max_abs_diff(jvp, expected) <= 1e-12


def test_conv2d_keeps_xla_convolution_where_its_kernel_is_fast():
    conv = layers.Conv2d(8, 8, 3, padding=1, key=jax.random.key(0))
    assert not lowers_to_matmul(conv, 4, 4)  # 16 output pixels: XLA's own kernel wins
    grouped = layers.Conv2d(8, 8, 3, padding=1, groups=2, key=jax.random.key(0))
    assert not lowers_to_matmul(grouped, 1, 1)
    dilated = layers.Conv2d(8, 8, 3, padding=2, dilation=2, key=jax.random.key(0))
    assert not lowers_to_matmul(dilated, 2, 2)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [
        (3, 2, 1, (112, 112)),  # the ResNet stem's pool
        (3, 2, 1, (9, 8)),
        (2, 2, 0, (7, 6)),  # windows that do not cover the last row/column
        (3, 1, 1, (5, 5)),  # overlapping stride-1 windows
        ((3, 2), (2, 1), (1, 0), (7, 6)),
        (5, 3, 2, (11, 9)),
        (12, 6, 2, (30, 30)),  # 144 taps: more than an int8 tap index holds
    ],
)
@LAYOUTS
def test_maxpool_gradient_matches_torch_including_ties(
    kernel, stride, padding, size, channels_last, images
):
    """Each output's gradient goes to the first maximal element of its window (row-major), as
    torch's kernel routes it: checked on a ReLU output (many zeros tie) and with planted
    ties of positive values."""
    x = torch.relu(images(2, 3, *size))
    x[0, 0, :3, :3] = 2.0
    x[1, 2, ::2, ::2] = 3.0
    x.requires_grad_()
    ref = torch.nn.functional.max_pool2d(x, kernel, stride, padding)
    cotangent = images(*ref.shape, seed=1)
    (ref * cotangent).sum().backward()
    pool = in_layout(layers.MaxPool2d(kernel, stride, padding), channels_last)
    out, vjp = jax.vjp(pool, jnp.asarray(x.detach().numpy()))
    assert max_abs_diff(out, ref) == 0.0
    assert max_abs_diff(vjp(jnp.asarray(cotangent.numpy()))[0], x.grad) == 0.0


@LAYOUTS
def test_maxpool_supports_forward_mode_autodiff(channels_last, images):
    x = jnp.asarray(images(2, 3, 9, 9).numpy())
    tangent = jnp.asarray(images(2, 3, 9, 9, seed=1).numpy())
    pool = in_layout(layers.MaxPool2d(3, 2, 1), channels_last)
    _, jvp_out = jax.jvp(pool, (x,), (tangent,))
    # Linear in the tangent, and equal to the transpose of the VJP: <J t, c> == <t, J^T c>.
    cotangent = jnp.asarray(images(*jvp_out.shape, seed=2).numpy())
    (vjp_out,) = jax.vjp(pool, x)[1](cotangent)
    np.testing.assert_allclose(
        float(jnp.vdot(jvp_out, cotangent)), float(jnp.vdot(tangent, vjp_out)), rtol=1e-5
    )


def _bn_pair(momentum=0.1, seed=0):
    torch_bn = torch.nn.BatchNorm2d(6, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        torch_bn.weight.copy_(torch.rand(6, generator=gen) + 0.5)
        torch_bn.bias.copy_(torch.randn(6, generator=gen))
        torch_bn.running_mean.copy_(torch.randn(6, generator=gen))
        torch_bn.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
        torch_bn.num_batches_tracked.fill_(7)
    bn, _ = wc.load_state_dict(layers.BatchNorm2d(6, momentum=momentum), torch_bn.state_dict())
    return torch_bn, bn


@LAYOUTS
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_train_mode_matches_torch_over_steps(momentum, channels_last, images):
    torch_bn, bn = _bn_pair(momentum)
    torch_bn.train()
    for step in range(3):
        x = images(4, 6, 5, 3, seed=step) * 3 + 1
        ref = torch_bn(x)
        out, bn = in_layout(bn, channels_last)(jnp.asarray(x.numpy()))
        assert max_abs_diff(out, ref) <= TOL
        # The running variance takes the *unbiased* batch variance, as torch does.
        running_mean, running_var = bn.running_stats()
        assert max_abs_diff(running_mean, torch_bn.running_mean) <= TOL
        assert max_abs_diff(running_var, torch_bn.running_var) <= TOL
        assert int(bn.num_batches_tracked) == int(torch_bn.num_batches_tracked)


@LAYOUTS
def test_batchnorm_eval_mode_uses_running_stats(channels_last, images):
    torch_bn, bn = _bn_pair()
    torch_bn.eval()
    bn = eval_mode(bn)
    x = images(2, 6, 4, 3)
    out, same = in_layout(bn, channels_last)(jnp.asarray(x.numpy()))
    assert max_abs_diff(out, torch_bn(x)) <= TOL
    assert same is bn  # eval mode leaves the buffers alone


def test_batchnorm_train_mode_rejects_a_single_value_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        layers.BatchNorm2d(3)(jnp.ones((1, 3, 1, 1)))


@LAYOUTS
def test_batchnorm_vjp_saves_one_batch_sized_array(channels_last, images):
    """What `jax.vjp` keeps for the backward (the torch face's backward reads it from
    memory): the centred batch, once. `jnp.square` in the variance kept `2 * centred` too."""
    bn = in_layout(layers.BatchNorm2d(5), channels_last)
    x = jnp.asarray(images(4, 5, 6, 7).numpy())
    _, vjp = jax.vjp(lambda x: bn(x)[0], x)
    saved = [a for a in jax.tree.leaves(vjp) if getattr(a, "size", 0) == x.size]
    assert len(saved) == 1


@LAYOUTS
def test_adaptive_avg_pool_matches_torch(channels_last, images):
    x = images(2, 5, 7, 3)
    out = in_layout(layers.AdaptiveAvgPool2d(), channels_last)(jnp.asarray(x.numpy()))
    assert max_abs_diff(out, torch.nn.AdaptiveAvgPool2d((1, 1))(x)) <= TOL


def test_relu_matches_torch_values_and_derivatives():
    x = np.array([-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.arange(1.0, 9.0))
    y, vjp = jax.vjp(layers.relu, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), torch.relu(xt).detach().numpy())
    (grad,) = vjp(jnp.arange(1.0, 9.0))
    np.testing.assert_array_equal(np.asarray(grad), xt.grad.numpy())  # 0 at 0, 1 at NaN
    _, tangent = jax.jvp(layers.relu, (jnp.asarray(x),), (jnp.arange(1.0, 9.0),))
    np.testing.assert_array_equal(np.asarray(tangent), xt.grad.numpy())
    # An infinite or NaN cotangent stays out of the positions the ReLU cut.
    (grad,) = vjp(jnp.full(8, jnp.inf))
    np.testing.assert_array_equal(np.asarray(grad), np.where(x <= 0, 0.0, np.inf))
    assert jax.grad(layers.relu)(2.0) == 1.0 and jax.grad(layers.relu)(0.0) == 0.0
    # What jax.vjp saves: the mask, never an array of zeros (jax.nn.relu saves both).
    residuals = [a for a in jax.tree.leaves(vjp) if getattr(a, "size", 0) == x.size]
    assert [a.dtype for a in residuals] == [jnp.bool_]
    _, nn_vjp = jax.vjp(jax.nn.relu, jnp.asarray(x))
    nn_residuals = [a for a in jax.tree.leaves(nn_vjp) if getattr(a, "size", 0) == x.size]
    assert sorted(str(a.dtype) for a in nn_residuals) == ["bool", "float32"]


def test_linear_matches_torch(images):
    torch_fc = torch.nn.Linear(7, 5)
    fc, _ = wc.load_state_dict(layers.Linear(7, 5, key=jax.random.key(0)), torch_fc.state_dict())
    x = images(3, 7)
    assert max_abs_diff(fc(jnp.asarray(x.numpy())), torch_fc(x)) <= TOL


def test_dropout_scales_survivors_and_is_identity_in_eval():
    x = jnp.ones((200, 100))
    drop = layers.Dropout(0.25)
    y = drop(x, key=jax.random.key(1))
    kept = np.asarray(y != 0)
    assert 0.72 < kept.mean() < 0.78
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    # Same key, same mask; another key, another mask.
    assert bool(jnp.all(drop(x, key=jax.random.key(1)) == y))
    assert not bool(jnp.all(drop(x, key=jax.random.key(2)) == y))
    assert eval_mode(drop)(x) is x
    with pytest.raises(ValueError, match="needs a PRNG key"):
        drop(x)


def test_default_initialisation_has_torch_statistics():
    # Same distributions as torch (not the same draws): compare the spread of large layers.
    conv = layers.Conv2d(64, 128, 3, key=jax.random.key(0))
    torch_conv = torch.nn.Conv2d(64, 128, 3)
    np.testing.assert_allclose(
        float(jnp.std(conv.weight)), float(torch_conv.weight.detach().std()), rtol=0.02
    )
    bound = 1 / np.sqrt(64 * 9)
    assert float(jnp.max(jnp.abs(conv.bias))) <= bound


@LAYOUTS
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients_match_torch_with_an_offset_input(train, channels_last, images):
    # Gradients w.r.t. weight, bias and input, in both modes. (The cancellation bug fixed in
    # `_normalise` only showed through a whole ResNet: test_faces' gradient test guards it.)
    torch_bn, bn = _bn_pair()
    torch_bn.train(train)
    bn = bn if train else eval_mode(bn)
    x = images(4, 6, 5, 5) * 0.1 + 5.0
    with torch.no_grad():
        torch_bn.running_mean.fill_(5.0)
    bn = eqx.tree_at(lambda b: b.running_mean, bn, jnp.full((6,), 5.0))
    xt = x.clone().requires_grad_()
    upstream = images(4, 6, 5, 5, seed=7)
    (torch_bn(xt) * upstream).sum().backward()

    def loss(bn, x):
        return (in_layout(bn, channels_last)(x)[0] * jnp.asarray(upstream.numpy())).sum()

    g_bn, g_x = eqx.filter_grad(lambda args: loss(*args))((bn, jnp.asarray(x.numpy())))
    for ours, theirs in [
        (g_bn.weight, torch_bn.weight.grad),
        (g_bn.bias, torch_bn.bias.grad),
        (g_x, xt.grad),
    ]:
        t = theirs.numpy()
        np.testing.assert_allclose(np.asarray(ours), t, rtol=1e-4, atol=1e-4 * np.abs(t).max())


def test_building_a_model_compiles_nothing_and_gives_each_array_its_own_buffer(caplog):
    models.resnet18(num_classes=10)  # JAX's own first-use compiles (key splitting)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        # New shapes (a 13-class head, 37 channels): `jnp.asarray`/`jnp.ones` would compile.
        model = models.resnet18(num_classes=13)
        bn = layers.BatchNorm2d(37)
    assert not [r.message for r in caplog.records if "Compiling" in r.message]
    # Donation and the torch face's in-place updates need one buffer per array; init
    # arrays that `device_put` aliases from shared NumPy memory would break both.
    leaves = jax.tree_util.tree_leaves(eqx.filter((model, bn), eqx.is_array))
    assert len({leaf.unsafe_buffer_pointer() for leaf in leaves}) == len(leaves)
