"""Fine-tuning the head only: the backbone runs in eval mode (BatchNorm normalises with, and
keeps, its running statistics), the head in train mode (its dropout stays live).

The head is what the model contract names: `head_modules` (the classifier and any dropout
before it, e.g. `SmallCNN`'s `("dropout", "fc")`; a ResNet's `("fc",)`). `zoo.eval_mode`/
`zoo.train_mode` switch a whole tree, so the mixed mode is built here per field.
"""

from typing import Any, TypeVar

import equinox as eqx

from .._modes import eval_mode, train_mode
from ..layers import Dropout, Linear

M = TypeVar("M")


def head_names(model: Any) -> tuple[str, ...]:
    """The top-level fields of `model` that form its head (`ZooModel.head_modules`).

    **Raises:** `ValueError` if `model` does not implement the contract.
    """
    names = getattr(model, "head_modules", None)
    if names is None:
        raise ValueError(
            f"{type(model).__name__} does not say which fields form its head: freeze_backbone "
            "needs a zoo model (zoo.models.ZooModel, whose head_modules names them)"
        )
    return tuple(names)


def head_train_mode(model: M) -> M:
    """`model` with its backbone in eval mode and its head (see `head_names`) in train mode.

    **Returns:** a copy of `model`; the arrays are shared.
    """
    model = eval_mode(model)
    for name in head_names(model):
        model = eqx.tree_at(
            lambda m, name=name: getattr(m, name),
            model,
            train_mode(getattr(model, name)),
            is_leaf=lambda x: x is None,
        )
    return model


def split_head(model: Any) -> tuple[Any, float]:
    """The backbone (the model without classifier: a call returns the pooled features the
    head sees) in eval mode, and the head's dropout probability.

    **Returns:** `(backbone, p)`; the head computes `classifier(dropout_p(features))`.

    **Raises:** `ValueError` where the head is not a `Linear` classifier with at most one
    dropout before it (torch mode cannot mirror it; use `mode="jax"`).
    """
    names = head_names(model)
    classifier = model.get_classifier()
    dropouts = [n for n in names if isinstance(getattr(model, n), Dropout)]
    others = [n for n in names if n not in dropouts and getattr(model, n) is not classifier]
    if not isinstance(classifier, Linear) or len(dropouts) > 1 or others:
        raise ValueError(
            f"freeze_backbone in torch mode supports a Linear classifier with at most one "
            f"Dropout before it; {type(model).__name__}'s head is {names} with classifier "
            f"{type(classifier).__name__}. Use mode='jax', which runs any head."
        )
    p = float(getattr(model, dropouts[0]).p) if dropouts else 0.0
    return eval_mode(model.reset_classifier(0)), p
