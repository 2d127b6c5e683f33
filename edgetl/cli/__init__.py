"""The `edgetl` command line: parse flags, call one Python API function, render its result. No logic here.

    edgetl train --recipe quickstart --data sample
    edgetl --install-completion     # tab completion of commands, flags and choices in your shell

Each command calls what a script would (edgetl/api.py: `edgetl.train`, `Run.export`, `Run.verify`, `Run.predict`;
`run` the pipeline they share), with the rich bars and tables as its progress hooks.

    options.py  the shared option types and the choices built from the registries
    render.py   progress bars and the pipeline's hooks
    tables.py   rich tables of results other modules computed
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.logging import RichHandler
from rich.markup import escape

from edgetl import api, files
from edgetl.api import Run
from edgetl.cli.bench import bench as _bench  # its own module; wrapped by the same error boundary below
from edgetl.cli.options import (
    AtolOpt,
    BackboneOpt,
    BaselineOpt,
    BatchOpt,
    BatchSizeOpt,
    CalibrationOpt,
    Checkpoint,
    CheckpointOpt,
    CompareScratchOpt,
    DataOpt,
    Device,
    DeviceOpt,
    EpochsOpt,
    EpochsScaleOpt,
    ExportBatchOpt,
    ExportOutOpt,
    ExportRunArg,
    FormatOpt,
    ImagesArg,
    ImageSizeOpt,
    InputTypeOpt,
    JsonOpt,
    JsonOutOpt,
    LatencySecondsOpt,
    LoraAlphaOpt,
    LoraRankOpt,
    LrOpt,
    MaxLatencyOpt,
    MaxRegressionOpt,
    MinTop1Opt,
    OpsetOpt,
    OutOpt,
    OutputTypeOpt,
    PrecisionOpt,
    PredictFormatOpt,
    PredictJsonOpt,
    PredictPrecisionOpt,
    PredictRunArg,
    PredictRuntimeOpt,
    RecipeOpt,
    ReplaceOpt,
    ResumeOpt,
    RunJsonOpt,
    RunResumeOpt,
    RuntimeOpt,
    SamplesOpt,
    SeedOpt,
    SetOpt,
    SubsetOpt,
    ThreadsOpt,
    TopKOpt,
    VerboseOpt,
    VerifyDataOpt,
    VerifyExportOpt,
    VerifyRunArg,
    WeightsOpt,
)
from edgetl.cli.render import RichHooks, console, err_console, show_verify, tables_on_stderr
from edgetl.errors import EdgetlError, describe_error, printable
from edgetl.pipeline import ExportRequest, TrainRequest, verify_settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fine-tune a pretrained image classifier, fold and export it, verify it for the edge.")


def _version(value: bool) -> None:
    if value:
        from edgetl.version import __version__

        typer.echo(f"edgetl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Fine-tune a pretrained image classifier, fold and export it, verify it for the edge."""


def command(fn):
    """The one error boundary: an EdgetlError becomes its one-line message and exit code; any other exception
    one line too, exit 2 (its traceback with --verbose). Only a failed bar exits 1, the code CI gates on.
    (Registered at the end of this module, in the order `--help` lists them.)"""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main): the `finally` blocks ran, temp files are gone
            _error("interrupted; the files written before are intact — run the command again (a training run "
                   "continues with --resume)")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 — the boundary: no traceback for the user, unless asked
            if logging.getLogger().isEnabledFor(logging.INFO):
                err_console.print_exception()
            _error(f"unexpected {describe_error(e, limit=300)} — run again with --verbose for the traceback, and "
                   f"report it if the input looks right")
            raise typer.Exit(2) from None

    return wrapper


def _error(message: str) -> None:
    """One line on stderr; the message's own brackets and control characters (paths, labels) are text, never
    rich markup or terminal escapes."""
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


