"""The progressive trainer: phases, per-depth learning rates, BatchNorm policy, schedules, early stopping.

    result = train(load_recipe("quickstart"), run_dir=Path("artifacts/demo"))

Each phase of the recipe decides which layer groups train (`head`, `last:N`, `all`), at which rates; the code
below only applies that policy. Frozen work is not redone: a frozen prefix builds no autograd graph, and a
head-only phase without augmentation trains on backbone features computed once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgetl import files
from edgetl.backbones import Backbone, LayerGroup, get_backbone
from edgetl.checkpoint import check_belongs, load_checkpoint, save_checkpoint
from edgetl.data import DataBundle, augment_batch, center_crop_batch, load_data, normalize
from edgetl.errors import EdgetlError, RecipeError, TrainingError
from edgetl.preprocessing import Preprocessing
from edgetl.lora import LoraConfig, inject_lora
from edgetl.recipe import LoraSection, Phase, Recipe, parse_recipe
from edgetl.weights import load_pretrained

log = logging.getLogger(__name__)


class Callbacks:
    """Progress hooks; the CLI renders them. Every method is optional."""

    def data_progress(self, done: int, total: int) -> None: ...
    def phase_start(self, *, index: int, phase: Phase, steps: int, trainable: dict[str, int], cached: bool) -> None: ...
    def step(self) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


@dataclass
class PhaseSummary:
    name: str
    epochs: int
    planned_epochs: int
    best_val_acc: float
    best_val_loss: float
    seconds: float
    stopped_early: bool


@dataclass
class TrainResult:
    run_dir: Path
    backbone: str
    device: str
    best_val_acc: float
    best_val_loss: float
    best_epoch: int
    seconds: float  # the epochs' own time
    phases: list[PhaseSummary]
    weights: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> group -> parameter count
    wall_seconds: float = 0.0  # this process, decoding and model building included


# --- device --------------------------------------------------------------------------------------------


def select_device(spec: str = "auto") -> torch.device:
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if spec == "auto":
        return torch.device("cuda" if available["cuda"] else "mps" if available["mps"] else "cpu")
    if spec not in available:
        raise EdgetlError(f"unknown --device {spec!r}; use auto, cpu, cuda or mps")
    if not available[spec]:
        raise EdgetlError(f"--device {spec}: no such device is visible here; use --device cpu or --device auto")
    return torch.device(spec)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on GPUs; on the CPU it halves the speed of training steps here (depthwise convolution
    backward), though inference is faster — measured with benchmarks/bench_train.py."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


# --- the policy of one phase -----------------------------------------------------------------------------


def trainable_groups(groups: list[LayerGroup], phase: Phase, *, backbone: str) -> list[LayerGroup]:
    """The groups a phase trains: always the head, plus the last N backbone groups (or all)."""
    body, head = groups[:-1], groups[-1]
    n = phase.last_n
    if n is not None and n > len(body):
        names = ", ".join(g.name for g in body)
        raise RecipeError(f"phase {phase.name!r}: train = 'last:{n}' but {backbone} has {len(body)} groups ({names}); use 'all'")
    unknown = set(phase.group_lr) - {g.name for g in groups}
    if unknown:
        raise RecipeError(f"phase {phase.name!r}: group_lr names unknown groups {sorted(unknown)}; {backbone} has {[g.name for g in groups]}")
    return [*(body if n is None else body[len(body) - n:]), head] if n != 0 else [head]


def group_learning_rates(groups: list[LayerGroup], phase: Phase) -> dict[str, float]:
    """Discriminative rates: `lr` at the deepest backbone group, times `lr_decay` per group towards the input."""
    body = groups[:-1]
    rates = {g.name: phase.lr * phase.lr_decay ** (len(body) - 1 - i) for i, g in enumerate(body)}
    rates["head"] = phase.head_lr
    rates.update(phase.group_lr)
    return rates


def configure_phase(model: nn.Module, groups: list[LayerGroup], phase: Phase, *, backbone: str,
                    weight_decay: float, lora: LoraSection | None = None) -> list[dict[str, Any]]:
    """Set requires_grad for the phase and return optimizer param groups (no weight decay on norms and biases).

    With LoRA, trainable backbone groups train only their adapters (and norms if `lora.train_norms`).
    """
    train = trainable_groups(groups, phase, backbone=backbone)
    model.requires_grad_(False)
    for group in train:
        for module in group.modules:
            module.requires_grad_(True)
            if lora is not None and group.name != "head":
                for name, param in module.named_parameters():
                    param.requires_grad_("lora_" in name)
                for sub in module.modules():
                    if isinstance(sub, _NORMS):
                        sub.requires_grad_(lora.train_norms)
    if phase.bn == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.requires_grad_(False)
    rates = group_learning_rates(groups, phase)
    param_groups = []
    for group in train:
        params = [p for p in group.parameters() if p.requires_grad]
        for decay, subset in ((weight_decay, [p for p in params if p.ndim > 1]), (0.0, [p for p in params if p.ndim <= 1])):
            if subset:
                param_groups.append({"params": subset, "lr": rates[group.name], "weight_decay": decay, "name": group.name})
    if not param_groups:
        raise RecipeError(f"phase {phase.name!r} trains no parameter; check its `train` and `bn` settings")
    return param_groups


_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def set_train_mode(model: nn.Module, groups: list[LayerGroup], phase: Phase, *, backbone: str) -> None:
    """Train mode only where weights train; frozen groups (and frozen BN) keep their running statistics."""
    model.eval()
    for group in trainable_groups(groups, phase, backbone=backbone):
        for module in group.modules:
            module.train()
    if phase.bn == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def count_trainable(groups: list[LayerGroup]) -> dict[str, int]:
    return {g.name: sum(p.numel() for p in g.parameters() if p.requires_grad) for g in groups}


def lr_factor(phase: Phase, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup, then cosine to zero (or constant): the multiplier of each group's rate at a step."""
    total = phase.epochs * steps_per_epoch
    warmup = round(phase.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if phase.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def make_optimizer(param_groups: list[dict[str, Any]], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(param_groups)


# --- one epoch ---------------------------------------------------------------------------------------------


@dataclass
class Batcher:
    """Turns stored uint8 images (or cached features) into model inputs on the device."""

    x: torch.Tensor
    y: torch.Tensor
    preprocessing: Preprocessing
    device: torch.device
    augment: bool = False
    features: bool = False  # x holds cached features already on the device

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None, *, skip: int = 0,
                generator_state: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches (in order without a generator); `skip` + `generator_state` continue a cut epoch."""
        n = len(self.y)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if generator_state is not None:
            generator.set_state(generator_state)
        for start in range(skip * batch_size, n, batch_size):
            idx = order[start:start + batch_size]
            if generator is not None and len(idx) < 2 and start > 0:
                break  # a batch of one breaks BatchNorm in train mode
            yield self.inputs(idx, generator), self.y[idx].to(self.device, non_blocking=True)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.features:
            return self.x[idx.to(self.x.device)]
        images = self.x[idx]
        crop = self.preprocessing.crop_size
        if self.augment:
            images = augment_batch(images, crop_size=crop, generator=generator)
        elif images.shape[-1] != crop:
            images = center_crop_batch(images, crop)
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = normalize(images.to(self.device, non_blocking=True), self.preprocessing)
        return x.contiguous(memory_format=memory_format(self.device))


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 or (rest and not full) else 0)


@dataclass
class EpochProgress:
    """Where an epoch stands: enough to continue it exactly after an interruption."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    generator_state: torch.Tensor | None = None  # the epoch generator after `step` steps
    rng_state: torch.Tensor | None = None  # torch's global generator (dropout) after `step` steps


class Interrupted(Exception):
    """Raised between two steps when a stop was requested; carries the epoch's progress."""

    def __init__(self, progress: EpochProgress) -> None:
        super().__init__("interrupted")
        self.progress = progress


def train_one_epoch(forward: Callable[[torch.Tensor], torch.Tensor], data: Batcher, *, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, batch_size: int,
                    generator: torch.Generator, callbacks: Callbacks, start: EpochProgress | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> tuple[float, float]:
    """One pass over the data; losses stay on the device (no per-step host sync) until the end.

    `should_stop` is polled after each step: the step finishes, then Interrupted carries the progress.
    """
    start = start or EpochProgress()
    if start.rng_state is not None:
        torch.set_rng_state(start.rng_state)
    autocast = torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=data.device.type == "cuda")
    loss_sum = torch.full((), start.loss_sum, device=data.device)
    correct = torch.full((), start.correct, device=data.device, dtype=torch.long)
    seen, step, t0 = start.seen, start.step, time.perf_counter() - start.seconds
    for x, y in data.batches(batch_size, generator, skip=start.step, generator_state=start.generator_state):
        with autocast:
            logits = forward(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        step += 1
        callbacks.step()
        if should_stop():
            raise Interrupted(EpochProgress(step, loss_sum.item(), int(correct.item()), seen, time.perf_counter() - t0,
                                            generator.get_state(), torch.get_rng_state()))
    loss_mean = loss_sum.item() / max(seen, 1)
    if not math.isfinite(loss_mean):
        raise TrainingError(f"training loss became {loss_mean}; lower the learning rate — the last good checkpoint is kept")
    return loss_mean, correct.item() / max(seen, 1)


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], data: Batcher, *, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy, in eval mode."""
    autocast = torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=data.device.type == "cuda")
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for x, y in data.batches(batch_size, None):
        with autocast:
            logits = forward(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(len(data), 1)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def compute_features(model: nn.Module, backbone: Backbone, data: Batcher, *, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    feats = [backbone.features(model, x).float() for x, _ in data.batches(batch_size, None)]
    model.train(was_training)
    return torch.cat(feats)


def phase_inputs(model: nn.Module, backbone: Backbone, phase: Phase, *, train: Batcher, val: Batcher, batch_size: int
                 ) -> tuple[Batcher, Batcher, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """What a phase iterates over and how it runs the model: (train data, val data, train forward, eval forward).

    A head-only phase without augmentation trains the head on features computed once; with augmentation the
    frozen backbone still runs without autograd.
    """
    head = backbone.head(model)
    if phase.last_n == 0 and not phase.augment:
        def cache(data: Batcher) -> Batcher:
            feats = compute_features(model, backbone, data, batch_size=batch_size)
            return Batcher(feats, data.y.to(data.device), data.preprocessing, data.device, features=True)

        return cache(train), cache(val), head, head
    train = Batcher(train.x, train.y, train.preprocessing, train.device, augment=phase.augment)
    if phase.last_n != 0:
        return train, val, model, model

    def frozen_backbone(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = backbone.features(model, x)
        return head(feats)

    return train, val, frozen_backbone, model


# --- the run -----------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def lora_config(section: LoraSection, model: nn.Module, groups: list[LayerGroup]) -> LoraConfig:
    """The adapter config for a model: the head trains in full, so its layers get no adapter."""
    head_weights = {id(p) for p in groups[-1].parameters()}
    exclude = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m.weight) in head_weights]
    return LoraConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout, targets=list(section.targets),
                      allow_depthwise=section.allow_depthwise, exclude=exclude)


@dataclass
class Prepared:
    """Everything a run needs, built and validated before anything is written."""

    backbone: Backbone
    preprocessing: Preprocessing
    data: DataBundle
    model: nn.Module
    weights: str
    device: torch.device
    lora: LoraConfig | None


def prepare_run(recipe: Recipe, *, device: str = "auto", callbacks: Callbacks | None = None,
                split: dict | None = None) -> Prepared:
    """Everything that can fail on bad input, done before anything is written."""
    callbacks = callbacks or Callbacks()
    torch_device = select_device(device)
    backbone = get_backbone(recipe.backbone)
    preprocessing = backbone.preprocessing.scaled(recipe.image_size)
    data = load_data(recipe.data, preprocessing=preprocessing, seed=recipe.seed, val_fraction=recipe.val_fraction,
                     subset=recipe.subset, split=split, progress=callbacks.data_progress)
    torch.manual_seed(recipe.seed)
    model = backbone.build(len(data.classes))
    report = load_pretrained(model, backbone, recipe.weights)
    groups = backbone.groups(model)
    lora = lora_config(recipe.lora, model, groups) if recipe.lora is not None else None
    if lora is not None:
        inject_lora(model, lora)
    for phase in recipe.phases:
        trainable_groups(groups, phase, backbone=backbone.name)
    return Prepared(backbone, preprocessing, data, model, report.source, torch_device, lora)


def train(recipe: Recipe, *, run_dir: Path, device: str = "auto", callbacks: Callbacks | None = None) -> TrainResult:
    """Train a new run into `run_dir` (which must not hold a run yet)."""
    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise EdgetlError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    prep = prepare_run(recipe, device=device, callbacks=callbacks)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetlError(f"cannot write into {run_dir}: {files.folder_problem(run_dir, e)} — choose another --out") from None
    files.write_text(run_dir / "recipe.resolved.toml", recipe.to_toml())
    files.write_json(run_dir / "labels.json", prep.data.classes)
    files.write_json(run_dir / "preprocessing.json", prep.preprocessing.to_dict())
    files.write_json(run_dir / "split.json", prep.data.split)
    files.write_json(run_dir / "data.json", {"skipped": [list(s) for s in prep.data.skipped], "weights": prep.weights})
    return _fit(recipe, prep, run_dir=run_dir, callbacks=callbacks, resume=None, started=started)


def resume(run_dir: Path, *, device: str = "auto", callbacks: Callbacks | None = None) -> TrainResult:
    """Continue an interrupted run from its last complete epoch, in the same phase, with the same state."""
    import tomllib

    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    recipe_path = run_dir / "recipe.resolved.toml"
    recipe = parse_recipe(tomllib.loads(recipe_path.read_text()), source=str(recipe_path))
    split = files.read_json(run_dir / "split.json", what="split")
    prep = prepare_run(recipe, device=device, callbacks=callbacks, split=split)
    check_belongs(state, backbone=recipe.backbone, labels=prep.data.classes, source=run_dir / "checkpoints" / "last.pt")
    return _fit(recipe, prep, run_dir=run_dir, callbacks=callbacks, resume=state, started=started)


class TrainingInterrupted(EdgetlError):
    """SIGINT/SIGTERM: the current step finished and last.pt holds it."""

    exit_code = 130


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT interrupts at once."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _fit(recipe: Recipe, prep: Prepared, *, run_dir: Path, callbacks: Callbacks, resume: dict | None,
         started: float) -> TrainResult:
    backbone, preprocessing, data, model, device = prep.backbone, prep.preprocessing, prep.data, prep.model, prep.device
    ckpt_dir = run_dir / "checkpoints"
    meta = {
        "backbone": backbone.name, "num_classes": len(data.classes), "labels": data.classes,
        "preprocessing": preprocessing.to_dict(), "recipe": recipe.model_dump(), "recipe_sha256": recipe.digest(),
        "lora": prep.lora.to_dict() if prep.lora else None,
    }
    model.to(device=device, memory_format=memory_format(device))
    groups = backbone.groups(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    train_images = Batcher(data.train.images, data.train.targets, preprocessing, device)
    val_images = Batcher(data.val.images, data.val.targets, preprocessing, device)

    metrics: list[dict[str, Any]] = []
    start_phase, start_epoch, partial = 0, 0, None
    best = {"val_loss": math.inf, "val_acc": 0.0, "epoch": 0}
    if resume is not None:
        model.load_state_dict(resume["model"])
        start_phase, start_epoch, best = resume["next_phase"], resume["next_epoch"], resume["best"]
        if resume.get("epoch_progress"):
            partial = EpochProgress(**resume["epoch_progress"])
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        metrics = [m for m in metrics if m["epoch"] <= resume["global_epoch"]]
    trainable_counts: dict[str, dict[str, int]] = {}

    def save_last(next_phase: int, next_epoch: int, **state: Any) -> None:
        save_checkpoint(ckpt_dir / "last.pt", {
            **meta, "model": _state_copy(model), "next_phase": next_phase, "next_epoch": next_epoch,
            "global_epoch": len(metrics), "best": best, "early": state.get("early"),
            "optimizer": state["optimizer"].state_dict() if "optimizer" in state else None,
            "scheduler": state["scheduler"].state_dict() if "scheduler" in state else None,
            "epoch_progress": asdict(state["progress"]) if "progress" in state else None,
            "epoch_lrs": state.get("epoch_lrs"),
        })

    with stop_on_signals() as stop_requested:
        for p in range(start_phase, len(recipe.phases)):
            phase = recipe.phases[p]
            continuing = resume is not None and p == start_phase and resume.get("optimizer") is not None
            first_epoch = start_epoch if p == start_phase else 0
            param_groups = configure_phase(model, groups, phase, backbone=backbone.name, weight_decay=recipe.weight_decay,
                                           lora=recipe.lora)
            trainable_counts[phase.name] = count_trainable(groups)
            cached = phase.last_n == 0 and not phase.augment
            features_started = time.perf_counter()
            train_data, val_data, forward, eval_forward = phase_inputs(
                model, backbone, phase, train=train_images, val=val_images, batch_size=recipe.batch_size)
            steps = steps_per_epoch(len(train_data), recipe.batch_size)
            optimizer = make_optimizer(param_groups, recipe)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(phase, steps))
            early = {"best_loss": math.inf, "bad": 0, "best_state": None}
            if continuing:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                early = resume.get("early") or early
            done_steps = steps * first_epoch + (partial.step if partial else 0)
            callbacks.phase_start(index=p, phase=phase, steps=steps * phase.epochs - done_steps,
                                  trainable=trainable_counts[phase.name], cached=cached)
            for e in range(first_epoch, phase.epochs):
                global_epoch = len(metrics) + 1
                generator = torch.Generator().manual_seed(_epoch_seed(recipe.seed, global_epoch))
                if partial is None:
                    torch.manual_seed(_epoch_seed(recipe.seed, global_epoch))  # dropout and friends
                    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
                else:
                    lrs = resume["epoch_lrs"]
                t0 = time.perf_counter() - (partial.seconds if partial else 0.0)
                if cached and e == first_epoch:
                    t0 = features_started  # the first epoch of a cached phase pays for computing the features
                set_train_mode(model, groups, phase, backbone=backbone.name)
                try:
                    train_loss, train_acc = train_one_epoch(
                        forward, train_data, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                        batch_size=recipe.batch_size, generator=generator, callbacks=callbacks, start=partial,
                        should_stop=stop_requested)
                except Interrupted as cut:
                    save_last(p, e, optimizer=optimizer, scheduler=scheduler, early=early, progress=cut.progress, epoch_lrs=lrs)
                    raise TrainingInterrupted(f"stopped after step {cut.progress.step} of epoch {global_epoch}; "
                                              f"continue with: edgetl train --resume {run_dir}") from None
                partial = None
                train_seconds = time.perf_counter() - t0
                model.eval()
                val_loss, val_acc = evaluate(eval_forward, val_data, batch_size=recipe.batch_size * 2)
                record = {
                    "epoch": global_epoch, "phase": phase.name, "phase_index": p, "phase_epoch": e + 1, "lr": lrs,
                    "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "images_per_s": round(len(train_data) / max(train_seconds, 1e-9), 1), "cached_features": cached,
                }
                metrics.append(record)
                files.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
                if val_loss < early["best_loss"]:
                    early = {"best_loss": val_loss, "bad": 0, "best_state": _state_copy(model)}
                else:
                    early["bad"] += 1
                if val_loss < best["val_loss"]:
                    best = {"val_loss": val_loss, "val_acc": val_acc, "epoch": global_epoch}
                    save_checkpoint(ckpt_dir / "best.pt", {**meta, "model": _state_copy(model), "val_acc": val_acc,
                                                           "val_loss": val_loss, "epoch": global_epoch})
                stop_early = recipe.patience > 0 and early["bad"] >= recipe.patience
                if not (stop_early or e + 1 == phase.epochs):
                    save_last(p, e + 1, optimizer=optimizer, scheduler=scheduler, early=early)
                callbacks.epoch_end(record)
                if stop_requested():
                    if stop_early or e + 1 == phase.epochs:
                        _restore_best(model, early)
                        save_last(p + 1, 0)
                    raise TrainingInterrupted(f"stopped after epoch {global_epoch}; continue with: edgetl train --resume {run_dir}")
                if stop_early:
                    log.info("phase %s: val loss did not improve for %d epochs; stopping early", phase.name, recipe.patience)
                    break
            _restore_best(model, early)
            save_last(p + 1, 0)

    result = TrainResult(
        run_dir=run_dir, backbone=backbone.name, device=str(device), best_val_acc=best["val_acc"],
        best_val_loss=best["val_loss"], best_epoch=best["epoch"], seconds=sum(m["seconds"] for m in metrics),
        phases=summarize_phases(recipe, metrics), weights=prep.weights, skipped=list(data.skipped), trainable=trainable_counts,
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    files.write_json(run_dir / "train.json", asdict(result) | {"run_dir": str(run_dir)})
    from edgetl.report import plot_curves

    plot_curves(metrics, run_dir / "curves.png")
    return result


def _restore_best(model: nn.Module, early: dict[str, Any]) -> None:
    """Early stopping restores the phase's best weights (by val loss) before the next phase starts."""
    if early["best_state"] is not None:
        model.load_state_dict(early["best_state"])


def summarize_phases(recipe: Recipe, metrics: list[dict[str, Any]]) -> list[PhaseSummary]:
    out = []
    for phase in recipe.phases:
        rows = [m for m in metrics if m["phase"] == phase.name]
        if rows:
            out.append(PhaseSummary(
                name=phase.name, epochs=len(rows), planned_epochs=phase.epochs,
                best_val_acc=max(m["val_acc"] for m in rows), best_val_loss=min(m["val_loss"] for m in rows),
                seconds=round(sum(m["seconds"] for m in rows), 2), stopped_early=len(rows) < phase.epochs,
            ))
    return out
