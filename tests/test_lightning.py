"""zoo.lightning.ImageClassifier with the real Lightning Trainer, on real data (sklearn digits)."""

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import lightning as L
import numpy as np
import optax
import pytest
import torch
from conftest import to_float64

import weights_convert as wc
import zoo
from zoo.lightning import (
    ArrayDataset,
    EpochShuffleSampler,
    ImageClassifier,
    digits_arrays,
    make_data_parallel_step,
    numpy_loader,
    worker_context,
)

pytestmark = pytest.mark.slow
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def digits():
    return digits_arrays(size=16, seed=0)


def loaders(data, n_train=None, batch_size=32, seed=0, num_workers=0):
    x_train, y_train, x_test, y_test = data
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    train = ArrayDataset(x_train, y_train)
    return (
        numpy_loader(
            train,
            batch_size,
            sampler=EpochShuffleSampler(len(train), seed),
            drop_last=True,
            num_workers=num_workers,
        ),
        numpy_loader(ArrayDataset(x_test, y_test), 128, num_workers=num_workers),
    )


class BatchTypes(L.Callback):
    """Records the types of the batches that reach `training_step`."""

    def __init__(self):
        self.types = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.types.add((type(batch[0]), type(batch[1])))


def trainer(max_epochs, tmp_path=None, **kwargs):
    defaults = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**(defaults | kwargs))


