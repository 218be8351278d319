"""Loading exported folders: `"local-dir:/path"` and `"hf-hub:org/name[@revision]"`.

A folder holds `config.json` (timm's shape plus a `zoo` section) and `model.safetensors`
(torchvision's keys); timm's own Hub repos (`pytorch_model.bin` only) load too.
"""

import dataclasses
import json
import math
import os
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import weights_convert as wc

from .._registry import ModelInfo, get_model_info
from .._sources import WeightsError, parse_weights, read_bytes
from ..models._timm import TimmCheckpointWarning

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
PREFIXES = (HF_HUB_PREFIX, LOCAL_DIR_PREFIX)
# A torchvision-layout export whose keys timm's same-named model would read into another
# network is named so that timm refuses it: "Unknown model (vgg16-torchvision-layout)".
TORCHVISION_LAYOUT_SUFFIX = "-torchvision-layout"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# timm's older Hub repos carry only the pickle; it is read with weights_only=True.
FALLBACK_WEIGHTS_NAME = "pytorch_model.bin"
FORMAT_VERSION = 1
"""The `zoo.format` that `save_pretrained` writes; a loader reads formats up to its own."""
# A config is a few KB (22k label names are ~0.5 MB); a larger one is not a config.
MAX_CONFIG_BYTES = 16 * 2**20
# How often a load starts over when the folder it reads is replaced under it.
SWAP_RETRIES = 20


def is_source(value: Any) -> bool:
    """Whether `value` is a `"hf-hub:..."` or `"local-dir:..."` string."""
    return isinstance(value, str) and value.startswith(PREFIXES)


