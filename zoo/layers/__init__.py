"""Layers whose numerics and parameter names follow `torch.nn`."""

from ._activation import (
    GELU as GELU,
    Hardsigmoid as Hardsigmoid,
    Hardswish as Hardswish,
    ReLU as ReLU,
    ReLU6 as ReLU6,
    Sigmoid as Sigmoid,
    SiLU as SiLU,
    Tanh as Tanh,
    gelu as gelu,
    hardsigmoid as hardsigmoid,
    hardswish as hardswish,
    relu as relu,
    relu6 as relu6,
    silu as silu,
)
from ._attention import (
    dot_product_attention as dot_product_attention,
    relative_position_index as relative_position_index,
)
from ._conv import (
    Conv2d as Conv2d,
    is_depthwise as is_depthwise,
    lowers_to_matmul as lowers_to_matmul,
)
from ._dropout import Dropout as Dropout
from ._init import (
    kaiming_normal_fan_out as kaiming_normal_fan_out,
    normal as normal,
    torch_default_uniform as torch_default_uniform,
    uniform as uniform,
    with_initial_weight as with_initial_weight,
    zeros as zeros,
)
from ._layernorm import (
    LayerNorm as LayerNorm,
    LayerNorm2d as LayerNorm2d,
    layer_norm as layer_norm,
)
from ._linear import Linear as Linear
from ._norm import BatchNorm2d as BatchNorm2d
from ._ops import (
    SqueezeExcitation as SqueezeExcitation,
    StochasticDepth as StochasticDepth,
    conv2d_kaiming as conv2d_kaiming,
    conv_norm_activation as conv_norm_activation,
)
from ._pool import (
    AdaptiveAvgPool2d as AdaptiveAvgPool2d,
    AvgPool2d as AvgPool2d,
    MaxPool2d as MaxPool2d,
    avg_pool2d as avg_pool2d,
)
from ._sequential import (
    Layer as Layer,
    NamedSequential as NamedSequential,
    apply_layer as apply_layer,
    run_sequential as run_sequential,
    split_keys as split_keys,
)
