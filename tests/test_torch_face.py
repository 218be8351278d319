"""The torch face is torchvision's own module tree: what a PyTorch user does to a torchvision
model works on it, with torchvision's results, or says why not.

Every test compares against the real `torchvision.models.resnet18` holding the same weights
(random, with randomised BatchNorm statistics). Tolerances: 1e-5 abs on outputs and
statistics, gradients rtol 1e-4 (atol 1e-4 of the largest), on inputs whose fp64 forward
keeps every ReLU and max-pool far from its kink where gradients are compared.
"""

import contextlib
import copy
import io
import pickle
import warnings

import jax
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
from conftest import max_abs_diff, randomize_batchnorm, run_python
from torch import nn

import zoo
from zoo.adapters._torch_face import _PROGRAMS

TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(3)
    return randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()


def pair(reference):
    """A fresh copy of the reference and a torch face with its weights (both in train mode,
    torch's default)."""
    ref = copy.deepcopy(reference).train()
    return ref, zoo.load("resnet18", framework="torch", weights=ref.state_dict())


def x_of(seed: int = 0, size: int = 33, batch: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def assert_grads_close(ours, theirs, what=""):
    g = theirs.detach().numpy()
    np.testing.assert_allclose(
        ours.detach().numpy(), g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=what
    )


def rel(a, b) -> float:
    """max |a - b| over max(1, max |b|): feature maps and pooled features are larger than
    logits, and fp32 differences scale with them."""
    return max_abs_diff(a, b) / max(1.0, float(torch.as_tensor(b).detach().abs().max()))


def same_eval(face, ref, x) -> float:
    with torch.no_grad():
        return rel(face.eval()(x), ref.eval()(x))


@contextlib.contextmanager
def jax_only():
    """A block in which a fallback to torch is an error (so it computed in JAX)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.ZooTorchFallbackWarning)
        yield


# -- the module tree -------------------------------------------------------------------------


def test_the_face_is_torchvisions_module_tree(reference):
    ref, face = pair(reference)
    assert isinstance(face, torchvision.models.ResNet) and isinstance(face, zoo.TorchModel)
    assert type(face).__name__ == "ResNet" and repr(face) == repr(ref)
    assert face.training  # torchvision builds models in train mode
    assert [type(m) for m in face.modules()][1:] == [type(m) for m in ref.modules()][1:]
    assert isinstance(face.layer1[0].bn1, nn.BatchNorm2d) and face.fc.in_features == 512
    # Children reassembled into a plain Sequential compute torchvision's features (in torch).
    trunk, trunk_ref = (nn.Sequential(*list(m.children())[:-1]).eval() for m in (face, ref))
    with torch.no_grad():
        assert max_abs_diff(trunk(x_of()), trunk_ref(x_of())) <= TOL


# -- surgery ---------------------------------------------------------------------------------


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        CountingLinear.calls += 1
        return super().forward(x) * 2


HEADS = {
    "linear": lambda: nn.Linear(512, 5),
    "linear_no_bias": lambda: nn.Linear(512, 5, bias=False),
    "sequential": lambda: nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 5)),
    "identity": nn.Identity,
    "subclass": lambda: CountingLinear(512, 5),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_head_surgery_computes_what_torchvision_computes(reference, head):
    """Eval outputs for every head; train-mode outputs, statistics and every gradient for
    the three ways the face runs a head (adopted, a Sequential, a subclass's own forward)."""
    ref, face = pair(reference)
    torch.manual_seed(0)
    face.fc = HEADS[head]()
    ref.fc = copy.deepcopy(face.fc)
    x = x_of(1)
    # The trunk computes in JAX: no fallback warning for a replaced head.
    with jax_only():
        assert same_eval(face, ref, x) <= TOL
        if head in ("linear_no_bias", "identity"):  # run as "sequential" runs
            return
        face.train(), ref.train()
        torch.manual_seed(5)
        out = face(x)
        torch.manual_seed(5)
        out_ref = ref(x)
    assert rel(out, out_ref) <= TOL
    assert rel(face.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var) <= TOL
    out.square().sum().backward()
    out_ref.square().sum().backward()
    for (k, p), (_, q) in zip(face.named_parameters(), ref.named_parameters(), strict=True):
        assert_grads_close(p.grad, q.grad, k)
    if head == "subclass":
        assert CountingLinear.calls >= 4  # its own forward ran, on both models
    if head == "linear":  # a Linear of torchvision's kind is adopted: one JAX program
        assert face.to_equinox().fc.weight.shape == (5, 512)
    else:  # no Equinox ResNet holds this head: the error names the torch model
        with pytest.raises(ValueError, match=r"zoo\.to_torchvision"):
            face.to_equinox()


def test_stem_surgery_cifar_and_grayscale(reference):
    ref, face = pair(reference)
    torch.manual_seed(0)
    for m in (face, ref):  # the CIFAR stem: a 3x3 stride-1 conv and no max-pool
        m.maxpool = nn.Identity()
    face.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.conv1 = copy.deepcopy(face.conv1)
    assert same_eval(face, ref, x_of(2, size=16)) <= TOL
    ref, face = pair(reference)
    face.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # grayscale: adopted, runs in JAX
    ref.conv1 = copy.deepcopy(face.conv1)
    with jax_only():
        assert same_eval(face, ref, x_of(3, channels=1)) <= TOL
    assert face.in_chans == 1 and face.to_equinox().in_chans == 1


def test_a_change_inside_a_stage_runs_that_stage_in_torch_with_one_warning(reference):
    ref, face = pair(reference)
    for m in (face, ref):
        m.layer2[0].conv1.stride = (1, 1)
        m.layer2[0].downsample[0].stride = (1, 1)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="layer2 runs in torch"):
        assert same_eval(face, ref, x_of(4)) <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.ZooTorchFallbackWarning)
        assert same_eval(face, ref, x_of(5)) <= TOL  # once per face and reason


