"""The `edgetl` command line: parse flags, call one stage function, render its result. No logic here.

    edgetl train --recipe quickstart --data sample
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from edgetl.errors import EdgetlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a pretrained image classifier, fold and export it, verify it for the edge.")
# Logs and CI pipes are not terminals: rich would squeeze tables to 80 columns there; COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150
console = Console(stderr=False, width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Format(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    all = "all"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


def _batch_size(value: str | int | None) -> int | None:
    """`dynamic` (the default) or a positive batch size."""
    if value is None or value == "dynamic":
        return None
    if str(value).isdigit() and int(value) > 0:
        return int(value)
    raise typer.BadParameter(f"expected `dynamic` or a positive batch size, got {value!r}")


# Shared option types: one definition per flag, reused by every command that takes it.
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see `edgetl recipes`) or path to a .toml file.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="A folder (train/ + val/, or class folders), `sample`, or `cifar10`.")]
SubsetOpt = Annotated[Optional[int], typer.Option("--subset", help="Use only this many training images (torchvision datasets).")]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help="`imagenet`, `none`, or a path to a .pth/.pt/.safetensors state dict.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default: artifacts/<time>-<recipe>).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train.")]
EpochsScaleOpt = Annotated[Optional[float], typer.Option("--epochs-scale", help="Multiply every phase's epochs (e.g. 0.5).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (split, init, order, augmentation).")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the interrupted run in this directory.")]
LoraRankOpt = Annotated[Optional[int], typer.Option("--lora-rank", help="Train LoRA adapters of this rank (turns LoRA on).")]
LoraAlphaOpt = Annotated[Optional[float], typer.Option("--lora-alpha", help="LoRA scaling alpha (with --lora-rank).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")]
VerifyRunArg = Annotated[Path, typer.Argument(help="Run directory, exported (`edgetl export RUN`).")]
VerifyDataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Images to check with: a folder of images or class folders (or with val/ inside), or `sample`. Default: the run's validation split.")]
SamplesOpt = Annotated[int, typer.Option("--samples", "-n", help="Real images to check parity on (random tensors are added).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Where to write the report (default: RUN/verify.json).")]
AtolOpt = Annotated[Optional[float], typer.Option("--atol", help="Bar on the max abs logit difference (default per precision: 1e-4 for fp32).")]
MinTop1Opt = Annotated[Optional[float], typer.Option("--min-top1", help="Bar on top-1 agreement, a fraction (default per precision: 1.0 for fp32).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", help="Also time this batch size (batch 1 is always timed).")]
MaxLatencyOpt = Annotated[Optional[float], typer.Option("--max-latency-ms", help="Bar on the ONNX p50 latency, batch 1, all threads.")]
BaselineOpt = Annotated[Optional[Path], typer.Option("--baseline", help="An earlier verify.json: fail if the ONNX p50 regressed (same machine only).")]
MaxRegressionOpt = Annotated[float, typer.Option("--max-regression", help="Allowed p50 slow-down vs --baseline, a fraction.")]
ThreadsOpt = Annotated[Optional[list[int]], typer.Option("--threads", help="Thread counts to time, repeatable (default: 1 and all cores).")]
LatencySecondsOpt = Annotated[float, typer.Option("--latency-seconds", help="Time each latency setting at least this long (capped at 3x).")]
ExportRunArg = Annotated[Path, typer.Argument(help="Run directory, trained (`edgetl train`).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="What to write.")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's own, 20 on torch 2.14).")]
ExportBatchOpt = Annotated[Optional[int], typer.Option("--batch", parser=_batch_size, metavar="dynamic|N", help="Batch dimension: `dynamic`, or fixed to N.")]
CheckpointOpt = Annotated[Checkpoint, typer.Option("--checkpoint", help="Which checkpoint to export.")]
ExportOutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Export folder (default: RUN/export); replaced as a whole.")]


def command(fn):
    """A command whose EdgetlError becomes a one-line message and its exit code, never a traceback.
    (Registered at the end of this module, in the order `--help` lists them.)"""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)], force=True)


def default_run_dir(recipe: str) -> Path:
    return Path("artifacts") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(recipe).stem}"


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


class RichTrainCallbacks:
    """Renders the trainer's progress hooks as rich progress bars: decoding, then one bar per phase."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.decode_task: Any = None

    def data_progress(self, done: int, total: int) -> None:
        if self.decode_task is None:
            self.decode_task = self.progress.add_task("decode images", total=total, info="")
        self.progress.update(self.decode_task, completed=done)

    def phase_start(self, *, index: int, phase: Any, steps: int, trainable: dict[str, int], cached: bool) -> None:
        n = sum(trainable.values())
        note = " · cached features" if cached else ""
        groups = ", ".join(f"{g} {c:,}" for g, c in trainable.items() if c)
        self.progress.console.print(f"phase {index + 1} [bold]{phase.name}[/]: trains {groups} ({n:,} parameters){note}",
                                    highlight=False)
        self.task = self.progress.add_task(f"phase {index + 1} {phase.name}", total=steps, info=f"{n:,} trainable{note}")

    def step(self) -> None:
        self.progress.advance(self.task)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.progress.update(self.task, info=f"ep {record['phase_epoch']} val acc {100 * record['val_acc']:.1f} % "
                                             f"loss {record['val_loss']:.3f} · {record['images_per_s']:.0f} img/s")


