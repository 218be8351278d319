"""zoo.lightning.ImageClassifier with the real Lightning Trainer, on real data (sklearn digits)."""

import copy
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

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


def test_digits_held_out_accuracy(digits, mode="jax"):
    """JAX mode fine-tunes the CNN to >= 95% held-out accuracy on real digits (16x16, 3
    epochs), reading its batches as NumPy arrays through a worker process (from a forkserver,
    never forked from this JAX-threaded process). Torch mode's step is a plain module's
    (`test_torch_face.py::test_a_plain_lightning_module_trains_the_face_in_train_mode`)."""
    L.seed_everything(0)
    train, test = loaders(digits, num_workers=1)
    assert train.multiprocessing_context.get_start_method() == "forkserver"
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


LOADER_SCRIPT = textwrap.dedent(
    """
    import os, warnings
    import jax.numpy as jnp, numpy as np, torch
    import marker  # the main script's own import: the forkserver preloads it
    from zoo.lightning import numpy_loader


    class Probe(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            # Whether this worker inherited `marker` (imported before it started) instead of
            # importing it again itself.
            return np.float32(marker.PID != os.getpid()), 0


    if __name__ == "__main__":
        jnp.ones(3).sum().block_until_ready()  # JAX's threads are running
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # JAX warns when a multithreaded process forks
            loader = numpy_loader(Probe(), 2, num_workers=2)
            print("inherited:", all(bool(x.all()) for x, _ in loader))
    """
)


def test_loader_workers_start_from_a_preloaded_server(tmp_path):
    """`numpy_loader`'s workers come from a forkserver that imported what the main script
    imports, so a worker does not import it again (seconds per worker for Lightning), and the
    JAX-threaded main process never forks (no JAX warning)."""
    (tmp_path / "marker.py").write_text("import os\nPID = os.getpid()\n")
    (tmp_path / "main.py").write_text(LOADER_SCRIPT)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "inherited: True" in out.stdout, out.stdout


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


def test_freeze_backbone_trains_only_the_head(digits, mode="jax"):
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


def test_freeze_backbone_modes(digits, mode="jax"):
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


def ddp_fits(devices: int, batch: int, runs: list[str]) -> dict[str, dict]:
    """Fit the CNN once per `"mode:train_bn"` run (mode `"twin"`: the plain torch model) for
    8 steps in float64 on the digits, under DDP with `devices` processes (the caller is rank
    0 of a launched script) or in this process; return each run's state_dict."""
    from torch.utils.data import DataLoader, DistributedSampler

    from zoo.lightning import numpy_collate

    x, y, _, _ = digits_arrays(size=16, seed=0)
    data = ArrayDataset(x[:256], y[:256])
    results = {}
    for run in runs:
        mode, train_bn = run.split(":")
        L.seed_everything(0)
        module = ImageClassifier(
            "cnn",
            mode="torch" if mode == "twin" else mode,
            num_classes=10,
            in_chans=1,
            lr=0.05,
            drop_rate=0.0,
            train_bn=train_bn == "bn",
            total_steps=8,
        )
        if mode == "twin":
            module.model = zoo.to_torchvision(module.model)
        t = trainer(
            1,
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            precision="64-true",
            use_distributed_sampler=False,
        )
        # Rank r takes samples r, r + 2, ... in order (Lightning's own DistributedSampler
        # would shuffle), so each step's global batch is the single process's batch.
        sampler = DistributedSampler(data, t.world_size, t.global_rank, shuffle=False)
        loader = DataLoader(data, batch_size=batch, sampler=sampler, collate_fn=numpy_collate)
        with jax.enable_x64(True):
            t.fit(module, loader)
        results[run] = module.model.state_dict()
    return results