def weights(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("mode", ["torch", "jax"])
def test_digits_held_out_accuracy(digits, mode):
    """Both modes fine-tune the CNN to >= 95% held-out accuracy on real digits (16x16,
    3 epochs); JAX mode reads its batches through a worker process (started with
    forkserver/spawn, never forked from this JAX-threaded process) as NumPy arrays."""
    L.seed_everything(0)
    train, test = loaders(digits, num_workers=1 if mode == "jax" else 0)
    if mode == "jax":
        assert train.multiprocessing_context.get_start_method() == worker_context() != "fork"
    module = ImageClassifier("cnn", mode=mode, num_classes=10, in_chans=1, lr=0.05)
    types = BatchTypes()
    t = trainer(3, callbacks=[types])
    t.fit(module, train, test)
    assert types.types == {(np.ndarray, np.ndarray)}, types.types  # NumPy until JAX/torch
    for name in ("train_loss_epoch", "train_acc_epoch", "val_loss", "val_acc"):
        assert name in t.logged_metrics and name in t.progress_bar_metrics, name
    result = t.test(module, test, verbose=False)[0]
    assert result["test_acc"] >= 0.95, result
    assert t.global_step == 3 * (len(digits[1]) // 32)
    # The torch face mirrors the trained weights: its own accuracy matches the logged one.
    x_test, y_test = digits[2], digits[3]
    module.model.eval()
    with torch.no_grad():
        acc = (module.model(torch.from_numpy(x_test)).argmax(-1).numpy() == y_test).mean()
    assert abs(acc - result["test_acc"]) < 1e-6


@pytest.mark.parametrize("mode", ["torch", "jax"])
def test_resume_equals_uninterrupted(digits, mode, tmp_path):
    """Stopping after epoch 1 and resuming with `fit(ckpt_path=...)` ends with the weights of an
    uninterrupted 2-epoch run. Dropout and BatchNorm are live; dropout keys derive from
    (seed, epoch, batch_idx) and the sampler's order from (seed, epoch), so the runs are
    bitwise reproducible on CPU; the tolerance (1e-6) only absorbs nothing-in-particular."""
    kw = dict(mode=mode, num_classes=10, in_chans=1, lr=0.05, total_steps=16, seed=3)

    def fresh():
        L.seed_everything(3)
        return ImageClassifier("cnn", **kw)

    train, _ = loaders(digits, n_train=256)
    full = fresh()
    trainer(2).fit(full, train)

    first = fresh()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(1, enable_checkpointing=True, callbacks=[ckpt]).fit(first, train)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert "model.conv1.weight" in saved["state_dict"]
    assert "model.bn1.running_mean" in saved["state_dict"]
    # The optimizer's own state (SGD's momentum), in both modes.
    assert saved["optimizer_states"][0]["state"], saved["optimizer_states"]
    resumed = fresh()
    t = trainer(2)
    t.fit(resumed, train, ckpt_path=tmp_path / "last.ckpt")
    assert t.global_step == 16
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    # ... and the run did move the weights.
    assert not torch.equal(a["conv1.weight"], weights(fresh())["conv1.weight"])


@pytest.mark.parametrize("mode", ["torch", "jax"])
def test_freeze_backbone_trains_only_the_head(digits, mode):
    L.seed_everything(0)
    module = ImageClassifier(
        "cnn", mode=mode, num_classes=10, in_chans=1, freeze_backbone=True, lr=0.05
    )
    before = weights(module)
    train, _ = loaders(digits, n_train=128)
    trainer(1).fit(module, train)
    after = weights(module)
    for k in before:
        if k.startswith("fc."):
            assert not torch.equal(before[k], after[k]), k
        else:
            assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("mode", ["torch", "jax"])
def test_freeze_backbone_modes(digits, mode):
    """With a frozen backbone, training runs the backbone in eval mode (BatchNorm uses its
    running statistics and leaves them untouched) and the head in train mode (its dropout is
    live). With lr=0 the weights never move, so the epoch's training loss equals the
    held-out loss on the same images exactly when the training forward is the eval forward:
    it must for drop_rate=0 (BatchNorm in eval mode) and must not for drop_rate=0.9
    (dropout live); the old behaviour (everything in eval mode) failed the second."""
    x_train, y_train = digits[0][:128], digits[1][:128]
    gaps = {}
    for drop_rate in (0.0, 0.9):
        L.seed_everything(0)
        module = ImageClassifier(
            "cnn",
            mode=mode,
            num_classes=10,
            in_chans=1,
            freeze_backbone=True,
            lr=0.0,
            scheduler=None,
            drop_rate=drop_rate,
        )
        before = weights(module)
        train, same = loaders((x_train, y_train, x_train, y_train), batch_size=32)
        t = trainer(1)
        t.fit(module, train, same)
        m = t.callback_metrics
        gaps[drop_rate] = abs(float(m["train_loss_epoch"]) - float(m["val_loss"]))
        after = weights(module)
        for k in before:  # BatchNorm buffers (running stats, counters) included
            assert torch.equal(before[k], after[k]), k
    # Rounding alone stays below 1e-5; live dropout moves the loss of this untrained model
    # by ~1e-2 (the size depends on the initial weights).
    assert gaps[0.0] < 1e-5, gaps
    assert gaps[0.9] > 1e-3, gaps


def test_to_equinox_is_a_copy_of_the_face():
    """`TorchModel.to_equinox()` holds the face's current tensors (including BatchNorm
    statistics and counters), in the face's mode, and does not follow later in-place
    updates of the face."""
    face = zoo.load("cnn", framework="torch", num_classes=10, in_chans=1)
    with torch.no_grad():
        face.fc.weight.add_(1.0)
        face.bn1.running_mean.add_(0.5)
        face.bn1.num_batches_tracked.fill_(7)
    face.train()
    model = face.to_equinox()
    assert isinstance(model, zoo.models.SmallCNN) and zoo.is_training(model)
    np.testing.assert_array_equal(np.asarray(model.fc.weight), face.fc.weight.detach().numpy())
    np.testing.assert_array_equal(model.bn1.running_stats()[0], face.bn1.running_mean)
    assert int(model.bn1.num_batches_tracked) == 7
    snapshot = np.array(model.fc.weight)
    with torch.no_grad():
        face.fc.weight.mul_(0.0)
    np.testing.assert_array_equal(np.asarray(model.fc.weight), snapshot)
    # Same numbers as the face (eval mode).
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = face.eval()(x).numpy()
    got = np.asarray(face.to_equinox()(jax.numpy.asarray(x.numpy()))[0])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not zoo.is_training(face.to_equinox())


def test_sharded_step_equals_unsharded():
    """JAX mode's data-parallel step (batch over a 2-device Mesh, params replicated; XLA
    reduces the loss, gradients and BatchNorm statistics over the global batch) gives the
    single-device step's model. Compared in float64 (1e-10): in fp32 the two sum in different
    orders, and two SGD steps through ReLU kinks and batch-8 BatchNorm amplify that rounding
    to ~5e-4 in places, so an fp32 bound would test rounding, not semantics."""
    if len(jax.devices()) < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2")
    opt = optax.sgd(0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 8, 3, 32, 32))
    ys = rng.integers(0, 10, (2, 8)).astype(np.int32)
    results = []
    with jax.enable_x64(True):
        for devices in (jax.devices()[:1], jax.devices()[:2]):
            placement, step = make_data_parallel_step(opt, devices=devices)
            model = zoo.train_mode(zoo.load("cnn", framework="equinox", num_classes=10))
            model = to_float64(model)
            model, state = (
                placement.replicate(model),
                placement.replicate(opt.init(zoo.trainable(model))),
            )
            for i in range(2):
                model, state, loss, _ = step(model, state, xs[i], ys[i], jax.random.key(i))
            if len(devices) == 2:
                assert len(placement.shard_batch(xs[0])[0].sharding.device_set) == 2
            results.append((wc.named_values(model), float(loss)))
    (one, loss1), (two, loss2) = results
    assert one["conv1.weight"].dtype == np.float64
    assert abs(loss1 - loss2) < 1e-10
    for k in one:
        np.testing.assert_allclose(np.asarray(two[k]), np.asarray(one[k]), atol=1e-10, err_msg=k)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L, torch
    from torch.utils.data import DataLoader, DistributedSampler
    from zoo.lightning import ArrayDataset, ImageClassifier, digits_arrays, numpy_collate

    devices, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    x, y, _, _ = digits_arrays(size=16, seed=0)
    L.seed_everything(0)
    module = ImageClassifier("cnn", mode="torch", num_classes=10, in_chans=1, lr=0.05,
                             train_bn=False, total_steps=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=devices,
                        strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    # Rank r takes samples r, r + 2, ... in order (Lightning's own DistributedSampler would
    # shuffle), so each step's global batch is the single process's batch.
    data = ArrayDataset(x[:256], y[:256])
    sampler = DistributedSampler(data, trainer.world_size, trainer.global_rank, shuffle=False)
    loader = DataLoader(data, batch_size=batch, sampler=sampler, collate_fn=numpy_collate)
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        torch.save(module.model.state_dict(), out)
    """
)


def test_ddp_two_processes_equal_one(tmp_path):
    """Lightning DDP (2 CPU processes, gloo, torch face) with 16 samples per process equals
    one process with batches of 32, over 8 steps (atol 1e-5).

    BatchNorm choice: DDP computes batch statistics per process (and SyncBatchNorm swaps
    torch's BatchNorm modules, which the torch face does not have), so train-mode BN would
    legitimately differ from one process. `train_bn=False` runs the model in eval mode
    (running statistics, no dropout) while every parameter trains, so the only cross-process
    reduction is DDP's gradient all-reduce, which is exactly what this test checks. An
    unshuffled rank-strided split (an explicit sampler in both runs) forms the same global
    batches as the single process."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    for devices, batch in ((2, 16), (1, 32)):
        subprocess.run(
            [
                sys.executable,
                str(script),
                str(devices),
                str(batch),
                str(tmp_path / f"{devices}.pt"),
            ],
            check=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
    ddp, single = torch.load(tmp_path / "2.pt"), torch.load(tmp_path / "1.pt")
    initial = ImageClassifier("cnn", num_classes=10, in_chans=1).model.state_dict()
    assert not torch.equal(single["conv1.weight"], initial["conv1.weight"])
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=0, msg=k)
