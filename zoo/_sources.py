"""Reading weights from where users keep them: state_dicts, files, torchvision's URLs.

Pickle-based files are opened only with `torch.load(weights_only=True)`, which refuses any
pickle that would run code.
"""

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

StateDict = Mapping[str, torch.Tensor]
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """A weights source could not be read; the message names the file and the fix."""


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file as a state_dict, with a clear error for a corrupt file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' Rust error type is not exported under a stable name
        raise WeightsError(
            f"{path} is not a readable safetensors file ({e}). It may be truncated or "
            "corrupt: download or export it again."
        ) from e


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch checkpoint (`.pth`/`.pt`/`.bin`/`.ckpt`), loaded with `weights_only=True`.

    Checkpoints that wrap the weights (`{"state_dict": ...}`, `{"model": ...}`, timm's
    `{"state_dict_ema": ...}`, Lightning's `{"state_dict": {"model.conv1.weight": ...}}`) are
    unwrapped.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"refused to load {path}: its pickle wants to run code or build objects that a "
            f"weights file never needs ({str(e).splitlines()[0]}). Only load checkpoints you "
            "trust; prefer .safetensors."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable torch checkpoint ({e}).") from e
    return unwrap_checkpoint(obj, str(path))


def unwrap_checkpoint(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint object (see `read_pickle`)."""
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source} holds no state_dict (a mapping of names to tensors).")
    if obj and all(k.startswith("model.") for k in obj):  # a LightningModule's `self.model`
        obj = {k[len("model.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` or pickle-based weights file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path)
    raise WeightsError(
        f"{path}: unknown weights format {path.suffix!r}; use .safetensors or one of "
        f"{', '.join(PICKLE_SUFFIXES)}"
    )


def torchvision_state_dict(weights_enum: str, tag: str, **hub_kwargs: Any) -> dict:
    """Download (or read from torch's hub cache) a torchvision checkpoint, e.g.
    `("ResNet18_Weights", "IMAGENET1K_V1")`; `tag` "DEFAULT" picks torchvision's default."""
    import torchvision

    enum = getattr(torchvision.models, weights_enum)
    entry = enum.DEFAULT if tag in ("DEFAULT", "torchvision") else enum[tag]
    return dict(
        torch.hub.load_state_dict_from_url(
            entry.url, map_location="cpu", weights_only=True, progress=False, **hub_kwargs
        )
    )
