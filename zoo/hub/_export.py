"""Exporting to a Hub-ready folder (`save_pretrained`) and to the Hub (`push_to_hub`)."""

import contextlib
import ctypes
import errno
import functools
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

import weights_convert as wc

from .._registry import get_model_info, list_models
from ..adapters import JaxModel, TorchModel
from ._sources import (
    CONFIG_NAME,
    FORMAT_VERSION,
    TORCHVISION_LAYOUT_SUFFIX,
    WEIGHTS_NAME,
    load_export,
    read_export,
)

try:  # POSIX: a staging folder is locked by its writer while it lives
    import fcntl
except ImportError:  # Windows
    fcntl = None

CARD_NAME = "README.md"
EXPORT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, CARD_NAME})
"""What `save_pretrained` writes, and all that `overwrite=True` agrees to replace."""
# Without file locks (Windows), a staging folder this old is taken to be a killed export's.
STALE_AFTER_S = 24 * 3600


def _equinox_model(model: Any) -> Any:
    if isinstance(model, TorchModel):
        return model.to_equinox()
    return model.model if isinstance(model, JaxModel) else model


def _name_and_state_dict(model: Any, name: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    name = name or getattr(model, "name", None)
    if not name:
        raise ValueError(
            "pass name= (the registry name, e.g. 'resnet18') to export a bare Equinox model"
        )
    get_model_info(name)  # an unknown name fails here, before anything is written
    if isinstance(model, TorchModel):
        state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    else:
        # copy=False: saving only reads the tensors, so they may share the JAX arrays' memory.
        state_dict = dict(wc.to_state_dict(_equinox_model(model), copy=False))
    return name, state_dict


def build_config(
    name: str,
    model: Any,
    *,
    label_names: Sequence[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`config.json`: timm's fields (so timm and the Hub read it) plus a `zoo` section.

    **Arguments:**

    - `name`: the registry name.
    - `model`: the model (a face or the Equinox model); its contract (`num_classes`,
      `num_features`, `in_chans`, `global_pool`, `first_conv`, `classifier`) fills the config.
    - `label_names`: one name per class.
    - `model_kwargs`: constructor options to record beside the contract's
      (`ZooModel.config_kwargs`, e.g. the dropout rate).
    - `pretrained_cfg`: the preprocessing the weights were trained with, where it is not
      the registry's default (`mean`, `std`, `input_size`, `interpolation`, `crop_pct`):
      a model trained on your own data records its own normalisation.
    """
    from .. import __version__

    info = get_model_info(name)
    eqx_model = _equinox_model(model)
    num_classes, in_chans = int(eqx_model.num_classes), int(eqx_model.in_chans)
    fixed = eqx_model.fixed_input_size()
    defaults = info.pretrained_cfg
    if fixed is not None:  # a ViT built for 384 pixels reads 384-pixel crops
        defaults = defaults | {"input_size": (in_chans, *fixed)}
    cfg = defaults | _preprocessing(pretrained_cfg, in_chans)
    if fixed is not None and tuple(cfg["input_size"][1:]) != tuple(fixed):
        raise ValueError(
            f"pretrained_cfg['input_size'] is {tuple(cfg['input_size'])}, but this {name} "
            f"computes at {fixed[0]}x{fixed[1]} only; leave input_size out (it is recorded), "
            "or build the model for your size (its image_size or input_size option)"
        )
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(
            f"label_names has {len(label_names)} entries but the model has {num_classes} "
            "classes; pass one name per class"
        )
    config: dict[str, Any] = {
        "architecture": name,
        "num_classes": num_classes,
        "num_features": int(eqx_model.num_features),
        "global_pool": eqx_model.global_pool,
    }
    if label_names is not None:
        config["label_names"] = list(label_names)
    config["pretrained_cfg"] = {
        "input_size": [in_chans, *cfg["input_size"][1:]],
        "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "num_classes": num_classes,
        "first_conv": eqx_model.first_conv_path,
        "classifier": eqx_model.classifier_path,
    }
    if fixed is not None:
        config["pretrained_cfg"]["fixed_input_size"] = True
    config["zoo"] = {
        "format": FORMAT_VERSION,
        "name": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "kwargs": eqx_model.config_kwargs() | dict(model_kwargs or {}),
        "version": __version__,
    }
    return config


PREPROCESSING_FIELDS = ("input_size", "interpolation", "crop_pct", "mean", "std")


def _preprocessing(overrides: Mapping[str, Any] | None, in_chans: int) -> dict[str, Any]:
    """`overrides` checked: timm's preprocessing fields only, with values timm reads."""
    if not overrides:
        return {}
    unknown = sorted(set(overrides) - set(PREPROCESSING_FIELDS))
    if unknown:
        raise ValueError(
            f"pretrained_cfg: {unknown} are not preprocessing fields; pass only "
            f"{list(PREPROCESSING_FIELDS)} (num_classes and in_chans come from the model)"
        )
    out = dict(overrides)
    for field in ("mean", "std"):
        if field in out:
            values = [float(v) for v in out[field]]
            if len(values) != in_chans or (field == "std" and min(values) <= 0):
                raise ValueError(
                    f"pretrained_cfg[{field!r}] must hold one {'positive ' * (field == 'std')}"
                    f"value per input channel ({in_chans}), got {out[field]!r}"
                )
            out[field] = tuple(values)
    if "input_size" in out:
        size = tuple(int(v) for v in out["input_size"])
        if len(size) != 3 or size[0] != in_chans or min(size) < 1:
            raise ValueError(
                f"pretrained_cfg['input_size'] must be ({in_chans}, height, width), got "
                f"{out['input_size']!r}"
            )
        out["input_size"] = size
    if "crop_pct" in out and not 0 < float(out["crop_pct"]) <= 1:
        raise ValueError(f"pretrained_cfg['crop_pct'] must be in (0, 1], got {out['crop_pct']!r}")
    return out


def torchvision_layout_architecture(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> str:
    """`config.json`'s `architecture` for a torchvision-layout export: the zoo's name where
    timm's model of that name is the same network under these very keys and no options
    (the architecture's `timm_layout` is the identity: ResNet, DenseNet, Inception v3 without
    `transform_input`), so `timm.create_model("local-dir:...", pretrained=True)` reads it;
    otherwise the name with `-torchvision-layout` appended, which timm refuses as an unknown
    model instead of loading the weights into another network (timm's VGG head differs
    beyond 7x7 maps; timm's Inception has no `transform_input`)."""
    name = config["zoo"]["name"]
    layout = get_model_info(name).timm_layout
    if layout is not None:
        try:
            architecture, renamed, model_args = layout(dict(state_dict), config["zoo"]["kwargs"])
        except ValueError:  # options timm cannot express
            pass
        else:
            if architecture == name and not model_args and list(renamed) == list(state_dict):
                return name
    return name + TORCHVISION_LAYOUT_SUFFIX


def to_timm_layout(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict:
    """Rewrite an export's `config` (in place) and `state_dict` (returned) in timm's names:
    `architecture` and `model_args` as `timm.create_model` takes them, `first_conv` and
    `classifier` as timm's paths, `zoo.layout = "timm"`. Refused for architectures without
    a `timm_layout`."""
    name = config["zoo"]["name"]
    info = get_model_info(name)
    if info.timm_layout is None:
        offered = [n for n in list_models() if get_model_info(n).timm_layout is not None]
        raise ValueError(
            f"{name!r} has no timm layout: export it with layout='torchvision' (timm reads "
            "those where its names are torchvision's, as for ResNet). Architectures with "
            f"one: {', '.join(offered) or 'none'}"
        )
    architecture, timm_state, model_args = info.timm_layout(state_dict, config["zoo"]["kwargs"])
    cfg = config["pretrained_cfg"]
    for field in ("first_conv", "classifier"):  # the layout renames key by key
        probe = {f"{cfg[field]}.weight": state_dict.get(f"{cfg[field]}.weight")}
        (renamed,) = info.timm_layout(probe, config["zoo"]["kwargs"])[1]
        cfg[field] = renamed.removesuffix(".weight")
    config["architecture"] = architecture
    config["model_args"] = model_args
    config["zoo"]["layout"] = "timm"
    return timm_state


def torchvision_snippet(config: Mapping[str, Any], path: str = "model.safetensors") -> str:
    """The code that builds torchvision's own model for a torchvision-layout export (the
    model's options as the export recorded them) and loads `path` into it strictly; with
    the torch `_metadata` the architecture's loader demands (MNASNet's module version)."""
    name = config["zoo"]["name"]
    options = {"num_classes": config["num_classes"], **config["zoo"]["kwargs"]}
    model_class = get_model_info(name).model_class
    metadata = model_class.torch_state_dict_metadata
    lines = ["import safetensors.torch", "import torchvision", ""]
    if metadata is not None:
        lines[:0] = ["from collections import OrderedDict"]
    lines += model_class.torchvision_code(name, options)
    if metadata is None:
        lines.append(f"state_dict = safetensors.torch.load_file({path!r})")
    else:
        lines += [
            f"state_dict = OrderedDict(safetensors.torch.load_file({path!r}))",
            f"state_dict._metadata = {metadata!r}  # torchvision's loader checks it",
        ]
    lines.append("model.load_state_dict(state_dict)")
    return "\n".join(lines)


def build_card(
    config: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] | None = None,
) -> str:
    """`README.md`: the Hub's YAML header and a usage snippet."""
    from huggingface_hub import ModelCardData

    name = config["zoo"]["name"]
    timm_layout = config["zoo"].get("layout") == "timm"
    data = ModelCardData(
        library_name="equizoo",
        tags=["image-classification", "equizoo", "jax", "equinox", "pytorch", name, *(tags or [])],
        license=license or "other",
        pipeline_tag="image-classification",
        datasets=list(datasets) if datasets else None,
        metrics=list(metrics) if metrics else None,
    )
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/folder"
    cfg = config["pretrained_cfg"]
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {repo_id or name}",
        "",
        f"`{name}` ({config['num_classes']} classes, {cfg['input_size'][0]} input channels), "
        "exported by [equizoo](https://pypi.org/project/equizoo/). `model.safetensors` holds "
        + (
            f"timm's `{config['architecture']}` state_dict keys"
            if timm_layout
            else "torchvision's state_dict keys and layout"
        )
        + "; `config.json` is in timm's shape.",
        "",
        "## Usage",
        "",
        "```python",
        "import zoo",
        "",
        f'model = zoo.load("{source}", framework="jax")  # or framework="torch"',
        "```",
        "",
    ]
    if timm_layout:
        lines += [
            "With timm alone:",
            "",
            "```python",
            "import timm",
            "",
            'model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)',
            "```",
            "",
        ]
    elif get_model_info(name).torchvision_weights is not None and cfg["input_size"][0] == 3:
        lines += [
            "With torchvision alone:",
            "",
            "```python",
            torchvision_snippet(config),
            "```",
            "",
        ]
    lines += [
        "Preprocessing: resize and centre-crop to "
        f"{cfg['input_size'][1]}x{cfg['input_size'][2]} (crop_pct {cfg['crop_pct']}, "
        f"{cfg['interpolation']}), normalise with mean {cfg['mean']} and std {cfg['std']}.",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    return "\n".join(lines)


# -- writing: staged aside, checked, then swapped into place in one step -----------------------


def refuse_non_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise `ValueError` if a tensor holds NaN or infinity: `zoo.load` would refuse the file,
    so it is never written."""
    bad = wc.non_finite_keys(state_dict)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(
            f"refusing to export non-finite weights (NaN or inf) in {', '.join(map(repr, bad[:3]))}"
            f"{more}: zoo.load would refuse the file. Did the training diverge? Export a "
            "checkpoint from before."
        )


def _sync(path: Path) -> None:
    # Durable before the rename that publishes it: a power cut must not leave a complete-
    # looking folder of empty files.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the data files are synced
        pass
    finally:
        os.close(fd)


def _write_safetensors(state_dict: Mapping[str, torch.Tensor], path: Path, mode: int) -> None:
    from safetensors.torch import save_file

    # One metadata key: safetensors orders several at random, and an export should be
    # byte-reproducible. timm and the Hub read "pt".
    save_file(dict(state_dict), str(path), metadata={"format": "pt"})
    # safetensors writes through a private temporary file (0600): give it the mode every
    # other file of the export got from the umask.
    os.chmod(path, mode)
    _sync(path)


def _write_text(path: Path, text: str) -> int:
    """Write a new file with the process's ordinary permissions; returns its mode."""
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
        return os.fstat(f.fileno()).st_mode & 0o7777


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def _lock(fd: int) -> bool:
    """Take the writer's lock on an open staging folder or file; False if another holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def clean_stale(target: Path) -> None:
    """Remove what killed exports to `target` left beside it (`.NAME.partial-*`, and the
    `.NAME.old-*` of older versions): the staging folders or files no live writer holds
    locked (without file locks, on Windows: those untouched for a day)."""
    prefixes = (_staging_prefix(target), f".{target.name}.old-")
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefixes)]
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if fcntl is None:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            else:
                fd = os.open(path, os.O_RDONLY)
                try:
                    stale = _lock(fd)  # a live writer holds its lock until it is done
                finally:
                    os.close(fd)  # the lock goes with it; a stale folder has no writer left
            if stale and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            elif stale:
                path.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to read: leave it
            continue


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A new `.NAME.partial-XXXX` folder beside `target`, locked by this writer while it
    lives (so `clean_stale` leaves it alone) and removed on the way out, whatever is left in
    it. Created with the umask's permissions: mkdtemp's 0700 would make an export private."""
    while True:
        path = target.parent / f"{_staging_prefix(target)}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        if fcntl is None:  # no locks (Windows): clean_stale goes by age instead
            fd = None
            break
        # A cleaner may take it between mkdir and the lock: then make another.
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            mine = _lock(fd) and os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            mine = False
        if mine:
            break
        os.close(fd)
    try:
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)  # gone already once renamed into place
        finally:
            if fd is not None:
                os.close(fd)


def _new_file_mode(folder: Path) -> int:
    """The permissions this process gives a new file (0666 less the umask), read from one
    made for the purpose: os.umask would change process-wide state to read it."""
    probe = folder / ".mode"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = os.stat(probe).st_mode & 0o7777
    probe.unlink()
    return mode


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.1
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux's `renameat2(RENAME_EXCHANGE)`, which also
    swaps non-empty folders); `False` where the system or the file system cannot."""
    function = _renameat2()
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _publish(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target`, replacing what is there in one step
    where the system can (see `exchange`); what it replaced is deleted after."""
    if not target.exists() and not target.is_symlink():
        try:
            os.rename(staging, target)  # atomic; replaces nothing but an empty folder
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    f"{target} appeared while it was being exported; export again to replace it"
                ) from e
            raise
    elif exchange(staging, target):
        # `staging` now holds the old export: a reader that opened it finishes, or starts
        # over on the new one (see read_export).
        shutil.rmtree(staging, ignore_errors=True)
    else:
        # No atomic exchange (not Linux, or a file system without it): two renames, with a
        # moment between them in which `target` does not exist.
        old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    _sync(target.parent)


def _export_problem(directory: Path) -> str | None:
    """Why `directory` is not recognisably a zoo export (a phrase), or `None` if it is: only
    the export's files, and a `config.json` with a `zoo` section."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        return f"it cannot be listed ({e.strerror})"
    others = [e.name + ("/" if e.is_dir() else "") for e in entries if e.name not in EXPORT_FILES]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        return f"it holds {shown}, which no export has"
    not_files = [e.name for e in entries if not e.is_file(follow_symlinks=False)]
    if not_files:
        return f"its {', '.join(not_files)} is not a plain file"
    if CONFIG_NAME not in {e.name for e in entries}:
        return "it has no config.json"
    try:
        with open(directory / CONFIG_NAME, "rb") as f:
            config = json.loads(f.read(1 << 24).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "its config.json is not readable JSON"
    if not (isinstance(config, dict) and isinstance(config.get("zoo"), dict)):
        return "its config.json has no 'zoo' section"
    return None


def check_target(directory: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a `directory` that `save_pretrained` must not
    replace: anything but a missing or empty folder, unless `overwrite` and it is a zoo
    export."""
    if directory.is_symlink():
        raise FileExistsError(
            f"{directory} is a symbolic link; export to the folder it points to "
            f"({os.path.realpath(directory)}) or to a new path"
        )
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is a file; export to a folder path")
    if not any(directory.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{directory} exists and is not empty; pass overwrite=True to replace it"
        )
    problem = _export_problem(directory)
    if problem is not None:
        raise FileExistsError(
            f"{directory} is not a folder written by zoo.save_pretrained: {problem}. "
            "overwrite=True replaces only an export (config.json with a 'zoo' section, "
            "model.safetensors, README.md), so nothing was deleted; export to a new folder, "
            "or empty this one yourself."
        )


def write_weights_file(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write `state_dict` to one `.safetensors` file, as `save_pretrained` writes its
    `model.safetensors`: staged beside `path`, then renamed into place (so `path` is always
    the old file or the new one), with ordinary permissions. `overwrite` replaces only a
    safetensors file; non-finite weights are refused.

    **Returns:** the path written.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
        if not _is_safetensors_file(path):
            raise FileExistsError(
                f"{path} is not a safetensors file; --overwrite replaces only one, so nothing "
                "was deleted. Write to a new path, or remove it yourself."
            )
    refuse_non_finite(state_dict)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    with _staging(path) as staging:
        _write_safetensors(state_dict, staging / path.name, _new_file_mode(staging))
        os.replace(staging / path.name, path)  # a file is replaced in one step everywhere
        _sync(path.parent)
    return path


def _is_safetensors_file(path: Path) -> bool:
    from safetensors import safe_open

    if path.is_symlink() or not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt"):
            return True
    except Exception:  # safetensors' Rust errors have no stable Python name
        return False


def save_pretrained(
    model: Any,
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    label_names: Sequence[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] | None = None,
    overwrite: bool = False,
    layout: Literal["torchvision", "timm"] = "torchvision",
) -> Path:
    """Write a Hub-ready folder: `model.safetensors`, `config.json` and `README.md`.

    The folder is built beside `directory` under a hidden temporary name
    (`.NAME.partial-XXXX`), synced, and swapped into place in one step, so `directory` is
    always either absent, the old export, or the complete new one: an interrupted export
    leaves no half-written folder, and a concurrent `zoo.load` gets the old or the new model.
    A staging folder left by a killed export is removed by the next export to `directory`.
    `zoo.load("local-dir:<directory>")` loads it back bit-identical; torchvision
    (`load_state_dict(safetensors.torch.load_file(...))`) and timm read it too. The files
    get the permissions of any new file (the umask's).

    **Arguments:**

    - `model`: a `JaxModel`, a `TorchModel`, or a bare Equinox model (then pass `name=`).
    - `directory`: the folder to create.
    - `name`: the registry name (default: the face's `.name`).
    - `label_names`: one name per class, stored in `config.json` as timm does.
    - `model_kwargs`: extra constructor options to record (`num_classes`, `in_chans` and
      the model's `config_kwargs()`, such as a dropout rate, are recorded without asking).
    - `pretrained_cfg`: the preprocessing the weights expect where it differs from the
      registry's (`{"mean": [0.305], "std": [0.324]}` for a model trained on data you
      standardised yourself): `config.json` and the card record it, for timm and for users.
    - `repo_id`, `license`, `datasets`, `metrics` (`{"top1": 69.8}`), `tags`: the model card.
    - `overwrite`: replace an existing `directory` that is an export (only `config.json`
      with a `zoo` section, `model.safetensors` and `README.md`; anything else is refused
      and nothing is deleted), still in one step.
    - `layout`: `"torchvision"` (torchvision's keys; timm reads them where its names are
      torchvision's, as for ResNet) or `"timm"`, for architectures timm names differently
      (ViT: `zoo.get_model_info(name).timm_layout`): timm's keys, model name and options,
      so `timm.create_model("local-dir:...", pretrained=True)` builds and loads it;
      `zoo.load` reads both.

    **Returns:** the path of the folder written.

    **Raises:** `FileExistsError` for a `directory` it must not replace; `ValueError` for
    weights with NaN or infinity (`zoo.load` would refuse them).
    """
    directory = Path(directory).expanduser().absolute()
    check_target(directory, overwrite)
    name, state_dict = _name_and_state_dict(model, name)
    refuse_non_finite(state_dict)
    config = build_config(
        name,
        model,
        label_names=label_names,
        model_kwargs=model_kwargs,
        pretrained_cfg=pretrained_cfg,
    )
    if layout == "timm":
        state_dict = to_timm_layout(config, state_dict)
    elif layout == "torchvision":
        config["architecture"] = torchvision_layout_architecture(config, state_dict)
    else:
        raise ValueError(f"layout must be 'torchvision' or 'timm', not {layout!r}")
    card = build_card(
        config, repo_id=repo_id, license=license, datasets=datasets, metrics=metrics, tags=tags
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(directory)
    with _staging(directory) as staging:
        mode = _write_text(staging / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        _write_text(staging / CARD_NAME, card)
        _write_safetensors(state_dict, staging / WEIGHTS_NAME, mode)
        _sync(staging)
        check_target(directory, overwrite)  # again: it may have changed while we wrote
        _publish(staging, directory)
    return directory


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload model exported by equizoo",
    token: str | None = None,
    **save_kwargs: Any,
) -> Any:
    """Export `model` (as `save_pretrained` does) and upload it to the Hugging Face Hub in
    one commit.

    **Arguments:**

    - `model`: what `save_pretrained` takes, or the path of a folder it wrote. A folder is
      read once (as `zoo.load` reads it, so a concurrent re-export cannot mix into it),
      loaded to check it (a folder that does not load is refused, naming the file and the
      problem), and only its export files (`config.json`, the weights, `README.md`) are
      uploaded: anything else in it (`.env`, notes, subfolders) stays local, with a warning
      listing it.
    - `repo_id`: `"org/name"`; the repository is created if it does not exist.
    - `private`: create the repository private.
    - `revision`: the branch to commit to (created if missing; default `main`).
    - `create_pr`: open a pull request instead of committing to the branch.
    - `commit_message`, `token`: as in `huggingface_hub.HfApi.upload_folder`.
    - `**save_kwargs`: passed to `save_pretrained` (`name`, `label_names`, `license`, ...).

    **Returns:** huggingface_hub's `CommitInfo` (its `.commit_url`, `.pr_url`).
    """
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        if isinstance(model, str | os.PathLike):
            if save_kwargs:
                raise TypeError(f"{sorted(save_kwargs)} apply only when pushing a model")
            folder = _stage_folder(Path(model), Path(tmp) / "export")
        else:
            folder = save_pretrained(model, Path(tmp) / "export", repo_id=repo_id, **save_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
        )


def _stage_folder(source: Path, staged: Path) -> Path:
    """Copy an export's files (read once, together) from `source` to `staged`, after
    checking that they load; warn about what is left out."""
    files = read_export(source, card=True)
    load_export(files, framework="equinox")  # strict: a folder that does not load is refused
    staged.mkdir()
    (staged / files.config_path.name).write_bytes(files.config)
    (staged / files.weights_path.name).write_bytes(files.weights)
    if files.card is not None:
        (staged / CARD_NAME).write_bytes(files.card)
    kept = {files.config_path.name, files.weights_path.name, CARD_NAME}
    left = sorted(
        e.name + ("/" if e.is_dir() else "") for e in os.scandir(source) if e.name not in kept
    )
    if left:
        warnings.warn(
            f"zoo.push_to_hub({str(source)!r}): not uploaded, as no export has them: "
            f"{', '.join(left)}",
            stacklevel=3,
        )
    return staged
