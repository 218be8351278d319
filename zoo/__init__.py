"""The zoo: torchvision's models in Equinox, with a jitted JAX face and a torch face."""

from . import layers as layers, models as models
from ._functional import (
    cross_entropy as cross_entropy,
    forward as forward,
    loss_and_grads as loss_and_grads,
    make_train_step as make_train_step,
    trainable as trainable,
)
from ._modes import eval_mode as eval_mode, is_training as is_training, train_mode as train_mode

__version__ = "0.1.0"
