"""Checkpoints: atomic save, safe load (`weights_only=True`), and the model they describe.

    model, ckpt = load_model(run_dir / "checkpoints" / "best.pt")

A checkpoint describes itself (backbone, labels, preprocessing, resolved recipe, LoRA config), so export
and verify need nothing but its path.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from edgetl.backbones import create_model, get_backbone
from edgetl.errors import BackboneError, CheckpointError, RunDirError, first_line
from edgetl.files import atomic_path, remove_stale_temp_files
from edgetl.model.weights import state_dict_mismatch
from edgetl.recipe import HeadSection
from edgetl.rundir import SCHEMA_VERSION, CheckpointMeta, damaged, read_checkpoint_meta
from edgetl.version import __version__


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (under the run's lock); a killed earlier write's temp file goes first."""
    remove_stale_temp_files(Path(path))
    with atomic_path(path) as tmp:
        try:
            torch.save({**state, "schema_version": SCHEMA_VERSION, "edgetl_version": __version__}, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk...) as RuntimeError
            raise CheckpointError(f"cannot write {path}: torch.save failed ({first_line(e, limit=160)}) — is the disk "
                                  f"full? The previous file is left intact") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load without executing code from the file; a missing or damaged file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found — train first, or pass the right run directory")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text is long and generic; say in a few words what it refused.
        imports = re.search(r"GLOBAL (\S+)", str(e))
        if imports:
            raise CheckpointError(f"checkpoint {path} refused: loading it would import {imports.group(1)}, and edgetl "
                                  f"loads checkpoints as data only (torch.load weights_only=True) — it is not an edgetl "
                                  f"checkpoint; do not load it at all unless you trust where it came from") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        why = f"torch.load weights_only=True: {detail.group(1).strip()}" if detail else first_line(e, limit=160)
        raise damaged(path, f"not an edgetl checkpoint: {why}", error=CheckpointError) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise damaged(path, f"not an edgetl checkpoint: {first_line(e, limit=160)}", error=CheckpointError) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "backbone" not in ckpt:
        raise damaged(path, "not an edgetl checkpoint: no model/backbone entries", error=CheckpointError)
    return ckpt


def checkpoint_meta(ckpt: dict[str, Any], *, source: Path | str) -> CheckpointMeta:
    """The typed metadata of a loaded checkpoint (a CheckpointError when it is missing or damaged)."""
    try:
        return read_checkpoint_meta(ckpt, source=source)
    except RunDirError as e:  # the schema's words, said as a checkpoint problem
        raise CheckpointError(str(e)) from None


def build_model(ckpt: dict[str, Any], *, source: Path | str = "checkpoint") -> nn.Module:
    """The model a checkpoint describes (with LoRA adapters when it has them), weights loaded, eval mode."""
    meta = checkpoint_meta(ckpt, source=source)  # typed first: a damaged field is one line, never a TypeError
    try:
        backbone = get_backbone(meta.backbone)
    except BackboneError as e:
        raise CheckpointError(f"{source}: {e}") from None
    head = meta.recipe.get("head")
    try:
        spec = HeadSection.model_validate(head).spec() if head else None
    except ValidationError as e:
        raise damaged(source, f"recipe head: {e.errors()[0]['msg']}", error=CheckpointError) from None
    try:
        model = create_model(backbone, num_classes=meta.num_classes, image_size=meta.preprocessing.crop_size,
                             head=spec)
    except BackboneError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if meta.lora:
        from edgetl.model.lora import LoraConfig, inject_lora

        try:
            config = LoraConfig(**meta.lora)
        except (TypeError, ValueError) as e:
            raise damaged(source, f"lora: {e}", error=CheckpointError) from None
        inject_lora(model, config)
    check_fits(model, ckpt["model"], backbone=meta.backbone, num_classes=meta.num_classes, source=source)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], *, backbone: str, num_classes: int, source) -> None:
    """Refuse a state dict from another backbone or class count with a message that says what it is."""
    missing, unexpected, wrong = state_dict_mismatch(model.state_dict(), state)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{source}: weights do not fit {backbone} with {num_classes} classes "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrongly shaped, e.g. {example!r})"
        )


def check_belongs(ckpt: dict[str, Any], *, backbone: str, labels: list[str], source: Path | str) -> None:
    """Refuse a checkpoint copied in from another run: its backbone and labels must be the run's own."""
    def describe(name: str, names: list[str]) -> str:
        shown = ", ".join(map(str, names[:4])) + (", …" if len(names) > 4 else "")
        return f"{name} with {len(names)} classes ({shown})"

    own = list(ckpt.get("labels") or [])
    if ckpt.get("backbone") != backbone or own != list(labels):
        raise CheckpointError(f"{source} belongs to another run: it is {describe(ckpt.get('backbone'), own)}, this run "
                              f"is {describe(backbone, list(labels))} — put this run's own checkpoint back, or use the "
                              f"run it came from")


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    return build_model(ckpt, source=path), ckpt
