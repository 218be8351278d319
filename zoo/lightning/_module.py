"""`ImageClassifier`: a LightningModule that fine-tunes any zoo model through its torch face,
with Lightning's automatic optimisation in both modes."""

import math
import os
from typing import Any, Literal

import equinox as eqx
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .._load import load
from ..adapters import JaxModel, TorchModel, fused_cross_entropy

Mode = Literal["torch", "jax"]


def lr_factor(step: Any, total_steps: int, warmup_steps: int, scheduler: str | None, xp=math):
    """The learning-rate multiplier at optimizer step `step` (the `LambdaLR` both modes use;
    `xp=jax.numpy` gives the same curve as an optax schedule).
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


class _PythonMath:
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


def _head_names(model: Any) -> tuple[str, ...]:
    """The top-level fields that form the model's head (`ZooModel.head_modules`: the
    classifier and any dropout before it, e.g. `SmallCNN`'s `("dropout", "fc")`)."""
    names = getattr(model, "head_modules", None)
    if names is None:
        raise ValueError(
            f"{type(model).__name__} does not say which fields form its head: freeze_backbone "
            "needs a zoo model (zoo.models.ZooModel, whose head_modules names them)"
        )
    return tuple(names)


def _step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    """A per-batch seed that depends only on where training is, so dropout after a resume
    draws what the uninterrupted run drew."""
    return int(np.random.SeedSequence((seed, epoch, batch_idx)).generate_state(1)[0] >> 1)


