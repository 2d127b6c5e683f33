"""Run directories without training, for tests and benchmarks (like `torch.testing`: not for production).

    run = make_run(tmp_path, backbone="resnet18", image_size=64); export_run(run)

A fresh model has unit BatchNorm statistics, collapsed activations and near-zero logits, which makes folding
and parity checks meaningless; these models have calibrated statistics and real-magnitude outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl import files
from edgetl.backbones import create_model, get_backbone
from edgetl.model.checkpoint import save_checkpoint
from edgetl.preprocessing import Preprocessing, preprocess_image
from edgetl.recipe import parse_recipe
from edgetl.rundir import CheckpointMeta, RunDir
from edgetl.training.epoch import Callbacks
from edgetl.training.state import Best, TrainState


@torch.no_grad()
def randomize_for_parity(model: nn.Module, *, seed: int = 0, image_size: int = 32,
                         images: torch.Tensor | None = None) -> nn.Module:
    """Give BatchNorm non-trivial affine terms and statistics that fit its inputs, and the classifier
    real-magnitude outputs, so folding and parity checks mean something (a fresh model has unit BN statistics,
    collapsed activations and near-zero logits). `images` (preprocessed photos, [N, 3, S, S]) calibrate instead
    of noise: a deep random net calibrated on noise can give photos logits of 1e11 (EfficientNet-B4 here)."""
    g = torch.Generator().manual_seed(seed)

    def batch() -> torch.Tensor:
        if images is None:
            return torch.randn(8, 3, image_size, image_size, generator=g)
        return images[torch.randperm(len(images), generator=g)[:8]]

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
        m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(3):
        model(batch())
    for m in norms:
        m.momentum = 0.1
    model.eval()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if not last_linear.weight.any():  # torchvision's ViT zero-initialises its head: logits would stay exactly 0
        last_linear.weight.normal_(0.0, 0.01, generator=g)
    logits = model(batch())
    last_linear.weight.mul_(4.0 / logits.std().clamp_min(1e-6))
    if last_linear.bias is not None:
        last_linear.bias.zero_()
    return model


def fit_head(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, steps: int = 200,
             lr: float = 0.05) -> nn.Module:
    """Train only the last Linear layer on `images` (preprocessed, [N, 3, S, S]) toward `targets`, so that a
    stand-in's top-1 has real margins on those images: a random head leaves near-ties that INT8 or another
    runtime's rounding flips one way on one machine and the other way on the next."""
    model.eval()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = last_linear.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    features = captured[0]
    optimizer = torch.optim.Adam(last_linear.parameters(), lr=lr)
    for _ in range(steps):  # the features are fixed: a few hundred steps of a linear model take milliseconds
        optimizer.zero_grad()
        nn.functional.cross_entropy(last_linear(features), targets).backward()
        optimizer.step()
    return model


