"""`zoo.load`: build a registered architecture, fill it with weights, and give it a face."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

import weights_convert as wc

from ._compile import enable_compilation_cache
from ._modes import eval_mode
from ._registry import ModelInfo, get_model_info
from .adapters import JaxModel

if TYPE_CHECKING:
    import torch

    from .adapters import TorchModel

M = TypeVar("M")
Framework = Literal["jax", "torch", "equinox"]
# Beside every tag of the model's torchvision weights enum (`ModelInfo.weight_tags`).
DEFAULT_TAGS = ("torchvision", "DEFAULT")


def _torchvision_tag(info: ModelInfo, weights: Any) -> str | None:
    """The torchvision weights tag `weights` names (`"DEFAULT"`, `"IMAGENET1K_V2"`,
    `"ResNet50_Weights.IMAGENET1K_V2"` or the enum member itself), or `None` if it names none
    (a path). A tag for a model without torchvision weights, or one its enum lacks, is an
    error that lists the tags."""
    from ._sources import WeightsError  # torch

    if hasattr(weights, "url") and hasattr(weights, "transforms"):  # a weights enum member
        enum_name, tag = type(weights).__name__, weights.name
    elif isinstance(weights, str):
        enum_name, _, tag = weights.rpartition(".")
        if not (enum_name.endswith("_Weights") or not enum_name):
            return None  # a file name such as "model.safetensors"
        if not enum_name and not (tag in DEFAULT_TAGS or tag.isupper()):
            return None
    else:
        return None
    if info.torchvision_weights is None:
        raise WeightsError(f"torchvision has no pretrained weights for {info.name!r}")
    if enum_name and enum_name != info.torchvision_weights:
        raise WeightsError(
            f"{enum_name} are not {info.name!r} weights; its enum is {info.torchvision_weights}"
        )
    tags = info.weight_tags()
    if tag not in DEFAULT_TAGS and tag not in tags:
        raise WeightsError(
            f"{info.torchvision_weights} has no tag {tag!r}; its tags are "
            f"{', '.join(dict.fromkeys((*DEFAULT_TAGS, *tags)))}"
        )
    return tag


def resolve_weights(
    info: ModelInfo, weights: Any, kwargs: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], bool]:
    """A state_dict from any supported source (checkpoint wrappers and `module.`/Lightning
    prefixes removed), and whether the zoo owns its tensors (a file it just read: they can
    be shared without a copy) or the caller does (copy them). A torchvision checkpoint goes
    through the architecture's `torchvision_checkpoint`, which may set options in
    `kwargs`."""
    from ._sources import canonical_state_dict, read_weights_file, torchvision_state_dict

    if isinstance(weights, Mapping):
        return canonical_state_dict(weights, "the state_dict passed as weights="), False
    if isinstance(weights, str) and weights.startswith(("hf-hub:", "local-dir:")):
        from .hub import source_state_dict

        return source_state_dict(weights, info), True
    tag = _torchvision_tag(info, weights)
    if tag is not None:
        state_dict = torchvision_state_dict(info.torchvision_weights, tag)
        if info.torchvision_checkpoint is not None:
            state_dict = info.torchvision_checkpoint(state_dict, {} if kwargs is None else kwargs)
        return state_dict, True
    if isinstance(weights, str | os.PathLike):
        return read_weights_file(weights), True
    raise TypeError(
        "weights must be None, a torch state_dict, a path to a .safetensors/.pth/.pt file, "
        "'DEFAULT' or a tag of the model's torchvision weights enum (zoo info NAME lists "
        f"them); got {type(weights).__name__}"
    )


def _infer(state_dict: Mapping[str, torch.Tensor], info: ModelInfo, kwargs: dict) -> None:
    # Without an explicit num_classes/in_chans, take the checkpoint's own (timm asks for them
    # explicitly; inferring spares users a mismatch error for a fine-tuned checkpoint).
    for count, (value, _) in info.counts_in(state_dict).items():
        kwargs.setdefault(count, value)


def check_counts(num_classes: Any = None, in_chans: Any = None) -> None:
    """Refuse a `num_classes` that is no int >= 0 or an `in_chans` that is no int >= 1
    (`None` is fine: the checkpoint's, or the default)."""
    for name, value, minimum, meaning in (
        ("num_classes", num_classes, 0, "0 for a model without classifier"),
        ("in_chans", in_chans, 1, "the images' channels: 3 for RGB, 1 for grayscale"),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} ({meaning})")


def cast_floats(model: M, dtype: Any) -> M:
    """`model` with its floating arrays cast to `dtype` (integer counters kept). The
    BatchNorm statistics, stored as bits (`zoo.layers.BatchNorm2d`), become float64 in a
    float64 model and stay float32 otherwise, as torch keeps statistics in at least float32
    under autocast. Host arrays are cast in NumPy: eager `astype` would compile one XLA
    program per shape.

    **Arguments:**

    - `model`: any pytree holding a zoo model's arrays.
    - `dtype`: the floating dtype (`jnp.float64`, `jnp.bfloat16`, ...).

    **Returns:** the model with the cast arrays.
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    stat_dtype = jnp.dtype(jnp.float64 if dtype == jnp.float64 else jnp.float32)

    def cast(a: Any, to: Any) -> Any:
        if isinstance(a, jax.core.Tracer):
            return a.astype(to)
        return np.asarray(a).astype(to)

    stored = wc.named_arrays(model)
    new = {}
    for name, value in wc.named_values(model).items():
        if wc.statistic_float_dtype(name, stored[name]) is not None:
            if value.dtype != stat_dtype:
                value = cast(value, stat_dtype)
                bits = jnp.int64 if stat_dtype == jnp.float64 else jnp.int32
                new[name] = (
                    jax.lax.bitcast_convert_type(value, bits)
                    if isinstance(value, jax.core.Tracer)
                    else jax.device_put(value.view(bits))
                )
        elif eqx.is_inexact_array(value) and value.dtype != dtype:
            value = cast(value, dtype)
            new[name] = value if isinstance(value, jax.core.Tracer) else jax.device_put(value)
    return wc.replace_arrays(model, new)


def load(
    name: str,
    *,
    framework: Framework = "jax",
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    strict: bool = True,
    key: PRNGKeyArray | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    dtype: Any = None,
    **kwargs: Any,
) -> Any:
    """Build a zoo model, optionally with weights, as a JAX or a torch object.

    **Arguments:**

    - `name`: a registered architecture (`zoo.list_models()`).
    - `framework`: `"jax"` (a `JaxModel`: jitted calls, train steps), `"torch"` (a
      `TorchModel`, an `nn.Module`), or `"equinox"` (the bare Equinox module, eval mode).
    - `weights`: `None` (fresh initialisation from `key`), a torch state_dict, a path to a
      `.safetensors`/`.pth`/`.pt` file (checkpoint wrappers and `module.`/Lightning prefixes
      removed), or `"DEFAULT"`, any tag of the model's torchvision weights enum
      (`"IMAGENET1K_V2"`, `"ResNet50_Weights.IMAGENET1K_V2"`, or the enum member itself) for
      torchvision's own checkpoint (downloaded through torch's hub cache).
    - `num_classes`, `in_chans`: as timm: a different `num_classes` than the checkpoint's
      re-initialises the classifier, a different `in_chans` adapts the first conv. When not
      given, the checkpoint's are used. An int >= 0 (0: no classifier) and an int >= 1.
    - `strict`: raise on any key, shape or dtype that does not fit (see `weights_convert`).
      With `strict=False` what fits is loaded and a `weights_convert.LoadWarning` (its
      `.report` the full `LoadReport`) says what did not; never silently.
    - `key`: PRNG key for the initialisation (default `jax.random.key(0)`).
    - `features_only`, `out_indices`: as timm: a model without classifier whose calls
      return the list of NCHW feature maps at `out_indices` (default all; see
      `ZooModel.features_only` and `feature_info`).
    - `dtype`: the floating dtype of the model's arrays (`jnp.bfloat16`, `jnp.float16`;
      default float32); checkpoints are cast to it, as torch's `load_state_dict` casts.
    - `**kwargs`: architecture options (`zero_init_residual`, `groups`, ...).

    **Returns:** a `JaxModel`, a `TorchModel` or an Equinox module.
    """
    enable_compilation_cache()  # a second process compiles nothing the first compiled
    if name.startswith(("hf-hub:", "local-dir:")):  # an exported folder names its architecture
        from .hub import load_source

        return load_source(
            name,
            framework=framework,
            weights=weights,
            num_classes=num_classes,
            in_chans=in_chans,
            strict=strict,
            key=key,
            features_only=features_only,
            out_indices=out_indices,
            dtype=dtype,
            **kwargs,
        )
    info = get_model_info(name)
    check_counts(num_classes, in_chans)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if framework not in ("jax", "torch", "equinox"):
        raise ValueError(f"framework must be 'jax', 'torch' or 'equinox', not {framework!r}")
    state_dict, owned = (None, False) if weights is None else resolve_weights(info, weights, kwargs)
    return build(
        info,
        state_dict,
        owned=owned,
        source=weights if isinstance(weights, str | os.PathLike) else None,
        adapt=num_classes is not None or in_chans is not None,
        framework=framework,
        strict=strict,
        key=key,
        features_only=features_only,
        out_indices=out_indices,
        dtype=dtype,
        **kwargs,
    )


# `build`'s arguments that are not the architecture's own options.
LOAD_OPTIONS = frozenset({"framework", "key", "features_only", "out_indices", "dtype"})


def build(
    info: ModelInfo,
    state_dict: Mapping[str, torch.Tensor] | None,
    *,
    owned: bool,
    adapt: bool,
    source: Any = None,
    framework: Framework = "jax",
    strict: bool = True,
    key: PRNGKeyArray | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    dtype: Any = None,
    stacklevel: int = 3,
    **kwargs: Any,
) -> Any:
    """The second half of `zoo.load`: build `info`'s architecture with `kwargs`, fill it
    with `state_dict` (`owned`: the zoo just read it, its tensors may be shared; `adapt`: the
    caller's own num_classes/in_chans may re-initialise the head or adapt the stem; `source`:
    the path it came from, for errors) and give it its face. `stacklevel` points a partial
    load's warning at the caller of `zoo.load`."""
    if framework not in ("jax", "torch", "equinox"):
        raise ValueError(f"framework must be 'jax', 'torch' or 'equinox', not {framework!r}")
    if state_dict is not None:
        if info.checkpoint_adapter is not None:  # another layout's keys, the options' needs
            state_dict = info.checkpoint_adapter(state_dict, kwargs)
        _infer(state_dict, info, kwargs)
    model = info.builder(key=jax.random.key(0) if key is None else key, **kwargs)
    if dtype is not None:
        model = cast_floats(model, dtype)
    if state_dict is not None:
        try:
            model, report = wc.load_state_dict(
                model,
                state_dict,
                strict=strict,
                adapt=adapt,
                first_conv=info.first_conv,
                classifier=info.classifier,
                copy=not owned,
                warn=False,  # warned here, at the caller of zoo.load
            )
        except wc.ConversionError as e:
            if source is None:
                raise
            raise wc.ConversionError(
                e.report,
                f"(weights from {source}, loaded as {info.name!r}: a checkpoint of another "
                "architecture? `zoo info` on the file shows what it holds; strict=False loads "
                "what fits.)",
            ) from e
        if not report.ok:
            message = (
                f"zoo.load({info.name!r}, strict=False): the weights did not fit everywhere; "
                f"the rest keeps its initialisation. {report.summary()}\n(this warning's "
                ".report lists every problem)"
            )
            warnings.warn(wc.LoadWarning(message, report), stacklevel=stacklevel)
    model = eval_mode(model)
    if features_only:
        model = model.features_only(out_indices)
    elif out_indices is not None:
        raise TypeError("out_indices= applies only with features_only=True")
    if framework == "equinox":
        return model
    if framework == "torch":
        from .adapters import TorchModel  # imports torch

        return TorchModel(model, name=info.name)
    return JaxModel(model, name=info.name)


