"""`ImageClassifier`: a LightningModule that fine-tunes any zoo model, with torch or JAX
doing the optimisation."""

import math
import os
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lightning as L
import numpy as np
import optax
import torch
import torch.nn.functional as F

import weights_convert as wc

from .._compile import jit
from .._functional import cross_entropy, trainable
from .._load import load
from .._modes import eval_mode, train_mode
from ..adapters import JaxModel, TorchModel
from ._head import head_train_mode, split_head
from ._parallel import eval_logits, make_data_parallel_step

Mode = Literal["torch", "jax"]


def lr_factor(step: Any, total_steps: int, warmup_steps: int, scheduler: str | None, xp=math):
    """The learning-rate multiplier at optimizer step `step` (shared by the torch
    `LambdaLR` and the optax schedule so both modes follow the same curve).
    `scheduler`: `"cosine"` (linear warm-up, then cosine decay to 0 at `total_steps`),
    `"linear"` (warm-up, then linear decay to 0) or `None`/`"constant"` (warm-up only)."""
    warm = xp.minimum(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    span = max(1, total_steps - warmup_steps)
    progress = xp.minimum(1.0, xp.maximum(0.0, (step - warmup_steps) / span))
    if scheduler == "cosine":
        decay = 0.5 * (1.0 + xp.cos(math.pi * progress))
    elif scheduler == "linear":
        decay = 1.0 - progress
    elif scheduler in (None, "none", "constant"):
        decay = 1.0
    else:
        raise ValueError(f"scheduler must be 'cosine', 'linear' or None, not {scheduler!r}")
    return warm * decay


class _NumpyMath:
    """`lr_factor`'s `xp` for torch's LambdaLR (plain floats)."""

    minimum = staticmethod(min)
    maximum = staticmethod(max)
    cos = staticmethod(math.cos)


def _as_equinox(model: Any) -> Any:
    if isinstance(model, JaxModel):
        return model.model
    if isinstance(model, TorchModel):
        return model.to_equinox()
    if isinstance(model, eqx.Module):
        return model
    raise TypeError(
        f"expected a zoo model name, JaxModel, TorchModel or Equinox module, got {model!r}"
    )


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    """A per-batch seed that depends only on where training is, so dropout after a resume
    draws what the uninterrupted run drew."""
    return int(np.random.SeedSequence((seed, epoch, batch_idx)).generate_state(1)[0] >> 1)


@jit
def _eval_metrics(model: Any, x: jax.Array, labels: jax.Array):
    logits = eval_mode(model)(x)[0]
    return cross_entropy(logits, labels), jnp.mean(jnp.argmax(logits, -1) == labels)


class ImageClassifier(L.LightningModule):
    """Fine-tune a zoo model on any image-classification `DataLoader` of `(images, labels)`
    (NCHW float images; torch tensors or NumPy arrays, see `zoo.lightning.numpy_collate`).

    **Modes:**

    - `mode="torch"`: automatic optimisation. `self.model` is the model's torch face (a
      `zoo.TorchModel`; JAX computes forward and backward), the optimizer and LR scheduler are
      torch's, and Lightning does the backward, gradient clipping
      (`Trainer(gradient_clip_val=...)`), accumulation (`accumulate_grad_batches`), AMP-free
      precision 32 and DDP.
    - `mode="jax"`: manual optimisation. Each batch runs one jitted XLA step (forward,
      gradients, BatchNorm update, optax update), data-parallel over all of `jax.devices()`
      (batch sharded over a `Mesh`, parameters replicated). After each step the arrays are
      copied into `self.model`'s parameters and buffers, so `state_dict()`, checkpoints,
      loggers and callbacks see the current weights; the optax state is stored in the
      checkpoint under `"optax_state"` (its leaves, as tensors). A do-nothing torch optimizer is
      stepped so that `trainer.global_step` counts optimizer steps as usual. Gradient
      clipping and accumulation are the `grad_clip_norm` / `accumulate_grad_batches`
      arguments here (Lightning's own flags are for automatic optimisation).

    Checkpoints hold the weights under torchvision's names with the `model.` prefix
    (`model.conv1.weight`). Dropout keys derive from `(seed, epoch, batch_idx)`, so a run
    resumed with `trainer.fit(ckpt_path=...)` reproduces the uninterrupted run (use a
    sampler whose order depends on the epoch only, e.g. `EpochShuffleSampler`).

    **Arguments:**

    - `model`: a registry name (`"cnn"`, `"resnet18"`, ...) or a `JaxModel`/`TorchModel`/
      Equinox model.
    - `mode`: `"torch"` or `"jax"`.
    - `num_classes`, `in_chans`, `weights`: as `zoo.load` (a new `num_classes` re-initialises
      the head).
    - `optimizer`: `"sgd"` (momentum, torch's coupled weight decay) or `"adamw"`.
    - `lr`, `momentum`, `weight_decay`, `betas`.
    - `scheduler`: `"cosine"`, `"linear"` or `None`; stepped per optimizer step, over
      `total_steps` (default: `trainer.estimated_stepping_batches`), after `warmup_steps`.
    - `freeze_backbone`: train only the classifier head (`fc`). The backbone runs in eval
      mode (BatchNorm normalises with its running statistics and leaves them untouched);
      the head stays in train mode, so a dropout before the classifier (`SmallCNN`'s) is
      live. In torch mode the frozen backbone runs as a jitted eval-mode JAX function with no
      backward pass, and the head (dropout, `fc`) in torch; in JAX mode the whole model is one
      jitted step with the backbone's updates zeroed. With `train_bn=False` as well, the whole
      model runs in eval mode (head dropout off too).
    - `train_bn`: `False` runs the whole model in eval mode while training all parameters
      (frozen BatchNorm statistics, no dropout), a common fine-tuning setting.
    - `grad_clip_norm`: clip gradients to this global norm (both modes).
    - `accumulate_grad_batches`: JAX mode only (torch mode: use the Trainer flag).
    - `seed`: for dropout keys (default: the `seed_everything` seed, else 0).
    - `jax_devices`: devices for JAX mode's data parallelism (default all).
    - `**load_kwargs`: architecture options passed to `zoo.load`.
    """

    def __init__(
        self,
        model: Any = "cnn",
        mode: Mode = "torch",
        num_classes: int | None = None,
        in_chans: int | None = None,
        weights: Any = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        scheduler: str | None = "cosine",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        freeze_backbone: bool = False,
        train_bn: bool = True,
        grad_clip_norm: float | None = None,
        accumulate_grad_batches: int = 1,
        seed: int | None = None,
        jax_devices: Any = None,
        **load_kwargs: Any,
    ):
        super().__init__()
        if mode not in ("torch", "jax"):
            raise ValueError(f"mode must be 'torch' or 'jax', not {mode!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
        ignore = ["jax_devices"] + ([] if isinstance(model, str) else ["model"])
        if not (weights is None or isinstance(weights, str | os.PathLike)):
            ignore.append("weights")
        self.save_hyperparameters(ignore=ignore)
        self.mode = mode
        if isinstance(model, str):
            eqx_model = load(
                model,
                framework="equinox",
                weights=weights,
                num_classes=num_classes,
                in_chans=in_chans,
                **load_kwargs,
            )
            name = model
        else:
            eqx_model = _as_equinox(model)
            name = getattr(model, "name", "")
        self.classifier_name = eqx_model.classifier_path
        self.model = TorchModel(eval_mode(eqx_model), name=name)
        self.model.train(not (freeze_backbone or not train_bn))
        # The Equinox template: the JAX state is rebuilt from `self.model`'s tensors by name.
        self._template = eval_mode(eqx_model)
        self._names = list(wc.named_arrays(self._template))
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for pname, p in self.model.named_parameters():
                p.requires_grad_(self._is_head(pname))
        self._seed = seed
        self._jax_devices = jax_devices
        self._jax_model: Any = None
        self._opt_state: Any = None
        self._eval_cache: Any = None
        self._pending_opt_leaves: list[np.ndarray] | None = None
        self._jax_step = self._placement = None
        self._frozen: tuple[Any, float] | None = None  # torch mode: (backbone, head dropout p)
        if mode == "jax":
            self.automatic_optimization = False

    # -- helpers -------------------------------------------------------------------------------
    def _is_head(self, name: str) -> bool:
        return name.startswith(self.classifier_name + ".")

    @property
    def seed(self) -> int:
        if self._seed is not None:
            return int(self._seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def _eval_mode_training(self) -> bool:
        """Whether training runs the torch face in eval mode (frozen backbone / frozen BN)."""
        return self.freeze_backbone or not self.hparams.train_bn

    @property
    def _head_only_train(self) -> bool:
        """Whether training runs the backbone in eval mode and the head in train mode."""
        return self.freeze_backbone and self.hparams.train_bn

    def _training_mode(self, model: Any) -> Any:
        """The Equinox model in the mode training runs it in (JAX mode)."""
        if self._head_only_train:
            return head_train_mode(model)
        return eval_mode(model) if self._eval_mode_training else train_mode(model)

    def _frozen_backbone_logits(self, x: Any) -> torch.Tensor:
        """Torch mode with `freeze_backbone`: eval-mode backbone features from JAX (no
        gradients needed: its parameters are frozen), then the head in torch, in train mode."""
        if self._frozen is None:
            # Rebuilt after load_state_dict; the frozen weights cannot change in between.
            self._frozen = split_head(self.model.to_equinox())
        backbone, p = self._frozen
        features = torch.from_dlpack(eval_logits(backbone, jnp.asarray(_to_numpy(x))))
        head = getattr(self.model, self.classifier_name)
        features = F.dropout(features, p, training=p > 0)
        return F.linear(features, head.weight, getattr(head, "bias", None))

    def _total_steps(self) -> int:
        if self.hparams.total_steps is not None:
            return int(self.hparams.total_steps)
        steps = int(self.trainer.estimated_stepping_batches)
        if self.mode == "jax":
            steps = math.ceil(steps / self.hparams.accumulate_grad_batches)
        return steps

    def _lr_at(self, step):
        h = self.hparams
        return h.lr * lr_factor(step, self._total_steps(), h.warmup_steps, h.scheduler, jnp)

    # -- optimizers ----------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        if self.mode == "jax":
            # Lightning's view of the optimisation: a no-op optimizer whose step() counts
            # global steps and whose lr mirrors the optax schedule (for LearningRateMonitor).
            return torch.optim.SGD(self.parameters(), lr=h.lr)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=h.lr, betas=h.betas, weight_decay=h.weight_decay)
        total = self._total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, h.warmup_steps, h.scheduler, _NumpyMath)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        if self.hparams.grad_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optax_optimizer(self) -> optax.GradientTransformation:
        """The optax twin of torch mode's optimizer and schedule (JAX mode)."""
        h = self.hparams
        if h.optimizer == "sgd":
            opt = optax.chain(
                optax.add_decayed_weights(h.weight_decay) if h.weight_decay else optax.identity(),
                optax.sgd(self._lr_at, momentum=h.momentum or None),
            )
        else:
            b1, b2 = h.betas
            opt = optax.adamw(self._lr_at, b1=b1, b2=b2, eps=1e-8, weight_decay=h.weight_decay)
        if h.grad_clip_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(h.grad_clip_norm), opt)
        if self.freeze_backbone:
            head = self.classifier_name + "."

            def labels(params):  # a function: an Equinox model is itself callable
                return jax.tree_util.tree_map_with_path(
                    lambda path, _: (
                        "head" if wc._names._path_to_name(path).startswith(head) else "frozen"
                    ),
                    params,
                )

            opt = optax.multi_transform({"head": opt, "frozen": optax.set_to_zero()}, labels)
        if h.accumulate_grad_batches > 1:
            opt = optax.MultiSteps(opt, every_k_schedule=h.accumulate_grad_batches)
        return opt

    # -- JAX state <-> torch face -------------------------------------------------------------
    def _equinox_from_face(self) -> Any:
        model, _ = wc.load_state_dict(self._template, self.model.state_dict(), copy=True)
        return self._training_mode(model)

    def _build_jax_state(self) -> None:
        optimizer = self.optax_optimizer()
        self._placement, self._jax_step = make_data_parallel_step(
            optimizer,
            devices=self._jax_devices,
            # Run and return the model in training's mode (mixed with a frozen backbone).
            set_mode=self._training_mode,
        )
        model = self._equinox_from_face()
        opt_state = optimizer.init(trainable(model))
        if self._pending_opt_leaves is not None:
            leaves, treedef = jax.tree_util.tree_flatten(opt_state)
            if len(leaves) != len(self._pending_opt_leaves):
                raise ValueError("the checkpoint's optax state does not fit this optimizer")
            restored = [
                jnp.asarray(_to_numpy(saved), dtype=jnp.asarray(leaf).dtype)
                for leaf, saved in zip(leaves, self._pending_opt_leaves, strict=True)
            ]
            opt_state = jax.tree_util.tree_unflatten(treedef, restored)
            self._pending_opt_leaves = None
        self._jax_model = self._placement.replicate(model)
        self._opt_state = self._placement.replicate(opt_state)

    def _sync_face(self) -> None:
        """Copy the JAX arrays into the torch face's parameters and buffers."""
        leaves = jax.tree_util.tree_leaves(eqx.filter(self._jax_model, eqx.is_array))
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        with torch.no_grad():
            for name, array in zip(self._names, leaves, strict=True):
                # The arrays are replicated: read device 0's copy through DLPack (zero-copy,
                # and no warning about read-only NumPy views), then copy once into torch.
                source = torch.from_dlpack(array.addressable_shards[0].data)
                if wc.statistic_float_dtype(name, array) is not None:
                    source = source.view(tensors[name].dtype)  # a statistic's bits
                tensors[name].copy_(source)

    def load_state_dict(self, *args, **kwargs):
        out = super().load_state_dict(*args, **kwargs)
        self._jax_model = self._eval_cache = self._frozen = None  # rebuilt from the new tensors
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.mode == "jax" and self._opt_state is not None:
            # Torch tensors (not NumPy arrays) so `torch.load(weights_only=True)` reads it.
            checkpoint["optax_state"] = [
                torch.from_numpy(np.array(leaf))
                for leaf in jax.tree_util.tree_leaves(self._opt_state)
            ]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.mode == "jax":
            self._pending_opt_leaves = checkpoint.get("optax_state")
            self._jax_model = self._opt_state = self._eval_cache = None

    def on_fit_start(self) -> None:
        self._frozen = None  # the face's weights may have been replaced since the last fit
        if self.mode == "jax":
            self._build_jax_state()

    def on_fit_end(self) -> None:
        self._eval_cache = None

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, x: Any) -> torch.Tensor:
        """Logits as a torch tensor (the torch face, in the module's mode)."""
        x = torch.as_tensor(_to_numpy(x)) if not isinstance(x, torch.Tensor) else x
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        key = _step_seed(self.seed, self.current_epoch, batch_idx)
        if self.mode == "torch":
            x, y = torch.as_tensor(x), torch.as_tensor(y).long()
            # Lightning restores each submodule's own mode; set the face's explicitly.
            self.model.train(not self._eval_mode_training)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key)
                logits = self._frozen_backbone_logits(x) if self._head_only_train else self.model(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.detach().argmax(-1) == y).float().mean()
            self._log("train", loss.detach(), acc, len(y), on_step=True)
            return loss
        x, y = _to_numpy(x).astype(np.float32, copy=False), _to_numpy(y).astype(np.int32)
        if self._jax_model is None:
            self._build_jax_state()
        self._jax_model, self._opt_state, loss, logits = self._jax_step(
            self._jax_model, self._opt_state, x, y, jax.random.key(key)
        )
        self._sync_face()
        if (batch_idx + 1) % self.hparams.accumulate_grad_batches == 0:
            opt = self.optimizers()
            for group in opt.param_groups:
                group["lr"] = float(self._lr_at(self.global_step))
            opt.step()
        acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))
        self._log("train", float(loss), acc, len(y), on_step=True)
        return None

    def _eval_step(self, batch, stage: str):
        x, y = batch
        if self.mode == "torch":
            x, y = torch.as_tensor(x), torch.as_tensor(y).long()
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(-1) == y).float().mean()
        else:
            model = self._jax_model
            if model is None:
                if self._eval_cache is None:
                    self._placement = (
                        self._placement
                        or make_data_parallel_step(optax.identity(), devices=self._jax_devices)[0]
                    )
                    self._eval_cache = self._placement.replicate(self._equinox_from_face())
                model = self._eval_cache
            xs, ys = self._placement.shard_batch(
                _to_numpy(x).astype(np.float32, copy=False), _to_numpy(y).astype(np.int32)
            )
            loss, acc = (float(v) for v in _eval_metrics(model, xs, ys))
        self._log(stage, loss, acc, len(y), on_step=False)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        if self.mode == "jax":
            if self._jax_model is None and self._eval_cache is None:
                self._eval_cache = self._equinox_from_face()
            model = self._jax_model if self._jax_model is not None else self._eval_cache
            logits = np.asarray(eval_mode(model)(jnp.asarray(_to_numpy(x)))[0])
            return torch.from_numpy(logits)
        return self.model(torch.as_tensor(x))

    def _log(self, stage: str, loss, acc, batch_size: int, on_step: bool) -> None:
        sync = stage != "train"
        self.log(
            f"{stage}_loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=sync,
        )
        self.log(
            f"{stage}_acc",
            acc,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=sync,
        )
