"""MaxViT beyond the registry tests: train mode of two-layer blocks (the registry's test
config has one layer per block, see `zoo/models/_maxvit.py`), the relative position index
(torchvision's integer buffer) through loading, casting, export and both faces' training,
the one input size, and, with `-m large`, maxvit_t itself at 224x224 in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import committed, max_abs_diff, randomize_batchnorm, to_float64

import weights_convert as wc
import zoo
from zoo.models._maxvit import _torchvision_maxvit_t

# One block of one layer, narrow, at 64x64 (conftest's BatchNorm calibration size): every
# MaxViT module, cheap to compile (XLA:CPU takes seconds per layer, more with gradients).
TINY = {
    "input_size": (64, 64),
    "partition_size": 2,
    "stem_channels": 8,
    "block_channels": (16,),
    "block_layers": (1,),
    "head_dim": 4,
    "stochastic_depth_prob": 0.0,
    "num_classes": 5,
}
# Two layers: the second has torchvision's `nn.Identity` projection.
TWO_LAYERS = TINY | {"block_layers": (2,)}
INDEX = "blocks.0.layers.0.layers.grid_attention.attn_layer.1.relative_position_index"


def _pair(seed: int = 0, options: dict = TINY):
    torch.manual_seed(seed)
    reference = randomize_batchnorm(_torchvision_maxvit_t(**options), seed)
    model = zoo.load("maxvit_t", framework="equinox", weights=reference.state_dict(), **options)
    return reference, model


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@eqx.filter_jit
def _loss_and_grads(model, x, labels):
    return zoo.loss_and_grads(model, x, labels)


def test_eval_parity_of_two_layer_blocks_float64():
    reference, model = _pair(options=TWO_LAYERS)
    x = _images(2, 0)
    with torch.no_grad():
        expected = reference.double().eval()(x.double()).numpy()
    with jax.enable_x64(True):
        ours, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model)), jnp.asarray(x.double().numpy())
        )
    assert float(np.abs(np.asarray(ours) - expected).max()) <= 1e-10


def test_train_mode_parity_float64():
    """Two train-mode steps: logits, BatchNorm statistics and counters, every gradient (the
    relative position bias tables' included), in float64 on both sides."""
    reference, model = _pair()
    reference.double().train()
    labels = torch.tensor([1, 0, 3, 2])
    with jax.enable_x64(True):
        model = zoo.train_mode(to_float64(model))
        model = committed(model)  # as the step's outputs are: one compile for both steps
        for step in range(2):
            x = _images(4, step).double()
            reference.zero_grad()
            logits_ref = reference(x)
            torch.nn.functional.cross_entropy(logits_ref, labels).backward()
            (_, logits, model), grads = _loss_and_grads(
                model, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy())
            )
            assert max_abs_diff(logits, logits_ref) <= 1e-10, step
            values = wc.named_values(model)
            for key, value in reference.state_dict().items():
                if key.endswith("num_batches_tracked") or key.endswith("position_index"):
                    assert np.array_equal(np.asarray(values[key]), value.numpy()), key
                else:
                    # Parameters are not updated here; the statistics are.
                    assert float(np.abs(np.asarray(values[key]) - value.numpy()).max()) <= 1e-10
            ours = wc.named_arrays(grads)
            expected = {k: p.grad.numpy() for k, p in reference.named_parameters()}
            assert ours.keys() == expected.keys()  # no gradient for the integer index
            scale = max(float(np.abs(g).max()) for g in expected.values())
            for key, g in expected.items():
                np.testing.assert_allclose(ours[key], g, rtol=1e-9, atol=1e-12 * scale, err_msg=key)


def test_relative_position_index_stays_an_integer_buffer():
    reference, model = _pair()
    index = wc.named_arrays(model)[INDEX]
    assert index.dtype == jnp.int32  # JAX's default integer; torch's is int64
    assert np.array_equal(np.asarray(index), reference.state_dict()[INDEX].numpy())
    # Never trainable, never cast, exported as torch's int64.
    assert INDEX not in wc.named_arrays(zoo.trainable(model))
    assert INDEX in wc.named_arrays(wc.split_params_buffers(model)[1])
    for dtype in (jnp.bfloat16, jnp.float16):
        cast = zoo.cast_floats(model, dtype)
        assert wc.named_arrays(cast)[INDEX].dtype == jnp.int32
        assert wc.named_arrays(cast)["classifier.3.weight"].dtype == dtype
    loaded = zoo.load("maxvit_t", framework="equinox", weights=reference.state_dict(),
                      dtype=jnp.bfloat16, **TINY)  # fmt: skip
    assert wc.named_arrays(loaded)[INDEX].dtype == jnp.int32
    state = wc.to_state_dict(model)
    assert state[INDEX].dtype == torch.int64
    assert list(state) == list(reference.state_dict())
    fresh = _torchvision_maxvit_t(**TINY)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.state_dict()[INDEX], reference.state_dict()[INDEX])
    # The other way round: a checkpoint's int64 index loads into the int32 field.
    back, report = wc.load_state_dict(model, state)
    assert report.ok and wc.named_arrays(back)[INDEX].dtype == jnp.int32


def test_torch_face_trains_without_touching_the_index():
    """A train-mode step of the torch face: its gradients pair with torchvision's
    parameters (fp32), its BatchNorm statistics follow torchvision's, and the integer
    index (passed to JAX, never differentiated) stays as it was."""
    reference, model = _pair()
    face = zoo.TorchModel(model, name="maxvit_t")
    before = face.state_dict()[INDEX].clone()
    assert face.state_dict()[INDEX].dtype == torch.int64
    x, labels = _images(4, 3), torch.tensor([0, 1, 2, 3])
    for module in (face.train(), reference.train()):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(x), labels).backward()
    assert torch.equal(face.state_dict()[INDEX], before)
    theirs = dict(reference.named_parameters())
    for name, p in face.named_parameters():
        scale = max(1e-3, float(theirs[name].grad.abs().max()))
        assert max_abs_diff(p.grad, theirs[name].grad) <= 1e-4 * scale, name
    for key, value in reference.state_dict().items():
        if "running" in key:
            assert max_abs_diff(face.state_dict()[key], value) <= 1e-5, key


def test_refuses_other_input_sizes_saying_how_to_build_for_them():
    model = zoo.load("maxvit_t", framework="equinox", **TINY)
    with pytest.raises(ValueError, match=r"zoo.load\('maxvit_t', input_size=\(32, 32\)\)"):
        eqx.filter_eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="not divisible by partition size"):
        zoo.load("maxvit_t", framework="equinox", input_size=(64, 64))  # partition 7
    # Hub configs and the torch face rebuild it from config_kwargs.
    assert model.config_kwargs()["input_size"] == [64, 64]
    assert model.config_kwargs()["block_layers"] == [1]


@pytest.mark.large
def test_maxvit_t_at_224_float64():
    """maxvit_t as torchvision builds it (224x224, 7x7 partitions, blocks of 2, 2, 5, 2
    layers), eval mode, float64."""
    torch.manual_seed(0)
    reference = randomize_batchnorm(_torchvision_maxvit_t(), size=(224, 224))
    model = zoo.load("maxvit_t", framework="equinox", weights=reference.state_dict())
    assert sum(p.numel() for p in reference.parameters()) == 30919624  # torchvision's meta
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.double().eval()(x.double()).numpy()
    with jax.enable_x64(True):
        ours, _ = eqx.filter_jit(lambda m, x: m(x))(
            zoo.eval_mode(to_float64(model)), jnp.asarray(x.double().numpy())
        )
    assert float(np.abs(np.asarray(ours) - expected).max()) <= 1e-10