DDP_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from test_lightning import ddp_fits

    results = ddp_fits(2, 16, sys.argv[2].split(","))
    if torch.distributed.get_rank() == 0:
        torch.save(results, sys.argv[1])
    """
)


def test_ddp_jax_mode_trains_as_plain_torch_under_ddp(tmp_path):
    """Lightning DDP (2 CPU processes, gloo), 16 samples per process, 8 steps, float64: JAX
    mode with BatchNorm training ends with the weights and statistics of the plain torch
    model under the same DDP (1e-10). So its gradients are averaged across the processes
    every step (the old JAX mode's ranks drifted apart), each process's BatchNorm uses its
    own batch and rank 0's buffers are broadcast, as DDP does for any torch model. (With
    `train_bn=False` the same runs also equal one process with batches of 32: 5.6e-17 when
    measured; not repeated here, to save a third fit.)

    An unshuffled rank-strided split forms each step's global batch from samples r, r + 2,
    .... Both ranks are started here, as torchrun starts them. SyncBatchNorm is not tested
    here: torch's runs on GPUs only (see test_sync_batchnorm_modules_run_in_torch)."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    tests = str(Path(__file__).parent)
    env = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    if "ZOO_TEST_JAX_CACHE" in os.environ:  # this run's compilation cache, as run_python
        env["ZOO_COMPILATION_CACHE"] = os.environ["ZOO_TEST_JAX_CACHE"]
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    command = [sys.executable, str(script), str(tmp_path / "ddp.pt"), "jax:bn,twin:bn"]
    ranks = [
        subprocess.Popen(command, env=env | {"LOCAL_RANK": str(r), "NODE_RANK": "0"}, cwd=tmp_path)
        for r in (0, 1)
    ]
    try:
        assert [rank.wait(timeout=300) for rank in ranks] == [0, 0]
    finally:
        for rank in ranks:
            rank.kill()  # a rank left waiting for a failed peer
    ddp = torch.load(tmp_path / "ddp.pt")
    ours, expected = ddp["jax:bn"], ddp["twin:bn"]
    initial = ImageClassifier("cnn", num_classes=10, in_chans=1).model.state_dict()
    assert ours["conv1.weight"].dtype == torch.float64
    assert not torch.equal(expected["conv1.weight"].float(), initial["conv1.weight"])
    assert not torch.equal(expected["bn1.running_mean"].float(), initial["bn1.running_mean"])
    for k in expected:
        torch.testing.assert_close(ours[k], expected[k], atol=1e-10, rtol=0, msg=k)


# -- JAX mode obeys the Trainer: it trains as Lightning trains the plain torch model ---------


def plain_twin(module: ImageClassifier) -> ImageClassifier:
    """The same LightningModule around the plain torch model (torchvision's, or the CNN's
    `SmallCNNTorch`) with the same weights: what Lightning does with an ordinary torch
    model, the reference for every Trainer feature."""
    twin = copy.deepcopy(module)
    twin.model, twin.mode = zoo.to_torchvision(module.model), "torch"
    return twin


def fit_with_twin(make, data, epochs, n_train=256, jax_only=True, **trainer_kwargs):
    """Fit `make()` in JAX mode and its plain torch twin with identical Trainers and data;
    return both modules and trainers. With `jax_only`, a fallback to torch is an error.

    In float64 (`precision="64-true"`, JAX's x64 on) unless `precision` is given: over 16 SGD
    steps fp32 rounding grows to ~3e-4 in places, which would hide a real difference; in
    float64 the two must agree to 1e-10."""
    L.seed_everything(0)
    module = make()
    twin = plain_twin(module)
    train, _ = loaders(data, n_train=n_train)
    trainer_kwargs.setdefault("precision", "64-true")
    out = []
    for m in (module, twin):
        kwargs = {k: (v() if callable(v) else v) for k, v in trainer_kwargs.items()}
        t = trainer(epochs, **kwargs)
        with warnings.catch_warnings(), jax.enable_x64(kwargs["precision"] == "64-true"):
            if jax_only:
                warnings.simplefilter("error", zoo.ZooTorchFallbackWarning)
            t.fit(m, train)
        out.append(t)
    return module, twin, *out


def assert_same_weights(module, twin, atol=1e-10):
    a, b = module.model.state_dict(), twin.model.state_dict()
    assert a.keys() == b.keys()
    assert a["conv1.weight"].dtype == torch.float64
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


class UsersOptimizer(ImageClassifier):
    """A user's own `configure_optimizers`: Adam, halving the lr every epoch."""

    def configure_optimizers(self):
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=3e-3)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


class UnfreezeStem(L.pytorch.callbacks.BaseFinetuning):
    """Freezes `conv1` before training, unfreezes it (a new param group) at epoch 1."""

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.model.conv1)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.model.conv1, optimizer, lr=0.02)


