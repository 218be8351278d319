"""AlexNet mirroring `torchvision.models.alexnet`, and the skeleton it shares with VGG and
SqueezeNet: a `features` sequential, then a head.

`features` and `classifier` are torchvision's `nn.Sequential`s as tuples (`features.3.weight`,
`classifier.1.weight`); a call returns `(logits, model)` as for every zoo model.
"""

from typing import ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._registry import register
from ..layers import AdaptiveAvgPool2d, Conv2d, Dropout, Linear, MaxPool2d, ReLU
from ._base import FeatureInfo, ZooModel, classifier_head, run_stages, stage_ends
from ._mobilenetv2 import _keys


def trunk_feature_info(features: tuple) -> tuple[FeatureInfo, ...]:
    """The feature maps of a `features` trunk: the last member at each reduction, i.e. the
    map in front of each max-pool, and the trunk's output (timm's choice for VGG). Each
    member's channels and reduction are read from the layers (a convolution or pool
    multiplies the reduction by its stride; a member with `out_channels` sets the width)."""
    channels, reductions, width, reduction = [], [], 0, 1
    for layer in features:
        if isinstance(layer, Conv2d | MaxPool2d):
            reduction *= layer.stride[0]
        width = getattr(layer, "out_channels", width)
        channels.append(width)
        reductions.append(reduction)
    return tuple(
        FeatureInfo(channels[i], reductions[i], f"features.{i}") for i in stage_ends(reductions)
    )


class SequentialTrunk(ZooModel):
    """A torchvision convnet whose trunk is one `features` sequential (AlexNet, VGG,
    SqueezeNet): its feature maps are members of it (`trunk_feature_info`), and the
    classifier sequential holds the dropout."""

    features: eqx.AbstractVar[tuple]
    classifier: eqx.AbstractVar[tuple]

    def config_kwargs(self) -> dict[str, float]:
        return {"dropout": next(float(m.p) for m in self.classifier if isinstance(m, Dropout))}

    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key=None
    ) -> tuple[list[Array], Self]:
        ends = [int(info.module.split(".")[1]) for info in self.feature_info]
        maps, features = run_stages(self.features, x, ends=ends, depth=depth, key=key)
        return maps, eqx.tree_at(lambda m: m.features, self, features)


class PooledMLPTrunk(SequentialTrunk):
    """AlexNet's and VGG's head: an adaptive average pool to a fixed grid, flattened in
    torch's (channel, row, column) order, then an MLP classifier with dropout."""

    avgpool: eqx.AbstractVar[AdaptiveAvgPool2d]

    @property
    def head_hidden_size(self) -> int:
        """The MLP's width (4096): what the final `Linear` reads."""
        return next(m.out_features for m in reversed(self.classifier[:-1]) if isinstance(m, Linear))

    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        x = self.avgpool(x, channels_last=channels_last)
        if channels_last:
            x = x.transpose(0, 3, 1, 2)  # the first Linear's columns are torch's NCHW flatten
        x = x.reshape(x.shape[0], -1)
        return classifier_head(self.classifier, x, pre_logits=pre_logits, key=key)


class AlexNet(PooledMLPTrunk):
    """torchvision's `AlexNet` (the one-GPU variant of "One weird trick"), as an Equinox
    module over NCHW batches; torch's default initialisation, as torchvision leaves it.

    **Arguments:**

    - `num_classes`, `dropout`: as in torchvision (`num_classes=0`: no final `Linear`, calls
      return the 4096 pre-logits).
    - `in_chans`: input channels (3 in torchvision).
    - `key`: PRNG key for the initialisation.

    Inputs need at least 63x63 pixels (torchvision's `min_size`).
    """

    first_conv_path: ClassVar[str] = "features.0"
    classifier_path: ClassVar[str] = "classifier.6"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    global_pool: ClassVar[str] = "avg"
    features: tuple
    avgpool: AdaptiveAvgPool2d
    classifier: tuple
    num_features: int = eqx.field(static=True)
    feature_info: tuple[FeatureInfo, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.5,
        in_chans: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        keys = _keys(key)
        self.features = (
            Conv2d(in_chans, 64, 11, 4, 2, key=next(keys)),
            ReLU(),
            MaxPool2d(3, 2),
            Conv2d(64, 192, 5, padding=2, key=next(keys)),
            ReLU(),
            MaxPool2d(3, 2),
            Conv2d(192, 384, 3, padding=1, key=next(keys)),
            ReLU(),
            Conv2d(384, 256, 3, padding=1, key=next(keys)),
            ReLU(),
            Conv2d(256, 256, 3, padding=1, key=next(keys)),
            ReLU(),
            MaxPool2d(3, 2),
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        final = Linear(4096, num_classes, key=next(keys)) if num_classes else None
        self.classifier = (
            Dropout(dropout),
            Linear(256 * 6 * 6, 4096, key=next(keys)),
            ReLU(),
            Dropout(dropout),
            Linear(4096, 4096, key=next(keys)),
            ReLU(),
            final,
        )
        self.num_features = 256
        self.feature_info = trunk_feature_info(self.features)


# At 63x63 (torchvision's smallest input) every map is size // reduction; at 64 the stem
# gives 15, not 16.
@register(
    AlexNet,
    torch_builder="torchvision",
    torchvision_weights="AlexNet_Weights",
    test_cfg={"input_size": (3, 63, 63), "any_size": False, "no_dropout": {"dropout": 0.0}},
)
def alexnet(*, key: PRNGKeyArray | None = None, **kwargs) -> AlexNet:
    """AlexNet (torchvision `alexnet`). `key` defaults to `jax.random.key(0)`."""
    return AlexNet(key=jax.random.key(0) if key is None else key, **kwargs)
