"""The stages in order: what `edgetl run` (and each single-stage command) does, without any rendering.

    outcome = run_pipeline(TrainRequest(recipe="quickstart"), out=Path("artifacts/demo"), hooks=Hooks())

`run` = train -> export -> verify; with `resume`, it continues at the first stage whose closing file is
missing or older than the previous stage's (train.json, export/manifest.json, verify.json), and training
continues from last.pt when it was cut. `compare_scratch` trains the same resolved recipe from random weights
into RUN/scratch. The caller renders progress and results through `Hooks` (the CLI's rich bars and tables;
nothing in a notebook), so the CLI and the Python API (edgetl/api.py) share this one code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import files, rundir
from edgetl.errors import EdgetlError, RunDirError
from edgetl.recipe import ExportSection, Recipe
from edgetl.rundir import STAGES, Manifest, RunDir, TrainSummary, VerifyReport

if TYPE_CHECKING:  # the stages load on first use: `edgetl --help` and `edgetl info` import no torch
    from edgetl.export.precision import QuantPlan
    from edgetl.export.stage import ExportResult
    from edgetl.training.epoch import Callbacks
    from edgetl.verify import VerifyResult, VerifySettings


@dataclass(frozen=True)
class TrainRequest:
    """What `edgetl train` / `edgetl run` ask of the train stage."""

    recipe: str | None = None  # a shipped recipe's name or a .toml path; None: quickstart (a resume: the run's own)
    overrides: dict[str, Any] = field(default_factory=dict)  # recipe keys from flags; None values are ignored
    epochs_scale: float | None = None
    device: str = "auto"
    settings: tuple[str, ...] | dict[str, Any] = ()  # `--set key=value`: any recipe key, dotted for tables
    epochs: int | None = None  # `--epochs`: the total over the phases
    lr: float | None = None  # `--lr`: the first phase's head rate, the others scaled with it

    def recipe_options(self) -> dict[str, Any]:
        """load_recipe's keyword arguments for this request."""
        return {"overrides": self.overrides, "epochs_scale": self.epochs_scale, "settings": self.settings,
                "epochs": self.epochs, "lr": self.lr}


@dataclass(frozen=True)
class ExportRequest:
    formats: tuple[str, ...] | None = None  # None: the run recipe's [export] formats, else the core formats
    opset: int | None = None
    batch: int | None = None
    checkpoint: str = "best"
    out: Path | None = None
    precisions: tuple[str, ...] | None = None  # None: the run recipe's [export] precisions, else fp32
    calibration: str | None = None  # None: the recipe's, else minmax
    input_type: str | None = None  # None: the recipe's [export] input, else float
    output_type: str | None = None  # None: the recipe's [export] output, else logits
    replace: bool = False  # start the export folder afresh (default: files not asked for are kept, listed)

    def io_for(self, section: ExportSection | None) -> tuple[str, str]:
        """What the files take and give: flags first, then the recipe's [export] table, then float and logits."""
        return (self.input_type or (section.input if section else "float"),
                self.output_type or (section.output if section else "logits"))

    def formats_for(self, section: ExportSection | None) -> tuple[str, ...]:
        """The formats to write: flags first, then the recipe's [export] table (`section`), then the core formats
        (those that need no optional extra: ONNX and TorchScript)."""
        from edgetl.formats import DEFAULT_FORMATS

        return self.formats or (tuple(section.formats) if section and section.formats else tuple(DEFAULT_FORMATS))

    def plan(self, run_dir: Path) -> tuple[tuple[str, ...], QuantPlan]:
        """The precisions and INT8 plan: flags first, then the run's recipe [export] table, then defaults."""
        from edgetl.export.precision import QuantPlan

        section = export_section(run_dir)
        precisions = self.precisions or (tuple(section.precisions) if section else ("fp32",))
        plan = QuantPlan(method=self.calibration or (section.calibration if section else "minmax"),
                         **({"calibration_images": section.calibration_images, "activations": section.activations}
                            if section else {}))
        return precisions, plan


def export_section(run_dir: Path) -> ExportSection | None:
    """The run recipe's [export] table; None without one, or in a bare checkpoint folder (no recipe)."""
    try:
        return rundir.read_recipe(RunDir(run_dir)).export
    except RunDirError:
        return None