def parse_hf_hub(source: str) -> tuple[str, str | None]:
    """`"hf-hub:org/name@rev"` -> `("org/name", "rev")`, both checked before any Hub call: a
    repository id as the Hub spells them, and a revision that is a branch, tag or commit name
    (no `..`, which huggingface_hub would resolve outside the repository's `refs/`)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    spec = source.removeprefix(HF_HUB_PREFIX)
    repo_id, at, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise WeightsError(
            f"{source!r} is not a Hub source: write 'hf-hub:ORG/NAME' or 'hf-hub:ORG/NAME@REVISION'"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise WeightsError(
            f"{repo_id!r} is not a valid Hub repository id ({e}) in {source!r}; write "
            "'hf-hub:ORG/NAME' with letters, digits, '-', '_' and '.'"
        ) from None
    if at and not revision:
        raise WeightsError(
            f"{source!r} has an empty revision after '@': write 'hf-hub:{repo_id}@REVISION' "
            "(a branch, tag or commit), or drop the '@'"
        )
    if revision:
        segments = revision.split("/")
        odd = any(c.isspace() or not c.isprintable() or c == "\\" for c in revision)
        if odd or any(part in ("", ".", "..") for part in segments):
            raise WeightsError(
                f"{source!r}: revision {revision!r} is not a branch, tag or commit name (no "
                "'..' or '.' segments, empty segments, backslashes, spaces or control "
                "characters); huggingface_hub would look it up outside the repository"
            )
    return repo_id, revision or None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _default_cache_dir() -> str | None:
    # huggingface_hub reads HF_HOME/HF_HUB_CACHE once, at import; reading them per call lets
    # a process (or a test) that sets them later still be honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _hub_file(
    repo_id: str,
    revision: str | None,
    filename: str,
    *,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    token: str | bool | None,
    required: bool = True,
) -> Path | None:
    """One file of a Hub repo through huggingface_hub's cache; `None` for a missing optional
    file. Every failure becomes a `WeightsError` naming the file and the fix."""
    import huggingface_hub
    from huggingface_hub import errors

    offline = local_files_only or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    where = f"{filename!r} of hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir if cache_dir is not None else _default_cache_dir(),
                local_files_only=offline,
                token=token,
                library_name="equizoo",
            )
        )
    except errors.LocalEntryNotFoundError as e:
        if not required:
            return None
        if offline:
            fix = (
                "it is not in the local Hugging Face cache and offline mode is on "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it once online (unset "
                "HF_HUB_OFFLINE), point HF_HOME/cache_dir at a cache that has it, or use "
                "'local-dir:' with an exported folder"
            )
        else:
            fix = f"the Hub could not be reached and the file is not cached ({e})"
        raise WeightsError(f"cannot load {where}: {fix}.") from e
    except errors.RepositoryNotFoundError as e:
        raise WeightsError(
            f"cannot load {where}: no such repository, or it is private. Check the name, or "
            "pass token= (or log in with `hf auth login`)."
        ) from e
    except errors.RevisionNotFoundError as e:
        raise WeightsError(
            f"cannot load {where}: revision {revision!r} does not exist; use a branch, tag or "
            "commit of the repository."
        ) from e
    except errors.EntryNotFoundError as e:
        if not required:
            return None
        raise WeightsError(
            f"cannot load {where}: the repository has no such file. Is it a repository written "
            "by zoo.push_to_hub or timm's push_to_hf_hub?"
        ) from e
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError, ValueError) as e:
        # Gated or disabled repositories, server errors, a full or read-only cache.
        raise WeightsError(
            f"cannot load {where}: {type(e).__name__}: {' '.join(str(e).split())}. Check "
            "access to the repository (token=, `hf auth login`) and the cache folder."
        ) from e


def _local_files(folder: Path) -> tuple[Path, Path]:
    if not folder.is_dir():
        raise WeightsError(
            f"no folder at {folder}: 'local-dir:' takes a folder written by "
            "zoo.save_pretrained(model, folder)"
        )
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise WeightsError(
            f"{config} does not exist: {folder} is not an exported model folder. Write one "
            "with zoo.save_pretrained(model, folder) (or pass a weights file with an "
            "architecture name instead)."
        )
    for name in (WEIGHTS_NAME, FALLBACK_WEIGHTS_NAME):
        if (folder / name).is_file():
            return config, folder / name
    raise WeightsError(
        f"{folder / WEIGHTS_NAME} does not exist: the export is incomplete. Export the model "
        "again with zoo.save_pretrained."
    )


def fetch(
    source: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> tuple[Path, Path]:
    """The local paths of `(config.json, weights file)` for a `hf-hub:`/`local-dir:` source,
    downloading into huggingface_hub's cache if needed."""
    if source.startswith(LOCAL_DIR_PREFIX):
        return _local_files(Path(source.removeprefix(LOCAL_DIR_PREFIX)).expanduser())
    if not source.startswith(HF_HUB_PREFIX):
        raise WeightsError(f"{source!r}: a source starts with 'hf-hub:' or 'local-dir:'")
    repo_id, revision = parse_hf_hub(source)
    opts = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    config = _hub_file(repo_id, revision, CONFIG_NAME, **opts)
    weights = _hub_file(repo_id, revision, WEIGHTS_NAME, required=False, **opts)
    if weights is None:
        weights = _hub_file(repo_id, revision, FALLBACK_WEIGHTS_NAME, required=False, **opts)
    if weights is None:
        raise WeightsError(
            f"cannot load {WEIGHTS_NAME!r} of {source}: the repository has neither it nor "
            f"{FALLBACK_WEIGHTS_NAME!r} (or it is missing from the offline cache). Push the "
            "model with zoo.push_to_hub, or download it once online."
        )
    return config, weights


@dataclasses.dataclass(frozen=True)
class ExportFiles:
    """One export's files, read together (see `read_export`): the paths name them in errors."""

    config_path: Path
    config: bytes
    weights_path: Path
    weights: bytes
    card: bytes | None = None


class _Replaced(Exception):
    """The folder being read was replaced (re-exported) under the reader: start over."""


