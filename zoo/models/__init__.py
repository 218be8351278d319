"""Equinox models whose attribute paths are torchvision's state_dict keys.

Every architecture implements `ZooModel` (the model contract) and registers its variants in
its own file; importing this package registers them all.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import FeatureInfo as FeatureInfo, ZooModel as ZooModel
from ._cnn import SmallCNN as SmallCNN, cnn as cnn, small_cnn as small_cnn
from ._mobilenetv2 import MobileNetV2 as MobileNetV2, mobilenet_v2 as mobilenet_v2
from ._mobilenetv3 import (
    MobileNetV3 as MobileNetV3,
    mobilenet_v3_large as mobilenet_v3_large,
    mobilenet_v3_small as mobilenet_v3_small,
)
from ._resnet import (
    BasicBlock as BasicBlock,
    Bottleneck as Bottleneck,
    ResNet as ResNet,
    resnet18 as resnet18,
    resnet34 as resnet34,
    resnet50 as resnet50,
    resnet101 as resnet101,
    resnet152 as resnet152,
    resnext50_32x4d as resnext50_32x4d,
    resnext101_32x8d as resnext101_32x8d,
    resnext101_64x4d as resnext101_64x4d,
    wide_resnet50_2 as wide_resnet50_2,
    wide_resnet101_2 as wide_resnet101_2,
)

if TYPE_CHECKING:
    from ._cnn_torch import SmallCNNTorch as SmallCNNTorch

# The CNN's torch twin imports torch: loaded on first use.
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {"SmallCNNTorch": "._cnn_torch"})
