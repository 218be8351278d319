"""`zoo.load`: build a registered architecture, fill it with weights, and give it a face."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import jax
from jaxtyping import PRNGKeyArray

import weights_convert as wc

from ._modes import eval_mode
from ._registry import ModelInfo, get_model_info
from .adapters import JaxModel

if TYPE_CHECKING:
    import torch

    from .adapters import TorchModel

Framework = Literal["jax", "torch", "equinox"]
TORCHVISION_TAGS = ("torchvision", "DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")


def resolve_weights(info: ModelInfo, weights: Any) -> tuple[dict[str, torch.Tensor], bool]:
    """A state_dict from any supported source, and whether the zoo owns its tensors (a file it
    just read: they can be shared without a copy) or the caller does (copy them)."""
    from ._sources import WeightsError, read_weights_file, torchvision_state_dict  # torch

    if isinstance(weights, Mapping):
        return dict(weights), False
    if isinstance(weights, str) and weights.startswith(("hf-hub:", "local-dir:")):
        from .hub import source_state_dict

        return source_state_dict(weights, info), True
    if isinstance(weights, str) and weights in TORCHVISION_TAGS:
        if info.torchvision_weights is None:
            raise WeightsError(f"torchvision has no pretrained weights for {info.name!r}")
        return torchvision_state_dict(info.torchvision_weights, weights), True
    if isinstance(weights, str | os.PathLike):
        return read_weights_file(weights), True
    raise TypeError(
        "weights must be None, a torch state_dict, a path to a .safetensors/.pth/.pt file, or "
        f"one of {TORCHVISION_TAGS}; got {type(weights).__name__}"
    )


def _infer(state_dict: Mapping[str, torch.Tensor], info: ModelInfo, kwargs: dict) -> None:
    # Without an explicit num_classes/in_chans, take the checkpoint's own (timm asks for them
    # explicitly; inferring spares users a mismatch error for a fine-tuned checkpoint).
    head = state_dict.get(f"{info.pretrained_cfg['classifier']}.weight")
    stem = state_dict.get(f"{info.pretrained_cfg['first_conv']}.weight")
    if "num_classes" not in kwargs and head is not None and head.ndim == 2:
        kwargs["num_classes"] = int(head.shape[0])
    if "in_chans" not in kwargs and stem is not None and stem.ndim == 4:
        kwargs["in_chans"] = int(stem.shape[1])


def load(
    name: str,
    *,
    framework: Framework = "jax",
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    strict: bool = True,
    key: PRNGKeyArray | None = None,
    **kwargs: Any,
) -> Any:
    """Build a zoo model, optionally with weights, as a JAX or a torch object.

    **Arguments:**

    - `name`: a registered architecture (`zoo.list_models()`).
    - `framework`: `"jax"` (a `JaxModel`: jitted calls, train steps), `"torch"` (a
      `TorchModel`, an `nn.Module`), or `"equinox"` (the bare Equinox module, eval mode).
    - `weights`: `None` (fresh initialisation from `key`), a torch state_dict, a path to a
      `.safetensors`/`.pth`/`.pt` file, or `"torchvision"`/`"IMAGENET1K_V1"` for torchvision's
      own checkpoint (downloaded through torch's hub cache).
    - `num_classes`, `in_chans`: as timm: a different `num_classes` than the checkpoint's
      re-initialises the classifier, a different `in_chans` adapts the first conv. When not
      given, the checkpoint's are used.
    - `strict`: raise on any key, shape or dtype that does not fit (see `weights_convert`).
    - `key`: PRNG key for the initialisation (default `jax.random.key(0)`).
    - `**kwargs`: architecture options (`zero_init_residual`, `groups`, ...).

    **Returns:** a `JaxModel`, a `TorchModel` or an Equinox module.
    """
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
            **kwargs,
        )
    info = get_model_info(name)
    if framework not in ("jax", "torch", "equinox"):
        raise ValueError(f"framework must be 'jax', 'torch' or 'equinox', not {framework!r}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    state_dict, owned = (None, False) if weights is None else resolve_weights(info, weights)
    if state_dict is not None:
        _infer(state_dict, info, kwargs)
    model = info.builder(key=jax.random.key(0) if key is None else key, **kwargs)
    if state_dict is not None:
        try:
            model, _ = wc.load_state_dict(
                model,
                state_dict,
                strict=strict,
                adapt=num_classes is not None or in_chans is not None,
                first_conv=info.pretrained_cfg["first_conv"],
                classifier=info.pretrained_cfg["classifier"],
                copy=not owned,
            )
        except wc.ConversionError as e:
            if not isinstance(weights, str | os.PathLike):
                raise
            raise wc.ConversionError(
                e.report,
                f"(weights from {weights}, loaded as {name!r}: a checkpoint of another "
                "architecture? `zoo info` on the file shows what it holds; strict=False loads "
                "what fits.)",
            ) from e
    model = eval_mode(model)
    if framework == "equinox":
        return model
    if framework == "torch":
        from .adapters import TorchModel  # imports torch

        return TorchModel(model, name=name)
    return JaxModel(model, name=name)


def to_torchvision(face: JaxModel | TorchModel, name: str | None = None) -> torch.nn.Module:
    """The plain torch model (torchvision's, or the CNN's twin) carrying the same weights,
    in eval mode. `name` is needed only for a bare Equinox model."""
    from .adapters import TorchModel  # imports torch

    name = name or getattr(face, "name", None)
    if not name:
        raise ValueError("pass name= (the registry name) to convert a bare Equinox model")
    info = get_model_info(name)
    if info.torch_builder is None:
        raise ValueError(f"{name!r} was registered without a torch_builder")
    if isinstance(face, TorchModel):
        state_dict = face.state_dict()
    else:
        state_dict = wc.to_state_dict(face.model if isinstance(face, JaxModel) else face)
    head = state_dict[f"{info.pretrained_cfg['classifier']}.weight"]
    stem = state_dict[f"{info.pretrained_cfg['first_conv']}.weight"]
    native = info.torch_builder(num_classes=head.shape[0], in_chans=stem.shape[1])
    native.load_state_dict(state_dict, strict=True)
    return native.eval()
