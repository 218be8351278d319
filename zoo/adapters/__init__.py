"""The two faces of a zoo model: a jitted JAX one and a torch `nn.Module` one."""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._jax_face import JaxModel as JaxModel

if TYPE_CHECKING:
    from ._fused import fused_cross_entropy as fused_cross_entropy
    from ._torch_face import (
        TorchModel as TorchModel,
        ZooTorchFallbackWarning as ZooTorchFallbackWarning,
    )

# The torch face imports torch: loaded on first use.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "TorchModel": "._torch_face",
        "ZooTorchFallbackWarning": "._torch_face",
        "fused_cross_entropy": "._fused",
    },
)
