"""Layers whose numerics and parameter names follow `torch.nn`."""

from ._activation import relu as relu
from ._conv import Conv2d as Conv2d, lowers_to_matmul as lowers_to_matmul
from ._dropout import Dropout as Dropout
from ._init import (
    kaiming_normal_fan_out as kaiming_normal_fan_out,
    torch_default_uniform as torch_default_uniform,
)
from ._linear import Linear as Linear
from ._norm import BatchNorm2d as BatchNorm2d
from ._pool import AdaptiveAvgPool2d as AdaptiveAvgPool2d, MaxPool2d as MaxPool2d