class Hooks:
    """Where the stages report progress and results; every method is optional (silent by default)."""

    @contextlib.contextmanager
    def training(self) -> Iterator[Callbacks | None]:
        """Around a training run; yields the trainer's progress callbacks (edgetl.training.epoch.Callbacks)."""
        yield None

    def trained(self, summary: TrainSummary) -> None: ...

    @contextlib.contextmanager
    def exporting(self) -> Iterator[None]:
        yield

    def exported(self, result: ExportResult) -> None: ...

    @contextlib.contextmanager
    def verifying(self) -> Iterator[Callable[[str], None]]:
        """Around verify; yields a function that takes the name of the step verify is at."""
        yield lambda step: None

    def verified(self, result: VerifyResult) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    train: TrainSummary
    manifest: Manifest
    verify: VerifyReport
    scratch: TrainSummary | None
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage this call ran

    @property
    def shipped(self) -> str:
        """The file a device should take: the lower-precision file verify says ships and that runs faster here
        (the fastest, if several), else the first fp32 file."""
        faster = [r for r in self.verify.go_no_go if r.get("decision") == "ship" and (r.get("speedup") or 0) > 1]
        return max(faster, key=lambda r: r["speedup"])["file"] if faster else self.manifest.artifacts[0].file

    def to_dict(self) -> dict[str, Any]:
        """`edgetl run --json`: the chain's figures, times per stage and per exported file, and what ships."""
        return {"run_dir": str(self.run_dir), "seconds": round(self.seconds, 2), "stage_seconds": self.stage_seconds,
                "export_seconds": {a.file: a.seconds for a in self.manifest.artifacts},
                "best_val_acc": self.train.best_val_acc, "best_epoch": self.train.best_epoch,
                "val_images": self.train.val_images, "best_val_top5": self.train.best_val_top5,
                "test_acc": self.train.test_acc, "test_top5": self.train.test_top5,
                "test_images": self.train.test_images, "verify_inputs": self.verify.inputs,
                "phases": [p.model_dump(mode="json") for p in self.train.phases],
                "verify_passed": self.verify.passed, "go_no_go": self.verify.go_no_go, "shipped": self.shipped,
                "scratch_best_val_acc": self.scratch.best_val_acc if self.scratch else None}


DEFAULT_RECIPE = "quickstart"


def refuse_changes_on_resume(request: TrainRequest, *, out: Path | None = None) -> None:
    """A resume continues the run's own recipe, data and seed: a flag that would change them is refused, never
    silently ignored."""
    given = [f"--{k.replace('_', '-')}" for k, v in request.overrides.items() if v is not None]
    given += ["--recipe"] * (request.recipe is not None) + ["--epochs-scale"] * (request.epochs_scale is not None)
    given += ["--set"] * bool(request.settings) + ["--epochs"] * (request.epochs is not None)
    given += ["--lr"] * (request.lr is not None)
    given += ["--out"] * (out is not None)
    if given:
        raise RunDirError(f"--resume continues the run as it started; {', '.join(given)} would change it — drop "
                          f"{'it' if len(given) == 1 else 'them'}, or start a new run with --out")


def default_run_dir(recipe: str) -> Path:
    return Path("artifacts") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(recipe).stem}"


def train_stage(request: TrainRequest, *, out: Path | None = None, resume: Path | None = None,
                hooks: Hooks | None = None) -> TrainSummary:
    """A new run into `out` (default artifacts/<time>-<recipe>), or the interrupted run `resume` continued."""
    from edgetl import training
    from edgetl.recipe import load_recipe
    from edgetl.training import distributed

    # Under torchrun rank 0 holds the lock, writes and reports; the other ranks train silently beside it.
    main = distributed.is_main()
    hooks = hooks if hooks is not None and main else Hooks()
    lock = files.locked if main else lambda folder: contextlib.nullcontext()
    if resume is not None:
        refuse_changes_on_resume(request, out=out)
        require_run(resume)
    if resume is not None and RunDir(resume).checkpoint("last").is_file():
        with lock(resume), hooks.training() as callbacks:
            summary = training.resume_run(resume, device=request.device, callbacks=callbacks)
    else:  # a new run; or one stopped before its first epoch ended: nothing to lose, started over from its own recipe
        recipe = str(RunDir(resume).recipe) if resume is not None else request.recipe or DEFAULT_RECIPE
        resolved = load_recipe(recipe, **request.recipe_options())
        run_dir = resume or out or default_run_dir(recipe)
        if distributed.launched() and out is None and resume is None:
            raise EdgetlError("under torchrun every process needs the same run folder: pass --out")
        with lock(run_dir), hooks.training() as callbacks:
            summary = training.train_run(resolved, run_dir=run_dir, device=request.device, callbacks=callbacks)
    hooks.trained(summary)
    return summary