class ImageClassifier(L.LightningModule):
    """Fine-tune a zoo model on any image-classification `DataLoader` of `(images, labels)`
    (NCHW float images; torch tensors or NumPy arrays, see `zoo.lightning.numpy_collate`).

    `self.model` is the model's torch face (`zoo.TorchModel`: torchvision's module tree,
    computing in JAX), and both modes use Lightning's automatic optimisation, so the
    Trainer's knobs apply as they do to any torch model: the optimizer and scheduler from
    `configure_optimizers` (override it for your own), gradient clipping and accumulation
    (`Trainer(gradient_clip_val=..., accumulate_grad_batches=...)`,
    `GradientAccumulationScheduler`), `lr_find`, `LearningRateMonitor`, precision
    (`"bf16-mixed"` computes the model in bfloat16 with float32 weights; `"bf16-true"` and
    `"64-true"` convert the weights), DDP (gradients all-reduced by torch, `sync_batchnorm`),
    and callbacks that write the weights (`StochasticWeightAveraging`, `WeightAveraging`,
    `load_state_dict`, unfreezing): the face's tensors are the only copy of the weights.

    **Modes** (the numbers are the same; what differs is how a training step computes):

    - `mode="torch"`: `F.cross_entropy(self.model(x), y)`, then autograd's backward: two
      jitted JAX calls (the forward, keeping the VJP's residuals as torch tensors, and the
      backward).
    - `mode="jax"`: `zoo.fused_cross_entropy(self.model, x, y)`: forward, loss and
      gradients in one jitted XLA computation; `backward` hands the gradients to torch. Where
      the face cannot run as one program (surgery or hooks below the root, SyncBatchNorm),
      it computes as torch mode does, with one warning.

    Checkpoints hold the weights under torchvision's names with the `model.` prefix
    (`model.conv1.weight`) and the optimizer's state as Lightning stores it. Dropout draws
    from a torch generator seeded by `(seed, epoch, batch_idx)`, so a run resumed with
    `trainer.fit(ckpt_path=...)` reproduces the uninterrupted run (use a sampler whose order
    depends on the epoch only, e.g. `EpochShuffleSampler`).

    **Arguments:**

    - `model`: a registry name (`"cnn"`, `"resnet18"`, ...) or a `JaxModel`/`TorchModel`/
      Equinox model.
    - `mode`: `"torch"` or `"jax"`.
    - `num_classes`, `in_chans`, `weights`: as `zoo.load` (a new `num_classes` re-initialises
      the head).
    - `optimizer`: `"sgd"` (momentum, torch's coupled weight decay) or `"adamw"`, for the
      default `configure_optimizers`.
    - `lr`, `momentum`, `weight_decay`, `betas`.
    - `scheduler`: `"cosine"`, `"linear"` or `None`; stepped per optimizer step, over
      `total_steps` (default: `trainer.estimated_stepping_batches`), after `warmup_steps`.
    - `freeze_backbone`: train only the head (`ZooModel.head_modules`: the classifier and any
      dropout before it). The backbone's parameters stop requiring grad and its modules run
      in eval mode (BatchNorm normalises with its running statistics and leaves them
      untouched); the head stays in train mode, so a dropout before the classifier
      (`SmallCNN`'s) is live. The backbone's weight gradients are not computed at all. With
      `train_bn=False` as well, the head runs in eval mode too.
    - `train_bn`: `False` runs the whole model in eval mode while training all parameters
      (frozen BatchNorm statistics, no dropout), a common fine-tuning setting.
    - `grad_clip_norm`: clip gradients to this global norm (overrides the Trainer's
      `gradient_clip_val`).
    - `seed`: for dropout (default: the `seed_everything` seed, else 0).
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
        seed: int | None = None,
        **load_kwargs: Any,
    ):
        super().__init__()
        if mode not in ("torch", "jax"):
            raise ValueError(f"mode must be 'torch' or 'jax', not {mode!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
        for moved in ("accumulate_grad_batches", "jax_devices"):
            if moved in load_kwargs:
                where = (
                    "Trainer(accumulate_grad_batches=...)"
                    if moved == "accumulate_grad_batches"
                    else "the Trainer's devices and strategy (DDP), as for any torch model"
                )
                raise TypeError(f"ImageClassifier takes no {moved!r}: use {where}.")
        ignore = [] if isinstance(model, str) else ["model"]
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
        self.model = TorchModel(eqx_model, name=name)
        self.freeze_backbone = freeze_backbone
        self._head = _head_names(eqx_model) if freeze_backbone else ()
        if freeze_backbone:
            for pname, p in self.model.named_parameters():
                p.requires_grad_(pname.partition(".")[0] in self._head)
        self._seed = seed
        self._set_training_modes()

    # -- helpers -------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        if self._seed is not None:
            return int(self._seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _set_training_modes(self) -> None:
        """The face's modules in training's modes: all in train mode, or (frozen backbone,
        `train_bn=False`) in eval mode, with a frozen backbone's head in train mode."""
        h = self.hparams
        self.model.train(not (self.freeze_backbone or not h.train_bn))
        if self.freeze_backbone and h.train_bn:
            for name in self._head:
                getattr(self.model, name).train()

    def _batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as torch tensors, the images in the weights' dtype (a precision plugin
        that converts the weights, `"bf16-true"`, converts only tensor batches)."""
        x, y = batch
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        y = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
        dtype = next(self.model.parameters()).dtype
        if x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        return x, y.long()

    def _total_steps(self) -> int:
        if self.hparams.total_steps is not None:
            return int(self.hparams.total_steps)
        return int(self.trainer.estimated_stepping_batches)

    # -- optimizers ----------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=h.lr, betas=h.betas, weight_decay=h.weight_decay)
        total = self._total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, h.warmup_steps, h.scheduler, _PythonMath)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        if self.hparams.grad_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, x: Any) -> torch.Tensor:
        """Logits as a torch tensor (the torch face, in the module's mode)."""
        x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = self._batch(batch)
        # Lightning restores each submodule's own mode after validation; set them per step.
        self._set_training_modes()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_step_seed(self.seed, self.current_epoch, batch_idx))
            if self.mode == "jax":
                loss, logits = fused_cross_entropy(self.model, x, y)
            else:
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(-1) == y).float().mean()
        self._log("train", loss.detach(), acc, len(y), on_step=True)
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = self._batch(batch)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self._log(stage, loss, acc, len(y), on_step=False)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

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