def read_export(folder: str | os.PathLike, *, card: bool = False) -> ExportFiles:
    """`config.json` and the weights of an exported folder (and `README.md` with `card`),
    each read once and all from the same folder.

    The folder is opened once and its files are opened relative to it, so a concurrent
    re-export (which swaps a whole new folder into place) yields the old export or the new
    one, never one's config with the other's weights. If the old folder's files are deleted
    before they are opened, the read starts over on the new folder.
    """
    folder = Path(folder)
    missing = WeightsError(
        f"no folder at {folder}: 'local-dir:' takes a folder written by "
        "zoo.save_pretrained(model, folder)"
    )
    if os.open not in os.supports_dir_fd:  # Windows: by path, without the guarantee
        if not folder.is_dir():
            raise missing
        return _read_export_at(folder, None, card)
    for _ in range(SWAP_RETRIES):
        try:
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        except OSError as e:
            raise WeightsError(f"cannot open {folder}: {e.strerror or e}") from e
        try:
            return _read_export_at(folder, dir_fd, card)
        except _Replaced:
            continue
        finally:
            os.close(dir_fd)
    raise WeightsError(
        f"{folder} was replaced {SWAP_RETRIES} times while it was being read; try again when "
        "it is not being re-exported continuously."
    )


def _read_export_at(folder: Path, dir_fd: int | None, card: bool) -> ExportFiles:
    def read(name: str, limit: int | None = None) -> bytes | None:
        try:
            if dir_fd is not None:
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
            else:
                fd = os.open(folder / name, os.O_RDONLY)
        except FileNotFoundError:
            if dir_fd is not None and _replaced(folder, dir_fd):
                raise _Replaced from None
            return None
        except OSError as e:
            raise WeightsError(f"cannot read {folder / name}: {e.strerror or e}") from e
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise WeightsError(f"{folder / name} is not a file; export the model again")
            if limit is not None and info.st_size > limit:
                raise WeightsError(
                    f"{folder / name} is {info.st_size:,} bytes: not a config (a few KB). "
                    "Export the model again with zoo.save_pretrained."
                )
            return f.read()

    config = read(CONFIG_NAME, MAX_CONFIG_BYTES)
    if config is None:
        raise WeightsError(
            f"{folder / CONFIG_NAME} does not exist: {folder} is not an exported model folder. "
            "Write one with zoo.save_pretrained(model, folder) (or pass a weights file with an "
            "architecture name instead)."
        )
    for name in (WEIGHTS_NAME, FALLBACK_WEIGHTS_NAME):
        weights = read(name)
        if weights is not None:
            readme = read("README.md") if card else None
            return ExportFiles(folder / CONFIG_NAME, config, folder / name, weights, readme)
    raise WeightsError(
        f"{folder / WEIGHTS_NAME} does not exist: the export is incomplete. Export the model "
        "again with zoo.save_pretrained."
    )