# -- per-module state ------------------------------------------------------------------------


def test_frozen_batchnorm_and_per_module_modes(reference):
    ref, face = pair(reference)
    for m in (face, ref):
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
    x = x_of(6)
    before = face.bn1.running_mean.clone()
    count = int(face.bn1.num_batches_tracked)
    with jax_only():  # per-module modes are the JAX program's static flags
        out = face(x)
    assert max_abs_diff(out, ref(x)) <= TOL
    assert torch.equal(face.bn1.running_mean, before)
    assert int(face.bn1.num_batches_tracked) == count
    face.layer1.train(), ref.layer1.train()  # one stage's statistics update again
    assert max_abs_diff(face(x), ref(x)) <= TOL
    assert max_abs_diff(face.layer1[0].bn1.running_mean, ref.layer1[0].bn1.running_mean) <= TOL
    assert torch.equal(face.bn1.running_mean, before)
    assert face.layer1[0].bn1.num_batches_tracked == ref.layer1[0].bn1.num_batches_tracked


def test_batchnorm_momentum_and_track_running_stats_are_honoured(reference):
    ref, face = pair(reference)
    for m in (face, ref):
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = 0.5
        m.layer3[1].bn1.track_running_stats = False
    x = x_of(7)
    with pytest.warns(zoo.ZooTorchFallbackWarning):
        out = face(x)
    assert max_abs_diff(out, ref(x)) <= TOL
    for (k, a), (_, b) in zip(face.named_buffers(), ref.named_buffers(), strict=True):
        assert max_abs_diff(a, b) <= TOL, k
    assert same_eval(face, ref, x) <= TOL


