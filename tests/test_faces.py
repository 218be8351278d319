"""The two faces against the real torchvision model with identical weights.

Tolerances: eval logits <= 1e-5 abs; train-mode logits and buffers <= 1e-5 abs; gradients
rtol 1e-4 (atol 1e-4 of the tensor's largest gradient); weights and buffers after three
SGD-with-momentum steps on both sides <= 1e-4 abs. Every gradient comparison runs on input
seeds whose float64 forward keeps each ReLU input and max-pool gap >= KINK_MARGIN (1e-5) from
its kink, checked before comparing (for the SGD runs at each step, on the reference as it is
then): nearer, fp32 rounding can flip a branch in any correct implementation. The exact fp64
gradient check is in test_parity.py.
"""

import copy
import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision
from conftest import ROOT, assert_far_from_kinks, max_abs_diff, randomize_batchnorm, run_python

import weights_convert as wc
import zoo

TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(2)
    return randomize_batchnorm(torchvision.models.resnet18(num_classes=10))


def fresh_pair(reference):
    """The reference and a torch face with its weights, both in eval mode (each test sets the
    mode it needs; the face's train-mode default is tested in test_torch_face.py)."""
    ref = copy.deepcopy(reference).eval()
    return ref, zoo.load("resnet18", framework="torch", weights=ref.state_dict()).eval()


def assert_grads_close(ours, theirs, key=""):
    g = theirs.detach().numpy()
    np.testing.assert_allclose(
        ours.detach().numpy(), g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=key
    )


# ---- torch face --------------------------------------------------------------------------


def test_state_dict_is_torchvisions_both_ways(reference):
    ref, face = fresh_pair(reference)
    assert list(face.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in face.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in face.named_buffers()] == [n for n, _ in ref.named_buffers()]
    torchvision.models.resnet18(num_classes=10).load_state_dict(face.state_dict(), strict=True)
    other = randomize_batchnorm(torchvision.models.resnet18(num_classes=10), seed=9)
    face.load_state_dict(other.state_dict(), strict=True)
    assert all(torch.equal(face.state_dict()[k], v) for k, v in other.state_dict().items())
    assert face.layer1[0].conv1.weight.shape == (64, 64, 3, 3) and len(face.layer2) == 2


def test_parameters_share_memory_with_the_jax_arrays(reference, images):
    _, face = fresh_pair(reference)
    with torch.no_grad():
        face(images(1, 3, 32, 32))
    binding = face._zoo.binding(face, "")
    tensors = binding.tensors()
    for index, (tensor, ptr, _, _, array, _) in binding.aliases.items():
        assert tensors[index] is tensor
        assert tensor.data_ptr() == ptr == array.unsafe_buffer_pointer()
    # Every parameter and float buffer is aliased (counters stay in torch).
    assert len(binding.aliases) == len(tensors) - 20


def test_eval_and_train_logits_buffers_and_grads(reference, images):
    ref, face = fresh_pair(reference)
    x = images(4, 3, 64, 64, seed=75)  # a seed with kink margin (seed 0: 3.6e-7)
    with torch.no_grad():
        assert max_abs_diff(face.eval()(x), ref.eval()(x)) <= TOL
    assert_far_from_kinks(ref, x, train=True, what="64x64 seed 75")
    ref.train(), face.train()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_face = ref(x1), face(x2)
    assert max_abs_diff(out_face, out_ref) <= TOL
    for (k, a), (_, b) in zip(face.named_buffers(), ref.named_buffers(), strict=True):
        assert max_abs_diff(a, b) <= TOL, k
    labels = torch.tensor([1, 0, 3, 2])
    torch.nn.functional.cross_entropy(out_ref, labels).backward()
    torch.nn.functional.cross_entropy(out_face, labels).backward()
    for (k, p), (_, q) in zip(face.named_parameters(), ref.named_parameters(), strict=True):
        assert_grads_close(p.grad, q.grad, k)
    assert_grads_close(x2.grad, x1.grad, "input")


