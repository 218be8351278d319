"""What an Equinox user does with a zoo model works: `eqx.nn.inference_mode`, models mixing
zoo and `eqx.nn` layers, optimizers set up the usual Equinox way, construction under
`filter_vmap`/`filter_eval_shape`/`jit`, cross-device BatchNorm, and a plain training loop
that learns."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff

import weights_convert as wc
import zoo


def test_inference_mode_switches_zoo_models_and_faces():
    model = zoo.models.resnet18(num_classes=3)
    assert zoo.is_training(model)
    frozen = eqx.nn.inference_mode(model)
    assert not zoo.is_training(frozen)
    assert zoo.is_training(eqx.nn.inference_mode(frozen, value=False))
    face = zoo.load("cnn")
    assert not zoo.is_training(face.model)
    assert zoo.is_training(eqx.nn.inference_mode(face, value=False).model)
    # Same structure in both modes: what trains in one mode fits the other.
    assert jax.tree_util.tree_structure(eqx.filter(model, eqx.is_array)) == (
        jax.tree_util.tree_structure(eqx.filter(frozen, eqx.is_array))
    )


class Mixed(eqx.Module):
    """A zoo backbone under an `eqx.nn` head (dropout, a Lambda, a Linear)."""

    backbone: zoo.models.ResNet
    dropout: eqx.nn.Dropout
    act: eqx.nn.Lambda
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.backbone = zoo.models.resnet18(num_classes=0, key=k1)
        self.dropout = eqx.nn.Dropout(0.5)
        self.act = eqx.nn.Lambda(jax.nn.gelu)
        self.head = eqx.nn.Linear(512, 4, key=k2)

    def __call__(self, x, *, key=None):
        features, backbone = self.backbone(x)
        features = self.dropout(self.act(features), key=key)
        logits = jax.vmap(self.head)(features)
        return logits, eqx.tree_at(lambda m: m.backbone, self, backbone)


def test_models_mixing_eqx_nn_layers_train_and_run_in_faces():
    model = Mixed(jax.random.key(0))
    opt = optax.adamw(1e-3)
    opt_state = opt.init(zoo.trainable(model))
    step = zoo.make_train_step(opt, donate=False)
    x, y = jnp.ones((4, 3, 32, 32)), jnp.arange(4)
    new, _, loss, _ = step(model, opt_state, x, y, jax.random.key(1))
    assert np.isfinite(float(loss)) and zoo.is_training(new)
    assert new.dropout.inference is False  # the eqx.nn flag came back as it went in
    assert int(new.backbone.bn1.num_batches_tracked) == 1
    face = zoo.JaxModel(new, name="mixed")
    assert face(np.ones((2, 3, 32, 32), np.float32)).shape == (2, 4)
    assert face.replace(new).model.dropout.inference is True


def test_usual_equinox_optimizer_and_trainable_agree_in_either_mode():
    model = zoo.models.cnn(num_classes=3, drop_rate=0.0)  # BatchNorm's modes, no key needed
    for mode in (zoo.train_mode, zoo.eval_mode):
        params = zoo.trainable(mode(model))
        names = wc.named_arrays(params)
        assert names and not any(wc.is_buffer_name(n) for n in names)
        # Equinox's own filter picks exactly the parameters: the statistics are stored as
        # bits (integers), the counters are integers, the mode flags are bools.
        usual = eqx.filter(mode(model), eqx.is_inexact_array)
        assert jax.tree_util.tree_structure(usual) == jax.tree_util.tree_structure(params)
        assert list(wc.named_arrays(usual)) == list(names)
        grads = eqx.filter_jit(
            eqx.filter_grad(
                lambda p, m: zoo.forward(eqx.combine(p, m), jnp.ones((2, 3, 32, 32))).sum()
            )
        )(params, mode(model))
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def _digits_batch(n: int = 16):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.repeat(digits.images[:n, None].astype(np.float32) / 16.0, 3, axis=1)
    return jnp.asarray(x), jnp.asarray(digits.target[:n])


def test_the_usual_equinox_optimizer_never_changes_batchnorm_statistics():
    """optax.adamw with weight decay, set up on `eqx.filter(model, eqx.is_inexact_array)` and
    fed `eqx.filter_value_and_grad`'s gradients: the running statistics stay bit-identical
    in eval mode (where they are read, so a float leaf would get gradients) and are exactly
    BatchNorm's own update in train mode (where a float leaf would be decayed)."""
    x, y = _digits_batch()
    optimizer = optax.adamw(1e-2, weight_decay=0.5)

    @eqx.filter_jit
    def step(model, opt_state):
        def loss(model):
            logits, new_model = model(x)
            return zoo.cross_entropy(logits, y), new_model

        (_, new_model), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(new_model, updates), new_model, opt_state

    def statistics(model):
        return {k: v for k, v in wc.named_values(model).items() if wc.is_buffer_name(k)}

    fresh = zoo.models.cnn(num_classes=10, drop_rate=0.0, key=jax.random.key(3))
    for mode in (zoo.eval_mode, zoo.train_mode):
        model = mode(fresh)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        for _ in range(2):
            before = statistics(model)
            model, forward_model, opt_state = step(model, opt_state)
            after, expected = statistics(model), statistics(forward_model)
            for name, value in after.items():
                # Bit-identical to what the forward left: unchanged in eval mode, the
                # momentum update in train mode. The optimizer added nothing.
                np.testing.assert_array_equal(value, expected[name], err_msg=name)
                if mode is zoo.eval_mode:
                    np.testing.assert_array_equal(value, before[name], err_msg=name)
        assert max_abs_diff(model.fc.weight, fresh.fc.weight) > 1e-3  # the weights trained