def make_run(root: Path, *, backbone: str = "mobilenet_v3_small", num_classes: int = 3, image_size: int = 32,
             seed: int = 0, lora: dict | None = None, calibrate_size: int | None = None,
             data: Path | None = None, head: dict | None = None, calibration: torch.Tensor | None = None) -> Path:
    """A run directory as `edgetl train` writes it (best.pt/last.pt, labels, preprocessing, resolved recipe),
    without training: LoRA adapters with non-zero B when `lora` is a recipe [lora] section; BatchNorm
    calibrated at `calibrate_size` px (default: image_size; smaller is cheaper). With `data` (a folder of
    `train/` and `val/` class folders named class_0, class_1, ...), split.json lists its images, so INT8 has
    train images to calibrate on and verify labelled val images; BatchNorm is then calibrated on those images and
    the head fitted to their classes (`fit_head`), so lossy files are judged on real margins. `calibration`: preprocessed photos to calibrate
    BatchNorm and scale the head on, instead of noise (`randomize_for_parity`)."""
    bb = get_backbone(backbone)
    torch.manual_seed(seed)
    recipe = parse_recipe({"backbone": backbone, "weights": "none", "image_size": image_size, "lora": lora,
                           "head": head, "phases": [{"name": "head", "epochs": 1}]})
    model = create_model(bb, num_classes=num_classes, image_size=image_size,
                         head=recipe.head.spec() if recipe.head else None)
    prep = bb.preprocessing.scaled(image_size)
    labelled = _labelled_images(Path(data), prep, num_classes) if data is not None else None
    if labelled is not None and calibration is None:
        calibration = labelled[0]
    model = randomize_for_parity(model, seed=seed, image_size=calibrate_size or image_size, images=calibration)
    if labelled is not None:
        fit_head(model, *labelled)
    lora_config = None
    if recipe.lora is not None:
        from edgetl.model.lora import inject_lora, lora_parameters
        from edgetl.training.phases import lora_config as make_config

        lora_config = make_config(recipe.lora, model, bb.groups(model))
        inject_lora(model, lora_config)
        g = torch.Generator().manual_seed(seed + 1)
        for p in lora_parameters(model):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.02)
    labels = [f"class_{i}" for i in range(num_classes)]
    meta = CheckpointMeta(backbone=backbone, num_classes=num_classes, labels=labels, preprocessing=prep,
                          recipe=recipe.model_dump(), recipe_sha256=recipe.digest(),
                          lora=lora_config.to_dict() if lora_config else None)
    run = RunDir(root / (f"run-{backbone.replace(':', '-')}" + ("-lora" if lora else "")))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    best = meta.model_copy(update={"val_acc": 0.9, "val_loss": 0.3, "epoch": 1})
    save_checkpoint(run.checkpoint("best"), {**best.model_dump(mode="json"), "model": state})
    last = TrainState(next_phase=1, global_epoch=1, best=Best(val_loss=0.3, val_acc=0.9, epoch=1))
    save_checkpoint(run.checkpoint("last"), {**meta.model_dump(mode="json", exclude={"epoch", "val_acc", "val_loss"}),
                                             "model": state, **last.to_checkpoint()})
    files.write_text(run.recipe, recipe.to_toml())
    files.write_json(run.labels, labels)
    files.write_json(run.preprocessing, prep.to_dict())
    split: dict = {"source": "none", "train": [], "val": []}
    if data is not None:
        listed = {part: sorted(str(p.relative_to(data)) for p in (Path(data) / part).rglob("*") if p.is_file())
                  for part in ("train", "val")}
        split = {"source": str(data), "root": str(Path(data).resolve()),
                 **{part: [[rel, Path(rel).parent.name] for rel in rels] for part, rels in listed.items()}}
    files.write_json(run.split, split)
    return run.root


def _labelled_images(data: Path, preprocessing: Preprocessing, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `data`'s train/ and val/ folders class_0 .. class_{n-1}, preprocessed, with its class."""
    images, targets = [], []
    for i in range(num_classes):
        for path in sorted(data.glob(f"*/class_{i}/*")):
            images.append(preprocess_image(path, preprocessing))
            targets.append(i)
    return torch.from_numpy(np.stack(images)), torch.tensor(targets)


class StopAfterEpoch(Callbacks):
    """Raises KeyboardInterrupt right after an epoch's checkpoint is written, like a kill between epochs."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def epoch_end(self, record: dict) -> None:
        if record["epoch"] == self.after_epoch:
            raise KeyboardInterrupt


def edit_manifest(run: Path, change, *, export: Path | None = None) -> None:
    """Apply `change(manifest_dict)` to RUN/export/manifest.json (or `export`/manifest.json), as a careless script
    (or an attacker) would."""
    import json

    path = Path(export or Path(run) / "export") / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(run: Path, file: str, *, export: Path | None = None) -> None:
    """Make the manifest agree with an edited export file (its size and sha256): a consistent tamper."""
    path = Path(export or Path(run) / "export") / file

    def update(manifest: dict) -> None:
        entry = next(a for a in manifest["artifacts"] if a["file"] == file)
        entry.update(bytes=path.stat().st_size, sha256=files.sha256_file(path))

    edit_manifest(run, update, export=export)