def test_requires_grad_freezes_exactly_those_parameters(reference):
    ref, face = pair(reference)
    for m in (face, ref):
        for name, p in m.named_parameters():
            p.requires_grad_(name.startswith(("layer4", "fc")))
    x = x_of(8)
    face(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (k, p), (_, q) in zip(face.named_parameters(), ref.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), k
        if q.grad is not None:
            assert_grads_close(p.grad, q.grad, k)


def test_weights_written_in_place_or_reinitialised_are_seen(reference):
    ref, face = pair(reference)
    x = x_of(9)
    same_eval(face, ref, x)  # compiled and aliased before the writes

    def init(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.05)

    for m in (face, ref):
        torch.manual_seed(1)
        m.apply(init)
        with torch.no_grad():
            m.fc.bias.mul_(3.0)
        m.layer1[0].conv2.weight.data = m.layer1[0].conv2.weight.data * 0.5  # `.data` swap
        m.fc.weight = nn.Parameter(m.fc.weight.detach() + 1.0)  # a new Parameter
    assert same_eval(face, ref, x) <= TOL
    for m in (face, ref):  # the same memory in another layout
        m.layer4[1].conv2.weight.data = m.layer4[1].conv2.weight.data.transpose(0, 1)
    assert same_eval(face, ref, x) <= TOL


def test_channels_last_weights_never_go_stale(reference):
    ref, face = pair(reference)
    x = x_of(10, size=32, batch=4)
    opts = []
    for m in (face, ref):
        m.eval()  # running statistics: a well-conditioned function of the weights
        m.to(memory_format=torch.channels_last)
        opts.append(torch.optim.SGD(m.parameters(), lr=1e-3))
    for step in range(3):
        for m, opt in zip((face, ref), opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), torch.tensor([step, 1, 2, 3])).backward()
            opt.step()
        assert rel(face.conv1.weight, ref.conv1.weight) <= 1e-4
        twin = zoo.to_torchvision(face)  # the face's own current weights, computed by torch
        assert same_eval(face, twin, x) <= TOL


# -- hooks and feature extraction ------------------------------------------------------------


def test_hooks_on_stages_receive_torchvisions_tensors(reference):
    ref, face = pair(reference)
    got = {"face": [], "ref": []}
    for side, m in (("face", face), ("ref", ref)):
        record = got[side].append
        m.layer4.register_forward_pre_hook(lambda mod, args, r=record: r(("pre", args[0])))
        m.layer4.register_forward_hook(lambda mod, args, out, r=record: r(("out", out)))
        m.avgpool.register_forward_hook(lambda mod, args, out, r=record: r(("pool", out)))
        m.layer3.register_full_backward_hook(
            lambda mod, gin, gout, r=record: r(("grad_out", gout[0]))
        )
    x = x_of(11)
    with jax_only():  # hooks on top-level modules keep every stage in JAX
        face(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert [k for k, _ in got["face"]] == [k for k, _ in got["ref"]]
    for (k, a), (_, b) in zip(got["face"], got["ref"], strict=True):
        assert max_abs_diff(a, b) <= 1e-4 * max(1.0, float(b.abs().max())), k


def test_grad_cam_on_the_last_block_falls_back_with_a_warning(reference):
    ref, face = pair(reference)
    maps = {}
    for side, m in (("face", face), ("ref", ref)):
        m.eval()
        block = m.layer4[-1]
        block.register_forward_hook(lambda mod, a, out, s=side: maps.__setitem__(s, out))
        block.register_full_backward_hook(
            lambda mod, gin, gout, s=side: maps.__setitem__(s + "_grad", gout[0])
        )
    x = x_of(12)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="layer4 runs in torch.*has a hook"):
        face(x)[:, 3].sum().backward()
    ref(x)[:, 3].sum().backward()
    assert rel(maps["face"], maps["ref"]) <= TOL
    assert rel(maps["face_grad"], maps["ref_grad"]) <= 1e-4


def test_feature_extractors_and_features_only(reference):
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.feature_extraction import create_feature_extractor

    ref, face = pair(reference)
    x = x_of(13)
    nodes = {"layer2": "mid", "layer4": "last"}
    ours, theirs = (create_feature_extractor(m.eval(), nodes) for m in (face, ref))
    getter = IntermediateLayerGetter(face, {"layer3": "c4"})
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        assert rel(a["mid"], b["mid"]) <= TOL and rel(a["last"], b["last"]) <= TOL
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        assert rel(getter(x)["c4"], ref.layer3(ref.layer2(ref.layer1(stem)))) <= TOL
    maps_face = zoo.load(
        "resnet18", framework="torch", weights=ref.state_dict(), features_only=True
    ).eval()
    with torch.no_grad():
        maps = maps_face(x)
    assert [m.shape[1] for m in maps] == [64, 64, 128, 256, 512]
    assert rel(maps[-1], b["last"]) <= TOL