class _Printable(logging.Filter):
    """Log lines name files and folders: their control characters are shown as escapes, never run."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), None
        return True


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err_console, show_time=False, show_path=False)
    handler.addFilter(_Printable())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler], force=True)


def _train_request(*, recipe: str, device: Device, epochs_scale: float | None, settings: list[str] | None,
                   epochs: int | None, lr: float | None, **overrides) -> TrainRequest:
    return TrainRequest(recipe=recipe, overrides=overrides, epochs_scale=epochs_scale, device=device.value,
                        settings=tuple(settings or ()), epochs=epochs, lr=lr)


def _is_stdout(json_out: object) -> bool:
    return json_out is not None and str(json_out) == "-"


def _emit_json(json_out: object, data: object) -> None:
    """`--json PATH`: the document written atomically; `--json -`: printed on stdout, alone."""
    text = json.dumps(data, indent=2, default=str)
    if _is_stdout(json_out):
        typer.echo(text)
    else:
        files.write_text(json_out, text + "\n")


def _values(choices: list | None) -> tuple[str, ...] | None:
    return tuple(c.value for c in choices) if choices else None


def _shown_on_failure(call):
    """Run a call that may end in ChecksFailed: the report's tables are shown before the one-line error."""
    from edgetl.verify import ChecksFailed

    try:
        return call()
    except ChecksFailed as e:
        show_verify(e.result.report)
        raise


