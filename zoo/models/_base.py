"""The model contract: what every zoo architecture implements (timm's interface, in Equinox).

Consumers (the faces, the converter, Hub export, Lightning, the CLI, the tests and the
benchmarks) use only what is declared here, never an architecture's field names. An
architecture provides its stages (`_forward_stages`), its head (`forward_head`), the paths
of its first convolution and classifier, and its `feature_info`; the rest follows.

Every call that runs BatchNorm returns the model beside its result, carrying the updated
buffers in train mode (`(logits, model)`), as the zoo's layers do.
"""

import abc
import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ..layers import Dropout, Linear, apply_layer, run_sequential, split_keys
from ._checks import check_image_batch


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One feature map an architecture offers (timm's `feature_info` entry).

    **Fields:**

    - `num_chs`: its channel count.
    - `reduction`: the input's height (and width) over the map's.
    - `module`: the torch module whose output it is (torchvision's name).
    """

    num_chs: int
    reduction: int
    module: str

    def as_dict(self) -> dict[str, Any]:
        """timm's form: `{"num_chs": ..., "reduction": ..., "module": ...}`."""
        return dataclasses.asdict(self)


def _is_none(x: object) -> bool:
    return x is None


def _get_path(model: Any, path: str) -> Any:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _normalise_indices(indices: int | Sequence[int] | None, count: int) -> tuple[int, ...]:
    """timm's rule: `None` all maps, an int `n` the last `n`, a sequence those (negative
    from the end). Sorted, so maps come out shallow to deep."""
    if indices is None:
        return tuple(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: this model has {count} feature maps")
        return tuple(range(count - indices, count))
    out = []
    for i in indices:
        if not -count <= i < count:
            raise ValueError(
                f"feature index {i} is out of range: this model has {count} feature maps "
                f"(indices 0..{count - 1}, or negative from the end)"
            )
        out.append(i % count)
    return tuple(sorted(set(out)))


def stage_ends(reductions: Sequence[int]) -> tuple[int, ...]:
    """The feature maps of a sequential trunk whose member `i` outputs at `reductions[i]`:
    the last member at each reduction (timm's stage ends), shallow to deep."""
    return tuple(
        i for i, r in enumerate(reductions) if i + 1 == len(reductions) or reductions[i + 1] != r
    )


def run_stages(
    layers: tuple,
    x: Float[Array, "batch height width channels"],
    *,
    ends: Sequence[int],
    depth: int,
    key: PRNGKeyArray | None,
) -> tuple[list[Array], tuple]:
    """Run a sequential trunk (NHWC) up to its `depth`-th feature map.

    **Arguments:**

    - `layers`: the trunk's members (torchvision's `features`).
    - `ends`: the members whose outputs are the feature maps (`feature_info` order).
    - `depth`: how many maps to compute; later members do not run.
    - `key`: split between the members (stochastic depth, dropout).

    **Returns:** `(maps, layers)`, the members carrying their updated buffers (those that
    did not run unchanged).
    """
    last = ends[depth - 1]
    keys = split_keys(key, len(layers))
    maps, new = [], list(layers)
    for i in range(last + 1):
        x, new[i] = apply_layer(layers[i], x, channels_last=True, key=keys[i])
        if i in ends:
            maps.append(x)
    return maps, tuple(new)


def classifier_head(
    classifier: tuple,
    x: Float[Array, "batch features"],
    *,
    pre_logits: bool,
    key: PRNGKeyArray | None,
) -> Float[Array, "batch out"]:
    """torchvision's `classifier` sequential on pooled features, whose last member is the
    final `Linear` (`None` after `reset_classifier(0)`). `pre_logits=True` stops before it
    and before a dropout right in front of it (timm's `pre_logits`)."""
    *body, final = classifier
    if pre_logits and body and isinstance(body[-1], Dropout):
        body = body[:-1]
    x, _ = run_sequential(tuple(body), x, key=key)
    return x if pre_logits or final is None else final(x)


class ZooModel(eqx.Module):
    """The interface every zoo architecture implements (timm's model API).

    **Class facts** (per architecture):

    - `first_conv_path`, `classifier_path`: attribute paths of the stem convolution and the
      final `Linear` (timm's `pretrained_cfg` `first_conv` and `classifier`, e.g. `"conv1"`
      and `"fc"`, or `"features.0.0"` and `"classifier.3"`); the converter adapts them for
      another `in_chans` or `num_classes`. (Suffixed: many torchvision models have a
      submodule named `classifier`.)
    - `head_modules`: the top-level fields `forward_head` uses (the classifier and any
      dropout before it); a frozen backbone keeps everything else in eval mode.
    - `global_pool`: timm's name for the pooling (`"avg"`).
    - `output_fmt`: the layout `forward_features` returns and `forward_head` reads (timm's
      term): `"NCHW"` (a feature map, the default), or `"NLC"` for token models (a ViT's
      `(batch, tokens, channels)`), whose `feature_info` maps are still NCHW grids.
    - `torch_layouts`: the `(input, output)` layouts of the top-level modules that torch's
      forward passes anything but NCHW maps or flat features (Swin's `features` and `norm`
      pass NHWC), for the torch face computing one of them on its own; `{}` by default.
    - `torch_feature_map`: turns the output of a `feature_info` module, as the torch face's
      fallback collects it with a hook, into the map `forward_intermediates` returns
      (identity by default; a ViT's drops the class token and makes its tokens a grid).
    - `torch_state_dict_metadata`: the torch `_metadata` (module versions) torchvision's
      `load_state_dict` demands of a state_dict that carries none, as a safetensors file
      never does (MNASNet refuses one without its version 2); `None` by default.

    **Fields:** `num_features` (the channels `forward_head` pools), `feature_info` (a
    `FeatureInfo` per map `forward_intermediates` offers), `out_indices` (`None`; set by
    `features_only`, the maps a call returns).

    **Derived:** `num_classes` and `in_chans` are read from the classifier and the stem, so
    they cannot go stale when either is replaced.
    """

    first_conv_path: eqx.AbstractClassVar[str]
    classifier_path: eqx.AbstractClassVar[str]
    head_modules: eqx.AbstractClassVar[tuple[str, ...]]
    global_pool: eqx.AbstractClassVar[str]
    num_features: eqx.AbstractVar[int]
    feature_info: eqx.AbstractVar[tuple[FeatureInfo, ...]]
    out_indices: tuple[int, ...] | None = eqx.field(static=True, default=None, kw_only=True)
    output_fmt: ClassVar[str] = "NCHW"
    torch_layouts: ClassVar[dict[str, tuple[str, str]]] = {}
    torch_state_dict_metadata: ClassVar[dict[str, dict[str, int]] | None] = None

    @classmethod
    def torchvision_code(cls, name: str, options: dict[str, Any]) -> list[str]:
        """Python lines that build torchvision's own `name` with `options` (the export's
        `num_classes` and `config_kwargs()`) as `model`, for an export's model card:
        `torchvision.models.<name>(...)`, or what an architecture whose builder refuses
        some of the options (it passes its own) writes instead."""
        args = ", ".join(f"{k}={v!r}" for k, v in options.items())
        return [f"model = torchvision.models.{name}({args})"]

    @classmethod
    def torch_feature_map(cls, output: Any, info: FeatureInfo) -> Any:
        """The map (a torch tensor, NCHW) of `info`'s module whose `output` a hook took."""
        del info
        return output

    # -- what an architecture implements ---------------------------------------------------
    @abc.abstractmethod
    def _forward_stages(
        self, x: Float[Array, "batch height width channels"], *, depth: int, key: PRNGKeyArray
    ) -> tuple[list[Array], Self]:
        """The outputs (NHWC) of the first `depth` maps of `feature_info` (stopping there),
        and the model with the buffers those stages updated."""

    @abc.abstractmethod
    def forward_head(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        pre_logits: bool = False,
        channels_last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch out"]:
        """Pool the final feature map `x` (NCHW; NHWC with `channels_last=True`) and apply
        the classifier: the logits, or with `pre_logits=True` what the classifier sees. With
        no classifier (`reset_classifier(0)`) the pooled features (`head_hidden_size`)."""

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """The classifier's output count; 0 without a classifier."""
        head = self.get_classifier()
        return 0 if head is None else int(head.out_features)

    @property
    def head_hidden_size(self) -> int:
        """What the classifier reads (`pre_logits`): `num_features`, unless the head has a
        hidden layer (timm's `head_hidden_size`)."""
        return self.num_features

    @property
    def in_chans(self) -> int:
        """The stem convolution's input channels."""
        conv = _get_path(self, self.first_conv_path)
        return int(conv.weight.shape[1] * conv.groups)

    def get_classifier(self) -> Linear | None:
        """The classifier (`None` after `reset_classifier(0)`)."""
        return _get_path(self, self.classifier_path)

    def reset_classifier(self, num_classes: int, *, key: PRNGKeyArray | None = None) -> Self:
        """The model with a new classifier for `num_classes` (torch's default init), or none
        for `num_classes=0`, when calls return the pooled features (as in timm).

        **Arguments:**

        - `num_classes`: the new output count, or 0.
        - `key`: PRNG key for the new weights (default `jax.random.key(0)`).
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        key = jax.random.key(0) if key is None else key
        head = Linear(self.head_hidden_size, num_classes, key=key) if num_classes else None
        return eqx.tree_at(lambda m: _get_path(m, m.classifier_path), self, head, is_leaf=_is_none)

    def features_only(self, out_indices: int | Sequence[int] | None = None) -> Self:
        """The model without its classifier, whose calls return the list of NCHW feature
        maps at `out_indices` (timm's `features_only=True`; default: every map of
        `feature_info`). Its `feature_info` lists those maps."""
        indices = _normalise_indices(out_indices, len(self.feature_info))
        model = self.reset_classifier(0)
        new = copy.copy(model)
        object.__setattr__(new, "out_indices", indices)  # a static field: no tree_at
        return new

    def config_kwargs(self) -> dict[str, Any]:
        """Constructor options a state_dict does not pin down but a rebuild needs (e.g. a
        dropout rate); recorded in exported configs. None by default."""
        return {}

    def fixed_input_size(self) -> tuple[int, int] | None:
        """The `(height, width)` the model was built for, where it computes at no other size
        (a ViT's `image_size`, MaxViT's `input_size`; timm's `fixed_input_size`); `None`
        for a model that takes any size. Exports record it as the input size."""
        return None

    @property
    def selected_feature_info(self) -> tuple[FeatureInfo, ...]:
        """`feature_info` of the maps a call returns (all of them unless `features_only`)."""
        if self.out_indices is None:
            return self.feature_info
        return tuple(self.feature_info[i] for i in self.out_indices)

    # -- what the contract builds from them ------------------------------------------------
    def _check(self, x: Array) -> None:
        check_image_batch(x, self.in_chans, type(self).__name__)

    def forward_features(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch features fh fw"], Self]:
        """The final feature map before pooling (NCHW), and the model with updated buffers."""
        self._check(x)
        maps, model = self._forward_stages(
            x.transpose(0, 2, 3, 1), depth=len(self.feature_info), key=key
        )
        return maps[-1].transpose(0, 3, 1, 2), model

    def forward_intermediates(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Any, Self]:
        """timm's `forward_intermediates`: the NCHW maps at `indices` (`None` all, `n` the
        last `n`, or a sequence of indices into `feature_info`).

        **Returns:** `(intermediates, model)` with `intermediates_only=True`, else
        `((final_features, intermediates), model)`; the model carries updated buffers.
        `stop_early` stops at the deepest map asked for (then `final_features` is that map).
        """
        self._check(x)
        wanted = _normalise_indices(indices, len(self.feature_info))
        depth = wanted[-1] + 1 if (stop_early or intermediates_only) else len(self.feature_info)
        maps, model = self._forward_stages(x.transpose(0, 2, 3, 1), depth=depth, key=key)
        intermediates = [maps[i].transpose(0, 3, 1, 2) for i in wanted]
        if intermediates_only:
            return intermediates, model
        return (maps[-1].transpose(0, 3, 1, 2), intermediates), model

    def __call__(
        self, x: Float[Array, "batch channels height width"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Any, Self]:
        """Logits (or, after `features_only`, the list of feature maps) and the model with
        updated buffers. `key` drives dropout in train mode."""
        self._check(x)
        if self.out_indices is not None:
            return self.forward_intermediates(
                x, indices=self.out_indices, intermediates_only=True, key=key
            )
        # NCHW outside, NHWC inside: XLA:CPU convolves in NHWC, so an NCHW graph pays a
        # transpose copy around every convolution (21% of a 224x224 train step).
        stage_key, head_key = (None, None) if key is None else jax.random.split(key)
        maps, model = self._forward_stages(
            x.transpose(0, 2, 3, 1), depth=len(self.feature_info), key=stage_key
        )
        return model.forward_head(maps[-1], channels_last=True, key=head_key), model


__all__ = ["FeatureInfo", "ZooModel", "classifier_head", "run_stages", "stage_ends"]


class ConvHeadModel(ZooModel):
    """A model whose `feature_info` maps end before a final convolution, the "head"
    (timm's `conv_head`): `forward_features` returns the head's output, which the classifier
    pools; the maps (`features_only`, `forward_intermediates(intermediates_only=True)`) are
    the stages' and never run the head, as in timm. EfficientNet, ShuffleNet V2 and MNASNet
    are built so."""

    @abc.abstractmethod
    def _forward_stages(
        self,
        x: Float[Array, "batch height width channels"],
        *,
        depth: int,
        key: PRNGKeyArray | None = None,
        head: bool | None = None,
    ) -> tuple[list[Array], Self]:
        """As `ZooModel`'s; at full depth (unless `head=False`) one more map after the
        `feature_info` maps: the head's output, which `forward_features` (the contract's
        last map) returns."""

    def forward_intermediates(
        self,
        x: Float[Array, "batch channels height width"],
        *,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Any, Self]:
        """`ZooModel.forward_intermediates`; with `intermediates_only=True` (as a
        `features_only` model's calls) the head does not run, so its BatchNorm buffers stay."""
        if not intermediates_only:
            return super().forward_intermediates(x, indices=indices, stop_early=stop_early, key=key)
        self._check(x)
        wanted = _normalise_indices(indices, len(self.feature_info))
        maps, model = self._forward_stages(
            x.transpose(0, 2, 3, 1), depth=wanted[-1] + 1, key=key, head=False
        )
        return [maps[i].transpose(0, 3, 1, 2) for i in wanted], model


def head_stage_ends(
    ends: Sequence[int], depth: int, head: bool | None, count: int
) -> tuple[tuple[int, ...], int]:
    """A `ConvHeadModel` trunk's `(ends, depth)` for `run_stages`: the `feature_info` maps'
    member indices `ends`, and, at full depth (or with `head=True`; never with
    `head=False`), the head, the trunk's last of `count` members, as one more map."""
    if head is None:
        head = depth == len(ends)
    if head:
        return (*ends, count - 1), len(ends) + 1
    return tuple(ends), depth
