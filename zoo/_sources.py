"""Reading weights from where users keep them: state_dicts, files, torchvision's URLs.

Pickle-based files are opened only with `torch.load(weights_only=True)`, which refuses any
pickle that would run code.
"""

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

from weights_convert import strip_prefixes

StateDict = Mapping[str, torch.Tensor]
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """A weights source could not be read; the message names the file and the fix."""


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file as a state_dict (wrapper prefixes stripped, see
    `canonical_state_dict`), with a clear error for a corrupt file."""
    from safetensors.torch import load_file

    try:
        return canonical_state_dict(load_file(str(path)), str(path))
    except Exception as e:  # safetensors' Rust error type is not exported under a stable name
        raise WeightsError(
            f"{path} is not a readable safetensors file ({e}). It may be truncated or "
            "corrupt: download or export it again."
        ) from e


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch checkpoint (`.pth`/`.pt`/`.bin`/`.ckpt`), loaded with `weights_only=True`.

    Checkpoints that wrap the weights are unwrapped (see `canonical_state_dict`).
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
    return canonical_state_dict(obj, str(path))


# Where checkpoints keep the weights: torch's examples and Lightning, torchvision's reference
# scripts ("model"), timm's train.py (its EMA copy only if there is no "state_dict").
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
# What `weights_convert.load_state_dict` accepts as a value (see its `_as_tensor`).
_ARRAY_TYPES = (torch.Tensor, np.ndarray, jax.Array)


def canonical_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The bare state_dict inside a checkpoint object, whether read from a file or passed in
    memory, so both load alike.

    Wrapping dicts (`{"state_dict": ..., "epoch": 3}`, `{"model": ...}`,
    `{"model_state_dict": ...}`, timm's `{"state_dict_ema": ...}`) are unwrapped, nested ones
    too, then the prefixes of DDP (`module.`), `torch.compile` (`_orig_mod.`) and a
    LightningModule's `self.model` (`model.`) are stripped (`weights_convert.strip_prefixes`).

    **Arguments:**

    - `obj`: the checkpoint: a state_dict or a dict wrapping one. Values may be torch tensors,
      NumPy or JAX arrays.
    - `source`: where it came from, for the error message.

    **Returns:** a new `{key: tensor}` dict (the values are not copied).

    **Raises:** `WeightsError` if `obj` holds no mapping of names to tensors.
    """
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise WeightsError(
            f"{source} holds no state_dict (a mapping of names to tensors); {_describe(obj)}."
        )
    return strip_prefixes(obj)


def _not_arrays(obj: Mapping) -> list:
    return [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _ARRAY_TYPES))]


def _is_state_dict(obj: Mapping) -> bool:
    return not _not_arrays(obj)


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"it is a {type(obj).__name__}"
    bad = _not_arrays(obj)[0]
    return f"its entry {bad!r} is a {type(obj[bad]).__name__}"


unwrap_checkpoint = canonical_state_dict  # the former name


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
