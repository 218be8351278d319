"""A small CNN for 32x32 images (RGB or grayscale), with BatchNorm and dropout.

Its torch twin, `SmallCNNTorch` in `_cnn_torch.py`, has the same state_dict keys; the two are
checked against each other in the tests like the ResNets are against torchvision.
"""

from typing import ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ..layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, relu
from ._checks import check_image_batch


class SmallCNN(eqx.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels; 2x2 max-pool after the last two),
    global average pooling, dropout and a linear classifier.

    **Arguments:**

    - `num_classes`: size of the classifier output (10).
    - `in_chans`: 3 for RGB, 1 for grayscale.
    - `drop_rate`: dropout probability before the classifier (0.25).
    - `key`: PRNG key for torch's default initialisation (defaults to `jax.random.key(0)`).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)` as for the ResNets; the
    key is needed in train mode for dropout.
    """

    # timm's pretrained_cfg names: where the converter adapts in_chans and num_classes.
    first_conv: ClassVar[str] = "conv1"
    classifier: ClassVar[str] = "fc"
    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    conv3: Conv2d
    bn3: BatchNorm2d
    pool: MaxPool2d
    avgpool: AdaptiveAvgPool2d
    dropout: Dropout
    fc: Linear
    in_chans: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.25,
        *,
        key: PRNGKeyArray | None = None,
    ):
        k1, k2, k3, k4 = jax.random.split(jax.random.key(0) if key is None else key, 4)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = 128
        self.conv1 = Conv2d(in_chans, 32, 3, padding=1, bias=False, key=k1)
        self.bn1 = BatchNorm2d(32)
        self.conv2 = Conv2d(32, 64, 3, padding=1, bias=False, key=k2)
        self.bn2 = BatchNorm2d(64)
        self.conv3 = Conv2d(64, 128, 3, padding=1, bias=False, key=k3)
        self.bn3 = BatchNorm2d(128)
        self.pool = MaxPool2d(2)
        self.avgpool = AdaptiveAvgPool2d()
        self.dropout = Dropout(drop_rate)
        self.fc = Linear(128, num_classes, key=k4)

    def __call__(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "batch num_classes"], Self]:
        check_image_batch(x, self.in_chans, "SmallCNN")
        nhwc = {"channels_last": True}  # NHWC inside, as in `ResNet`
        x = x.transpose(0, 2, 3, 1)
        x, bn1 = self.bn1(self.conv1(x, **nhwc), **nhwc)
        x, bn2 = self.bn2(self.conv2(relu(x), **nhwc), **nhwc)
        x = self.pool(relu(x), **nhwc)
        x, bn3 = self.bn3(self.conv3(x, **nhwc), **nhwc)
        x = self.pool(relu(x), **nhwc)
        x = self.avgpool(x, **nhwc).reshape(x.shape[0], -1)
        logits = self.fc(self.dropout(x, key=key))
        return logits, eqx.tree_at(lambda m: (m.bn1, m.bn2, m.bn3), self, (bn1, bn2, bn3))


def small_cnn(*, key: PRNGKeyArray | None = None, **kwargs) -> SmallCNN:
    """The zoo's small CNN (see `SmallCNN`)."""
    return SmallCNN(key=key, **kwargs)
