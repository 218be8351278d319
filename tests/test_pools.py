"""The pooling options VGG, AlexNet, SqueezeNet, GoogLeNet, Inception and DenseNet need,
against `torch.nn.functional`: adaptive average pooling to any output size (torch's
overlapping, repeating bins), max pooling in `ceil_mode` (torch's rule for the last window)
and average pooling (its divisors with and without the padding, in both modes), values and
gradients, both layouts.
"""

import jax
import jax.numpy as jnp
import pytest
import torch
import torch.nn.functional as F
from conftest import in_layout, max_abs_diff

from zoo import layers

LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])


def assert_matches_torch(layer, torch_fn, x: torch.Tensor, channels_last: bool, tol: float):
    """`layer` (in the given layout) against `torch_fn` on `x`: the values, and the input
    gradient for a random cotangent, within `tol` relative to the largest (or 1)."""
    x = x.clone().requires_grad_(True)
    ref = torch_fn(x)
    cotangent = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref.backward(cotangent)
    ref = ref.detach()

    @jax.jit  # one program: op-by-op, each slice and pad compiles on its own
    def values_and_grad(x, cotangent):
        out, vjp = jax.vjp(in_layout(layer, channels_last), x)
        return out, vjp(cotangent)[0]

    out, grad = values_and_grad(jnp.asarray(x.detach().numpy()), jnp.asarray(cotangent.numpy()))
    assert out.shape == tuple(ref.shape)
    assert max_abs_diff(out, ref) <= tol * max(1.0, float(ref.abs().max()))
    assert max_abs_diff(grad, x.grad) <= tol * max(1.0, float(x.grad.abs().max()))


ADAPTIVE_CASES = [
    ((13, 9), (7, 7)),  # VGG's pool on an odd map: bins of 2 and 3 rows, some overlapping
    ((5, 11), (3, 3)),  # overlapping bins ([0, 2), [1, 4), [3, 5) along the height)
    ((1, 1), (7, 7)),  # VGG at 32..63 pixels: one element copied into every bin
    ((3, 2), (6, 6)),  # AlexNet at 63..94 pixels: upsampling, elements repeated
    ((7, 7), (7, 7)),  # VGG at 224: one element per bin
    ((14, 21), (7, 7)),  # divisible: bins of 2 by 3
    ((10, 3), (4, None)),  # None keeps the width
    ((9, 8), (1, 1)),  # the global average of the other classifiers
]


@pytest.mark.parametrize(("size", "output_size"), ADAPTIVE_CASES)
@LAYOUTS
def test_adaptive_avg_pool_matches_torch(size, output_size, channels_last, images):
    x = images(2, 5, *size)
    pool = layers.AdaptiveAvgPool2d(output_size)
    # A wrong bin would be off by O(1); 1e-6 (relative) is fp32 rounding of a sum.
    assert_matches_torch(
        pool, lambda t: F.adaptive_avg_pool2d(t, output_size), x, channels_last, 1e-6
    )


def test_adaptive_avg_pool_output_sizes():
    assert layers.AdaptiveAvgPool2d().output_size == (1, 1)  # the classifiers' default
    assert layers.AdaptiveAvgPool2d(7).output_size == (7, 7)
    assert layers.AdaptiveAvgPool2d([6, None]).output_size == (6, None)
    for bad in (0, (7, 0), (7, 7, 7), 2.5):
        with pytest.raises(ValueError, match="output_size"):
            layers.AdaptiveAvgPool2d(bad)


MAX_POOL_CASES = [
    # (kernel, stride, padding, size)
    (3, 2, 0, (16, 13)),  # SqueezeNet's pools: ceil adds a row window, not a column one
    (3, 2, 0, (4, 8)),  # SqueezeNet's last pool at 33 pixels: a window of 2 at the edge
    (3, 2, 0, (111, 55)),  # SqueezeNet 1.1's first pool at 224
    (3, 2, 1, (6, 4)),  # the extra window starts on the last element, then the padding
    (2, 2, 1, (3, 5)),  # torch's rule: the window that would start in the padding is dropped
    (3, 3, 1, (7, 8)),
    ((3, 2), (2, 1), (1, 0), (9, 6)),  # non-square
]


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), MAX_POOL_CASES)
@LAYOUTS
def test_max_pool_ceil_mode_matches_torch(kernel, stride, padding, size, channels_last, images):
    pool = layers.MaxPool2d(kernel, stride, padding, ceil_mode=True)

    def torch_pool(t):
        return F.max_pool2d(t, kernel, stride, padding, ceil_mode=True)

    # All-negative inputs: a zero-padded border, or a zero beyond it, would win the max.
    x = -images(2, 3, *size).abs() - 1.0
    assert_matches_torch(pool, torch_pool, x, channels_last, 0.0)
    # Ties everywhere (integers): the gradient goes to the first maximum in row-major order,
    # as torch routes it, in the short windows at the edge too.
    ties = torch.randint(-2, 2, (2, 3, *size), generator=torch.Generator().manual_seed(2))
    assert_matches_torch(pool, torch_pool, ties.float(), channels_last, 0.0)