# -- autograd --------------------------------------------------------------------------------


def test_autograd_as_torchs(reference):
    _, face = pair(reference)
    x = x_of(14).requires_grad_()
    loss = face(x).square().sum()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, retain_graph=True)
    assert torch.equal(g1, g2)
    loss.backward(retain_graph=True)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    with pytest.raises(RuntimeError, match=r"double backward.*zoo\.to_torchvision"):
        (g,) = torch.autograd.grad(face(x).sum(), x, create_graph=True)
        g.sum().backward()


def test_torch_func_runs_torchvisions_code(reference):
    ref, face = pair(reference)
    face.eval(), ref.eval()
    params = {k: v.detach() for k, v in face.named_parameters()}
    x = x_of(15)

    def loss(p, m):
        return torch.func.functional_call(m, p, (x,)).square().sum()

    with pytest.warns(zoo.ZooTorchFallbackWarning, match="torch.func"):
        ours = torch.func.grad(loss)(params, face)
    theirs = torch.func.grad(loss)(params, ref)
    for k in ("conv1.weight", "fc.weight"):
        assert_grads_close(ours[k], theirs[k], k)


def test_activation_checkpointing_recomputes(reference):
    ref, face = pair(reference)
    face.eval(), ref.eval()
    calls = []
    face.register_forward_pre_hook(lambda m, a: calls.append(1))
    x = x_of(16).requires_grad_()
    out = torch.utils.checkpoint.checkpoint(face, x, use_reentrant=False)
    out.square().sum().backward()
    assert len(calls) == 2  # the forward ran again in backward: nothing was kept
    x_ref = x.detach().requires_grad_()
    ref(x_ref).square().sum().backward()
    assert_grads_close(x.grad, x_ref.grad, "input")
    assert_grads_close(face.conv1.weight.grad, ref.conv1.weight.grad, "conv1")


# -- precision -------------------------------------------------------------------------------


def test_autocast_computes_in_its_dtype(reference):
    ref, face = pair(reference)
    face.eval(), ref.eval()
    x = x_of(17)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = face(x), ref(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    with torch.no_grad():
        exact = ref(x)
    # Both round to bf16 (8 bits of mantissa) at different places: compare their errors.
    err_ours = max_abs_diff(ours.float(), exact)
    err_theirs = max_abs_diff(theirs.float(), exact)
    assert 0 < err_ours <= 3 * err_theirs + 1e-2 * float(exact.abs().max())


def test_double_computes_in_float64(reference):
    ref, face = pair(reference)
    face.double().eval(), ref.double().eval()
    x = x_of(18).double()
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="jax_enable_x64"):
        out = face(x)
    assert out.dtype == torch.float64
    with torch.no_grad():
        assert max_abs_diff(out.detach(), ref(x)) <= 1e-12
        with jax.enable_x64(True):  # JAX's 64-bit mode: computed in JAX
            with jax_only():
                out = face(x)
        assert out.dtype == torch.float64 and max_abs_diff(out, ref(x)) <= 1e-10


# -- persistence and deployment --------------------------------------------------------------


class PlainLightningModule(pl.LightningModule):
    """A user's LightningModule around a torch face."""

    def __init__(self):
        super().__init__()
        self.net = zoo.load("cnn", framework="torch")


def test_pickle_deepcopy_and_torch_save_after_surgery(reference, tmp_path):
    ref, face = pair(reference)
    face.fc = nn.Sequential(nn.Linear(512, 4), nn.ReLU())
    ref.fc = copy.deepcopy(face.fc)
    x = x_of(19)
    for restored in (
        pickle.loads(pickle.dumps(face)),
        copy.deepcopy(face),
    ):
        assert type(restored) is type(face) and same_eval(restored, ref, x) <= TOL
    buffer = io.BytesIO()
    torch.save(face, buffer)  # a whole module, as users save them (not weights_only)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, zoo.TorchModel) and same_eval(loaded, ref, x) <= TOL
    plain = zoo.to_torchvision(face)
    assert type(plain) is torchvision.models.ResNet and isinstance(plain.fc, nn.Sequential)
    assert same_eval(plain, ref, x) <= 0.0


