"""A small CNN for images of any size (RGB or grayscale), with BatchNorm and dropout.

Its torch twin, `SmallCNNTorch` in `_cnn_torch.py`, has the same state_dict keys; the two are
checked against each other in the tests like the ResNets are against torchvision.
"""

from typing import ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, relu
from ._base import FeatureInfo, ZooModel


class SmallCNN(ZooModel):
    """Three conv-BN-ReLU-max-pool stages (32, 64, 128 channels), global average pooling,
    dropout and a linear classifier.

    Why a BatchNorm momentum of 0.3 (torch's default is 0.1): on short runs the running
    statistics that eval mode uses must keep up with weights that move fast. A plain Adam
    loop (lr 2e-3, batch 64, 6 epochs) on scikit-learn's digits at 32x32 reaches 0.98-0.99
    held-out with it, 0.90 with 0.1 (see docs/design.md).

    **Arguments:**

    - `num_classes`: size of the classifier output (10; 0: no classifier, calls return the
      128 pooled features).
    - `in_chans`: 3 for RGB, 1 for grayscale.
    - `drop_rate`: dropout probability before the classifier (0.25).
    - `bn_momentum`: the BatchNorm layers' momentum, torch's convention (0.3).
    - `key`: PRNG key for torch's default initialisation (defaults to `jax.random.key(0)`).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)` as for the ResNets; the
    key is needed in train mode for dropout.
    """

    first_conv_path: ClassVar[str] = "conv1"
    classifier_path: ClassVar[str] = "fc"
    head_modules: ClassVar[tuple[str, ...]] = ("dropout", "fc")
    global_pool: ClassVar[str] = "avg"
    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    conv3: Conv2d
    bn3: BatchNorm2d
    pool1: MaxPool2d
    pool2: MaxPool2d
    pool3: MaxPool2d
    avgpool: AdaptiveAvgPool2d
    dropout: Dropout
    fc: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.25,
        bn_momentum: float = 0.3,
        *,
        key: PRNGKeyArray | None = None,
    ):
        k1, k2, k3, k4 = jax.random.split(jax.random.key(0) if key is None else key, 4)
        self.conv1 = Conv2d(in_chans, 32, 3, padding=1, bias=False, key=k1)
        self.bn1 = BatchNorm2d(32, momentum=bn_momentum)
        self.conv2 = Conv2d(32, 64, 3, padding=1, bias=False, key=k2)
        self.bn2 = BatchNorm2d(64, momentum=bn_momentum)
        self.conv3 = Conv2d(64, 128, 3, padding=1, bias=False, key=k3)
        self.bn3 = BatchNorm2d(128, momentum=bn_momentum)
        self.pool1, self.pool2, self.pool3 = MaxPool2d(2), MaxPool2d(2), MaxPool2d(2)
        self.avgpool = AdaptiveAvgPool2d()
        self.dropout = Dropout(drop_rate)
        self.fc = Linear(128, num_classes, key=k4) if num_classes else None
        self.num_features = 128
        self.feature_info = tuple(
            FeatureInfo(c, 2 ** (i + 1), f"pool{i + 1}") for i, c in enumerate((32, 64, 128))
        )

    def config_kwargs(self) -> dict[str, float]:
        return {"drop_rate": float(self.dropout.p), "bn_momentum": float(self.bn1.momentum)}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        del key  # the stages hold no randomness
        nhwc = {"channels_last": True}
        stages = ((self.conv1, self.bn1, self.pool1), (self.conv2, self.bn2, self.pool2))
        stages += ((self.conv3, self.bn3, self.pool3),)
        maps, norms = [], []
        for conv, bn, pool in stages:
            if len(maps) < depth:
                x, bn = bn(conv(x, **nhwc), **nhwc)
                x = pool(relu(x), **nhwc)
                maps.append(x)
            norms.append(bn)
        return maps, eqx.tree_at(lambda m: (m.bn1, m.bn2, m.bn3), self, tuple(norms))

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        x = self.avgpool(x, channels_last=channels_last).reshape(x.shape[0], -1)
        x = self.dropout(x, key=key)
        return x if pre_logits or self.fc is None else self.fc(x)


def _small_cnn_torch(**kwargs):
    from ._cnn_torch import SmallCNNTorch  # imports torch: only when a torch twin is built

    return SmallCNNTorch(**kwargs)


@register(
    SmallCNN,
    torch_builder=_small_cnn_torch,
    test_cfg={"input_size": (3, 32, 32), "no_dropout": {"drop_rate": 0.0}},
    num_classes=10,
    input_size=(3, 32, 32),
    crop_pct=1.0,
    mean=(0.5,),
    std=(0.5,),
)
def cnn(*, key: PRNGKeyArray | None = None, **kwargs) -> SmallCNN:
    """The zoo's small CNN (see `SmallCNN`)."""
    return SmallCNN(key=key, **kwargs)
