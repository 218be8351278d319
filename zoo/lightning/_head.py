"""Fine-tuning the head only: the backbone runs in eval mode (BatchNorm normalises with, and
keeps, its running statistics), the head in train mode (its dropout stays live).

The head is the classifier (`fc` in the zoo's models) plus the model's top-level `Dropout`
layers, which in the zoo's models feed the classifier (`fc(dropout(pooled))` in `SmallCNN`;
the ResNets have none). `zoo.eval_mode`/`zoo.train_mode` switch a whole tree, so the mixed
mode is built here from shallow copies, as `zoo._modes` does.
"""

import copy
from typing import Any, TypeVar

import equinox as eqx

from .._modes import eval_mode, train_mode
from ..layers import Dropout, Linear

M = TypeVar("M")


def head_names(model: Any, classifier: str) -> list[str]:
    """The top-level fields of `model` that form its head: `classifier` and any `Dropout`.

    **Raises:** `ValueError` if `model` has no top-level field `classifier`.
    """
    if not hasattr(model, classifier):
        raise ValueError(
            f"{type(model).__name__} has no top-level classifier {classifier!r}; "
            "freeze_backbone needs the name of the final layer (set the model class's "
            "`classifier` attribute, as timm's pretrained_cfg does)"
        )
    fields = getattr(model, "__dataclass_fields__", {})
    dropouts = [n for n in fields if isinstance(getattr(model, n, None), Dropout)]
    return [classifier, *dropouts]


def head_train_mode(model: M, classifier: str) -> M:
    """`model` with its backbone in eval mode and its head (see `head_names`) in train mode.

    **Arguments:**

    - `model`: a zoo Equinox model.
    - `classifier`: the name of its final layer (`"fc"`).

    **Returns:** a shallow copy of `model`; the arrays are shared.
    """
    model = eval_mode(model)
    new = copy.copy(model)
    for name in head_names(model, classifier):
        # Static `inference` flags: replace the submodule itself (eqx.tree_at would refuse
        # a Dropout, which has no array leaves).
        object.__setattr__(new, name, train_mode(getattr(model, name)))
    return new


class _Identity(eqx.Module):
    """Stands in for the head's layers when computing backbone features."""

    def __call__(self, x: Any, *, key: Any = None) -> Any:
        return x


def split_head(model: Any, classifier: str) -> tuple[Any, float]:
    """The backbone (head layers replaced by identities, so a call returns the pooled
    features the head would see) and the head's dropout probability.

    **Returns:** `(backbone, p)`; the head computes `classifier(dropout_p(features))`.

    **Raises:** `ValueError` where the head is not a `Linear` classifier with at most one
    dropout before it (torch mode cannot mirror it; use `mode="jax"`).
    """
    names = head_names(model, classifier)
    dropouts = names[1:]
    if not isinstance(getattr(model, classifier), Linear) or len(dropouts) > 1:
        raise ValueError(
            f"freeze_backbone in torch mode supports a Linear classifier with at most one "
            f"Dropout before it; {type(model).__name__} has {classifier!r} = "
            f"{type(getattr(model, classifier)).__name__} and dropouts {dropouts}. "
            "Use mode='jax', which runs any head."
        )
    p = float(getattr(model, dropouts[0]).p) if dropouts else 0.0
    backbone = copy.copy(model)
    for name in names:
        object.__setattr__(backbone, name, _Identity())
    return eval_mode(backbone), p
