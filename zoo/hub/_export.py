"""Exporting to a Hub-ready folder (`save_pretrained`) and to the Hub (`push_to_hub`)."""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import weights_convert as wc

from .._registry import get_model_info
from ..adapters import JaxModel, TorchModel
from ._sources import CONFIG_NAME, WEIGHTS_NAME, fetch

CARD_NAME = "README.md"
FORMAT_VERSION = 1


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
) -> dict[str, Any]:
    """`config.json`: timm's fields (so timm and the Hub read it) plus a `zoo` section.

    **Arguments:**

    - `name`: the registry name.
    - `model`: the model (a face or the Equinox model); its contract (`num_classes`,
      `num_features`, `in_chans`, `global_pool`, `first_conv`, `classifier`) fills the config.
    - `label_names`: one name per class.
    - `model_kwargs`: constructor options to record beside the contract's
      (`ZooModel.config_kwargs`, e.g. the dropout rate).
    """
    from .. import __version__

    info = get_model_info(name)
    cfg = info.pretrained_cfg
    eqx_model = _equinox_model(model)
    num_classes, in_chans = int(eqx_model.num_classes), int(eqx_model.in_chans)
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
    config["zoo"] = {
        "format": FORMAT_VERSION,
        "name": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "kwargs": eqx_model.config_kwargs() | dict(model_kwargs or {}),
        "version": __version__,
    }
    return config


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
        "torchvision's state_dict keys and layout; `config.json` is in timm's shape.",
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
    if get_model_info(name).torchvision_weights is not None:
        lines += [
            "With torchvision alone:",
            "",
            "```python",
            "import safetensors.torch, torchvision",
            "",
            f"model = torchvision.models.{name}(num_classes={config['num_classes']})",
            'model.load_state_dict(safetensors.torch.load_file("model.safetensors"))',
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


def _write_safetensors(state_dict: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    from safetensors.torch import save_file

    # One metadata key: safetensors orders several at random, and an export should be
    # byte-reproducible. timm and the Hub read "pt".
    save_file(dict(state_dict), str(path), metadata={"format": "pt"})


def save_pretrained(
    model: Any,
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    label_names: Sequence[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hub-ready folder: `model.safetensors`, `config.json` and `README.md`.

    The folder is written next to `directory` under a temporary name and renamed into place,
    so an interrupted export never leaves a half-written folder behind.
    `zoo.load("local-dir:<directory>")` loads it back bit-identical; torchvision
    (`load_state_dict(safetensors.torch.load_file(...))`) and timm read it too.

    **Arguments:**

    - `model`: a `JaxModel`, a `TorchModel`, or a bare Equinox model (then pass `name=`).
    - `directory`: the folder to create.
    - `name`: the registry name (default: the face's `.name`).
    - `label_names`: one name per class, stored in `config.json` as timm does.
    - `model_kwargs`: extra constructor options to record (`num_classes`, `in_chans` and
      the model's `config_kwargs()`, such as a dropout rate, are recorded without asking).
    - `repo_id`, `license`, `datasets`, `metrics` (`{"top1": 69.8}`), `tags`: the model card.
    - `overwrite`: replace an existing non-empty `directory` (still atomically).

    **Returns:** the path of the folder written.
    """
    directory = Path(directory).expanduser().absolute()
    if (
        directory.exists()
        and not overwrite
        and (not directory.is_dir() or any(directory.iterdir()))
    ):
        raise FileExistsError(
            f"{directory} exists and is not empty; pass overwrite=True to replace it"
        )
    name, state_dict = _name_and_state_dict(model, name)
    config = build_config(name, model, label_names=label_names, model_kwargs=model_kwargs)
    card = build_card(
        config, repo_id=repo_id, license=license, datasets=datasets, metrics=metrics, tags=tags
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        _write_safetensors(state_dict, staging / WEIGHTS_NAME, name)
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; an export is ordinary data
        if directory.exists():
            # A rename cannot replace a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "x")
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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

    - `model`: what `save_pretrained` takes, or the path of a folder it wrote (uploaded as is,
      after checking that it is complete).
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
            folder = Path(model)
            if save_kwargs:
                raise TypeError(f"{sorted(save_kwargs)} apply only when pushing a model")
            fetch(f"local-dir:{folder}")  # refuses a folder that does not load
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
