"""The zoo: torchvision's models in Equinox, with a jitted JAX face and a torch face."""

from . import layers as layers, models as models
from ._modes import eval_mode as eval_mode, is_training as is_training, train_mode as train_mode

__version__ = "0.1.0"
