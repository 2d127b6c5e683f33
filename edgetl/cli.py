"""The `edgetl` command line: parse flags, call one stage function, render its result. No logic here.

    edgetl train --recipe quickstart --data sample
"""

from __future__ import annotations

import functools
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgetl.errors import EdgetlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a pretrained image classifier, fold and export it, verify it for the edge.")
console = Console(stderr=False)
err_console = Console(stderr=True)


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
    """Register a command whose EdgetlError becomes a one-line message and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return app.command()(wrapper)


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
        self.task = self.progress.add_task(f"phase {index + 1} {phase.name}", total=steps, info=f"{n:,} trainable{note}")

    def step(self) -> None:
        self.progress.advance(self.task)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.progress.update(self.task, info=f"ep {record['phase_epoch']} val acc {100 * record['val_acc']:.1f} % "
                                             f"loss {record['val_loss']:.3f} · {record['images_per_s']:.0f} img/s")


def run_train(*, recipe: str, data: str | None, subset: int | None, weights: str | None, out: Path | None, device: Device,
              epochs_scale: float | None, seed: int | None, resume: Path | None, extra: dict | None = None):
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
    resume: ResumeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fine-tune a pretrained backbone with the progressive recipe; writes a run directory."""
    _setup_logging(verbose)
    run_train(recipe=recipe, data=data, subset=subset, weights=weights, out=out, device=device,
              epochs_scale=epochs_scale, seed=seed, resume=resume)


@command
def recipes() -> None:
    """List the recipes shipped with edgetl."""
    from rich.table import Table

    from edgetl.recipe import known_recipes, load_recipe

    table = Table(title="edgetl recipes")
    for col in ("name", "backbone", "input", "phases", "epochs"):
        table.add_column(col)
    for name in known_recipes():
        r = load_recipe(name)
        from edgetl.backbones import get_backbone

        size = r.image_size or get_backbone(r.backbone).preprocessing.crop_size
        table.add_row(name, r.backbone, f"{size} px", " → ".join(f"{p.name} ({p.train})" for p in r.phases),
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


def _export_table(result: Any) -> Table:
    table = Table(title=f"edgetl export · {result.out_dir}")
    table.add_column("format")
    table.add_column("file", no_wrap=True, min_width=len("model.torchscript.pt"))
    for col in ("size", "params", "BN folded", "seconds"):
        table.add_column(col, justify="right")
    for a in result.artifacts:
        table.add_row(a.format, a.file, f"{a.bytes / 1e6:.1f} MB", f"{result.deploy.params:,}",
                      str(result.deploy.bn_folded), f"{a.seconds:.1f}")
    return table


def run_export(*, run_dir: Path, format: Format = Format.all, opset: int | None = None, batch: int | None = None,
               checkpoint: Checkpoint = Checkpoint.best, out: Path | None = None):
    from edgetl.export import export_run

    with err_console.status("export"):
        result = export_run(run_dir, formats=(format.value,), opset=opset, batch=batch, checkpoint=checkpoint.value,
                            out=out)
    console.print(_export_table(result))
    return result


@command
def export(
    run_dir: ExportRunArg, format: FormatOpt = Format.all, opset: OpsetOpt = None, batch: ExportBatchOpt = None,
    checkpoint: CheckpointOpt = Checkpoint.best, out: ExportOutOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fold BatchNorm (and LoRA), write ONNX and TorchScript and a manifest into RUN/export."""
    _setup_logging(verbose)
    run_export(run_dir=run_dir, format=format, opset=opset, batch=batch, checkpoint=checkpoint, out=out)


def main() -> None:
    app()