# Input seeds, one a step, each with kink margin on the reference as it is at that step
# (found by search, greedily step by step: consecutive seeds rarely all qualify).
@pytest.mark.parametrize(("momentum", "seeds"), [(0.9, (21, 133, 143))])
def test_three_sgd_momentum_steps_end_in_the_same_weights(reference, images, momentum, seeds):
    ref, face = fresh_pair(reference)
    ref.train(), face.train()
    opts = [
        torch.optim.SGD(m.parameters(), lr=0.05, momentum=momentum, weight_decay=1e-4)
        for m in (ref, face)
    ]
    for step, seed in enumerate(seeds):
        x, labels = images(4, 3, 48, 48, seed=seed), torch.tensor([step, 1, 2, 3])
        assert_far_from_kinks(ref, x, train=True, what=f"step {step} seed {seed}")
        for m, opt in zip((ref, face), opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), labels).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            opt.step()
    for k, v in ref.state_dict().items():
        assert max_abs_diff(face.state_dict()[k], v) <= 1e-4, k


def test_awkward_gradients_and_inputs_fall_back_to_copies(reference, images):
    _, face = fresh_pair(reference)
    face.train()
    x = images(4, 3, 40, 40)
    face(x).sum().backward()  # a stride-0 expanded upstream gradient
    assert face.fc.weight.grad is not None
    face.zero_grad()
    face(x.to(memory_format=torch.channels_last)).mean().backward()
    big = images(5, 3, 41, 41)
    face.eval()
    with torch.no_grad():
        sliced = big[1:, :, 1:, 1:]  # offset, non-contiguous view
        flat = images(1 + 2 * 3 * 32 * 32).view(-1)[1:].view(2, 3, 32, 32)  # unaligned
        for awkward, plain in [(sliced, sliced.contiguous()), (flat, flat.clone())]:
            assert max_abs_diff(face(awkward), face(plain)) == 0.0
        face(x.t() if x.ndim == 2 else x.transpose(2, 3))


def test_no_grad_builds_no_graph_and_leaves_buffers_in_eval(reference, images):
    _, face = fresh_pair(reference)
    before = {k: v.clone() for k, v in face.state_dict().items()}
    with torch.no_grad():
        out = face(images(2, 3, 32, 32))
    assert out.grad_fn is None
    assert all(torch.equal(before[k], v) for k, v in face.state_dict().items())


