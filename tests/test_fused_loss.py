"""`zoo.fused_cross_entropy`: forward, loss and gradients of a torch face from one JAX program
(JAX mode's training step) give what `F.cross_entropy(model(x), y).backward()` gives on
torchvision's own model: loss, every gradient, BatchNorm statistics and counters.

Tolerances as in test_torch_face.py: 1e-5 abs on losses and statistics, gradients rtol 1e-4
(atol 1e-4 of the largest).
"""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import randomize_batchnorm

import zoo

TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(5)
    return randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).train()


def pair(reference):
    """A copy of the reference and a face with its weights, both with layer1 frozen and bn1
    in eval mode (one configuration, so the tests share one compiled program)."""
    ref = copy.deepcopy(reference)
    face = zoo.load("resnet18", framework="torch", weights=ref.state_dict())
    for m in (ref, face):
        m.layer1.requires_grad_(False)
        m.bn1.eval()  # per-module modes: its statistics stay
    return ref, face


def cnn_pair():
    """The small CNN's face and torch twin (cheaper to compile), dropout off."""
    face = zoo.load("cnn", framework="torch", num_classes=10, in_chans=3, drop_rate=0.0)
    return zoo.to_torchvision(face).train(), face


def batch(seed=0, n=4, size=33):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def assert_same_step(face, ref, what=""):
    grads = {n: p.grad for n, p in ref.named_parameters()}
    for name, p in face.named_parameters():
        g = grads[name]
        if g is None:
            assert p.grad is None, f"{what}{name}: a gradient where torch has none"
            continue
        g = g.numpy()
        np.testing.assert_allclose(
            p.grad.numpy(), g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=what + name
        )
    theirs = ref.state_dict()
    for name, b in face.state_dict().items():
        torch.testing.assert_close(b, theirs[name], atol=TOL, rtol=0, msg=what + name)


@pytest.fixture
def jax_only():
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.ZooTorchFallbackWarning)
        yield


def test_loss_gradients_and_statistics_are_torchvisions(reference, jax_only):
    """Train mode, a frozen stage (no gradients there), an ignored target (-100), a loss
    scaled before backward and a second step accumulating into `.grad`."""
    ref, face = pair(reference)
    (x, y), (x2, y2) = batch(0), batch(1)
    y[1] = -100
    loss, logits = zoo.fused_cross_entropy(face, x, y)
    theirs = ref(x)
    expected = F.cross_entropy(theirs, y)
    assert abs(float(loss) - float(expected)) < TOL
    assert not logits.requires_grad and (logits - theirs).abs().max() < TOL
    (loss * 3).backward()
    (expected * 3).backward()
    loss, _ = zoo.fused_cross_entropy(face, x2, y2)
    loss.backward()
    F.cross_entropy(ref(x2), y2).backward()
    assert face.layer1[0].conv1.weight.grad is None
    assert_same_step(face, ref)


def test_one_program_is_what_the_face_computes_with_dropout():
    """With live dropout, the fused step draws torch's generator as the face's forward does:
    same seed, same masks, same loss and gradients as autograd through the face."""
    face = zoo.load("cnn", framework="torch", num_classes=10, in_chans=1, drop_rate=0.5)
    twin = copy.deepcopy(face)
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    torch.manual_seed(7)
    loss, _ = zoo.fused_cross_entropy(face, x, y)
    loss.backward()
    torch.manual_seed(7)
    expected = F.cross_entropy(twin(x), y)
    expected.backward()
    assert abs(float(loss) - float(expected)) < TOL
    assert_same_step(face, twin)
    torch.manual_seed(8)  # another draw: another loss
    assert abs(float(zoo.fused_cross_entropy(face, x, y)[0]) - float(loss)) > 1e-4


def test_autocast_computes_the_model_in_bfloat16_and_the_loss_in_float32(jax_only):
    _, face = cnn_pair()
    x, y = batch(0, size=32)
    with torch.autocast("cpu", torch.bfloat16):
        loss, logits = zoo.fused_cross_entropy(face, x, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert face.conv1.weight.grad.dtype == torch.float32


def test_what_one_program_cannot_do_falls_back_with_a_warning():
    """A hook on a module, soft (probability) targets: computed as F.cross_entropy(face(x))
    with one warning, the torch twin's results; the hook fires."""
    ref, face = cnn_pair()
    calls = []
    face.conv2.register_forward_hook(lambda *a: calls.append(1))
    x, y = batch(0, size=32)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="conv2"):
        loss, _ = zoo.fused_cross_entropy(face, x, y)
    loss.backward()
    F.cross_entropy(ref(x), y).backward()
    assert calls == [1]
    assert_same_step(face, ref)
    soft = torch.softmax(torch.randn(4, 10), -1)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="class indices"):
        loss, _ = zoo.fused_cross_entropy(face, x, soft)
    with torch.no_grad():
        assert abs(float(loss) - float(F.cross_entropy(ref(x), soft))) < TOL


def test_bad_targets_and_second_derivatives_are_errors(reference):
    _, face = pair(reference)
    x, y = batch(0)
    with pytest.raises(IndexError, match="out of bounds"):
        zoo.fused_cross_entropy(face, x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="batch_size"):
        zoo.fused_cross_entropy(face, x, y[:3])
    with pytest.raises(TypeError, match="torch face"):
        zoo.fused_cross_entropy(torchvision.models.resnet18(), x, y)
    loss, _ = zoo.fused_cross_entropy(face, x, y)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, face.fc.weight, create_graph=True)
    # retain_graph keeps the gradients for a second backward, as torch does.
    loss, _ = zoo.fused_cross_entropy(face, x, y)
    face.zero_grad()
    loss.backward(retain_graph=True)
    once = face.fc.weight.grad.clone()
    loss.backward()
    torch.testing.assert_close(face.fc.weight.grad, 2 * once)
    with torch.no_grad():  # nothing to differentiate: the face's forward, no graph
        assert zoo.fused_cross_entropy(face, x, y)[0].grad_fn is None


def test_sync_batchnorm_modules_run_in_torch():
    """`SyncBatchNorm.convert_sync_batchnorm` (Lightning's `sync_batchnorm=True`) replaces
    the BatchNorms: they run as torch's SyncBatchNorm (which synchronises across processes
    on GPUs), the rest in JAX, with a warning; in one process the results are the twin's."""
    ref, face = cnn_pair()
    for m in (ref, face):
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert isinstance(face.bn1, torch.nn.SyncBatchNorm)
    x, y = batch(0, size=32)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="bn1"):
        loss, _ = zoo.fused_cross_entropy(face, x, y)
    loss.backward()
    F.cross_entropy(ref(x), y).backward()
    assert_same_step(face, ref)
