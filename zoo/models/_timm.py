"""timm's side of an architecture: the two registry hooks a family declares where timm has
the same network (`ModelInfo.timm_layout` for `save_pretrained(..., layout="timm")`,
`ModelInfo.checkpoint_adapter` so timm's checkpoints load), built from the family's own
key maps.

A family writes `to_timm(state_dict) -> state_dict` (torchvision's keys to timm's, key by
key) and `to_torchvision(state_dict) -> state_dict` (the inverse), and registers

    @register(..., **timm_interop("convnext_tiny", to_timm, to_torchvision, marker="stem.0.weight"))
"""

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .._registry import CheckpointHook, timm_layout_from

StateDict = dict[str, Any]


class TimmCheckpointWarning(UserWarning):
    """A timm checkpoint was loaded into torchvision's network where timm's model of that
    name is built differently by default (BatchNorm eps): weights trained in timm with its
    defaults compute other logits here. The zoo's own `layout="timm"` exports record the
    options they need and load without it."""


def warn_timm_defaults_differ(architecture: str, differences: Mapping[str, Any]) -> None:
    """Warn (`TimmCheckpointWarning`) that timm builds `architecture` with other
    `create_model` options than torchvision's network (`differences`: timm's argument ->
    torchvision's value)."""
    options = ", ".join(f"{k}={v!r}" for k, v in differences.items())
    warnings.warn(
        f"loading a timm {architecture} checkpoint into torchvision's network, which timm "
        f"builds only when asked ({options}); timm's defaults differ (its own pretrained "
        f"{architecture} weights were trained with them), so weights trained in timm with "
        "its defaults compute other logits here. Exports the zoo wrote with layout='timm' "
        "are torchvision's network.",
        TimmCheckpointWarning,
        stacklevel=4,
    )


Rename = Callable[[Mapping[str, Any]], StateDict]
ModelArgs = Callable[[dict[str, Any]], dict[str, Any]]


def refuse_unplaced(unknown: list[str], what: str) -> None:
    """Raise `ValueError` naming (the first five of) the `unknown` keys a key map found no
    place for, after `what` the checkpoint is not; nothing if there are none."""
    if unknown:
        more = " ..." if len(unknown) > 5 else ""
        raise ValueError(f"{what}: no place for {', '.join(unknown[:5])}{more}")


def timm_checkpoint(marker: str, to_torchvision: Rename) -> CheckpointHook:
    """A `checkpoint_adapter` that renames a timm checkpoint (one holding the key `marker`,
    which torchvision's never holds) to torchvision's keys; other checkpoints pass as they
    are."""

    def adapt(state_dict: StateDict, kwargs: dict[str, Any]) -> StateDict:
        return to_torchvision(state_dict) if marker in state_dict else state_dict

    return adapt


def timm_interop(
    architecture: str,
    to_timm: Rename | None = None,
    to_torchvision: Rename | None = None,
    *,
    marker: str | None = None,
    model_args: ModelArgs | None = None,
) -> dict[str, Any]:
    """`register`'s keyword arguments for an architecture timm has as `architecture`: its
    `timm_layout`, and (given `to_torchvision` and the `marker` key that tells timm's
    checkpoints apart) its `checkpoint_adapter`."""
    out: dict[str, Any] = {"timm_layout": timm_layout_from(architecture, to_timm, model_args)}
    if to_torchvision is not None:
        if marker is None:
            raise ValueError("a timm checkpoint adapter needs the marker key that tells it apart")
        out["checkpoint_adapter"] = timm_checkpoint(marker, to_torchvision)
    return out