def test_jax_mode_takes_the_users_optimizer_scheduler_clipping_and_accumulation(digits, tmp_path):
    """The user's optimizer and scheduler, gradient clipping, a GradientAccumulationScheduler,
    LearningRateMonitor and a BaseFinetuning callback (the stem frozen in epoch 0, then
    unfrozen into a new param group), in JAX mode: the weights the plain torch model gets,
    the same lr logged at the same steps, the same number of optimizer steps."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    monitors = []

    def callbacks():
        monitors.append(LearningRateMonitor(logging_interval="step"))
        return [monitors[-1], GradientAccumulationScheduler({1: 2}), UnfreezeStem()]

    loggers = iter(CSVLogger(tmp_path, name=n) for n in ("jax", "twin"))
    module, twin, t1, t2 = fit_with_twin(
        lambda: UsersOptimizer("cnn", mode="jax", num_classes=10, in_chans=1, drop_rate=0.0),
        digits,
        2,
        callbacks=callbacks,
        gradient_clip_val=0.5,
        logger=lambda: next(loggers),
        log_every_n_steps=1,
    )
    assert t1.global_step == t2.global_step == 8 + 4  # epoch 1 accumulates pairs of batches
    assert_same_weights(module, twin)
    assert module.model.conv1.weight.requires_grad
    assert len(t1.optimizers[0].param_groups) == 2
    logged = []
    for name in ("jax", "twin"):
        rows = (tmp_path / name / "version_0" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        lr = [i for i, column in enumerate(header) if column.startswith("lr-Adam")]
        logged.append([[r.split(",")[i] for i in lr] for r in rows[1:]])
    assert logged[0] == logged[1]
    values = {v for row in logged[0] for v in row}
    assert values == {"", "0.003", "0.0015", "0.02"}, values  # StepLR halved; the new group


@pytest.mark.parametrize("averaging", ["swa", "ema"])
def test_jax_mode_weight_averaging_callbacks(digits, averaging):
    """StochasticWeightAveraging (with its BatchNorm recomputation) and EMAWeightAveraging
    write the face's tensors; the next steps, evaluation and export use them: the weights and
    statistics equal the plain torch model's, and the face's own accuracy is the
    Trainer's test accuracy. SWA's BatchNorm epoch (momentum None, a cumulative average)
    runs those BatchNorms in torch, with a warning."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

    def callback():
        if averaging == "swa":
            return [StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=1)]
        return [EMAWeightAveraging(decay=0.8)]

    module, twin, t, _ = fit_with_twin(
        lambda: ImageClassifier("cnn", mode="jax", num_classes=10, in_chans=1, drop_rate=0.0),
        digits,
        2,
        jax_only=averaging == "ema",
        callbacks=callback,
    )
    assert_same_weights(module, twin)
    x_test, y_test = torch.from_numpy(digits[2]).double(), digits[3]
    with jax.enable_x64(True):
        tested = t.test(module, numpy_loader(ArrayDataset(*digits[2:]), 128), verbose=False)
    module.model.eval()
    with torch.no_grad(), jax.enable_x64(True):
        own = (module.model(x_test).argmax(-1).numpy() == y_test).mean()
    assert abs(own - tested[0]["test_acc"]) < 1e-6


def test_jax_mode_lr_find(digits):
    """The Tuner's lr_find in JAX mode: the losses and the suggestion of the plain torch
    model, and the weights restored afterwards."""
    from lightning.pytorch.tuner import Tuner

    results = []
    L.seed_everything(0)
    module = ImageClassifier("cnn", mode="jax", num_classes=10, in_chans=1, drop_rate=0.0)
    before = weights(module)
    train, _ = loaders(digits, n_train=512)
    for m in (module, plain_twin(module)):
        finder = Tuner(trainer(1)).lr_find(m, train, min_lr=1e-4, max_lr=1.0, num_training=16)
        results.append((finder.results["loss"], finder.suggestion()))
    (losses, suggestion), (twin_losses, twin_suggestion) = results
    assert np.isfinite(losses).all() and suggestion is not None
    np.testing.assert_allclose(losses, twin_losses, rtol=1e-4)
    assert suggestion == twin_suggestion and module.hparams.lr == suggestion
    for k, v in weights(module).items():
        assert torch.equal(v, before[k]), k


def test_jax_mode_precision_bf16(digits):
    """`bf16-mixed`: the model computes in bfloat16 inside the JAX program while the weights
    stay float32, and training follows the plain torch model under the same autocast
    (losses within bfloat16's rounding). `bf16-true`: bfloat16 weights, computed in JAX."""
    losses = {}
    for precision in ("bf16-mixed", "bf16-true"):
        module, _, t1, t2 = fit_with_twin(
            lambda: ImageClassifier(
                "cnn", mode="jax", num_classes=10, in_chans=1, drop_rate=0.0, lr=0.02
            ),
            digits,
            1,
            precision=precision,
        )
        dtype = module.model.conv1.weight.dtype
        assert dtype == (torch.float32 if precision == "bf16-mixed" else torch.bfloat16)
        losses[precision] = [float(t.callback_metrics["train_loss_epoch"]) for t in (t1, t2)]
    for precision, (ours, theirs) in losses.items():
        assert abs(ours - theirs) < 0.05 and ours < 2.1, (precision, losses)
