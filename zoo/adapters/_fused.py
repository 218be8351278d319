"""`fused_cross_entropy`: a torch face's training loss and its gradients from one JAX program.

Autograd through a face runs two jitted calls (the forward, keeping the VJP's residuals as
torch tensors, then the backward). For the usual classification step, forward, mean
cross-entropy and the parameters' gradients compile into one XLA computation instead: the
gradients are computed with the loss, held by the autograd node, and handed to torch when
`loss.backward()` reaches it, scaled by the loss's own gradient (so Lightning's
accumulation, AMP's loss scaling and `loss * w` work). Everything after `backward` (the
gradients' hooks, DDP's all-reduce, clipping, the optimizer) is torch's as usual.
"""

from typing import Any

import torch
import torch.nn.functional as F

from ..models._checks import check_image_batch
from ._torch_face import TorchModel, _autocast_dtype, _Binding, _to_jax, _to_torch


class _FusedLoss(torch.autograd.Function):
    """The parameters are inputs, so their `.grad` fills as usual; the gradients are saved
    tensors, freed after `backward` (or kept by `retain_graph=True`) as torch decides."""

    @staticmethod
    def forward(ctx, binding: _Binding, call: tuple, *params: torch.Tensor):
        modes, dtype, mask, args, labels, targets = call
        params_, buffers, counters, x, seed = args
        loss, logits, new_flat, grads = binding.program.loss_and_grads(
            modes, dtype, mask, params_, buffers, counters, x, labels, seed
        )
        binding.write_buffers(targets, new_flat, modes)
        ctx.mask = mask
        ctx.save_for_backward(*(torch.from_dlpack(g) for g in grads))
        logits = _to_torch(logits)
        ctx.mark_non_differentiable(logits)
        return _to_torch(loss), logits

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_logits: Any):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through zoo.fused_cross_entropy is not "
                "supported: its gradients come from a compiled JAX function. Use the JAX "
                "face for higher derivatives, or the plain torch model, "
                "zoo.to_torchvision(face)."
            )
        grads = iter(ctx.saved_tensors)
        one = grad_loss.numel() == 1 and bool(grad_loss == 1)
        out = []
        for wanted in ctx.mask:
            g = next(grads) if wanted else None
            out.append(g if g is None or one else g * grad_loss.to(g.dtype))
        return (None, None, *out)


def fused_cross_entropy(
    face: TorchModel, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.cross_entropy(face(x), target)` and the logits, with the forward, the loss and the
    gradients of every parameter that requires grad computed by one jitted JAX program.

    Same semantics as the two-line torch version: each submodule's mode, BatchNorm's
    running statistics updated in place, dropout drawn from torch's generator, `autocast`
    (the model computes in its dtype, the loss in float32), frozen parameters (no gradient),
    `ignore_index=-100`. `loss.backward()` fills the parameters' `.grad` (scaled by the
    loss's own gradient), so optimizers, clipping, DDP and Lightning work unchanged; the
    logits are detached.

    Where the face would not compute as one JAX program (a replaced or hooked submodule,
    `torch.func`, mixed dtypes, a features-only face) or the target is not integer class
    indices, it computes `F.cross_entropy(face(x), target)` instead, with one
    `zoo.ZooTorchFallbackWarning` saying why; the result is the same.

    **Arguments:**

    - `face`: a zoo torch face (`zoo.load(..., framework="torch")`).
    - `x`: a `(N, C, H, W)` float batch.
    - `target`: `(N,)` integer class indices (`-100` ignored).

    **Returns:** `(loss, logits)`: the scalar loss (with a `grad_fn` when gradients are
    enabled and some parameter requires grad) and the detached `(N, classes)` logits.

    **Raises:** `IndexError` for a class index outside `[0, classes)` (other than -100), as
    torch does; the face's own errors for a wrong batch.
    """
    if not isinstance(face, TorchModel):
        raise TypeError(
            f"fused_cross_entropy takes a zoo torch face (zoo.load(..., framework='torch')), "
            f"not {type(face).__name__}; for any other module use "
            "F.cross_entropy(module(x), target)."
        )
    if not (torch.is_grad_enabled() and any(p.requires_grad for p in face.parameters())):
        logits = face(x)  # nothing to differentiate: the face's own call
        return F.cross_entropy(logits, target), logits.detach()
    binding, reason = _fused_binding(face, x, target)
    if not reason:  # the tensors and autocast are read once, for this check and the call
        tensors, dtype = binding.tensors(), _autocast_dtype(x)
        reason = binding.dtype_problem(tensors, x, dtype)
    if reason:
        face._warn_once(
            f"fused:{reason}",
            f"{face.name}: fused_cross_entropy computes F.cross_entropy(face(x), target) "
            f"(the face's forward, then autograd's backward) because {reason}; same result, "
            "two programs instead of one.",
        )
        logits = face(x)
        return F.cross_entropy(logits, target), logits.detach()
    check_image_batch(x, face.in_chans, f"{type(face).__name__}({face.name})")
    _check_targets(target, len(x), face.num_classes)
    modes = binding.modes()
    args, targets, param_tensors = binding.arguments(x, modes, tensors)
    mask = tuple(p.requires_grad for p in param_tensors)
    labels = _to_jax(target.to(torch.int32))
    call = (modes, dtype, mask, args, labels, targets)
    loss, logits = _FusedLoss.apply(binding, call, *param_tensors)
    return loss, logits


def _fused_binding(face: TorchModel, x: Any, target: Any) -> tuple[Any, str]:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        return None, "the input is not a non-empty (N, C, H, W) tensor"
    if face._zoo.recipe.out_indices is not None:
        return None, "a features-only face returns feature maps, not logits"
    if (
        not isinstance(target, torch.Tensor)
        or target.ndim != 1
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        return None, "the target is not a 1-D tensor of class indices"
    return face._whole_program(x)


def _check_targets(target: torch.Tensor, batch: int, classes: int) -> None:
    if len(target) != batch:
        raise ValueError(
            f"Expected input batch_size ({batch}) to match target batch_size ({len(target)})."
        )
    bad = target[((target < 0) & (target != -100)) | (target >= classes)]
    if bad.numel():
        raise IndexError(
            f"Target {int(bad[0])} is out of bounds: the model has {classes} classes "
            "(class indices 0 to classes - 1; -100 is ignored)."
        )
