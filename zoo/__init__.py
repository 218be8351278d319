"""The zoo: torchvision's models in Equinox, with a jitted JAX face and a torch face.

`import zoo` imports JAX, not torch: the torch-facing names (`TorchModel`, `to_torchvision`,
`WeightsError`, `push_to_hub`, `save_pretrained`, `zoo.hub`) import it on first use, as does
`zoo.load` when it reads weights or builds a torch face.
"""

from typing import TYPE_CHECKING

from . import adapters as adapters, layers as layers, models as models
from ._compile import (
    CPU_COMPILER_OPTIONS as CPU_COMPILER_OPTIONS,
    enable_compilation_cache as enable_compilation_cache,
    fusion_barrier as fusion_barrier,
    jit as jit,
)
from ._functional import (
    cross_entropy as cross_entropy,
    forward as forward,
    loss_and_grads as loss_and_grads,
    make_train_step as make_train_step,
    trainable as trainable,
)
from ._lazy import lazy_attributes
from ._load import cast_floats as cast_floats, load as load, to_torchvision as to_torchvision
from ._modes import eval_mode as eval_mode, is_training as is_training, train_mode as train_mode
from ._registry import (
    ModelInfo as ModelInfo,
    get_model_info as get_model_info,
    list_models as list_models,
    register_model as register_model,
)
from .adapters import JaxModel as JaxModel

if TYPE_CHECKING:
    from . import hub as hub
    from ._sources import WeightsError as WeightsError
    from .adapters import (
        TorchModel as TorchModel,
        ZooTorchFallbackWarning as ZooTorchFallbackWarning,
        fused_cross_entropy as fused_cross_entropy,
    )
    from .hub import push_to_hub as push_to_hub, save_pretrained as save_pretrained

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "WeightsError": "._sources",
        "TorchModel": ".adapters",
        "ZooTorchFallbackWarning": ".adapters",
        "fused_cross_entropy": ".adapters",
        "hub": ".hub",
        "push_to_hub": ".hub",
        "save_pretrained": ".hub",
    },
)

__version__ = "0.1.0"
