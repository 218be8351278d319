"""Reading weights from where users keep them: state_dicts, files, torchvision's URLs.

Pickle-based files are opened only with `torch.load(weights_only=True)`, which refuses any
pickle that would run code.
"""

import io
import os
import pickle
import urllib.error
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

from weights_convert import strip_prefixes, unusable_tensor

StateDict = Mapping[str, torch.Tensor]
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """A weights source could not be read; the message names the file and the fix."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, read once through one file descriptor: a file replaced while it is
    read (a concurrent re-export renames a new file into place) is still read whole, from
    the inode that was opened, never half old and half new."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise WeightsError(f"{path} is a folder, not a weights file") from None
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from e


def _empty(source: str) -> WeightsError:
    return WeightsError(
        f"{source} is empty (0 bytes): a download or a save was interrupted. Download or "
        "save it again."
    )


def parse_safetensors(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """A safetensors file's bytes as a state_dict (see `canonical_state_dict`), with a clear
    error for a corrupt file. `source` names the file in errors."""
    from safetensors.torch import load

    if not data:
        raise _empty(source)
    try:
        # From the bytes, not the path: safetensors' load_file opens the file twice (header,
        # then storage), which can pair one export's header with another's data.
        # Sorted by name, as load_file returns them (load's order is the storage order).
        tensors = dict(sorted(load(data).items()))
    except Exception as e:  # safetensors' Rust error type is not exported under a stable name
        reason = str(e) or type(e).__name__
        raise WeightsError(
            f"{source} is not a readable safetensors file ({reason}). It may be truncated or "
            "corrupt: download or export it again."
        ) from e
    return canonical_state_dict(tensors, source)


def parse_pickle(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """A torch checkpoint's bytes (`.pth`/`.pt`/`.bin`/`.ckpt`), loaded with
    `weights_only=True`; wrappers are unwrapped (see `canonical_state_dict`)."""
    if not data:
        raise _empty(source)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"refused to load {source}: its pickle wants to run code or build objects that a "
            f"weights file never needs ({str(e).splitlines()[0]}). Only load checkpoints you "
            "trust; prefer .safetensors."
        ) from e
    except Exception as e:  # zip, pickle and storage errors of a damaged file
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise WeightsError(
            f"{source} is not a readable torch checkpoint ({reason}). It may be truncated or "
            "corrupt: download or save it again."
        ) from e
    return canonical_state_dict(obj, source)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file as a state_dict, read once (see `read_bytes`)."""
    return parse_safetensors(read_bytes(path), str(path))


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch checkpoint (`.pth`/`.pt`/`.bin`/`.ckpt`), read once and loaded with
    `weights_only=True`. Checkpoints that wrap the weights are unwrapped (see
    `canonical_state_dict`)."""
    return parse_pickle(read_bytes(path), str(path))


def parse_weights(data: bytes, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file's bytes as a state_dict, by the format its name says."""
    path = Path(path)
    _check_format(path)
    if path.suffix == ".safetensors":
        return parse_safetensors(data, str(path))
    return parse_pickle(data, str(path))


def _check_format(path: Path) -> None:
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: unknown weights format {path.suffix!r}; use .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )


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
    if not obj:
        raise WeightsError(f"{source} holds an empty state_dict: no tensors to load.")
    for key, value in obj.items():
        problem = unusable_tensor(value)
        if problem is not None:
            raise WeightsError(f"{source}: {key!r} is {problem}.")
    return strip_prefixes(obj)


def _not_arrays(obj: Mapping) -> list:
    return [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _ARRAY_TYPES))]


def _is_state_dict(obj: Mapping) -> bool:
    return not _not_arrays(obj)


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"it is a {type(obj).__name__}"
    bad = _not_arrays(obj)[0]
    if not isinstance(bad, str):
        return (
            f"its key {bad!r} is an {type(bad).__name__}, not a name such as 'conv1.weight' "
            "(was it saved from a list, or a dict keyed by position?)"
        ).replace("an str", "a str")
    return f"its entry {bad!r} is a {type(obj[bad]).__name__}"


unwrap_checkpoint = canonical_state_dict  # the former name


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` or pickle-based weights file (once, see `read_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    _check_format(path)  # before reading what may be a large file of another kind
    return parse_weights(read_bytes(path), path)


def torchvision_state_dict(weights_enum: str, tag: str, **hub_kwargs: Any) -> dict:
    """Download (or read from torch's hub cache) a torchvision checkpoint, e.g.
    `("ResNet18_Weights", "IMAGENET1K_V1")`; `tag` "DEFAULT" picks torchvision's default.

    A download is checked against the SHA-256 prefix in torchvision's file name
    (`resnet18-f37072fd.pth`), as torchvision's own builders check it; a file that does not
    match is not cached. A file already in torch's cache is trusted, as torch trusts it.
    """
    import torchvision

    enum = getattr(torchvision.models, weights_enum)
    entry = enum.DEFAULT if tag in ("DEFAULT", "torchvision") else enum[tag]
    file_name = os.path.basename(urllib.parse.urlparse(entry.url).path)
    cached = Path(hub_kwargs.get("model_dir") or Path(torch.hub.get_dir()) / "checkpoints")
    cached = cached / file_name
    try:
        obj = torch.hub.load_state_dict_from_url(
            entry.url,
            map_location="cpu",
            weights_only=True,
            progress=False,
            check_hash=True,
            **hub_kwargs,
        )
    except pickle.UnpicklingError as e:
        raise WeightsError(f"refused to load {cached} (downloaded from {entry.url}): {e}") from e
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise WeightsError(
                f"the download of {entry.url} does not match the hash in its name "
                f"{file_name!r} ({e}); it was not cached. Try again: a proxy or a broken "
                "connection altered it."
            ) from e
        raise WeightsError(
            f"{cached} is not a readable torch checkpoint ({e}). Delete it to download it again."
        ) from e
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(
            f"cannot download {weights_enum}.{entry.name} from {entry.url} ({e}). Connect to "
            f"the network, or put the file at {cached} (or pass weights=PATH to the file)."
        ) from e
    return canonical_state_dict(obj, str(cached))
