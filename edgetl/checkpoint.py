"""Checkpoints: atomic save, safe load (`weights_only=True`), and the model they describe.

    model, ckpt = load_model(run_dir / "checkpoints" / "best.pt")

A checkpoint describes itself (backbone, labels, preprocessing, resolved recipe, LoRA config), so export
and verify need nothing but its path.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetl import __version__
from edgetl.backbones import get_backbone
from edgetl.errors import BackboneError, CheckpointError
from edgetl.files import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, "edgetl_version": __version__, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load without executing code from the file; a missing or damaged file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found — train first, or pass the right run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not an edgetl checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "backbone" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not an edgetl checkpoint (no model/backbone entries)")
    return ckpt


def build_model(ckpt: dict[str, Any], *, source: Path | str = "checkpoint") -> nn.Module:
    """The model a checkpoint describes (with LoRA adapters when it has them), weights loaded, eval mode."""
    try:
        backbone = get_backbone(ckpt["backbone"])
    except BackboneError as e:
        raise CheckpointError(f"{source}: {e}") from None
    model = backbone.build(ckpt["num_classes"])
    if ckpt.get("lora"):
        from edgetl.lora import LoraConfig, inject_lora

        inject_lora(model, LoraConfig(**ckpt["lora"]))
    check_fits(model, ckpt["model"], backbone=ckpt["backbone"], num_classes=ckpt["num_classes"], source=source)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], *, backbone: str, num_classes: int, source) -> None:
    """Refuse a state dict from another backbone or class count with a message that says what it is."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{source}: weights do not fit {backbone} with {num_classes} classes "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrongly shaped, e.g. {example!r})"
        )


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    return build_model(ckpt, source=path), ckpt