def export_stage(run_dir: Path, request: ExportRequest = ExportRequest(), *, hooks: Hooks | None = None) -> ExportResult:
    from edgetl.export import export_run

    hooks = hooks or Hooks()
    check_export_flags(request, export_section(run_dir))
    require_run(run_dir, recipe=False)  # a bare checkpoint folder exports: the checkpoint describes itself
    precisions, plan = request.plan(run_dir)
    with files.locked(run_dir), _out_locked(run_dir, request.out), hooks.exporting():
        section = export_section(run_dir)
        input_type, output_type = request.io_for(section)
        result = export_run(run_dir, formats=request.formats_for(section), opset=request.opset, batch=request.batch,
                            checkpoint=request.checkpoint, out=request.out, precisions=precisions, plan=plan,
                            input_type=input_type, output_type=output_type, replace=request.replace)
    hooks.exported(result)
    return result


def check_export_flags(request: ExportRequest, section: ExportSection | None = None) -> None:
    """Export's flags and the recipe's [export] table (`section`), refused before any work (usage errors): an
    unknown format, one whose optional extra is not installed, a precision no requested format makes."""
    from edgetl.export.precision import check_precisions
    from edgetl.export.stage import check_request

    names = check_request(request.formats_for(section), opset=request.opset, batch=request.batch,
                          checkpoint=request.checkpoint)
    check_precisions(names, list(request.precisions or (section.precisions if section else ())))


def _out_locked(run_dir: Path, out: Path | None) -> contextlib.AbstractContextManager:
    """An `--out` outside the run is held too: another run's folder by its own lock, any other folder by a lock
    named after the export, so two exports into one folder never interleave."""
    if out is None or Path(out).resolve().parent == Path(run_dir).resolve():
        return contextlib.nullcontext()
    parent = Path(out).parent
    if not parent.is_dir():
        return contextlib.nullcontext()  # export creates it, or says in one line why it cannot
    if RunDir(parent).recipe.is_file():
        return files.locked(parent)
    return files.locked(parent, name=f".{Path(out).name}{files.LOCK_NAME}")


def _verify_lock(run: RunDir) -> contextlib.AbstractContextManager:
    """The lock export holds while it writes the export verify writes beside: the run's for its own export (or one
    inside the run), else the one `_out_locked` takes for that --out folder."""
    if run.own_export or run.export_dir.resolve().parent == run.root.resolve():
        return files.locked(run.root)
    return _out_locked(run.root, run.export_dir)


def check_json_target(json_path: Path | None, run_dir: Path) -> None:
    """`--json` may replace a verify report, never a run's other files or a file of the user's."""
    if json_path is None or files.is_stream(json_path):  # stdout, a device, a FIFO: written into, never replaced
        return
    path = Path(json_path)
    run = RunDir(run_dir)
    inside_run = path.resolve().is_relative_to(run.root.resolve()) and path.resolve() != run.verify_json.resolve()
    if inside_run or path.is_dir():
        raise RunDirError(f"--json {path} would overwrite {'a folder' if path.is_dir() else 'a file of the run'} — "
                          f"pass a new file (or the run's verify.json)")
    if path.is_file() and path.stat().st_size > 0:
        try:
            rundir.read_verify_report(path)
        except RunDirError:
            raise RunDirError(f"--json {path} exists and is not a verify report; edgetl replaces only its own "
                              f"reports — pass a new file") from None


def verify_settings(*, latency_seconds: float = 1.0, threads: Sequence[int] | None = None,
                    runtimes: Sequence[str] | None = None, **flags: Any) -> VerifySettings:
    """edgetl.verify.VerifySettings from `edgetl verify`'s flags: each latency setting is timed for at least
    `latency_seconds` and at most three times that; onnxruntime always runs the ONNX files."""
    from edgetl.verify import VerifySettings
    from edgetl.verify.latency import TimingPlan

    return VerifySettings(**flags, threads=tuple(threads) if threads else None,
                          runtimes=tuple(runtimes) if runtimes else ("onnxruntime",),
                          timing=TimingPlan(seconds=latency_seconds, max_seconds=3 * latency_seconds))