def _replaced(folder: Path, dir_fd: int) -> bool:
    opened = os.fstat(dir_fd)
    try:
        now = os.stat(folder)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def read_source(
    source: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> ExportFiles:
    """The files of a `hf-hub:`/`local-dir:` source, each read once (see `read_export`)."""
    if source.startswith(LOCAL_DIR_PREFIX):
        return read_export(Path(source.removeprefix(LOCAL_DIR_PREFIX)).expanduser())
    config_path, weights_path = fetch(
        source, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    config = _read_limited(config_path)
    return ExportFiles(config_path, config, weights_path, read_bytes(weights_path))


def _read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from e
    if size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{path} is {size:,} bytes: not a config (a few KB).")
    return read_bytes(path)


# -- config.json: every field the zoo reads is checked, before anything is built -------------


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad_field(path: Path, field: str, value: Any, expected: str) -> WeightsError:
    return WeightsError(
        f"{path}: field {field!r} is {_short(value)}, expected {expected}. Fix the field, or "
        "export the model again with zoo.save_pretrained."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(path: Path, node: Mapping, key: str, prefix: str, minimum: int) -> None:
    if key in node and not (_is_int(node[key]) and node[key] >= minimum):
        raise _bad_field(path, prefix + key, node[key], f"an integer >= {minimum}")


def _check_str(path: Path, node: Mapping, key: str, prefix: str) -> None:
    if key in node and not (isinstance(node[key], str) and node[key]):
        raise _bad_field(path, prefix + key, node[key], "a non-empty string")


def _check_section(path: Path, config: Mapping, key: str) -> dict[str, Any]:
    section = config.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise _bad_field(path, key, section, "a JSON object")
    return section


def _is_option(value: Any) -> bool:
    # What a constructor option can be in JSON: a number, string, bool or null, or a flat
    # list of them (e.g. ResNet's replace_stride_with_dilation).
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(isinstance(v, scalar) and _is_option(v) for v in value)
    return isinstance(value, scalar)


# zoo.load's own arguments: not constructor options (a config that records one is damaged).
_NOT_OPTIONS = frozenset(
    {"name", "framework", "weights", "strict", "key", "features_only", "out_indices", "dtype"}
    | {"num_classes", "in_chans", "cache_dir", "local_files_only", "token"}
)


def parse_config(data: bytes, path: Path) -> dict[str, Any]:
    """`config.json`'s bytes as a dict, every field the zoo reads checked for its type and
    range (`WeightsError` naming the file and the field otherwise).

    **Arguments:**

    - `data`: the file's content.
    - `path`: where it came from, for the errors.

    **Returns:** the config.
    """
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise WeightsError(
            f"{path} is not readable JSON ({reason}). Export the model again with "
            "zoo.save_pretrained."
        ) from None
    if not isinstance(config, dict):
        raise WeightsError(
            f"{path} holds a JSON {type(config).__name__}, not an object: it was not written by "
            "zoo.save_pretrained or timm."
        )
    zoo_cfg = _check_section(path, config, "zoo")
    pretrained = _check_section(path, config, "pretrained_cfg")
    _check_str(path, config, "architecture", "")
    _check_int(path, config, "num_classes", "", 0)
    _check_int(path, config, "num_features", "", 0)
    _check_int(path, pretrained, "num_classes", "pretrained_cfg.", 0)
    if "input_size" in pretrained:
        size = pretrained["input_size"]
        if not (
            isinstance(size, list) and len(size) == 3 and all(_is_int(v) and v >= 1 for v in size)
        ):
            raise _bad_field(
                path, "pretrained_cfg.input_size", size, "[channels, height, width], each >= 1"
            )
    if "label_names" in config:
        labels = config["label_names"]
        if not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            raise _bad_field(path, "label_names", labels, "a list of strings")
    if zoo_cfg:
        _check_int(path, zoo_cfg, "format", "zoo.", 1)
        if zoo_cfg.get("format", 1) > FORMAT_VERSION:
            raise WeightsError(
                f"{path} was written by a newer equizoo (zoo.format {zoo_cfg['format']}; this "
                f"one reads up to {FORMAT_VERSION}): upgrade equizoo to load it."
            )
        _check_str(path, zoo_cfg, "name", "zoo.")
        _check_str(path, zoo_cfg, "version", "zoo.")
        _check_int(path, zoo_cfg, "num_classes", "zoo.", 0)
        _check_int(path, zoo_cfg, "in_chans", "zoo.", 1)
        options = zoo_cfg.get("kwargs") or {}
        if not isinstance(options, dict):
            raise _bad_field(path, "zoo.kwargs", options, "an object of constructor options")
        for key, value in options.items():
            if key in _NOT_OPTIONS:
                raise _bad_field(
                    path, f"zoo.kwargs.{key}", value, "no such entry (not a constructor option)"
                )
            if not _is_option(value):
                raise _bad_field(
                    path, f"zoo.kwargs.{key}", value, "a number, string, bool, null or flat list"
                )
    if not (zoo_cfg.get("name") or config.get("architecture")):
        raise WeightsError(
            f"{path} names no architecture (neither 'architecture' nor a 'zoo' section with a "
            "'name'): it was not written by zoo.save_pretrained or timm."
        )
    return config


def read_config(path: Path) -> dict[str, Any]:
    """An exported `config.json`, checked for the fields the zoo needs (see `parse_config`)."""
    return parse_config(_read_limited(Path(path)), Path(path))


def architecture(config: dict[str, Any], path: Path) -> ModelInfo:
    """The registry entry a config names (its `zoo.name`, else timm's `architecture`, whose
    `.tag` suffix is dropped)."""
    zoo_cfg = config.get("zoo") or {}
    # timm's `architecture` may carry a tag ("resnet50.a1_in1k"), ours the layout suffix.
    named = str(config.get("architecture", "")).split(".")[0]
    name = zoo_cfg.get("name") or named.removesuffix(TORCHVISION_LAYOUT_SUFFIX)
    try:
        return get_model_info(name)
    except KeyError as e:
        raise WeightsError(
            f"{path} names architecture {name!r}, which the zoo does not have. "
            f"{e.args[0].split('.', 1)[1].strip()}"
        ) from None


def build_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor options recorded in a config (`num_classes`, `in_chans`, ...), from a
    config `parse_config` checked."""
    zoo_cfg = config.get("zoo") or {}
    kwargs = dict(zoo_cfg.get("kwargs") or {})
    for field in ("num_classes", "in_chans"):
        value = zoo_cfg.get(field, config.get(field))
        if value is not None:
            kwargs[field] = value
    if "in_chans" not in kwargs:  # timm's configs carry it in the input size only
        input_size = (config.get("pretrained_cfg") or {}).get("input_size")
        if input_size:
            kwargs["in_chans"] = input_size[0]
    return kwargs


def _recorded_counts(config: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """Every field of the config that states num_classes or in_chans, with its value."""
    zoo_cfg, pretrained = config.get("zoo") or {}, config.get("pretrained_cfg") or {}
    fields: dict[str, list[tuple[str, int]]] = {"num_classes": [], "in_chans": []}
    for name, node, key in [
        ("zoo.num_classes", zoo_cfg, "num_classes"),
        ("num_classes", config, "num_classes"),
        ("pretrained_cfg.num_classes", pretrained, "num_classes"),
    ]:
        if key in node:
            fields["num_classes"].append((name, node[key]))
    if "in_chans" in zoo_cfg:
        fields["in_chans"].append(("zoo.in_chans", zoo_cfg["in_chans"]))
    if "input_size" in pretrained:
        fields["in_chans"].append(("pretrained_cfg.input_size[0]", pretrained["input_size"][0]))
    return fields


def _check_counts(
    config: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    info: ModelInfo,
    files: ExportFiles,
    explicit: Mapping[str, int],
) -> None:
    """The config's num_classes and in_chans must be the weights' (the classifier's rows,
    the stem's input channels): the weights are the truth."""
    truth = info.counts_in(state_dict)
    for count, fields in _recorded_counts(config).items():
        if count in explicit or count not in truth:
            continue
        value, evidence = truth[count]
        for field, recorded in fields:
            if recorded != value:
                raise WeightsError(
                    f"{files.config_path} says {field} = {recorded}, but {files.weights_path} "
                    f"holds {count} = {value} ({evidence}). The folder's files do not belong "
                    f"together: export the model again (or pass {count}={recorded} to zoo.load "
                    "to adapt the weights to it)."
                )


def _check_shapes_before_building(
    info: ModelInfo,
    options: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    files: ExportFiles,
    adapting: Mapping[str, int],
    strict: bool,
) -> None:
    """Build the model abstractly (shapes only, nothing allocated) from the options and
    compare its arrays with the weights, so that a config can allocate nothing the weights
    do not back."""
    import equinox as eqx
    import jax

    try:
        abstract = eqx.filter_eval_shape(info.builder, key=jax.random.key(0), **options)
    except Exception as e:  # the builder refuses the options: name them, not its internals
        raise WeightsError(
            f"{files.config_path}: {info.name!r} cannot be built with the options "
            f"{_short(options)} (its zoo.kwargs, num_classes, in_chans and your arguments): "
            f"{type(e).__name__}: {e}. Fix zoo.kwargs, or export the model again."
        ) from None
    names = wc.named_arrays(abstract)
    weights = wc.strip_prefixes(state_dict, names)
    skip = set()
    if "num_classes" in adapting:
        skip |= {n for n in names if n.startswith(f"{info.classifier}.")}
    if "in_chans" in adapting:
        skip.add(f"{info.first_conv}.weight")
    for name, array in names.items():
        if name in weights and name not in skip and tuple(weights[name].shape) != array.shape:
            raise WeightsError(
                f"{files.weights_path} does not fit {info.name!r} as {files.config_path} "
                f"describes it: {name!r} is {tuple(weights[name].shape)} in the weights, "
                f"{array.shape} by the config. The folder's files do not belong together; "
                "export the model again."
            )
    if strict:
        missing = [n for n in names if n not in weights and not n.endswith("num_batches_tracked")]
        unexpected = [k for k in weights if k not in names]
        if missing or unexpected:
            what = ", ".join(
                [f"missing {k!r}" for k in missing[:3]]
                + [f"unexpected {k!r}" for k in unexpected[:3]]
            )
            raise WeightsError(
                f"{files.weights_path} does not fit {info.name!r} as {files.config_path} "
                f"describes it ({len(missing)} missing, {len(unexpected)} unexpected keys: "
                f"{what}). The folder's files do not belong together; export the model again, "
                "or pass strict=False to load what fits."
            )


def source_state_dict(source: str, info: ModelInfo | None = None) -> dict[str, torch.Tensor]:
    """The state_dict of a `hf-hub:`/`local-dir:` source, for `zoo.load(name, weights=source)`.
    A config naming another architecture than `info` is refused."""
    files = read_source(source)
    config = parse_config(files.config, files.config_path)
    if info is not None:
        named = architecture(config, files.config_path)
        if named.name != info.name:
            raise WeightsError(
                f"{files.config_path} holds {named.name!r} weights, not {info.name!r}: load it "
                f"with zoo.load({source!r}) to get a {named.name!r}."
            )
    return parse_weights(files.weights, files.weights_path)


def load_source(
    source: str,
    *,
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    **load_kwargs: Any,
) -> Any:
    """`zoo.load("hf-hub:..." / "local-dir:...")`: the architecture and its options from
    `config.json`, the weights from `model.safetensors`.

    The weights are the truth: the config is checked field by field, its `num_classes` and
    `in_chans` must be the weights' (else a `WeightsError` names both files), and the model
    it describes is compared with the weights shape by shape before anything is allocated.
    Only the caller's own `num_classes=`/`in_chans=` adapt the head or the stem.
    """
    if weights is not None:
        raise TypeError(
            f"zoo.load({source!r}) takes its weights from the source; pass weights= only with "
            "an architecture name, e.g. zoo.load('resnet18', weights=...)"
        )
    files = read_source(source, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    return load_export(files, num_classes=num_classes, in_chans=in_chans, **load_kwargs)


def load_export(
    files: ExportFiles,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    strict: bool = True,
    _stacklevel: int = 5,
    **load_kwargs: Any,
) -> Any:
    """Load what `read_export`/`read_source` read (see `load_source`); `push_to_hub` checks a
    folder with it before uploading."""
    from .. import _load

    config = parse_config(files.config, files.config_path)
    info = architecture(config, files.config_path)
    state_dict = parse_weights(files.weights, files.weights_path)
    explicit = {
        k: v for k, v in {"num_classes": num_classes, "in_chans": in_chans}.items() if v is not None
    }
    _load.check_counts(**explicit)
    options = {k: v for k, v in load_kwargs.items() if k not in _load.LOAD_OPTIONS}
    model_options = build_kwargs(config) | options | explicit
    if info.checkpoint_adapter is not None:  # timm's keys (a layout="timm" export) and the like
        with warnings.catch_warnings():
            if config.get("zoo", {}).get("layout") == "timm":  # the zoo's: torchvision's network
                warnings.simplefilter("ignore", TimmCheckpointWarning)
            state_dict = info.checkpoint_adapter(state_dict, model_options)
    _check_counts(config, state_dict, info, files, explicit)
    _check_shapes_before_building(info, model_options, state_dict, files, explicit, strict)
    try:
        return _load.build(
            info,
            state_dict,
            owned=True,
            adapt=bool(explicit),
            strict=strict,
            stacklevel=_stacklevel,
            **{k: v for k, v in load_kwargs.items() if k in _load.LOAD_OPTIONS},
            **model_options,
        )
    except wc.ConversionError as e:
        raise WeightsError(
            f"{files.weights_path} does not fit {info.name!r} as {files.config_path} describes "
            f"it: {e}\nThe folder's files do not belong together; export the model again."
        ) from e