@command
def train(
    recipe: RecipeOpt = None, data: DataOpt = None, subset: SubsetOpt = None, weights: WeightsOpt = None,
    out: OutOpt = None, device: DeviceOpt = Device.auto, epochs_scale: EpochsScaleOpt = None, seed: SeedOpt = None,
    lora_rank: LoraRankOpt = None, lora_alpha: LoraAlphaOpt = None, resume: ResumeOpt = None,
    image_size: ImageSizeOpt = None, epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None, lr: LrOpt = None,
    backbone: BackboneOpt = None, settings: SetOpt = None, json_out: JsonOutOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fine-tune a pretrained backbone with the progressive recipe; writes a run directory.

    Settings as flags: --image-size, --epochs (the total), --batch-size, --lr, --backbone, and any recipe key
    with --set KEY=VALUE; RUN/recipe.resolved.toml records what was used.
    """
    _setup_logging(verbose)
    with tables_on_stderr(_is_stdout(json_out)):
        trained = api.train(recipe, data=data, out=out, device=device.value, epochs_scale=epochs_scale,
                            resume=resume, progress=RichHooks(), epochs=epochs, lr=lr, settings=settings,
                            subset=subset, weights=weights, seed=seed, lora_rank=lora_rank, lora_alpha=lora_alpha,
                            image_size=image_size, batch_size=batch_size, backbone=backbone)
    if json_out is not None:
        _emit_json(json_out, {"run_dir": str(trained.path), **trained.summary.model_dump(mode="json")})


@command
def recipes(json_out: JsonOutOpt = None) -> None:
    """List the recipes shipped with edgetl."""
    from edgetl.cli.catalog import recipes_data, recipes_table

    rows = recipes_data()
    if json_out is not None:
        _emit_json(json_out, rows)
    if not _is_stdout(json_out):
        console.print(recipes_table(rows))


@command
def backbones(groups: Annotated[Optional[str], typer.Option(
        "--groups", metavar="NAME", help="Show the layer groups of one backbone, e.g. timm:convnext_atto.")] = None,
        json_out: JsonOutOpt = None,
) -> None:
    """List the shipped backbones and how to name any torchvision or timm classifier; --groups shows one's groups."""
    from edgetl.cli.catalog import backbones_data, backbones_table
    from edgetl.cli.tables import BACKBONE_FORMS, groups_table

    if groups:
        console.print(groups_table(groups))
        return
    rows = backbones_data()
    if json_out is not None:
        _emit_json(json_out, rows)
    if not _is_stdout(json_out):
        console.print(backbones_table(rows))
        console.print(BACKBONE_FORMS)


@command
def verify(
    run_dir: VerifyRunArg, data: VerifyDataOpt = None, samples: SamplesOpt = None, json_path: JsonOpt = None,
    atol: AtolOpt = None, min_top1: MinTop1Opt = None, batch: BatchOpt = None, max_latency_ms: MaxLatencyOpt = None,
    baseline: BaselineOpt = None, max_regression: MaxRegressionOpt = 0.10, threads: ThreadsOpt = None,
    latency_seconds: LatencySecondsOpt = 1.0, runtime: RuntimeOpt = None, export: VerifyExportOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Check an export before it ships: integrity, parity with the checkpoint, latency. Exit 1 if a bar fails.

    --json PATH writes the report there instead of RUN/verify.json; --json - prints it on stdout (RUN/verify.json
    is written as always). --export DIR checks an export written elsewhere (`edgetl export RUN --out DIR`) against
    RUN's checkpoint; its report then goes to DIR/verify.json and RUN is left as it is.
    """
    from edgetl.verify import ChecksFailed

    _setup_logging(verbose)
    stdout = _is_stdout(json_path)
    try:
        with tables_on_stderr(stdout):
            report = _shown_on_failure(lambda: Run(run_dir).verify(
                data, samples=samples, atol=atol, min_top1=min_top1, batch=batch, max_latency_ms=max_latency_ms,
                baseline=baseline, max_regression=max_regression, threads=threads, latency_seconds=latency_seconds,
                runtimes=_values(runtime), json_path=None if stdout else json_path, export=export, check=True,
                progress=RichHooks()))
    except ChecksFailed as e:
        if stdout:
            _emit_json("-", e.result.report.model_dump(mode="json"))
        raise
    if stdout:
        _emit_json("-", report.model_dump(mode="json"))


@command
def export(
    run_dir: ExportRunArg, format: FormatOpt = None, opset: OpsetOpt = None, batch: ExportBatchOpt = None,
    checkpoint: CheckpointOpt = Checkpoint.best, out: ExportOutOpt = None, precision: PrecisionOpt = None,
    calibration: CalibrationOpt = None, input: InputTypeOpt = None, output: OutputTypeOpt = None,
    replace: ReplaceOpt = False, json_out: JsonOutOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Fold BatchNorm (and LoRA), write ONNX and TorchScript (ExecuTorch, LiteRT; fp16 / INT8), a model card and a manifest into RUN/export."""
    _setup_logging(verbose)
    with tables_on_stderr(_is_stdout(json_out)):
        manifest = Run(run_dir).export(
            _values(format), _values(precision), opset=opset, batch=batch, checkpoint=checkpoint.value, out=out,
            calibration=calibration.value if calibration else None, input_type=input.value if input else None,
            output_type=output.value if output else None, replace=replace, progress=RichHooks())
    if json_out is not None:
        _emit_json(json_out, manifest.model_dump(mode="json"))


@command
def run(
    recipe: RecipeOpt = None, data: DataOpt = None, subset: SubsetOpt = None, weights: WeightsOpt = None,
    out: OutOpt = None, device: DeviceOpt = Device.auto, epochs_scale: EpochsScaleOpt = None, seed: SeedOpt = None,
    lora_rank: LoraRankOpt = None, lora_alpha: LoraAlphaOpt = None, format: FormatOpt = None,
    opset: OpsetOpt = None, batch: ExportBatchOpt = None, samples: SamplesOpt = None, atol: AtolOpt = None,
    min_top1: MinTop1Opt = None, max_latency_ms: MaxLatencyOpt = None, latency_seconds: LatencySecondsOpt = 1.0,
    compare_scratch: CompareScratchOpt = False, resume: RunResumeOpt = None, precision: PrecisionOpt = None,
    calibration: CalibrationOpt = None, input: InputTypeOpt = None, output: OutputTypeOpt = None,
    image_size: ImageSizeOpt = None, epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None, lr: LrOpt = None,
    backbone: BackboneOpt = None, settings: SetOpt = None, verbose: VerboseOpt = False, json_out: RunJsonOpt = None,
) -> None:
    """The whole chain: train -> export -> verify, then one report. Exit code of the first failing stage.

    --json PATH (or - for stdout, instead of the table): the figures, the time of each stage and exported file,
    and the file that ships.
    """
    from edgetl.cli.tables import run_table
    from edgetl.pipeline import run_pipeline

    _setup_logging(verbose)
    request = _train_request(recipe=recipe, device=device, epochs_scale=epochs_scale, settings=settings,
                             epochs=epochs, lr=lr, data=data, subset=subset, weights=weights, seed=seed,
                             lora_rank=lora_rank, lora_alpha=lora_alpha, image_size=image_size,
                             batch_size=batch_size, backbone=backbone)
    settings = verify_settings(samples=samples, atol=atol, min_top1=min_top1, max_latency_ms=max_latency_ms,
                               latency_seconds=latency_seconds)
    json_stdout = _is_stdout(json_out)
    with tables_on_stderr(json_stdout):
        outcome = _shown_on_failure(lambda: run_pipeline(
            request, out=out, resume=resume,
            export=ExportRequest(formats=_values(format), opset=opset, batch=batch, precisions=_values(precision),
                                 calibration=calibration.value if calibration else None,
                                 input_type=input.value if input else None,
                                 output_type=output.value if output else None),
            verify=settings, compare_scratch=compare_scratch, hooks=RichHooks()))
    if json_out is not None:
        _emit_json(json_out, outcome.to_dict())
    if not json_stdout:
        console.print(run_table(outcome))


@command
def predict(run_dir: PredictRunArg, images: ImagesArg, top_k: TopKOpt = 5, json_out: PredictJsonOpt = False,
            precision: PredictPrecisionOpt = None, format: PredictFormatOpt = None, runtime: PredictRuntimeOpt = None
            ) -> None:
    """Classify images with an exported file (ONNX first) and the manifest's preprocessing only, as a device does.

    An unusable image (missing, not a regular file, damaged) gets an `error:` line and exit code 2; the rest run.

    --json: a list in the order given, per image its prediction, or {"image": ..., "error": reason} if unusable.
    """
    from edgetl.cli.tables import predict_table
    from edgetl.predict import Failure

    rows = Run(run_dir).predict(images, top_k=top_k, precision=precision.value if precision else None,
                                format=format.value if format else None, runtime=runtime.value if runtime else None,
                                failures="keep")
    if json_out:
        typer.echo(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        console.print(predict_table(rows))
    failures = [row for row in rows if isinstance(row, Failure)]
    for failure in failures:
        _error(f"cannot read image {failure.image}: {failure.error}")
    if failures:
        raise typer.Exit(2)


@command
def info(run_dir: PredictRunArg, json_out: JsonOutOpt = None) -> None:
    """Show a run's recipe, results, artifacts and verify status (exit 2 naming any damaged file)."""
    from edgetl.cli.tables import info_tables

    described = Run(run_dir).describe()
    if json_out is not None:
        _emit_json(json_out, described.to_dict())
    if not _is_stdout(json_out):
        for table in info_tables(described):
            console.print(table)
    for problem in described.damaged:
        _error(problem)
    if described.damaged:
        raise typer.Exit(2)


for _command in (run, train, export, verify, predict, info, command(_bench), recipes, backbones):
    app.command()(_command)


def main() -> None:
    # SIGTERM (kill, a CI timeout, torchrun stopping its workers) as Ctrl-C: KeyboardInterrupt unwinds the stage, so
    # its `finally` blocks remove temp folders and locks, and the exit code is 130, not the signal's 143. Training
    # takes both signals over while it runs, to stop after the current step with last.pt written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if os.environ.get("RANK", "0") == "0":
        app()
        return
    # Under torchrun every process parses the same command line: a bad flag is rank 0's to report, once.
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except TyperException as e:  # a usage error (exit 2), not printed here
        code = e.exit_code
    except typer.Abort:
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
