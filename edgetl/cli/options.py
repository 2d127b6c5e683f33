"""The CLI's shared option types: one definition per flag, reused by every command that takes it.

    def train(recipe: RecipeOpt = "quickstart", data: DataOpt = None, ...) -> None

Fixed choices are str Enums built from the registries, so Typer rejects bad values and `--help` lists them.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.formats import FORMATS
from edgetl.formats.engines import ENGINES
from edgetl.recipe import CALIBRATION_METHODS, INPUT_TYPES, OUTPUT_TYPES, PRECISIONS


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


# The export formats' registry, plus `all`: a new format module appears here with nothing to edit.
FormatChoice = Enum("FormatChoice", {name: name for name in (*FORMATS, "all")}, type=str)
OneFormat = Enum("OneFormat", {name: name for name in FORMATS}, type=str)  # a file to run: no `all`
# The ONNX engines verify can run the ONNX files in (edgetl.formats.engines).
RuntimeChoice = Enum("RuntimeChoice", {name: name for name in ENGINES}, type=str)


# The recipe schema's export vocabulary (edgetl.recipe): one list for the flags, the recipe and the code.
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)
Calibration = Enum("Calibration", {name: name for name in CALIBRATION_METHODS}, type=str)
InputType = Enum("InputType", {name: name for name in INPUT_TYPES}, type=str)
OutputType = Enum("OutputType", {name: name for name in OUTPUT_TYPES}, type=str)


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


RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe name (see `edgetl recipes`) or path to a .toml file (default: quickstart).")]
DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="A folder (train/ + val/ [+ test/, held out], train/ + test/, or class folders), `sample`, or `cifar10`.")]
SubsetOpt = Annotated[Optional[int], typer.Option("--subset", help="Use only this many training images; val and test shrink to a fifth of that.")]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help="`imagenet`, `none`, or a path to a .pth/.pt/.safetensors state dict.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default: artifacts/<time>-<recipe>).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train.")]
EpochsScaleOpt = Annotated[Optional[float], typer.Option("--epochs-scale", help="Multiply every phase's epochs (e.g. 0.5).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (split, init, order, augmentation).")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the interrupted run in this directory.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", "--imgsz", min=16, max=1024, help="Input (crop) size in pixels (default: the recipe's, else the weights' own).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Total epochs, spread over the recipe's phases in its proportions.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per step.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="The first phase's head learning rate; every other rate is scaled with it (the recipe's ratios stay).")]
BackboneOpt = Annotated[Optional[str], typer.Option("--backbone", help="A shipped backbone (`edgetl backbones`), or torchvision:NAME / timm:NAME.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Any recipe key, repeatable; dotted for tables: --set label_smoothing=0.05 --set head.dropout=0.2 --set phases.1.epochs=3. Values are TOML (numbers, true, [\"fp32\", \"int8\"]) or plain words.")]
JsonOutOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file; - prints it on stdout instead of the tables (one JSON document).")]
LoraRankOpt = Annotated[Optional[int], typer.Option("--lora-rank", help="Train LoRA adapters of this rank (turns LoRA on).")]
LoraAlphaOpt = Annotated[Optional[float], typer.Option("--lora-alpha", help="LoRA scaling alpha (with --lora-rank).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")]
VerifyRunArg = Annotated[Path, typer.Argument(help="Run directory, exported (`edgetl export RUN`).")]
VerifyDataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Images to check with: a folder of images or class folders (or with test/ or val/ inside: test/ first), or `sample`. Default: the run's test split, else its val split.")]
SamplesOpt = Annotated[Optional[int], typer.Option("--samples", "-n", help="Real images to check on (default: all of the run's test split, else its val split, up to 5000, as export's INT8 guard; random tensors are added).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Where to write the report (default: RUN/verify.json; with --export, DIR/verify.json).")]
VerifyExportOpt = Annotated[Optional[Path], typer.Option("--export", "-e", help="The export to check, when `edgetl export RUN --out DIR` wrote it elsewhere (default: RUN/export). Checked against RUN's checkpoint.")]
AtolOpt = Annotated[Optional[float], typer.Option("--atol", help="Bar on the max abs logit difference, times the largest |logit| when it exceeds 1 (default per precision: 1e-4 for fp32).")]
MinTop1Opt = Annotated[Optional[float], typer.Option("--min-top1", help="Bar on top-1 agreement, a fraction (default per precision: 1.0 for fp32).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", help="Also time this batch size (batch 1 is always timed).")]
MaxLatencyOpt = Annotated[Optional[float], typer.Option("--max-latency-ms", help="Bar on the ONNX p50 latency, batch 1, all threads.")]
BaselineOpt = Annotated[Optional[Path], typer.Option("--baseline", help="An earlier verify.json: fail if the ONNX p50 regressed (same machine only).")]
MaxRegressionOpt = Annotated[float, typer.Option("--max-regression", help="Allowed p50 slow-down vs --baseline, a fraction.")]
RuntimeOpt = Annotated[Optional[list[RuntimeChoice]], typer.Option("--runtime", help="Also run the ONNX files in this engine, with the same bars, repeatable (onnxruntime always runs them). openvino and opencv need pip install 'edgetl\\[openvino]' / 'edgetl\\[opencv]'.")]
PredictRuntimeOpt = Annotated[Optional[RuntimeChoice], typer.Option("--runtime", help="Run the ONNX file in this engine (default: onnxruntime).")]
ThreadsOpt = Annotated[Optional[list[int]], typer.Option("--threads", help="Thread counts to time, repeatable (default: 1 and all cores).")]
LatencySecondsOpt = Annotated[float, typer.Option("--latency-seconds", help="Time each latency setting at least this long (capped at 3x).")]
ExportRunArg = Annotated[Path, typer.Argument(help="Run directory, trained (`edgetl train`).")]
FormatOpt = Annotated[Optional[list[FormatChoice]], typer.Option("--format", "-f", help="What to write, repeatable; `all` for every format (default: the recipe's \\[export] formats, else onnx and torchscript). executorch and litert need `pip install 'edgetl\\[all]'`.")]
PredictFormatOpt = Annotated[Optional[OneFormat], typer.Option("--format", "-f", help="Use the file of this format (default: the first listed, ONNX).")]
PrecisionOpt = Annotated[Optional[list[Precision]], typer.Option("--precision", "-p", help=f"{' | '.join(PRECISIONS)}, repeatable; each its own file beside the fp32 one (default: the recipe's \\[export] precisions, else fp32).")]
InputTypeOpt = Annotated[Optional[InputType], typer.Option("--input", help="What every file takes: float (NCHW, normalized) or uint8 (the device's \\[batch, crop, crop, 3] RGB crop; /255, normalization and layout inside the file). Default: the recipe's \\[export] input, else float.")]
OutputTypeOpt = Annotated[Optional[OutputType], typer.Option("--output", help="What every file returns: logits or probs (a softmax inside the file). Default: the recipe's \\[export] output, else logits.")]
CalibrationOpt = Annotated[Optional[Calibration], typer.Option("--calibration", help="INT8 calibration method (default: the recipe's, else minmax).")]
PredictPrecisionOpt = Annotated[Optional[Precision], typer.Option("--precision", "-p", help="Use the file of this precision (default: the first listed, fp32).")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's own, 20 on torch 2.14).")]
ExportBatchOpt = Annotated[Optional[int], typer.Option("--batch", parser=_batch_size, metavar="dynamic|N", help="Batch dimension: `dynamic`, or fixed to N.")]
CheckpointOpt = Annotated[Checkpoint, typer.Option("--checkpoint", help="Which checkpoint to export.")]
ExportOutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Export folder (default: RUN/export).")]
ReplaceOpt = Annotated[bool, typer.Option("--replace", help="Replace the export as a whole (default: its files not asked for this time are kept and listed, when they are of the same checkpoint).")]
PredictRunArg = Annotated[Path, typer.Argument(help="Run directory (or its export folder).")]
ImagesArg = Annotated[list[Path], typer.Argument(help="Image files, folders (every image under them) or quoted glob patterns ('photos/**/*.jpg') to classify.")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to list per image.")]
RunJsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the chain's figures, stage times and shipped file as JSON to this file; - prints it instead of the table.")]
PredictJsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CompareScratchOpt = Annotated[bool, typer.Option("--compare-scratch", help="Also train the recipe from random weights and compare.")]
RunResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue this run at its first unfinished stage.")]
