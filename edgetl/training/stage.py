"""The training stage: a new run (`train_run`) or an interrupted one continued (`resume_run`), phase after phase.

    summary = train_run(load_recipe("quickstart"), run_dir=Path("artifacts/demo"))

Everything that can fail on bad input is checked before anything is written (`prepare_run`). Each phase is
applied by `phases.py`, each epoch run by `epoch.py`; this module keeps the order, the checkpoints
(`last.pt` after every epoch, `best.pt` at the best val accuracy, val loss breaking ties), the run
directory's files, and best.pt's figures on the held-out test split, when the data has one (it never chooses).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetl import files, rundir
from edgetl.backbones import Backbone, create_model, get_backbone
from edgetl.confusion import confidently_wrong, per_class, plot_confusion
from edgetl.data.datasets import DataBundle, load_data
from edgetl.errors import EdgetlError, RunDirError
from edgetl.model.checkpoint import check_belongs, load_checkpoint, save_checkpoint
from edgetl.model.lora import LoraConfig, inject_lora
from edgetl.model.weights import load_pretrained
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import Recipe
from edgetl.rundir import PerClass, PhaseSummary, RunDir, TrainSummary
from edgetl.training import distributed
from edgetl.training.curves import plot_curves
from edgetl.training.epoch import (
    Batcher,
    Callbacks,
    Interrupted,
    evaluate,
    memory_format,
    select_device,
    steps_per_epoch,
    train_one_epoch,
)
from edgetl.training.memory import check_fits
from edgetl.training.phases import (
    configure_phase,
    count_trainable,
    lora_config,
    lr_factor,
    make_optimizer,
    phase_inputs,
    prefix_caches,
    set_train_mode,
    trainable_groups,
)
from edgetl.training.state import Best, EarlyStopping, TrainState, state_copy

log = logging.getLogger(__name__)


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


def prepare_run(recipe: Recipe, *, device: str | torch.device = "auto", callbacks: Callbacks | None = None,
                split: dict | None = None) -> Prepared:
    """Everything that can fail on bad input, done before anything is written."""
    callbacks = callbacks or Callbacks()
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    backbone = get_backbone(recipe.backbone)
    preprocessing = backbone.preprocessing.scaled(recipe.image_size)
    check_fits(recipe, backbone, device=torch_device, image_size=preprocessing.crop_size)  # before building it
    data = load_data(recipe.data, preprocessing=preprocessing, seed=recipe.seed, val_fraction=recipe.val_fraction,
                     subset=recipe.subset, split=split, progress=callbacks.data_progress)
    torch.manual_seed(recipe.seed)
    model = create_model(backbone, num_classes=len(data.classes), image_size=preprocessing.crop_size,
                         head=recipe.head.spec() if recipe.head else None)
    report = load_pretrained(model, backbone, recipe.weights)
    if report.skipped:  # a new classifier on pretrained features: start it at zero (see zero_new_classifier)
        zero_new_classifier(model, report.skipped, classifier_key=backbone.classifier_key)
    groups = backbone.groups(model)
    lora = lora_config(recipe.lora, model, groups) if recipe.lora is not None else None
    if lora is not None:
        inject_lora(model, lora)
    for phase in recipe.phases:
        trainable_groups(groups, phase, backbone=backbone.name)
    return Prepared(backbone, preprocessing, data, model, report.source, torch_device, lora)


@torch.no_grad()
def zero_new_classifier(model: nn.Module, keys: list[str], *, classifier_key: str) -> None:
    """Zero the classifier tensors the pretrained weights did not provide.

    The builders' own inits are far from small for a head on pretrained features (timm's EfficientNet
    classifier: std 0.26, 16x nn.Linear's default): the first phase then spends its steps undoing the init,
    and on real photos a short head phase stayed near chance. From zero the model starts at uniform
    predictions, and the gradient of the final weights (features x error) is the one a linear probe follows.
    An MLP head (`[head] hidden`) zeroes only its output layer: with its hidden layers at zero too, no gradient
    would reach them.
    """
    head = model.get_submodule(classifier_key)
    final = classifier_key + (f".{len(head) - 1}" if isinstance(head, nn.Sequential) else "")
    state = model.state_dict()
    for key in keys:
        if key.rpartition(".")[0] == final:
            state[key].zero_()


# Everything a run folder holds before its first epoch ends (and the later stages' folders, left by an old run).
RUN_NAMES = {"recipe.resolved.toml", "labels.json", "preprocessing.json", "split.json", "data.json", "metrics.jsonl",
             "curves.png", "checkpoints"}


def check_out(run: RunDir, *, data: str) -> None:
    """A run writes only into a new or empty folder, or one of its own: never over a user's files, and never
    inside the data folder (curves.png in a class folder would be trained on next time)."""
    root = run.root
    names = sorted(p.name for p in root.iterdir() if p.name != files.LOCK_NAME) if root.is_dir() else []
    # Only a run edgetl started and that never finished an epoch may be started over: it has the files written
    # before the first epoch, and nothing else. A recipe.resolved.toml among a user's files is not enough.
    started = {run.recipe.name, run.split.name, run.preprocessing.name}
    unfinished_run = started <= set(names) and set(names) <= RUN_NAMES
    if names and not unfinished_run:
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        raise EdgetlError(f"--out {root} holds files that are not an edgetl run ({shown}); training would overwrite "
                          f"them — pass --out a new or empty folder")
    data_root = Path(data).expanduser()
    if data_root.is_dir() and root.resolve().is_relative_to(data_root.resolve()):
        raise EdgetlError(f"--out {root} is inside the data folder {data}: the run's files would be read as data "
                          f"next time — pass --out a folder outside it")


def train_run(recipe: Recipe, *, run_dir: Path, device: str = "auto", callbacks: Callbacks | None = None) -> TrainSummary:
    """Train a new run into `run_dir` (which must not hold a run yet)."""
    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    run = RunDir(run_dir)
    if distributed.is_main():  # under torchrun the other ranks would see rank 0's first files
        if run.checkpoint("last").exists():
            raise EdgetlError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
        check_out(run, data=recipe.data)
    with distributed.session(select_device(device)) as torch_device:
        prep = prepare_run(recipe, device=torch_device, callbacks=callbacks)
        if distributed.is_main():
            _write_run_files(run, recipe, prep)
        return _fit(recipe, prep, run=run, callbacks=callbacks, resume=None, started=started)


def _write_run_files(run: RunDir, recipe: Recipe, prep: Prepared) -> None:
    """What a new run writes before its first epoch: enough to resume it, or to start it over."""
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetlError(f"cannot write into {run.root}: {files.folder_problem(run.root, e)} — choose another --out") from None
    files.write_text(run.recipe, recipe.to_toml())
    files.write_json(run.labels, prep.data.classes)
    files.write_json(run.preprocessing, prep.preprocessing.to_dict())
    files.write_json(run.split, prep.data.split)
    files.write_json(run.data, {"skipped": [list(s) for s in prep.data.skipped], "weights": prep.weights,
                                "duplicates": [list(d) for d in prep.data.duplicates],
                                "test_duplicates": [list(d) for d in prep.data.test_duplicates]})


def resume_run(run_dir: Path, *, device: str = "auto", callbacks: Callbacks | None = None) -> TrainSummary:
    """Continue an interrupted run from its last complete epoch, in the same phase, with the same state."""
    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    run = RunDir(run_dir)
    recipe = rundir.read_recipe(run)
    ckpt = load_checkpoint(run.checkpoint("last"))
    split = rundir.read_split(run.split)
    classes = split["classes"] or sorted({c for _, c in split["train"]})  # what the data loader replays
    check_belongs(ckpt, backbone=recipe.backbone, labels=classes, source=run.checkpoint("last"))
    check_same_recipe(recipe, ckpt, run=run)
    with distributed.session(select_device(device)) as torch_device:
        prep = prepare_run(recipe, device=torch_device, callbacks=callbacks, split=split)
        earlier = _skipped_at_start(run)  # a resume replays split.json and does not list the folder again
        prep.data.skipped = earlier + [s for s in prep.data.skipped if s not in earlier]
        prep.model.load_state_dict(ckpt["model"])
        return _fit(recipe, prep, run=run, callbacks=callbacks, resume=TrainState.from_checkpoint(ckpt),
                    started=started)


def _skipped_at_start(run: RunDir) -> list[tuple[str, str]]:
    """The unusable files data.json lists (the run skipped them when it started); none if it does not read."""
    try:
        return [(str(path), str(reason)) for path, reason in rundir.read_json(run.data).get("skipped", [])]
    except (EdgetlError, AttributeError, TypeError, ValueError):
        return []


def check_same_recipe(recipe: Recipe, ckpt: dict[str, Any], *, run: RunDir) -> None:
    """A resume continues the recipe the run started with, or refuses: never a silently different run."""
    saved = ckpt.get("recipe_sha256")
    if saved and saved != recipe.digest():
        raise RunDirError(f"{run.recipe} changed since the run started (its sha256 is {recipe.digest()[:12]}…, "
                          f"the checkpoint's {saved[:12]}…): a resume must continue the same recipe — restore it, "
                          f"or start a new run: edgetl train --recipe {run.recipe} --out NEW_FOLDER")


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


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _fit(recipe: Recipe, prep: Prepared, *, run: RunDir, callbacks: Callbacks, resume: TrainState | None,
         started: float) -> TrainSummary:
    backbone, preprocessing, data, model, device = prep.backbone, prep.preprocessing, prep.data, prep.model, prep.device
    meta = rundir.CheckpointMeta(backbone=backbone.name, num_classes=len(data.classes), labels=data.classes,
                                 preprocessing=preprocessing, recipe=recipe.model_dump(),
                                 recipe_sha256=recipe.digest(), lora=prep.lora.to_dict() if prep.lora else None)
    meta_dict = meta.model_dump(mode="json", exclude={"epoch", "val_acc", "val_loss"})
    model.to(device=device, memory_format=memory_format(device))
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: let cuDNN pick its fastest kernels
    groups = backbone.groups(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    train_images = Batcher(data.train.images, data.train.targets, preprocessing, device)
    val_images = Batcher(data.val.images, data.val.targets, preprocessing, device)

    # Built from every phase (not only those left), so a resumed run caches exactly what the first one did.
    caches = prefix_caches(recipe.phases, body=len(groups) - 1, seed=_epoch_seed(recipe.seed, -1),
                           sequential=backbone.sequential)
    state = resume or TrainState()
    metrics = [m for m in rundir.read_metrics(run.metrics) if m["epoch"] <= state.global_epoch] if resume else []
    partial = state.epoch_progress
    start_phase, start_epoch = state.next_phase, state.next_epoch
    trainable_counts: dict[str, dict[str, int]] = {}
    best_weights: dict[str, torch.Tensor] | None = None  # best.pt's, when this process took it

    main = distributed.is_main()  # the only rank that writes

    def save_last(state: TrainState) -> None:
        state.global_epoch = len(metrics)
        if main:
            save_checkpoint(run.checkpoint("last"), {**meta_dict, "model": state_copy(model), **state.to_checkpoint()})

    def between_phases(next_phase: int) -> TrainState:
        return TrainState(next_phase=next_phase, best=state.best)

    def resume_point(phase: int, next_epoch: int, early: EarlyStopping, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, **cut: Any) -> TrainState:
        """Inside a phase: everything to continue at `next_epoch` (or inside it, with `cut`)."""
        return TrainState(next_phase=phase, next_epoch=next_epoch, best=state.best, early=early,
                          optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), **cut)

    with stop_on_signals() as stop_requested:
        for p in range(start_phase, len(recipe.phases)):
            phase = recipe.phases[p]
            continuing = resume is not None and p == start_phase and resume.optimizer is not None
            first_epoch = start_epoch if p == start_phase else 0
            param_groups = configure_phase(model, groups, phase, backbone=backbone.name, weight_decay=recipe.weight_decay,
                                           lora=recipe.lora)
            trainable_counts[phase.name] = count_trainable(groups)
            features_started = time.perf_counter()
            train_data, val_data, forward, eval_forward = phase_inputs(
                model, backbone, groups, phase, train=train_images, val=val_images, batch_size=recipe.batch_size,
                caches=caches)
            cached = train_data.features
            step_forward = distributed.wrap(model, forward, device)  # DDP under torchrun, per phase
            steps = steps_per_epoch(len(train_data), recipe.batch_size)
            optimizer = make_optimizer(param_groups, recipe)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(phase, steps))
            early = EarlyStopping()
            if continuing:
                optimizer.load_state_dict(resume.optimizer)
                scheduler.load_state_dict(resume.scheduler)
                early = resume.early or early
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
                    lrs = resume.epoch_lrs
                t0 = time.perf_counter() - (partial.seconds if partial else 0.0)
                if cached and e == first_epoch:
                    t0 = features_started  # the first epoch of a cached phase pays for computing the features
                set_train_mode(model, groups, phase, backbone=backbone.name)
                try:
                    train_loss, train_acc = train_one_epoch(
                        step_forward, train_data, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                        batch_size=recipe.batch_size, generator=generator, callbacks=callbacks, start=partial,
                        should_stop=stop_requested)
                except Interrupted as cut:
                    save_last(resume_point(p, e, early, optimizer, scheduler, epoch_progress=cut.progress, epoch_lrs=lrs))
                    raise TrainingInterrupted(f"stopped after step {cut.progress.step} of epoch {global_epoch}; "
                                              f"continue with: {distributed.resume_command(run.root)}") from None
                partial = None
                train_seconds = time.perf_counter() - t0
                model.eval()
                val = evaluate(eval_forward, val_data, batch_size=recipe.batch_size * 2)
                val_loss, val_acc = val.loss, val.accuracy
                record = {
                    "epoch": global_epoch, "phase": phase.name, "phase_index": p, "phase_epoch": e + 1, "lr": lrs,
                    "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "images_per_s": round(len(train_data) / max(train_seconds, 1e-9), 1), "cached_features": cached,
                }
                if val.top5 is not None:
                    record["val_top5"] = val.top5_accuracy
                early.update(val_acc, val_loss, model)
                if state.best.improved_by(val_acc=val_acc, val_loss=val_loss):
                    early.beat_best = True
                    state.best = Best(val_loss=val_loss, val_acc=val_acc, epoch=global_epoch,
                                      predicted=val.predicted, confidence=val.confidence, top5=val.top5)
                    weights = state_copy(model) if main or data.test is not None else None
                    if main:
                        save_checkpoint(run.checkpoint("best"), {**meta_dict, "model": weights, "val_acc": val_acc,
                                                                 "val_loss": val_loss, "epoch": global_epoch})
                    if data.test is not None:  # every rank tests best.pt at the end: keep its weights at hand
                        best_weights = weights
                ended = phase_end(e + 1, planned=phase.epochs, early=early, patience=recipe.patience,
                                  probe=recipe.probe if p > 0 else 0)
                phase_over = ended is not None
                if phase_over:  # why the phase ended, for train.json and the train table
                    record["ended"] = ended
                metrics.append(record)
                if main:
                    files.write_text(run.metrics, "".join(json.dumps(m) + "\n" for m in metrics))
                if not phase_over:
                    save_last(resume_point(p, e + 1, early, optimizer, scheduler))
                callbacks.epoch_end(record)
                if stop_requested():
                    if phase_over:
                        early.restore_best(model)
                        save_last(between_phases(p + 1))
                    raise TrainingInterrupted(f"stopped after epoch {global_epoch}; continue with: "
                                              f"{distributed.resume_command(run.root)}")
                if phase_over and ended != "planned":
                    log.info("phase %s: %s; next phase", phase.name, ENDED[ended].format(
                        patience=recipe.patience, probe=recipe.probe))
                    break
            early.restore_best(model)
            save_last(between_phases(p + 1))

    best = state.best
    targets = data.val.targets.tolist()
    kept = best.predicted is not None and len(best.predicted) == len(targets)
    figures = per_class(targets, best.predicted, labels=data.classes, top5_hits=best.top5) if kept else None
    if best.predicted is None:
        log.info("no per-class results: the run was resumed from a checkpoint written before they were kept")
    elif not kept:
        log.warning("no per-class results: the val split has %d image(s) now, %d when best.pt was chosen (a file "
                    "became unreadable since)", len(targets), len(best.predicted))
    test = _test_best(model, data, run=run, weights=best_weights, preprocessing=preprocessing, device=device,
                      batch_size=recipe.batch_size * 2) if data.test is not None else None
    summary = TrainSummary(
        run_dir=str(run.root), backbone=backbone.name, device=str(device), best_val_acc=best.val_acc,
        best_val_loss=best.val_loss, best_epoch=best.epoch, seconds=sum(m["seconds"] for m in metrics),
        phases=summarize_phases(recipe, metrics), weights=prep.weights, skipped=list(data.skipped),
        trainable=trainable_counts, wall_seconds=round(time.perf_counter() - started, 2),
        world_size=distributed.world_size(), backend=distributed.backend(), per_class=figures,
        confidently_wrong=confidently_wrong(targets, best.predicted, best.confidence, labels=data.classes,
                                            paths=[os.path.abspath(p) if os.path.isfile(p) else p  # openable anywhere
                                                   for p in data.val.paths]) if figures else [],
        best_val_top5=figures.top5_accuracy if figures else None,
        test_acc=test.accuracy if test else None, test_top5=test.top5_accuracy if test else None,
        test_per_class=test,
    )
    if main:
        panels = [(f"{part} split · best.pt (epoch {best.epoch})", f)
                  for part, f in (("val", figures), ("test", test)) if f is not None]
        plot_confusion(panels, run.confusion)
        rundir.write(run.train_json, summary)  # last: it marks the stage finished
        plot_curves(metrics, run.curves)
    return summary


def _test_best(model: nn.Module, data: DataBundle, *, run: RunDir, weights: dict[str, torch.Tensor] | None,
               preprocessing: Preprocessing, device: torch.device, batch_size: int) -> PerClass | None:
    """best.pt on the held-out test split, per class: its weights from this process when it took them, else
    from best.pt (a resume after it was written). The model keeps them afterwards."""
    if weights is None:
        weights = load_checkpoint(run.checkpoint("best"))["model"]
    model.load_state_dict(weights)
    model.eval()
    test = data.test
    result = evaluate(model, Batcher(test.images, test.targets, preprocessing, device), batch_size=batch_size)
    figures = per_class(test.targets.tolist(), result.predicted, labels=data.classes, top5_hits=result.top5)
    if figures is not None:
        log.info("best.pt on the test split: %.1f %% of %d images", 100 * figures.accuracy, figures.images)
    return figures


def phase_end(epoch: int, *, planned: int, early: EarlyStopping, patience: int, probe: int) -> str | None:
    """Why a phase ends after its `epoch`-th epoch (1-based), or None when it goes on: its planned epochs are
    done; `patience` epochs brought no better val figure; or, for a phase after the first (`probe` > 0), its first
    `probe` epochs have not beaten best.pt (a deeper phase that does not pay at once rarely pays later)."""
    if epoch >= planned:
        return "planned"
    if early.should_stop(patience):
        return "patience"
    if 0 < probe <= epoch and not early.beat_best:
        return "no gain"
    return None


# Why a phase ended, in the words of train.json and the train table
ENDED = {"planned": "all its epochs", "patience": "no better val figure in {patience} epochs",
         "no gain": "not better than best.pt after {probe} epoch(s)"}


def summarize_phases(recipe: Recipe, metrics: list[dict[str, Any]]) -> list[PhaseSummary]:
    out, best_before = [], 0.0
    for phase in recipe.phases:
        rows = [m for m in metrics if m["phase"] == phase.name]
        if rows:
            best = max(m["val_acc"] for m in rows)
            out.append(PhaseSummary(
                name=phase.name, epochs=len(rows), planned_epochs=phase.epochs,
                best_val_acc=best, best_val_loss=min(m["val_loss"] for m in rows),
                seconds=round(sum(m["seconds"] for m in rows), 2), stopped_early=len(rows) < phase.epochs,
                val_acc_gain=best - best_before,
                ended=ENDED[rows[-1].get("ended", "planned")].format(patience=recipe.patience, probe=recipe.probe),
            ))
            best_before = max(best_before, best)
    return out