def test_lightning_module_holding_a_face_pickles():
    module = PlainLightningModule()
    restored = pickle.loads(pickle.dumps(module))
    with torch.no_grad():
        x = x_of(20, size=16).to(torch.float32)
        assert max_abs_diff(restored.net.eval()(x), module.net.eval()(x)) == 0.0


def test_tracing_and_export_name_to_torchvision(reference):
    _, face = pair(reference)
    face.eval()
    x = x_of(21)
    with pytest.raises(RuntimeError, match=r"zoo\.to_torchvision"):
        torch.jit.trace(face, x)
    with pytest.raises(Exception, match=r"zoo\.to_torchvision"):
        torch.export.export(face, (x,))
    with pytest.raises(RuntimeError, match=r"zoo\.to_torchvision"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(face, (x,), io.BytesIO(), dynamo=False)
    traced = torch.jit.trace(zoo.to_torchvision(face), x)  # what the error points to works
    with torch.no_grad():
        assert max_abs_diff(traced(x), face(x)) <= TOL


# -- compilation -----------------------------------------------------------------------------


def test_faces_of_one_configuration_share_their_programs(reference):
    _, a = pair(reference)
    _, b = pair(reference)
    with torch.no_grad():
        a.eval()(x_of(22)), b.eval()(x_of(22))
    assert a._zoo.binding(a, "").program is b._zoo.binding(b, "").program
    assert any(key[0][0] == "resnet18" for key in _PROGRAMS)
    assert zoo.enable_compilation_cache() == jax.config.jax_compilation_cache_dir


def test_hub_export_after_surgery(reference, tmp_path):
    _, face = pair(reference)
    face.fc = nn.Linear(512, 3)  # adopted: an Equinox ResNet18 with 3 classes holds it
    folder = zoo.save_pretrained(face, tmp_path / "three")
    plain = torchvision.models.resnet18(num_classes=3)
    back = zoo.load(f"local-dir:{folder}", framework="torch")
    plain.load_state_dict(back.state_dict(), strict=True)
    assert same_eval(back, face, x_of(23)) <= TOL
    face.fc = nn.Sequential(nn.Linear(512, 3))  # no Equinox ResNet holds this: refused
    with pytest.raises(ValueError, match=r"zoo\.to_torchvision"):
        zoo.save_pretrained(face, tmp_path / "sequential")
    assert not (tmp_path / "sequential").exists()


def test_a_second_process_compiles_nothing_the_first_compiled(tmp_path, monkeypatch):
    """`zoo.load` turns JAX's persistent compilation cache on, in the user's cache folder:
    the second process finds every program the first wrote. `ZOO_COMPILATION_CACHE=0`
    turns it off."""
    code = (
        "import torch, zoo\n"
        "face = zoo.load('cnn', framework='torch')\n"
        "face(torch.randn(4, 3, 16, 16)).sum().backward()\n"
        "with torch.no_grad():\n"
        "    face.eval()(torch.randn(2, 3, 16, 16))\n"
    )
    env = {  # ZOO_COMPILATION_CACHE empty: the default place (the test runner sets one)
        "ZOO_COMPILATION_CACHE": "",
        "XDG_CACHE_HOME": str(tmp_path),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    cache = tmp_path / "equizoo" / "jax"
    run_python(["-c", code], cwd=tmp_path, env=env)
    first = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(first) >= 3  # the forward with its VJP, the backward, the eval forward
    run_python(["-c", code], cwd=tmp_path, env=env)
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == first
    configured = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("ZOO_COMPILATION_CACHE", "0")
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert zoo.enable_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)


class DigitsModule(pl.LightningModule):
    """The plainest LightningModule a PyTorch user writes around a model."""

    def __init__(self):
        super().__init__()
        self.net = zoo.load("cnn", framework="torch", num_classes=10, in_chans=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


@pytest.mark.slow
def test_a_plain_lightning_module_trains_the_face_in_train_mode():
    """Lightning keeps each submodule's mode: a face built in eval mode trained with frozen
    BatchNorm and no dropout (0.41 held-out accuracy); built in train mode, it learns."""
    from zoo.lightning import digits_arrays

    x_train, y_train, x_test, y_test = digits_arrays(size=16)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = torch.utils.data.DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    pl.seed_everything(0)
    module = DigitsModule()
    statistics = module.net.bn1.running_var.clone()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    assert not torch.equal(module.net.bn1.running_var, statistics)  # batch statistics ran
    with torch.no_grad():
        predictions = module.net.eval()(torch.from_numpy(x_test)).argmax(-1).numpy()
    assert (predictions == y_test).mean() >= 0.95


def test_swa_update_bn_sync_batchnorm_and_pruning(reference):
    """Tools that find modules by type or rewrite them: `swa_utils.update_bn` (resets and
    re-estimates every BatchNorm's statistics), `convert_sync_batchnorm`, pruning (a
    reparametrised weight and a forward pre-hook) give torchvision's results."""
    from torch.nn.utils import prune

    ref, face = pair(reference)
    batches = [x_of(30 + i, batch=4) for i in range(2)]
    with pytest.warns(zoo.ZooTorchFallbackWarning):  # update_bn sets momentum=None
        torch.optim.swa_utils.update_bn(batches, face)
    torch.optim.swa_utils.update_bn(batches, ref)
    for (k, a), (_, b) in zip(face.named_buffers(), ref.named_buffers(), strict=True):
        assert rel(a, b) <= TOL, k
    ref, face = pair(reference)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(face)
    assert isinstance(synced.layer1[0].bn1, nn.SyncBatchNorm)
    assert same_eval(synced, ref, x_of(32)) <= TOL
    ref, face = pair(reference)
    for m in (face, ref):
        prune.l1_unstructured(m.layer2[0].conv1, "weight", amount=0.5)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="layer2 runs in torch"):
        assert same_eval(face, ref, x_of(33)) <= TOL


def test_what_the_review_found_is_never_silently_wrong(reference):
    """A forward replaced on an instance, a hooked top-level module of a features-only face,
    and weights of mixed or unsupported dtypes: torchvision's results or its errors."""
    import types

    ref, face = pair(reference)
    for m in (face, ref):
        m.eval()
        block = m.layer1[0]
        block.forward = types.MethodType(lambda self, x: x * 0 + 1.0, block)
    with pytest.warns(zoo.ZooTorchFallbackWarning, match="layer1 runs in torch"):
        assert same_eval(face, ref, x_of(40)) <= TOL
    # MobileNet V2's maps are outputs of modules inside `features` (`features.3`, ...).
    maps_face = zoo.load("mobilenet_v2", framework="torch", features_only=True).eval()
    with torch.no_grad():
        expected = maps_face(x_of(41))
    maps_face.features.register_forward_hook(lambda *args: None)
    with torch.no_grad(), pytest.warns(zoo.ZooTorchFallbackWarning, match="feature map"):
        hooked = maps_face(x_of(41))
    assert len(hooked) == len(expected) == 5
    assert all(rel(a, b) <= TOL for a, b in zip(hooked, expected, strict=True))
    ref, face = pair(reference)
    for m in (face, ref):
        m.eval().fc.double()
    with pytest.raises(RuntimeError), pytest.warns(zoo.ZooTorchFallbackWarning, match="mix"):
        face(x_of(42))  # torchvision raises too: mat1 and mat2 must have the same dtype
    with pytest.raises(RuntimeError):
        ref(x_of(42))
    ref, face = pair(reference)
    face.eval().double()
    with pytest.raises(RuntimeError), pytest.warns(zoo.ZooTorchFallbackWarning):
        face(x_of(43))  # a float32 input into float64 weights: torch's error, no hang