def test_max_pool_ceil_mode_is_floor_mode_where_sizes_divide(images):
    x = jnp.asarray(images(2, 3, 9, 9).numpy())
    ceil = layers.MaxPool2d(3, 2, 1, ceil_mode=True)(x)
    assert ceil.shape == (2, 3, 5, 5)
    assert max_abs_diff(ceil, layers.MaxPool2d(3, 2, 1)(x)) == 0.0


def test_max_pool_refuses_padding_over_half_the_kernel():
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        F.max_pool2d(torch.zeros(1, 1, 8, 8), 3, 2, 2)
    with pytest.raises(ValueError, match="at most half"):
        layers.MaxPool2d(3, 2, 2)


def test_max_pool_refuses_an_input_smaller_than_its_window():
    """torch raises where the output would be empty (a 2x2 map under a 3x3 window), in both
    layouts; a ceil-mode window that starts inside the input is kept, as in torch."""
    with pytest.raises(RuntimeError, match="too small"):
        F.max_pool2d(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="too small"):
        layers.MaxPool2d(3)(jnp.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="too small"):
        layers.MaxPool2d(3)(jnp.zeros((1, 2, 2, 1)), channels_last=True)
    assert layers.MaxPool2d(3, ceil_mode=True)(jnp.zeros((1, 1, 2, 2))).shape == (1, 1, 1, 1)


AVG_POOL_CASES = [
    # (kernel, stride, padding, size)
    (3, 1, 1, (9, 8)),  # Inception's branch pools: the border windows hold 4 or 6 elements
    (2, 2, 0, (7, 9)),  # DenseNet's transitions on odd maps: ceil adds a window of 1 row
    (5, 3, 0, (17, 16)),  # Inception's aux pool; ceil adds a window of 2 columns
    (3, 2, 1, (4, 6)),  # ceil: the last window runs past the padding (divided by 2, not 3)
    (2, 2, 1, (3, 5)),  # torch's rule: the window that would start in the padding is dropped
    (4, 3, 2, (10, 11)),
    ((3, 2), (2, 1), (1, 0), (9, 6)),  # non-square
]


AVG_POOL_OPTIONS = [(c, p) for c in (False, True) for p in (True, False)]


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), AVG_POOL_CASES)
def test_avg_pool_matches_torch(kernel, stride, padding, size, images):
    """Every `(ceil_mode, count_include_pad)` in both layouts, values and input gradients,
    in one compiled program per case (56 programs took 11 s)."""
    pools = [layers.AvgPool2d(kernel, stride, padding, *options) for options in AVG_POOL_OPTIONS]
    # Positive inputs: a wrong divisor changes its window's output by a factor (2/3 or
    # less), far beyond fp32 rounding of a sum.
    x = (images(2, 3, *size).abs() + 1.0).requires_grad_(True)
    refs = [F.avg_pool2d(x, kernel, stride, padding, *options) for options in AVG_POOL_OPTIONS]
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(r.shape, generator=gen) for r in refs]
    ref_grads = [torch.autograd.grad(r, x, c)[0] for r, c in zip(refs, cotangents, strict=True)]

    @jax.jit
    def values_and_grads(x, cotangents):
        results = []
        for channels_last in (False, True):
            for pool, cotangent in zip(pools, cotangents, strict=True):
                out, vjp = jax.vjp(in_layout(pool, channels_last), x)
                results.append((out, vjp(cotangent)[0]))
        return results

    results = values_and_grads(jnp.asarray(x.detach().numpy()), [c.numpy() for c in cotangents])
    for k, (out, grad) in enumerate(results):
        ref, ref_grad = refs[k % 4].detach(), ref_grads[k % 4]
        what = f"ceil_mode, count_include_pad = {AVG_POOL_OPTIONS[k % 4]}, nhwc: {k >= 4}"
        assert out.shape == tuple(ref.shape), what
        assert max_abs_diff(out, ref) <= 1e-6 * float(ref.abs().max()), what
        assert max_abs_diff(grad, ref_grad) <= 1e-6 * max(1.0, float(ref_grad.abs().max())), what


def test_avg_pool_options():
    pool = layers.AvgPool2d(3)
    assert (pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad) == (
        (3, 3),
        (0, 0),
        False,
        True,
    )
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        F.avg_pool2d(torch.zeros(1, 1, 8, 8), 3, 2, 2)
    with pytest.raises(ValueError, match="at most half"):
        layers.AvgPool2d(3, 2, 2)
    with pytest.raises(RuntimeError, match="too small"):
        F.avg_pool2d(torch.zeros(1, 1, 3, 3), 5, 3)
    with pytest.raises(ValueError, match="too small"):
        layers.AvgPool2d(5, 3)(jnp.zeros((1, 1, 3, 3)))
