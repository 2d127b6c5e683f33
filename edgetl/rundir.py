"""The run directory, typed: where each stage's files live, and the schema of the ones stages read back.

    run = RunDir(Path("artifacts/my-run")); manifest = read_manifest(run.manifest); manifest.labels

The run directory is the contract between the stages, so its files are pydantic models here, in one place:
the checkpoint metadata, `train.json`, `export/manifest.json` and `verify.json`. Every reader goes through
them, so a renamed key is one edit, and a damaged file is a one-line error naming the file and the field.
Each carries a `schema_version`: files written before it existed read as version 1; a newer version than
this edgetl knows is refused with both versions named, never half-read.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from edgetl import files
from edgetl.errors import RecipeError, RunDirError
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import Recipe, parse_recipe
from edgetl.version import __version__

SCHEMA_VERSION = 1
STAGES = ("train", "export", "verify")
MANIFEST_NAME = "manifest.json"  # export's last write, in the export folder
REPORT_NAME = "verify.json"  # verify's report: in the run, or beside an export written elsewhere


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory; nothing is read or created by building one. `export`: an export folder
    written elsewhere (`edgetl export RUN --out DIR`), which the export paths then name."""

    root: Path
    export: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.export is not None:
            object.__setattr__(self, "export", Path(self.export))

    recipe = property(lambda self: self.root / "recipe.resolved.toml")
    labels = property(lambda self: self.root / "labels.json")
    preprocessing = property(lambda self: self.root / "preprocessing.json")
    split = property(lambda self: self.root / "split.json")
    data = property(lambda self: self.root / "data.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    curves = property(lambda self: self.root / "curves.png")
    confusion = property(lambda self: self.root / "confusion.png")  # train: the val split, best.pt
    verify_confusion = property(lambda self: self.root / "verify-confusion.png")  # verify: each exported file
    train_json = property(lambda self: self.root / "train.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    export_dir = property(lambda self: self.export if self.export is not None else self.root / "export")
    manifest = property(lambda self: self.export_dir / MANIFEST_NAME)
    card = property(lambda self: self.export_dir / "MODEL_CARD.md")
    verify_json = property(lambda self: self.root / REPORT_NAME)

    @property
    def own_export(self) -> bool:
        """The export is the run's own RUN/export (not one written elsewhere with --out)."""
        return self.export is None or self.export.resolve() == (self.root / "export").resolve()

    @property
    def report(self) -> Path:
        """Where verify writes its report by default: RUN/verify.json, or beside an export written elsewhere."""
        return self.verify_json if self.own_export else self.export_dir / REPORT_NAME

    def checkpoint(self, name: str) -> Path:
        """`best` / `last` (or a file name) -> its path under checkpoints/."""
        return self.checkpoints / (name if name.endswith(".pt") else f"{name}.pt")

    def stage_files(self) -> dict[str, Path]:
        """The file each stage writes last: its presence marks the stage as finished."""
        return {"train": self.train_json, "export": self.manifest, "verify": self.verify_json}


# --- the schema ------------------------------------------------------------------------------------------------


class _Schema(BaseModel):
    # Unknown keys are kept (a newer edgetl of the same schema version may add some) and written back.
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    # Optional fields left out of the JSON when unset, so files read as they did before those fields existed
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_empty_fields(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in self.OMIT_IF_NONE:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class _Versioned(_Schema):
    schema_version: int = SCHEMA_VERSION


class CheckpointMeta(_Versioned):
    """What a checkpoint says about itself, besides its tensors: enough to rebuild the model and its run."""

    # Checkpoints written before the schema had "format_version": 1.
    schema_version: int = Field(SCHEMA_VERSION, validation_alias=AliasChoices("schema_version", "format_version"))
    edgetl_version: str | None = None
    backbone: str
    num_classes: int = Field(ge=1, le=1_000_000, strict=True)
    labels: list[str]
    preprocessing: Preprocessing
    recipe: dict[str, Any]
    recipe_sha256: str | None = None
    lora: dict[str, Any] | None = None
    # best.pt: the epoch it was taken at; last.pt carries its resume state instead (edgetl.training.state)
    epoch: int | None = None
    val_acc: float | None = None
    val_loss: float | None = None

    @property
    def at_epoch(self) -> int | None:
        """The epoch these weights are from: best.pt's `epoch`, last.pt's `global_epoch`."""
        return self.epoch if self.epoch is not None else (self.model_extra or {}).get("global_epoch")


class PhaseSummary(_Schema):
    name: str
    epochs: int
    planned_epochs: int
    best_val_acc: float
    best_val_loss: float
    seconds: float
    stopped_early: bool
    # best val accuracy this phase reached minus the best before it (the first phase: minus 0); files from
    # before it have none
    val_acc_gain: float | None = None
    ended: str | None = None  # why it ended ("all its epochs", "no better val figure in 3 epochs", ...)

    @property
    def gain_per_minute(self) -> float | None:
        """Points of val accuracy this phase bought per minute: whether its time paid."""
        return None if self.val_acc_gain is None else 100 * self.val_acc_gain / max(self.seconds / 60, 1e-9)


class ClassFigures(_Schema):
    """One class's figures on labelled images (edgetl.confusion)."""

    label: str
    support: int  # labelled images of this class
    predicted: int  # images predicted as this class
    precision: float | None  # None: never predicted
    recall: float | None  # None: no image of it
    f1: float | None


class Confused(_Schema):
    """Images of class `label` predicted as `predicted`."""

    label: str
    predicted: str
    count: int


class PerClass(_Schema):
    """Per-class results on labelled images: `confusion[i][j]` counts images of labels[i] predicted as labels[j]."""

    images: int
    accuracy: float
    # the share whose true class is among the TOP_K highest scores (edgetl.confusion); None with TOP_K classes or
    # fewer (it would be 100 % by definition), or where it was not recorded
    top5_accuracy: float | None = None
    macro_f1: float | None = None  # the mean F1 over classes that have one
    labels: list[str]
    confusion: list[list[int]]
    classes: list[ClassFigures]
    most_confused: list[Confused] = []  # off-diagonal pairs, most images first


class WrongImage(_Schema):
    """A val image the best checkpoint got wrong, and how sure it was."""

    path: str
    label: str
    predicted: str
    confidence: float  # the predicted class's softmax probability


class TrainSummary(_Versioned):
    """train.json: written last by `edgetl train`."""

    run_dir: str
    backbone: str
    device: str
    best_val_acc: float
    best_val_loss: float
    best_epoch: int
    seconds: float  # the epochs' own time
    phases: list[PhaseSummary]
    weights: str
    skipped: list[tuple[str, str]] = []  # (path, reason) of every unusable file
    trainable: dict[str, dict[str, int]] = {}  # phase -> group -> parameter count
    wall_seconds: float = 0.0  # the whole process, decoding and model building included
    world_size: int = 1  # processes that trained it (torchrun)
    backend: str | None = None  # their torch.distributed backend: gloo (CPU) or nccl (GPU)
    # best.pt on the val split, per class; files from before 0.2 (or a run resumed from one) have none
    per_class: PerClass | None = None
    confidently_wrong: list[WrongImage] = []  # the most confidently wrong val images, most confident first
    best_val_top5: float | None = None  # best.pt's top-5 accuracy on the val split; None with 5 classes or fewer
    # best.pt on the held-out test split (a test/ folder beside train/): never trained on, never chose a
    # checkpoint; None without one
    test_acc: float | None = None
    test_top5: float | None = None
    test_per_class: PerClass | None = None

    @property
    def val_images(self) -> int | None:
        return self.per_class.images if self.per_class else None

    @property
    def test_images(self) -> int | None:
        return self.test_per_class.images if self.test_per_class else None


class TensorSpec(_Schema):
    name: str
    shape: list[int | str]  # a string names a dynamic axis
    dtype: str
    # an integer tensor (a full-integer TFLite file): real = scale * (q - zero_point)
    scale: float | None = None
    zero_point: int | None = None

    OMIT_IF_NONE = ("scale", "zero_point")


class ExportedFrom(_Schema):
    backbone: str
    checkpoint: str  # best | last: RUN/checkpoints/<checkpoint>.pt
    epoch: int | None = None
    val_acc: float | None = None
    recipe_sha256: str | None = None
    # the checkpoint file's sha256: verify trusts the run's checkpoint, this one only (exports before 0.3 have none)
    checkpoint_sha256: str | None = None

    OMIT_IF_NONE = ("checkpoint_sha256",)


class ModelFacts(_Schema):
    params: int
    macs: int | None = None
    bn_folded: int
    lora_merged: int
    fold_max_abs_diff: float | None = None
    norms_kept: str | None = None  # a model without BatchNorm: its LayerNorm / GroupNorm layers, exported as they are

    OMIT_IF_NONE = ("norms_kept",)  # BatchNorm models say nothing, as manifests before it existed


class ArtifactEntry(_Schema):
    format: str
    file: str
    bytes: int
    sha256: str
    precision: str = "fp32"
    opset: int | None = None  # formats without opsets leave it out of the file
    seconds: float = 0.0
    # fp16 / int8 files: how they were made (scheme, calibration, excluded nodes) and the guard's figures
    quantization: dict[str, Any] | None = None
    runtime: str | None = None  # what runs it: "ExecuTorch (XNNPACK)"
    versions: dict[str, str | None] | None = None  # the packages that wrote it and run it
    # The file's own tensors where they are not the manifest's input/output: a batch-1 ExecuTorch or LiteRT file
    # of a dynamic-batch export, a full-integer TFLite file's int8 input
    input: TensorSpec | None = None
    output: TensorSpec | None = None
    delegation: dict[str, Any] | None = None  # ExecuTorch: the share of the graph XNNPACK runs
    # ONNX: the exporter's opset, what the portable rewrite changed, and what no engine-safe form exists for
    portable: dict[str, Any] | None = None

    OMIT_IF_NONE = ("opset", "quantization", "runtime", "versions", "input", "output", "delegation", "portable")


class FileEntry(_Schema):
    """A file of the export that is not a model (the model card): name, size and sha256."""

    file: str
    bytes: int
    sha256: str


class GoldenOutput(FileEntry):
    """One file's expected output on the golden inputs (float32 .npy) and how close a runtime must come."""

    of: str  # the model file it was produced by
    atol: float  # max |output - expected| a runtime may show (the top-1 class must match exactly)


class Golden(_Schema):
    """Golden vectors (edgetl.export.golden): a few real val crops and every file's output on them."""

    inputs: FileEntry  # uint8 [n, crop, crop, 3] RGB crops (.npy), the device's image before its model
    outputs: list[GoldenOutput]


class Manifest(_Versioned):
    """export/manifest.json: what a device needs (labels, preprocessing, tensors) and what was written."""

    edgetl_version: str | None = None
    created: str | None = None
    run: ExportedFrom
    labels: list[str]
    preprocessing: Preprocessing
    input: TensorSpec
    output: TensorSpec
    model: ModelFacts
    versions: dict[str, str | None] = {}
    artifacts: list[ArtifactEntry]
    card: FileEntry | None = None  # MODEL_CARD.md (edgetl.card); exports before 0.2 have none
    golden: Golden | None = None  # golden vectors; exports before 0.3 have none
    snippets: list[FileEntry] | None = None  # device code written from this manifest (edgetl.export.snippets)

    OMIT_IF_NONE = ("card", "golden", "snippets")

    @property
    def listed(self) -> list[ArtifactEntry | FileEntry]:
        """Every file the manifest vouches for: the models, the card, the golden vectors, the device snippets."""
        golden = [self.golden.inputs, *self.golden.outputs] if self.golden else []
        return [*self.artifacts, *([self.card] if self.card else []), *golden, *(self.snippets or [])]

    def artifact(self, file: str) -> ArtifactEntry:
        return next(a for a in self.artifacts if a.file == file)

    def io_of(self, file: str) -> tuple[TensorSpec, TensorSpec]:
        """The input and output a listed file takes and gives: its own where the entry has them, else the
        manifest's."""
        entry = next((a for a in self.artifacts if a.file == file), None)
        if entry is None:
            return self.input, self.output
        return entry.input or self.input, entry.output or self.output


class LatencyGate(_Schema):
    """The figure latency bars and --baseline compare: the gating file's p50 (edgetl.verify.latency)."""

    runtime: str
    file: str
    batch: int = Field(strict=True)
    threads: int = Field(strict=True)
    p50_ms: float = Field(gt=0, allow_inf_nan=False, strict=True)


class VerifyReport(_Versioned):
    """verify.json: every check with its bar, the parity figures per file, the latency sweep, the machine."""

    edgetl_version: str | None = None
    created: str | None = None
    run_dir: str
    passed: bool | None = None
    failures: list[str] = []
    warnings: list[str] = []
    checks: list[dict[str, Any]] = []  # edgetl.compare.gate.Check as a dict
    bars: dict[str, Any] = {}
    inputs: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    parity: dict[str, dict[str, Any] | None] = {}  # file -> edgetl.compare.parity.compare_logits figures
    # file (and the checkpoint) -> its per-class results on the labelled verify images; none without labels
    per_class: dict[str, PerClass] = {}
    latency: list[dict[str, Any]] = []  # edgetl.verify.latency.Timing rows
    gate: dict[str, Any] | None = None  # a LatencyGate, kept as the dict the latency code passes around
    regression: dict[str, Any] | None = None
    go_no_go: list[dict[str, Any]] = []  # per fp16 / int8 file: edgetl.verify.decide
    # per ONNX engine asked for (--runtime): its version, and what of the file it would refuse or compute wrong
    engines: dict[str, dict[str, Any]] = {}
    golden: dict[str, dict[str, Any]] = {}  # file -> its output on the golden inputs vs the expected one
    # a row that failed a parity bar -> where it first departs: the stage, then the node (edgetl.verify.localize)
    localization: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    machine: dict[str, Any] = {}
    versions: dict[str, str | None] = {}
    manifest_sha256: str | None = None

    @field_validator("gate")
    @classmethod
    def _typed_gate(cls, gate: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if gate is None else LatencyGate.model_validate(gate).model_dump()


# --- reading and writing ---------------------------------------------------------------------------------------

M = TypeVar("M", bound=_Schema)

# The stage that writes each run file (by name; every other file is train's): what to re-run when it is damaged.
WRITTEN_BY = {MANIFEST_NAME: "export", REPORT_NAME: "verify"}


def damaged(path: Path | str, reason: str, *, stage: str | None = None,
            error: type[RunDirError] = RunDirError) -> RunDirError:
    """The one message for a run file that cannot be read as what it should be."""
    stage = stage or WRITTEN_BY.get(Path(path).name, "train")
    return error(f"damaged: {path} ({reason}); re-run `edgetl {stage}`")


def parse(model: type[M], data: Any, *, source: Path | str, what: str) -> M:
    """Validate `data` as `model`; a newer schema or a bad field is a one-line RunDirError naming `source`."""
    stage = STAGE_OF.get(model)
    if not isinstance(data, dict):
        raise damaged(source, f"the {what} is not a JSON object", stage=stage)
    version = data.get("schema_version", data.get("format_version", 1))
    if not isinstance(version, int) or version < 1:
        raise damaged(source, f"unknown schema_version {version!r}", stage=stage)
    if version > SCHEMA_VERSION:
        raise RunDirError(f"{source}: the {what} has schema_version {version}, newer than this edgetl "
                          f"({__version__}) reads (up to {SCHEMA_VERSION}) — upgrade edgetl, or re-run the stage "
                          f"with this one")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise damaged(source, _first_error(e), stage=stage) from None


def _first_error(e: ValidationError) -> str:
    error = e.errors()[0]
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{field}: {error['msg']}{more}"


def read_json(path: Path, *, what: str = "file", stage: str | None = None) -> Any:
    """A run file's JSON; missing is 'not found', unreadable is `damaged`."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise RunDirError(f"{path}: is a folder, not a {what} file — pass the file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise damaged(path, f"not JSON: {e}", stage=stage) from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot read the {what} ({e.strerror})") from None


def _read(model: type[M], path: Path, what: str) -> M:
    return parse(model, read_json(path, what=what, stage=STAGE_OF.get(model)), source=path, what=what)


# What to re-run when a file of this schema is damaged, whatever it is called (a --baseline, a --json copy).
STAGE_OF: dict[type, str] = {Manifest: "export", VerifyReport: "verify"}


def read_train_summary(path: Path) -> TrainSummary:
    return _read(TrainSummary, path, "training summary")


def read_manifest(path: Path) -> Manifest:
    return _read(Manifest, path, "export manifest")


def read_verify_report(path: Path) -> VerifyReport:
    return _read(VerifyReport, path, "verify report")


def read_checkpoint_meta(ckpt: dict[str, Any], *, source: Path | str) -> CheckpointMeta:
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler")}
    return parse(CheckpointMeta, meta, source=source, what="checkpoint metadata")


def read_labels(path: Path) -> list[str]:
    """labels.json: the class names in output order, at least two, no repeats."""
    labels = read_json(path, what="labels file")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise damaged(path, "not a list of two or more class names")
    if len(set(labels)) < len(labels):
        raise damaged(path, "a class name is repeated")
    return labels


class Split(_Schema):
    """split.json: which files (relative to `root`) trained, which validated (chose best.pt) and which were held
    out to test; replayed on resume."""

    source: str
    root: str | None = None  # the data folder, absolute (runs before 0.2 have none)
    train: list[tuple[str, str]]  # (entry, class)
    val: list[tuple[str, str]]
    test: list[tuple[str, str]] = []  # a test/ folder's images; runs before the test split have none
    classes: list[str] | None = None

    @field_validator("train", "val", "test")
    @classmethod
    def _inside_the_data(cls, entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for entry, _ in entries:
            if Path(entry).is_absolute() or ".." in Path(entry).parts:
                raise ValueError(f"entry {entry!r} leaves the data folder")
        return entries


def read_split(path: Path) -> dict[str, Any]:
    """split.json, validated, as the plain dict the data loader replays."""
    return _read(Split, path, "split file").model_dump(mode="json")


class EpochRecord(_Schema):
    """One line of metrics.jsonl."""

    epoch: int
    phase: str
    val_acc: float
    val_loss: float
    train_loss: float
    train_acc: float
    seconds: float


def write(path: Path, model: BaseModel) -> None:
    """Atomically, as indented JSON (the key order of the model)."""
    files.write_json(path, model.model_dump(mode="json"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per epoch; an absent file is no epoch yet."""
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8: {e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = EpochRecord.model_validate_json(line)
        except ValidationError as e:
            raise damaged(path, f"line {number}: {_first_error(e)}") from None
        records.append(record.model_dump(mode="json"))
    return records


def read_recipe(run: RunDir) -> Recipe:
    """The run's resolved recipe, validated as any recipe is."""
    path = run.recipe
    if not path.is_file():
        raise RunDirError(f"{run.root} is not an edgetl run directory (no {path.name}) — pass the --out of "
                          f"`edgetl train`")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise damaged(path, str(e)) from None
    try:
        return parse_recipe(data, source=str(path))
    except RecipeError as e:
        raise damaged(path, str(e).removeprefix(f"{path}: ")) from None


def package_versions(*packages: str) -> dict[str, str | None]:
    """Each package's version (None where it is not installed), then Python's: what made a file."""
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {**{p: version(p) for p in packages}, "python": platform.python_version()}