def run_train(*, recipe: str, data: str | None = None, subset: int | None = None, weights: str | None = None,
              out: Path | None = None, device: Device = Device.auto, epochs_scale: float | None = None,
              seed: int | None = None, resume: Path | None = None, extra: dict | None = None):
    from edgetl import finetune
    from edgetl.recipe import load_recipe
    from edgetl.report import train_table

    with progress_bar() as progress:
        callbacks = RichTrainCallbacks(progress)
        if resume is not None:
            result = finetune.resume(resume, device=device.value, callbacks=callbacks)
        else:
            overrides = {"data": data, "subset": subset, "weights": weights, "seed": seed, **(extra or {})}
            resolved = load_recipe(recipe, overrides=overrides, epochs_scale=epochs_scale)
            result = finetune.train(resolved, run_dir=out or default_run_dir(recipe), device=device.value, callbacks=callbacks)
    console.print(train_table(result))
    if result.skipped:
        err_console.print(f"[yellow]{len(result.skipped)} unreadable file(s) skipped; see {result.run_dir / 'data.json'}")
    return result


@command
def train(
    recipe: RecipeOpt = "quickstart", data: DataOpt = None, subset: SubsetOpt = None, weights: WeightsOpt = None,
    out: OutOpt = None, device: DeviceOpt = Device.auto, epochs_scale: EpochsScaleOpt = None, seed: SeedOpt = None,
    lora_rank: LoraRankOpt = None, lora_alpha: LoraAlphaOpt = None, resume: ResumeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fine-tune a pretrained backbone with the progressive recipe; writes a run directory."""
    _setup_logging(verbose)
    run_train(recipe=recipe, data=data, subset=subset, weights=weights, out=out, device=device, epochs_scale=epochs_scale,
              seed=seed, resume=resume, extra={"lora_rank": lora_rank, "lora_alpha": lora_alpha})


@command
def recipes() -> None:
    """List the recipes shipped with edgetl."""
    from rich.table import Table

    from edgetl.backbones import get_backbone
    from edgetl.recipe import known_recipes, load_recipe

    table = Table(title="edgetl recipes")
    for col in ("name", "backbone", "input", "phases", "epochs"):
        table.add_column(col, no_wrap=col != "phases")
    for name in known_recipes():
        r = load_recipe(name)
        size = r.image_size or get_backbone(r.backbone).preprocessing.crop_size
        lora = f" + LoRA r{r.lora.rank}" if r.lora else ""
        table.add_row(name, r.backbone + lora, f"{size} px", " → ".join(f"{p.name} ({p.train})" for p in r.phases),
                      str(sum(p.epochs for p in r.phases)))
    console.print(table)


def run_verify(*, run_dir: Path, data: str | None = None, samples: int = 32, json_path: Path | None = None,
               atol: float | None = None, min_top1: float | None = None, batch: int | None = None,
               max_latency_ms: float | None = None, baseline: Path | None = None, max_regression: float = 0.10,
               threads: list[int] | None = None, latency_seconds: float = 1.0):
    from edgetl.latency import TimingPlan
    from edgetl.report import latency_table, parity_table
    from edgetl.verify import ChecksFailed, VerifySettings, verify_run

    def show(report: dict) -> None:
        console.print(parity_table(report))
        if report.get("latency"):
            console.print(latency_table(report))

    settings = VerifySettings(data=data, samples=samples, atol=atol, min_top1=min_top1, batch=batch,
                              max_latency_ms=max_latency_ms, baseline=baseline, max_regression=max_regression,
                              threads=tuple(threads) if threads else None,
                              timing=TimingPlan(seconds=latency_seconds, max_seconds=3 * latency_seconds))
    try:
        with err_console.status("verify") as status:
            result = verify_run(run_dir, settings, json_path=json_path,
                                progress=lambda stage: status.update(f"verify · {stage}"))
    except ChecksFailed as e:
        show(e.result.report)
        raise
    show(result.report)
    console.print(f"[green]✓ verify passed[/] ({len(result.checks)} checks) · {result.json_path}")
    return result


@command
def verify(
    run_dir: VerifyRunArg, data: VerifyDataOpt = None, samples: SamplesOpt = 32, json_path: JsonOpt = None,
    atol: AtolOpt = None, min_top1: MinTop1Opt = None, batch: BatchOpt = None, max_latency_ms: MaxLatencyOpt = None,
    baseline: BaselineOpt = None, max_regression: MaxRegressionOpt = 0.10, threads: ThreadsOpt = None,
    latency_seconds: LatencySecondsOpt = 1.0, verbose: VerboseOpt = False,
) -> None:
    """Check an export before it ships: integrity, parity with the checkpoint, latency. Exit 1 if a bar fails."""
    _setup_logging(verbose)
    run_verify(run_dir=run_dir, data=data, samples=samples, json_path=json_path, atol=atol, min_top1=min_top1,
               batch=batch, max_latency_ms=max_latency_ms, baseline=baseline, max_regression=max_regression,
               threads=threads, latency_seconds=latency_seconds)


def run_export(*, run_dir: Path, format: Format = Format.all, opset: int | None = None, batch: int | None = None,
               checkpoint: Checkpoint = Checkpoint.best, out: Path | None = None):
    from edgetl.export import export_run
    from edgetl.report import export_table

    with err_console.status("export"):
        result = export_run(run_dir, formats=(format.value,), opset=opset, batch=batch, checkpoint=checkpoint.value,
                            out=out)
    console.print(export_table(result))
    return result


@command
def export(
    run_dir: ExportRunArg, format: FormatOpt = Format.all, opset: OpsetOpt = None, batch: ExportBatchOpt = None,
    checkpoint: CheckpointOpt = Checkpoint.best, out: ExportOutOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fold BatchNorm (and LoRA), write ONNX and TorchScript and a manifest into RUN/export."""
    _setup_logging(verbose)
    run_export(run_dir=run_dir, format=format, opset=opset, batch=batch, checkpoint=checkpoint, out=out)


PredictRunArg = Annotated[Path, typer.Argument(help="Run directory (or its export folder).")]
ImagesArg = Annotated[list[Path], typer.Argument(help="Image files to classify.")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="How many classes to list per image.")]
PredictJsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CompareScratchOpt = Annotated[bool, typer.Option("--compare-scratch", help="Also train the recipe from random weights and compare.")]
RunResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue this run at its first unfinished stage.")]