def verify_stage(run_dir: Path, settings: VerifySettings | None = None, *, json_path: Path | None = None,
                 export_dir: Path | None = None, hooks: Hooks | None = None) -> VerifyResult:
    """verify_run with its progress reported; ChecksFailed (exit 1) carries the whole report. `export_dir`: an
    export of the run written elsewhere (`edgetl export RUN --out DIR`); its report goes beside it, in DIR."""
    from edgetl.verify import VerifySettings, verify_run

    hooks = hooks or Hooks()
    settings = settings or VerifySettings()
    settings.validate()  # flags first, then the run
    require_run(run_dir, recipe=False)
    run = RunDir(run_dir, export=export_dir)
    if export_dir is not None and not Path(export_dir).is_dir():
        raise RunDirError(f"--export {export_dir}: no such folder — pass the folder `edgetl export RUN --out` wrote")
    check_json_target(json_path, run_dir)
    # A report written elsewhere never touches the run, so a read-only run can be verified without its lock; the
    # default report of an export written elsewhere goes beside it, under that folder's lock.
    into = json_path is None or Path(json_path).resolve() == run.report.resolve()
    with _verify_lock(run) if into else contextlib.nullcontext(), hooks.verifying() as progress:
        result = verify_run(run_dir, settings, json_path=json_path, export_dir=export_dir, progress=progress)
    hooks.verified(result)
    return result


