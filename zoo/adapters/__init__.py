"""The two faces of a zoo model: a jitted JAX one and a torch `nn.Module` one."""

from ._jax_face import JaxModel as JaxModel
from ._torch_face import TorchModel as TorchModel
