"""Each layer against its torch.nn counterpart, at the sizes where conventions differ."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import max_abs_diff

import weights_convert as wc
from zoo import eval_mode, layers

TOL = 1e-5


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
def test_conv2d_matches_torch(kernel, stride, padding, dilation, groups, size, images):
    torch_conv = torch.nn.Conv2d(8, 12, kernel, stride, padding, dilation, groups, bias=True)
    conv = layers.Conv2d(8, 12, kernel, stride, padding, dilation, groups, key=jax.random.key(0))
    conv, _ = wc.load_state_dict(conv, torch_conv.state_dict())
    x = images(2, 8, *size)
    assert max_abs_diff(conv(jnp.asarray(x.numpy())), torch_conv(x)) <= TOL


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(3, 2, 1, (33, 33)), (3, 2, 1, (97, 131)), (2, 2, 0, (9, 7))],
)
def test_maxpool_pads_with_minus_infinity(kernel, stride, padding, size, images):
    # All-negative input: zero padding would win the max at the border; -inf must not.
    x = -images(2, 3, *size).abs() - 1.0
    ref = torch.nn.MaxPool2d(kernel, stride, padding)(x)
    out = layers.MaxPool2d(kernel, stride, padding)(jnp.asarray(x.numpy()))
    assert out.shape == tuple(ref.shape)
    assert max_abs_diff(out, ref) == 0.0


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


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_train_mode_matches_torch_over_steps(momentum, images):
    torch_bn, bn = _bn_pair(momentum)
    torch_bn.train()
    for step in range(3):
        x = images(4, 6, 5, 3, seed=step) * 3 + 1
        ref = torch_bn(x)
        out, bn = bn(jnp.asarray(x.numpy()))
        assert max_abs_diff(out, ref) <= TOL
        # The running variance takes the *unbiased* batch variance, as torch does.
        assert max_abs_diff(bn.running_mean, torch_bn.running_mean) <= TOL
        assert max_abs_diff(bn.running_var, torch_bn.running_var) <= TOL
        assert int(bn.num_batches_tracked) == int(torch_bn.num_batches_tracked)


def test_batchnorm_eval_mode_uses_running_stats(images):
    torch_bn, bn = _bn_pair()
    torch_bn.eval()
    bn = eval_mode(bn)
    x = images(2, 6, 4, 4)
    out, same = bn(jnp.asarray(x.numpy()))
    assert max_abs_diff(out, torch_bn(x)) <= TOL
    assert same is bn  # eval mode leaves the buffers alone


def test_batchnorm_train_mode_rejects_a_single_value_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        layers.BatchNorm2d(3)(jnp.ones((1, 3, 1, 1)))


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


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients_match_torch_with_an_offset_input(train, images):
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
        return (bn(x)[0] * jnp.asarray(upstream.numpy())).sum()

    g_bn, g_x = eqx.filter_grad(lambda args: loss(*args))((bn, jnp.asarray(x.numpy())))
    for ours, theirs in [
        (g_bn.weight, torch_bn.weight.grad),
        (g_bn.bias, torch_bn.bias.grad),
        (g_x, xt.grad),
    ]:
        t = theirs.numpy()
        np.testing.assert_allclose(np.asarray(ours), t, rtol=1e-4, atol=1e-4 * np.abs(t).max())