def run_pipeline(request: TrainRequest, *, out: Path | None = None, resume: Path | None = None,
                 export: ExportRequest = ExportRequest(), verify: VerifySettings | None = None, compare_scratch: bool = False,
                 hooks: Hooks | None = None) -> RunOutcome:
    """train -> export -> verify (from the first unfinished stage with `resume`), then the scratch comparison."""
    from edgetl.training.distributed import launched

    if launched():  # export and verify are one process's work: the other ranks would race rank 0
        raise EdgetlError("edgetl run does not run under torchrun: train with `torchrun ... -m edgetl train --out RUN`, "
                          "then `edgetl export RUN` and `edgetl verify RUN` in one process")
    hooks = hooks or Hooks()
    started = time.perf_counter()
    if resume:
        refuse_changes_on_resume(request, out=out)
    run_dir = Path(resume or out or default_run_dir(request.recipe or DEFAULT_RECIPE))
    run = RunDir(run_dir)
    check_export_flags(export, _recipe_export(request, run, resume=resume is not None))  # before any stage's work
    if verify is not None:
        verify.validate()
    if resume:
        require_run(run_dir)
    stage = first_unfinished(run_dir) if resume else "train"
    todo = STAGES[STAGES.index(stage):] if stage else ("verify",)
    if resume:
        hooks.note(f"resuming {run_dir} at {todo[0]}")
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(stage: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        seconds[stage] = round(time.perf_counter() - began, 2)

    if "train" in todo:
        with timed("train"):
            if resume is None:
                train_stage(request, out=run_dir, hooks=hooks)
            elif run.checkpoint("last").is_file():
                train_stage(request, resume=run_dir, hooks=hooks)
            else:  # resumed before the first epoch ended: start over, from the run's own recipe
                train_stage(dataclasses.replace(request, recipe=str(run.recipe)), out=run_dir, hooks=hooks)
    if "export" in todo:
        with timed("export"):
            # the chain's export is exactly what it was asked for (a lone `edgetl export` keeps the other files)
            export_stage(run_dir, dataclasses.replace(export, replace=True), hooks=hooks)
    with timed("verify"):
        result = verify_stage(run_dir, verify, hooks=hooks)
    scratch = None
    if compare_scratch:
        scratch_dir = run.root / "scratch"
        if not RunDir(scratch_dir).train_json.is_file():
            hooks.note("training the same recipe from random weights (--compare-scratch)")
            train_stage(TrainRequest(recipe=str(run.recipe), overrides={"weights": "none"}, device=request.device),
                        out=scratch_dir, hooks=hooks)
        scratch = rundir.read_train_summary(RunDir(scratch_dir).train_json)
    return RunOutcome(run_dir=run_dir, train=rundir.read_train_summary(run.train_json),
                      manifest=rundir.read_manifest(run.manifest), verify=result.report, scratch=scratch,
                      seconds=time.perf_counter() - started, stage_seconds=seconds)


def _recipe_export(request: TrainRequest, run: RunDir, *, resume: bool) -> ExportSection | None:
    """The [export] table of the recipe the run trains (or trained) with, read before training starts."""
    from edgetl.recipe import load_recipe

    if resume:
        return export_section(run.root)
    return load_recipe(request.recipe or DEFAULT_RECIPE, **request.recipe_options()).export


# --- where a run directory stands ---------------------------------------------------------------------------


def _readable(path: Path, read: Callable[[Path], Any], problems: list[str] | None = None) -> Any | None:
    """`read(path)`, or None when the file is absent or damaged (the reason added to `problems`)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except RunDirError as e:
        if problems is not None:
            problems.append(str(e))
        return None


def require_run(run_dir: Path, *, recipe: bool = True) -> None:
    """Refuse a missing folder, or (`recipe`) one that is not an edgetl run, before a stage touches it: a
    resume never starts a fresh run in a folder of the user's."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunDirError(f"run directory {run_dir} not found — pass the folder `edgetl train` wrote")
    if recipe and not run.recipe.is_file():
        raise RunDirError(f"{run_dir} is not an edgetl run (no {run.recipe.name}) — pass the folder `edgetl train` "
                          f"wrote; to start a new run there, use --out instead of --resume")


def first_unfinished(run_dir: Path) -> str | None:
    """The first stage whose closing file is missing or older than the stage before it; None when all are done."""
    if not Path(run_dir).is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    readers = {"train": rundir.read_train_summary, "export": rundir.read_manifest, "verify": rundir.read_verify_report}
    previous = 0.0
    for stage, path in RunDir(run_dir).stage_files().items():
        if not path.is_file() or path.stat().st_mtime < previous or _readable(path, readers[stage]) is None:
            return stage
        previous = path.stat().st_mtime
    return None


@dataclass(frozen=True)
class RunInfo:
    """Everything `edgetl info` shows, from the run directory's own files."""

    run_dir: Path
    recipe: Recipe
    labels: list[str] | None
    epochs_done: int
    train: TrainSummary | None
    manifest: Manifest | None
    verify: VerifyReport | None
    next_stage: str | None
    damaged: list[str] = field(default_factory=list)  # one "damaged: <file> (...)" line per unreadable file

    def to_dict(self) -> dict[str, Any]:
        """`edgetl info --json`: the same facts as one JSON document."""
        def dumped(model: Any) -> Any:
            return None if model is None else model.model_dump(mode="json")

        return {"run_dir": str(self.run_dir), "recipe": dumped(self.recipe), "labels": self.labels,
                "epochs_done": self.epochs_done, "train": dumped(self.train), "manifest": dumped(self.manifest),
                "verify": dumped(self.verify), "next_stage": self.next_stage, "damaged": self.damaged}


def describe(run_dir: Path) -> RunInfo:
    """What the run's files say; a damaged file is left out and named in `damaged` (the recipe must read)."""
    run = RunDir(run_dir)
    recipe = rundir.read_recipe(run)
    problems: list[str] = []
    metrics = _readable(run.metrics, rundir.read_metrics, problems) or []
    manifest = _readable(run.manifest, rundir.read_manifest, problems)
    verify = _readable(run.verify_json, rundir.read_verify_report, problems)
    if verify is not None and manifest is None:
        verify = None  # the export it checked is gone (or its manifest unreadable, named above): never shown passed
    if verify is not None and manifest is not None:
        if verify.manifest_sha256 is not None and verify.manifest_sha256 != files.sha256_file(run.manifest):
            verify = None  # a report of an earlier export (re-exported since): verify is the next stage
        elif (problem := _report_problem(run, manifest, verify)) is not None:
            problems.append(f"damaged: {run.verify_json} ({problem}); re-run `edgetl verify {run.root}`")
            verify = None  # never shown as passed
    return RunInfo(run_dir=run.root, recipe=recipe, labels=_readable(run.labels, rundir.read_labels, problems),
                   epochs_done=len(metrics), train=_readable(run.train_json, rundir.read_train_summary, problems),
                   manifest=manifest, verify=verify, next_stage=first_unfinished(run_dir), damaged=problems)


def _report_problem(run: RunDir, manifest: Manifest, report: VerifyReport) -> str | None:
    """Why the report of this export cannot be taken at its word (None: it can): a verdict its own checks
    contradict (an edited report), or a file it vouched for changed since. Re-hashes the listed files."""
    checks_passed = all(c.get("passed", False) for c in report.checks) if report.checks else report.passed
    if report.passed != (not report.failures) or report.passed != checks_passed:
        return "its verdict contradicts its own checks: it was edited"
    for entry in manifest.listed:
        path = run.export_dir / entry.file
        if not path.is_file():
            return f"export/{entry.file}, which it vouched for, is missing"
        if files.sha256_file(path) != entry.sha256:
            return f"export/{entry.file} changed after it was verified"
    return None
