"""Switching a model between train and eval mode, as `nn.Module.train()`/`.eval()` do.

The `inference` flags are ordinary leaves, as in Equinox's own layers, so these are
`eqx.nn.inference_mode` under torch's names, and they switch `eqx.nn` layers too.
"""

from typing import TypeVar

import equinox as eqx
import jax

from .layers._flags import inference_flag

M = TypeVar("M")


def _has_mode(node: object) -> bool:
    return hasattr(node, "inference") and not isinstance(node, type)


def eval_mode(model: M) -> M:
    """The model with every BatchNorm and Dropout (the zoo's and `eqx.nn`'s) in eval mode
    (`inference=True`)."""
    return eqx.nn.inference_mode(model, True)


def train_mode(model: M) -> M:
    """The model with every BatchNorm and Dropout in train mode (`inference=False`)."""
    return eqx.nn.inference_mode(model, False)


def is_training(model: object) -> bool:
    """True if any layer of the model is in train mode."""
    leaves = jax.tree_util.tree_leaves(model, is_leaf=_has_mode)
    layers = [leaf for leaf in leaves if _has_mode(leaf)]
    return any(not inference_flag(layer.inference, type(layer).__name__) for layer in layers)
