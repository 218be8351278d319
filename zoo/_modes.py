"""Switching a model between train and eval mode, as `nn.Module.train()`/`.eval()` do."""

import copy
from typing import TypeVar

import jax

M = TypeVar("M")


def _has_mode(node: object) -> bool:
    return hasattr(node, "inference") and not isinstance(node, type)


def _set_mode(model: M, inference: bool) -> M:
    # `inference` is a static field (so plain jax.jit sees no bool leaf), which `eqx.tree_at`
    # cannot replace: swap in shallow copies of the layers that carry it.
    def swap(node):
        if not _has_mode(node) or node.inference == inference:
            return node
        new = copy.copy(node)
        object.__setattr__(new, "inference", inference)
        return new

    return jax.tree_util.tree_map(swap, model, is_leaf=_has_mode)


def eval_mode(model: M) -> M:
    """The model with every BatchNorm and Dropout in eval mode (`inference=True`)."""
    return _set_mode(model, True)


def train_mode(model: M) -> M:
    """The model with every BatchNorm and Dropout in train mode (`inference=False`)."""
    return _set_mode(model, False)


def is_training(model: object) -> bool:
    """True if any layer of the model is in train mode."""
    leaves = jax.tree_util.tree_leaves(model, is_leaf=_has_mode)
    return any(_has_mode(leaf) and not leaf.inference for leaf in leaves)