@command
def run(
    recipe: RecipeOpt = "quickstart", data: DataOpt = None, subset: SubsetOpt = None, weights: WeightsOpt = None,
    out: OutOpt = None, device: DeviceOpt = Device.auto, epochs_scale: EpochsScaleOpt = None, seed: SeedOpt = None,
    lora_rank: LoraRankOpt = None, lora_alpha: LoraAlphaOpt = None, format: FormatOpt = Format.all,
    opset: OpsetOpt = None, batch: ExportBatchOpt = None, samples: SamplesOpt = 32, atol: AtolOpt = None,
    min_top1: MinTop1Opt = None, max_latency_ms: MaxLatencyOpt = None, latency_seconds: LatencySecondsOpt = 1.0,
    compare_scratch: CompareScratchOpt = False, resume: RunResumeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """The whole chain: train -> export -> verify, then one report. Exit code of the first failing stage."""
    from edgetl.files import read_json
    from edgetl.pipeline import STAGES, first_unfinished
    from edgetl.report import run_table

    _setup_logging(verbose)
    started = time.perf_counter()
    run_dir = resume or out or default_run_dir(recipe)
    stage = first_unfinished(run_dir) if resume else "train"
    todo = STAGES[STAGES.index(stage):] if stage else ("verify",)
    if resume:
        err_console.print(f"resuming {run_dir} at {todo[0]}")
    if "train" in todo:
        partial = resume is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        run_train(recipe=recipe, data=data, subset=subset, weights=weights, out=run_dir, device=device,
                  epochs_scale=epochs_scale, seed=seed, resume=run_dir if partial else None,
                  extra={"lora_rank": lora_rank, "lora_alpha": lora_alpha})
    if "export" in todo:
        run_export(run_dir=run_dir, format=format, opset=opset, batch=batch)
    result = run_verify(run_dir=run_dir, samples=samples, atol=atol, min_top1=min_top1, max_latency_ms=max_latency_ms,
                        latency_seconds=latency_seconds)
    scratch = None
    if compare_scratch:
        scratch_dir = run_dir / "scratch"
        if not (scratch_dir / "train.json").is_file():
            err_console.print("training the same recipe from random weights (--compare-scratch)")
            run_train(recipe=str(run_dir / "recipe.resolved.toml"), weights="none", out=scratch_dir, device=device)
        scratch = read_json(scratch_dir / "train.json", what="scratch training summary")
    console.print(run_table(train=read_json(run_dir / "train.json", what="training summary"),
                            manifest=read_json(run_dir / "export" / "manifest.json", what="export manifest"),
                            verify=result.report, scratch=scratch, seconds=time.perf_counter() - started))


@command
def predict(run_dir: PredictRunArg, images: ImagesArg, top_k: TopKOpt = 5, json_out: PredictJsonOpt = False) -> None:
    """Classify images with the exported ONNX model and the manifest's preprocessing only (what a device does)."""
    import json
    from dataclasses import asdict

    from edgetl.predict import predict as classify
    from edgetl.report import predict_table

    predictions = classify(run_dir, images, top_k=top_k)
    if json_out:
        typer.echo(json.dumps([asdict(p) for p in predictions], indent=2))
    else:
        console.print(predict_table(predictions))


@command
def info(run_dir: PredictRunArg) -> None:
    """Show a run's recipe, results, artifacts and verify status."""
    from edgetl.pipeline import describe
    from edgetl.report import info_tables

    for table in info_tables(describe(run_dir)):
        console.print(table)


for _command in (run, train, export, verify, predict, info, recipes):
    app.command()(_command)


def main() -> None:
    app()