def test_trainable_and_filter_value_and_grad_on_a_train_mode_model():
    """An optimizer initialised on `zoo.trainable(model)` takes `eqx.filter_value_and_grad`'s
    gradients of a train-mode model as they come (same structure), and the step trains."""
    x, y = _digits_batch()
    model = zoo.train_mode(zoo.models.cnn(num_classes=10, drop_rate=0.0))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(zoo.trainable(model))

    @eqx.filter_jit
    def step(model, opt_state):
        def loss(model):
            logits, new_model = model(x)
            return zoo.cross_entropy(logits, y), new_model

        (value, new_model), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = optimizer.update(grads, opt_state, zoo.trainable(model))
        return eqx.apply_updates(new_model, updates), opt_state, value

    losses = []
    for _ in range(5):
        model, opt_state, value = step(model, opt_state)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    assert int(model.bn1.num_batches_tracked) == 5


def test_construction_under_transformations_and_eager_builds_compile_nothing():
    keys = jax.random.split(jax.random.key(0), 3)
    # Eager vmap runs op by op: the small CNN keeps that to seconds.
    ensemble = eqx.filter_vmap(lambda k: zoo.models.cnn(num_classes=2, key=k))(keys)
    assert ensemble.conv1.weight.shape == (3, *zoo.models.cnn().conv1.weight.shape)
    assert not bool(jnp.all(ensemble.conv1.weight[0] == ensemble.conv1.weight[1]))
    logits, _ = eqx.filter_jit(eqx.filter_vmap(lambda m, x: zoo.eval_mode(m)(x)))(
        ensemble, jnp.ones((3, 2, 3, 32, 32))
    )
    assert logits.shape == (3, 2, 2)
    template = eqx.filter_eval_shape(zoo.models.resnet50, key=jax.random.key(0))
    assert isinstance(template.fc.weight, jax.ShapeDtypeStruct)
    assert template.fc.weight.shape == (1000, 2048)
    built = eqx.filter_jit(lambda k: zoo.models.cnn(key=k))(jax.random.key(1))
    assert built.fc.weight.shape == (10, 128) and built.bn1.inference is False


def test_batchnorm_axis_name_gives_the_global_batch_statistics():
    """Under `shard_map` over 2 host devices, `axis_name` BatchNorm equals one BatchNorm on
    the whole batch (outputs and running statistics)."""
    from jax.sharding import Mesh, PartitionSpec as P

    devices = jax.devices()
    if len(devices) < 2:
        pytest.fail("conftest sets XLA_FLAGS for 2 host devices; JAX started before it")
    mesh = Mesh(np.asarray(devices[:2]), ("data",))
    x = jax.random.normal(jax.random.key(0), (8, 5, 6, 6)) * 3 + 1
    single = zoo.layers.BatchNorm2d(5)
    synced = zoo.layers.BatchNorm2d(5, axis_name="data")
    want, want_bn = single(x)
    dynamic, static = eqx.partition(synced, eqx.is_array)

    def shard(x, dynamic):
        y, bn = eqx.combine(dynamic, static)(x)
        return y, eqx.filter(bn, eqx.is_array)

    run = jax.jit(
        jax.shard_map(shard, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    )
    got, got_bn = run(x, dynamic)
    assert max_abs_diff(got, want) <= 1e-5
    for got_stat, want_stat in zip(got_bn.running_stats(), want_bn.running_stats(), strict=True):
        assert max_abs_diff(got_stat, want_stat) <= 1e-6
    local, _ = single(x[:4])  # without the axis name each device would see half the batch
    assert max_abs_diff(local, got[:4]) > 1e-3


def _digits_32(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor((digits.images / 16.0).astype(np.float32))[:, None]
    x = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.5
    return train_test_split(
        x.numpy(), digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )


@pytest.mark.slow
def test_a_plain_training_loop_teaches_the_cnn_digits():
    """Adam 2e-3, batch 64, 4 epochs on digits at 32x32, grayscale: >= 0.93 held-out (0.95
    measured; chance is 0.1)."""
    x_train, x_test, y_train, y_test = _digits_32()
    model = zoo.train_mode(zoo.load("cnn", framework="equinox", in_chans=1))
    optimizer = optax.adam(2e-3)
    step = zoo.make_train_step(optimizer)
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    opt_state = optimizer.init(zoo.trainable(model))
    for _ in range(4):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            if len(batch) < 2:
                continue
            key, sub = jax.random.split(key)
            model, opt_state, _, _ = step(model, opt_state, x_train[batch], y_train[batch], sub)
    logits = zoo.JaxModel(model, name="cnn")(x_test)
    accuracy = float((np.asarray(logits).argmax(1) == y_test).mean())
    print(f"cnn held-out accuracy after 4 epochs: {accuracy:.4f}")
    assert accuracy >= 0.93


def test_a_model_put_on_devices_whole_gets_an_error_that_says_why():
    model = zoo.train_mode(zoo.models.cnn())
    whole = jax.device_put(model)  # its bool flags become arrays
    step = zoo.make_train_step(optax.sgd(0.1), donate=False)
    with pytest.raises(TypeError, match=r"eqx.filter_jit.*eqx.filter\(model, eqx.is_array\)"):
        step(
            whole,
            optax.sgd(0.1).init(zoo.trainable(model)),
            jnp.ones((2, 3, 32, 32)),
            jnp.arange(2),
            jax.random.key(0),
        )