def to_torchvision(face: JaxModel | TorchModel, name: str | None = None) -> torch.nn.Module:
    """The plain torch model (torchvision's, or the CNN's twin) carrying the same weights,
    in eval mode. From a torch face: a copy of its module tree as the plain twin class, with
    every module the user replaced, computing in torch with identical outputs. `name` is
    needed only for a bare Equinox model."""
    from .adapters import TorchModel  # imports torch

    name = name or getattr(face, "name", None)
    if not name:
        raise ValueError("pass name= (the registry name) to convert a bare Equinox model")
    info = get_model_info(name)
    if info.torch_builder is None:
        raise ValueError(f"{name!r} was registered without a torch_builder")
    if isinstance(face, TorchModel):
        return face.to_torchvision().eval()
    else:
        model = face.model if isinstance(face, JaxModel) else face
        state_dict = wc.to_state_dict(model)
    head = state_dict.get(f"{info.classifier}.weight")
    stem = state_dict[f"{info.first_conv}.weight"]
    num_classes = 0 if head is None else head.shape[0]
    # The options a state_dict does not pin down (GoogLeNet's aux_logits and
    # transform_input, dropout rates): without them the twin would compute another function.
    options = model.config_kwargs() if hasattr(model, "config_kwargs") else {}
    native = info.torch_builder(num_classes=num_classes, in_chans=stem.shape[1], **options)
    native.load_state_dict(state_dict, strict=True)
    return native.eval()