def test_vjp_residuals_hold_no_arrays_of_zeros(reference, images):
    """With grad, the face's forward hands the VJP's residuals to its backward, through
    memory. `jax.nn.relu` and a `where`-based max-pool tangent left an array of zeros per
    ReLU and per pool tap there (526 of 1585 MB at 224x224 batch 32; 689 MB in all now, with
    BatchNorm's, tested in test_layers)."""
    _, face = fresh_pair(reference)
    face.train()
    binding = face._zoo.binding(face, "")
    modes = binding.modes()
    args, _, params = binding.arguments(images(2, 3, 64, 64), modes)
    mask = tuple(True for _ in params)
    _, _, vjp = binding.program.forward_vjp(modes, None, mask, False, *args)
    large = [a for a in jax.tree.leaves(vjp) if getattr(a, "size", 0) > 1000]
    floats = [a for a in large if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and not any(bool(jnp.all(a == 0)) for a in floats)
    assert sum(a.dtype == jnp.bool_ for a in large) == 17  # one mask per ReLU
    assert [a.dtype for a in large if jnp.issubdtype(a.dtype, jnp.integer)] == [jnp.int8]


def test_bf16_deepcopy_save_and_compile(reference, images, tmp_path):
    _, face = fresh_pair(reference)
    x = images(2, 3, 32, 32)
    twin = copy.deepcopy(face)
    assert twin.conv1.weight.data_ptr() != face.conv1.weight.data_ptr()
    with torch.no_grad():
        twin.fc.bias.add_(1.0)
        assert max_abs_diff(twin(x), face(x) + 1.0) <= 1e-4  # the copy computes on its memory
    buffer = io.BytesIO()
    torch.save(face.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in face.state_dict().items())
    half = copy.deepcopy(face).to(torch.bfloat16)
    with torch.no_grad():
        out = half(x.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert max_abs_diff(out, face(x)) <= 0.1 * float(face(x).abs().max())
    compiled = torch.compile(face)
    with torch.no_grad():
        assert max_abs_diff(compiled(x), face(x)) == 0.0
    face.to("cpu")
    with torch.no_grad():
        face(x)


def test_import_zoo_leaves_torch_dynamo_unloaded():
    """`torch.compiler.disable` on the torch face imports torch._dynamo (~1.2 s); it is applied
    when the first torch face is built, so `import zoo` (and JAX-only use) does not pay it."""
    code = (
        "import sys, zoo; assert 'torch._dynamo' not in sys.modules; "
        "zoo.load('cnn', framework='torch'); assert 'torch._dynamo' in sys.modules"
    )
    run_python(["-c", code], cwd=ROOT)


def test_bad_inputs_are_named_before_computing(reference):
    _, face = fresh_pair(reference)
    with pytest.raises(ValueError, match=r"NCHW batch.*add a batch axis"):
        face(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        face(torch.zeros(1, 4, 32, 32))
    with pytest.raises(TypeError, match="floating-point images"):
        face(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    jface = zoo.load("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="NHWC input"):
        jface(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(TypeError, match="floating-point images"):
        jface(np.zeros((1, 3, 32, 32), np.int32))


# ---- JAX face ----------------------------------------------------------------------------


def test_jax_face_logits_train_forward_and_transforms(reference, images):
    ref = copy.deepcopy(reference)
    face = zoo.load("resnet18", weights=ref.state_dict())
    x = images(4, 3, 40, 40)
    with torch.no_grad():
        assert max_abs_diff(face(x.numpy()), ref.eval()(x)) <= TOL
        ref_train = ref.train()(x)
    logits, face2 = face.train_forward(x.numpy())
    assert max_abs_diff(logits, ref_train) <= TOL
    assert max_abs_diff(face2.model.bn1.running_stats()[1], ref.bn1.running_var) <= TOL
    xj = jnp.asarray(x.numpy())
    assert max_abs_diff(eqx.filter_jit(lambda f, x: f(x))(face, xj), face(xj)) <= TOL
    batched = jax.vmap(lambda xs: face(xs))(jnp.stack([xj, xj * 2]))
    assert max_abs_diff(batched[1], face(xj * 2)) <= TOL
    # Plain jax.grad over the trainable arrays (the int BatchNorm counters are not).
    params, rest = eqx.partition(face, lambda a: eqx.is_inexact_array(a))
    grads = jax.grad(lambda p: eqx.combine(p, rest)(xj).sum())(params)
    assert grads.model.fc.weight.shape == (10, 512)
    assert float(jnp.abs(grads.model.conv1.weight).max()) > 0


def test_jax_face_memoises_hwio_kernels_without_going_stale(reference, images):
    """The face's eval call reads an HWIO copy of the conv weights made on its first call
    (the per-call OIHW -> HWIO transpose was ~20 of ~45 ms at 224x224 batch 1). The same
    logits as the plain forward (bit for bit through XLA's convolutions; the convolutions
    that run as matmuls may sum in another order); a new face gets its own copy; donated
    weights still fail the call."""
    ref = copy.deepcopy(reference).eval()
    face = zoo.load("resnet18", weights=ref.state_dict())
    xt = images(2, 3, 64, 64)
    x = jnp.asarray(xt.numpy())
    plain = zoo.jit(zoo.forward)
    logits = face(x)
    assert max_abs_diff(logits, plain(zoo.eval_mode(face.model), x)) <= 1e-6
    with torch.no_grad():
        assert max_abs_diff(logits, ref(xt)) <= TOL
    _, kernels = face._hwio_cache
    assert len(kernels) == 20 and kernels[0].shape == (7, 7, 3, 64)
    face(x)
    assert face._hwio_cache[1] is kernels
    doubled = eqx.tree_at(lambda m: m.conv1.weight, face.model, face.model.conv1.weight * 2)
    other = face.replace(doubled)
    assert "_hwio_cache" not in other.__dict__
    other_logits = other(x)
    assert max_abs_diff(other_logits, plain(zoo.eval_mode(doubled), x)) <= 1e-6
    assert max_abs_diff(other_logits, logits) > 1e-3
    optimizer = optax.sgd(0.1)
    step = zoo.make_train_step(optimizer)  # donates the model it is given
    model = zoo.train_mode(face.model)
    step(model, optimizer.init(zoo.trainable(model)), x, jnp.arange(2), jax.random.key(0))
    with pytest.raises(RuntimeError, match="deleted"):
        face(x)


@pytest.mark.parametrize("seeds", [(21, 28, 134)])  # as above: one a step, with kink margin
def test_jax_face_sgd_steps_match_torch(reference, images, seeds):
    ref = copy.deepcopy(reference).train()
    face = zoo.load("resnet18", weights=ref.state_dict())
    # lr 0.01: at 0.05 this batch-4 run blows up (loss 1.5 -> 4.3), a chaotic regime where
    # fp32 rounding differences grow 1000x a step on *any* two implementations.
    optimizer = optax.sgd(0.01, momentum=0.9)
    step = face.make_train_step(optimizer)
    model, opt_state = zoo.train_mode(face.model), face.init_optimizer(optimizer)
    torch_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    for i, seed in enumerate(seeds):
        x, labels = images(4, 3, 48, 48, seed=seed), torch.tensor([i, 1, 2, 3])
        assert_far_from_kinks(ref, x, train=True, what=f"step {i} seed {seed}")
        torch_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), labels).backward()
        torch_opt.step()
        model, opt_state, _, _ = step(
            model, opt_state, jnp.asarray(x.numpy()), jnp.asarray(labels.numpy()), jax.random.key(i)
        )
    ours = wc.to_state_dict(model)
    for k, v in ref.state_dict().items():
        assert max_abs_diff(ours[k], v) <= 1e-4, k


def test_bfloat16_batch_trains_float32_weights_with_a_float32_loss(images):
    """Mixed precision as under `torch.autocast`: a bf16 batch runs the convolutions in bf16,
    while the weights, BatchNorm statistics, loss and updates stay float32."""
    model = zoo.train_mode(zoo.load("cnn").model)
    x, labels = jnp.asarray(images(8, 3, 32, 32).numpy()), jnp.arange(8) % 10
    key = jax.random.key(0)
    logits, _ = model(x.astype(jnp.bfloat16), key=key)
    assert logits.dtype == jnp.bfloat16
    loss = zoo.cross_entropy(logits, labels)
    assert loss.dtype == jnp.float32
    assert loss == zoo.cross_entropy(logits.astype(jnp.float32), labels)
    full_logits, _ = model(x, key=key)
    assert max_abs_diff(logits, full_logits) <= 0.05 * float(jnp.abs(full_logits).max())
    optimizer = optax.sgd(0.1, momentum=0.9)
    step = zoo.make_train_step(optimizer, donate=False)
    opt_state = optimizer.init(zoo.trainable(model))
    new, _, loss_bf16, _ = step(model, opt_state, x.astype(jnp.bfloat16), labels, key)
    _, _, loss_fp32, _ = step(model, opt_state, x, labels, key)
    assert loss_bf16.dtype == jnp.float32 and abs(float(loss_bf16 - loss_fp32)) <= 0.05
    arrays = [jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (new, model)]
    assert all(a.dtype == b.dtype for a, b in zip(*arrays, strict=True))
    assert not bool(jnp.array_equal(new.conv1.weight, model.conv1.weight))


def test_jax_face_data_parallel_sharding_equals_single_device(images):
    devices = jax.devices()
    assert len(devices) >= 2, "tests/conftest.py forces two host devices"
    mesh = jax.sharding.Mesh(np.array(devices[:2]), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    face = zoo.load("cnn")
    optimizer = optax.sgd(0.1, momentum=0.9)
    step = zoo.make_train_step(optimizer, donate=False)
    model = zoo.train_mode(face.model)
    opt_state = optimizer.init(zoo.trainable(model))
    x = jnp.asarray(images(8, 3, 32, 32).numpy())
    y = jnp.arange(8) % 10
    key = jax.random.key(0)
    single = step(model, opt_state, x, y, key)
    # Only the arrays go to the devices: device_put would make the `inference` flags arrays.
    arrays, flags = eqx.partition(model, eqx.is_array)
    sharded = step(
        eqx.combine(jax.device_put(arrays, replicated), flags),
        jax.device_put(opt_state, replicated),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
        key,
    )
    assert sharded[3].sharding.spec == jax.sharding.PartitionSpec("data")
    ours, theirs = wc.named_values(single[0]), wc.named_values(sharded[0])
    assert ours.keys() == theirs.keys()
    for name, a in ours.items():
        assert max_abs_diff(a, theirs[name]) <= 1e-5, name
