"""Loading exported folders: `"local-dir:/path"` and `"hf-hub:org/name[@revision]"`.

A folder holds `config.json` (timm's shape plus a `zoo` section) and `model.safetensors`
(torchvision's keys); timm's own Hub repos (`pytorch_model.bin` only) load too.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch

import weights_convert as wc

from .._registry import ModelInfo, get_model_info
from .._sources import WeightsError, read_weights_file

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
PREFIXES = (HF_HUB_PREFIX, LOCAL_DIR_PREFIX)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# timm's older Hub repos carry only the pickle; it is read with weights_only=True.
FALLBACK_WEIGHTS_NAME = "pytorch_model.bin"


def is_source(value: Any) -> bool:
    """Whether `value` is a `"hf-hub:..."` or `"local-dir:..."` string."""
    return isinstance(value, str) and value.startswith(PREFIXES)


def parse_hf_hub(source: str) -> tuple[str, str | None]:
    """`"hf-hub:org/name@rev"` -> `("org/name", "rev")`."""
    spec = source.removeprefix(HF_HUB_PREFIX)
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise WeightsError(
            f"{source!r} is not a Hub source: write 'hf-hub:ORG/NAME' or 'hf-hub:ORG/NAME@REVISION'"
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


def read_config(path: Path) -> dict[str, Any]:
    """An exported `config.json`, checked for the fields the zoo needs."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(
            f"{path} is not readable JSON ({e}). Export the model again with zoo.save_pretrained."
        ) from e
    if not isinstance(config, dict) or not (
        isinstance(config.get("zoo"), dict) or isinstance(config.get("architecture"), str)
    ):
        raise WeightsError(
            f"{path} names no architecture (neither 'architecture' nor a 'zoo' section): it "
            "was not written by zoo.save_pretrained or timm."
        )
    return config


def architecture(config: dict[str, Any], path: Path) -> ModelInfo:
    """The registry entry a config names (its `zoo.name`, else timm's `architecture`, whose
    `.tag` suffix is dropped)."""
    zoo_cfg = config.get("zoo") or {}
    name = zoo_cfg.get("name") or str(config.get("architecture", "")).split(".")[0]
    try:
        return get_model_info(name)
    except KeyError as e:
        raise WeightsError(
            f"{path} names architecture {name!r}, which the zoo does not have. "
            f"{e.args[0].split('.', 1)[1].strip()}"
        ) from None


def build_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor options recorded in a config (`num_classes`, `in_chans`, ...)."""
    zoo_cfg = config.get("zoo") or {}
    kwargs = dict(zoo_cfg.get("kwargs") or {})
    for field in ("num_classes", "in_chans"):
        value = zoo_cfg.get(field, config.get(field))
        if value is not None:
            kwargs[field] = int(value)
    if "in_chans" not in kwargs:  # timm's configs carry it in the input size only
        input_size = (config.get("pretrained_cfg") or {}).get("input_size")
        if input_size:
            kwargs["in_chans"] = int(input_size[0])
    return kwargs


def source_state_dict(source: str, info: ModelInfo | None = None) -> dict[str, torch.Tensor]:
    """The state_dict of a `hf-hub:`/`local-dir:` source, for `zoo.load(name, weights=source)`.
    A config naming another architecture than `info` is refused."""
    config_path, weights_path = fetch(source)
    if info is not None:
        named = architecture(read_config(config_path), config_path)
        if named.name != info.name:
            raise WeightsError(
                f"{config_path} holds {named.name!r} weights, not {info.name!r}: load it with "
                f"zoo.load({source!r}) to get a {named.name!r}."
            )
    return read_weights_file(weights_path)


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
    `config.json`, the weights from `model.safetensors`."""
    from .. import _load

    if weights is not None:
        raise TypeError(
            f"zoo.load({source!r}) takes its weights from the source; pass weights= only with "
            "an architecture name, e.g. zoo.load('resnet18', weights=...)"
        )
    config_path, weights_path = fetch(
        source, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    config = read_config(config_path)
    info = architecture(config, config_path)
    # Recorded options go in as plain kwargs; only the caller's own num_classes=/in_chans=
    # ask zoo.load to adapt a mismatching head or stem, which must not hide a corrupt export.
    kwargs = build_kwargs(config) | load_kwargs
    given = {"num_classes": num_classes, "in_chans": in_chans}
    explicit = {k: v for k, v in given.items() if v is not None}
    for field in explicit:
        kwargs.pop(field, None)
    try:
        return _load.load(info.name, weights=weights_path, **explicit, **kwargs)
    except wc.ConversionError as e:
        raise WeightsError(
            f"{weights_path} does not fit {info.name!r} as {config_path} describes it: {e}\n"
            "The folder's files do not belong together; export the model again."
        ) from e
