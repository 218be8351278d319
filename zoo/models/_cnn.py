"""A small CNN for 32x32 images (RGB or grayscale): the conventional CNN of the JAX tutorials
(conv-pool twice, flatten, dense, dense), with BatchNorm after each convolution.

Its torch twin, `SmallCNNTorch` in `_cnn_torch.py`, has the same state_dict keys; the two are
checked against each other in the tests like the ResNets are against torchvision.
"""

from typing import ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, relu
from ._base import FeatureInfo, ZooModel

_SIZE = 32  # the input side the classifier's flattened 8x8 map implies


class SmallCNN(ZooModel):
    """Two conv-BN-ReLU-max-pool stages (32 and 64 channels), then the 64x8x8 map flattened
    into a 256-unit hidden layer, dropout and a linear classifier.

    Why this design: a plain Adam loop (lr 2e-3, batch 64, 6 epochs) on scikit-learn's digits
    at 32x32 reaches 0.97-0.98 held-out with it, where global average pooling of a deeper map
    reached 0.72-0.83 (its running statistics lagged the weights; see docs/design.md).

    **Arguments:**

    - `num_classes`: size of the classifier output (10; 0: no classifier, calls return the
      256 hidden features).
    - `in_chans`: 3 for RGB, 1 for grayscale.
    - `drop_rate`: dropout probability before the classifier (0.25).
    - `key`: PRNG key for torch's default initialisation (defaults to `jax.random.key(0)`).

    **Returns** (of a call `model(x, key=key)`): `(logits, model)` as for the ResNets; the
    key is needed in train mode for dropout. Inputs must be 32x32.
    """

    first_conv: ClassVar[str] = "conv1"
    classifier: ClassVar[str] = "fc"
    # `fc1` belongs to the backbone: a frozen backbone trains only `dropout` -> `fc`.
    head_modules: ClassVar[tuple[str, ...]] = ("dropout", "fc")
    global_pool: ClassVar[str] = ""  # timm's name for "flatten, no pooling"
    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    pool1: MaxPool2d
    pool2: MaxPool2d
    fc1: Linear
    dropout: Dropout
    fc: Linear | None
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.25,
        *,
        key: PRNGKeyArray | None = None,
    ):
        k1, k2, k3, k4 = jax.random.split(jax.random.key(0) if key is None else key, 4)
        self.conv1 = Conv2d(in_chans, 32, 3, padding=1, bias=False, key=k1)
        self.bn1 = BatchNorm2d(32)
        self.conv2 = Conv2d(32, 64, 3, padding=1, bias=False, key=k2)
        self.bn2 = BatchNorm2d(64)
        self.pool1 = MaxPool2d(2)
        self.pool2 = MaxPool2d(2)
        self.fc1 = Linear(64 * 8 * 8, 256, key=k3)
        self.dropout = Dropout(drop_rate)
        self.fc = Linear(256, num_classes, key=k4) if num_classes else None
        self.num_features = 64
        self.feature_info = (FeatureInfo(32, 2, "pool1"), FeatureInfo(64, 4, "pool2"))

    @property
    def head_hidden_size(self) -> int:
        return self.fc1.out_features

    def config_kwargs(self) -> dict[str, float]:
        return {"drop_rate": float(self.dropout.p)}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        del key  # the stages hold no randomness
        nhwc = {"channels_last": True}
        x, bn1 = self.bn1(self.conv1(x, **nhwc), **nhwc)
        maps, bn2 = [self.pool1(relu(x), **nhwc)], self.bn2
        if depth > 1:
            x, bn2 = self.bn2(self.conv2(maps[0], **nhwc), **nhwc)
            maps.append(self.pool2(relu(x), **nhwc))
        return maps, eqx.tree_at(lambda m: (m.bn1, m.bn2), self, (bn1, bn2))

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        if channels_last:
            x = x.transpose(0, 3, 1, 2)  # flatten in torch's (C, H, W) order
        if x.shape[1:] != (64, 8, 8):
            raise ValueError(
                f"SmallCNN's classifier reads a 64x8x8 map, from {_SIZE}x{_SIZE} images; got a "
                f"map of shape {tuple(x.shape[1:])}. Resize the images to {_SIZE}x{_SIZE}."
            )
        x = relu(self.fc1(x.reshape(x.shape[0], -1)))
        x = self.dropout(x, key=key)
        return x if pre_logits or self.fc is None else self.fc(x)


def _small_cnn_torch(**kwargs):
    from ._cnn_torch import SmallCNNTorch  # imports torch: only when a torch twin is built

    return SmallCNNTorch(**kwargs)


@register(
    SmallCNN,
    torch_builder=_small_cnn_torch,
    test_cfg={"input_size": (3, _SIZE, _SIZE), "any_size": False, "no_dropout": {"drop_rate": 0.0}},
    num_classes=10,
    input_size=(3, _SIZE, _SIZE),
    crop_pct=1.0,
    mean=(0.5,),
    std=(0.5,),
)
def cnn(*, key: PRNGKeyArray | None = None, **kwargs) -> SmallCNN:
    """The zoo's small CNN (see `SmallCNN`)."""
    return SmallCNN(key=key, **kwargs)


small_cnn = cnn  # the builder's name before the registry named it
