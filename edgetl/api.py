"""The Python API: train, export, verify and predict from a notebook or a script — the functions the CLI calls.

    import edgetl
    run = edgetl.train(recipe="quickstart", data="sample", out="artifacts/demo")
    run.export(formats=["onnx"]); report = run.verify(); report.passed; run.predict(["cat.jpg"])

`Run` wraps a run directory; its methods call the same `edgetl.pipeline` stage functions the `edgetl` commands
call (the commands call these), so a run made here and one made by the CLI are the same files, and a mistake is
the same one-line `EdgetlError`. Progress goes to a `Hooks` object: silent by default, `progress="tqdm"` for bars
in a notebook, the CLI's rich bars there. Nothing here imports torch until a stage runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from edgetl import pipeline, rundir
from edgetl.errors import EdgetlError, RunDirError
from edgetl.pipeline import ExportRequest, Hooks, RunInfo, TrainRequest
from edgetl.rundir import Manifest, RunDir, TrainSummary, VerifyReport

if TYPE_CHECKING:
    from edgetl.predict import Failure, Prediction

PathLike = str | os.PathLike
Progress = Hooks | Literal["tqdm"] | None

__all__ = ["Hooks", "Prediction", "Run", "TqdmHooks", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name == "Prediction":  # the predict module loads onnxruntime: only when asked for
        from edgetl.predict import Prediction

        return Prediction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(recipe: PathLike | None = None, data: PathLike | None = None, out: PathLike | None = None, *,
          device: str = "auto", epochs_scale: float | None = None, resume: PathLike | None = None,
          progress: Progress = None, epochs: int | None = None, lr: float | None = None,
          settings: Mapping[str, Any] | Sequence[str] | None = None, **overrides: Any) -> Run:
    """Fine-tune `recipe` (a shipped recipe's name or a .toml path; default quickstart) on `data` (a folder,
    "sample", "cifar10") into `out` (default artifacts/<time>-<recipe>); or continue the interrupted run `resume`.

    `overrides` are recipe keys, as `edgetl train`'s flags are: seed=1, weights="none", subset=500, lora_rank=8,
    image_size=96, batch_size=16, ... (an unknown key is refused, naming it). `settings` sets any key, dotted
    for tables ({"head.dropout": 0.2, "phases.1.epochs": 3}, or ["head.dropout=0.2"] as `--set` takes them);
    `epochs` is the total over the phases (in the recipe's proportions) and `lr` the first phase's head rate,
    every other rate scaled with it."""
    request = TrainRequest(recipe=_str(recipe), overrides={"data": _str(data), **overrides},
                           epochs_scale=epochs_scale, device=device, epochs=epochs, lr=lr,
                           settings=_settings(settings))
    summary = pipeline.train_stage(request, out=_path(out), resume=_path(resume), hooks=hooks_for(progress))
    return Run(Path(summary.run_dir))


def load_run(path: PathLike) -> Run:
    """An existing run directory: one `edgetl train` (or `edgetl.train`) wrote, or a folder with checkpoints/."""
    run = RunDir(Path(path))
    pipeline.require_run(run.root, recipe=False)
    if not (run.recipe.is_file() or run.checkpoints.is_dir() or run.manifest.is_file()):
        raise RunDirError(f"{run.root} is not an edgetl run (no {run.recipe.name}, checkpoints/ or export/manifest.json)"
                          f" — pass the folder `edgetl train` wrote")
    return Run(run.root)


@dataclass(frozen=True)
class Run:
    """A run directory, with the stages after training as methods; its files are read fresh on every access.

        run = edgetl.load_run("artifacts/demo"); run.summary.per_class; run.verify(samples=64).passed
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def files(self) -> RunDir:
        """Where each of the run's files lives."""
        return RunDir(self.path)

    @property
    def summary(self) -> TrainSummary:
        """train.json: accuracy, phases, per-class figures, the most confidently wrong val images."""
        return rundir.read_train_summary(self.files.train_json)

    @property
    def labels(self) -> list[str]:
        return rundir.read_labels(self.files.labels)

    @property
    def manifest(self) -> Manifest:
        """export/manifest.json: the exported files, labels, preprocessing."""
        return rundir.read_manifest(self.files.manifest)

    @property
    def report(self) -> VerifyReport:
        """verify.json, the last verify's report."""
        return rundir.read_verify_report(self.files.verify_json)

    def describe(self) -> RunInfo:
        """What `edgetl info` shows: the recipe, each stage's results, the next stage to run."""
        return pipeline.describe(self.path)

    def export(self, formats: str | Sequence[str] | None = None, precisions: str | Sequence[str] | None = None, *,
               opset: int | None = None, batch: int | None = None, checkpoint: str = "best",
               out: PathLike | None = None, calibration: str | None = None, input_type: str | None = None,
               output_type: str | None = None, replace: bool = False, progress: Progress = None) -> Manifest:
        """Fold and write `formats` ("onnx", "torchscript", "executorch", "litert", "all"; default the recipe's
        [export] formats, else onnx and torchscript) at `precisions` ("fp32", "int8", "fp16"), the model card and
        the manifest into RUN/export (or `out`); the manifest written. `input_type="uint8"`: every file takes the
        device's uint8 NHWC crop; `output_type="probs"`: every file ends in a softmax (default: the recipe's
        [export] input / output, else float and logits). The export's other files stay, listed, when they are
        of the same checkpoint; `replace=True` starts the folder afresh."""
        request = ExportRequest(formats=_names(formats), opset=opset, batch=batch, checkpoint=checkpoint,
                                out=_path(out), precisions=_names(precisions), calibration=calibration,
                                input_type=input_type, output_type=output_type, replace=replace)
        return pipeline.export_stage(self.path, request, hooks=hooks_for(progress)).manifest

    def verify(self, data: PathLike | None = None, *, samples: int | None = None, atol: float | None = None,
               min_top1: float | None = None, batch: int | None = None, max_latency_ms: float | None = None,
               baseline: PathLike | None = None, max_regression: float = 0.10, threads: Sequence[int] | None = None,
               latency_seconds: float = 1.0, runtimes: Sequence[str] | None = None, json_path: PathLike | None = None,
               export: PathLike | None = None, check: bool = False, progress: Progress = None) -> VerifyReport:
        """Integrity, parity with the checkpoint (per file and per class), latency; the report, also written to
        RUN/verify.json (or `json_path`; `export`: an export folder of this run written elsewhere, whose report
        goes beside it). A failed bar is `report.passed == False` and `report.failures`; with
        `check=True` it raises `edgetl.verify.ChecksFailed` (an EdgetlError, exit code 1 in the CLI) instead."""
        from edgetl.verify import ChecksFailed

        settings = pipeline.verify_settings(data=_str(data), samples=samples, atol=atol, min_top1=min_top1, batch=batch,
                                            max_latency_ms=max_latency_ms, baseline=_path(baseline),
                                            max_regression=max_regression, threads=threads,
                                            latency_seconds=latency_seconds, runtimes=runtimes)
        try:
            result = pipeline.verify_stage(self.path, settings, json_path=_path(json_path), export_dir=_path(export),
                                           hooks=hooks_for(progress))
        except ChecksFailed as e:
            if check:
                raise
            return e.result.report
        return result.report

    @overload
    def predict(self, images: PathLike | Sequence[PathLike], *, top_k: int = 5, precision: str | None = None,
                format: str | None = None, runtime: str | None = None, threads: int | None = None,
                failures: Literal["raise"] = "raise") -> list[Prediction]: ...

    @overload
    def predict(self, images: PathLike | Sequence[PathLike], *, top_k: int = 5, precision: str | None = None,
                format: str | None = None, runtime: str | None = None, threads: int | None = None,
                failures: Literal["keep"]) -> list[Prediction | Failure]: ...

    def predict(self, images, *, top_k=5, precision=None, format=None, runtime=None, threads=None, failures="raise"):
        """Classify `images` (one path or several) with an exported file and the manifest alone, as a device does:
        the ONNX file in onnxruntime unless `format` / `precision` / `runtime` pick another. An unusable image is
        a DataError naming it, or with `failures="keep"` a `Failure` row in its place (the others still run)."""
        from edgetl.predict import predict, predict_images

        images = [images] if isinstance(images, str | os.PathLike) else list(images)
        options = {"top_k": top_k, "threads": threads, "precision": precision, "fmt": format, "engine": runtime}
        if failures == "keep":
            return predict_images(self.path, images, **options).rows
        if failures != "raise":
            raise EdgetlError(f"failures must be 'raise' or 'keep' (got {failures!r})")
        return predict(self.path, images, **options)


def _settings(settings: Mapping[str, Any] | Sequence[str] | None) -> tuple[str, ...] | dict[str, Any]:
    if settings is None:
        return ()
    if isinstance(settings, str):
        return (settings,)
    return dict(settings) if isinstance(settings, Mapping) else tuple(settings)


def _str(value: PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """"onnx" or ["onnx", "torchscript"] -> a tuple; None and [] leave the choice to the recipe."""
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value) or None


# --- progress ------------------------------------------------------------------------------------------------

def hooks_for(progress: Progress) -> Hooks:
    """None: silent; "tqdm": TqdmHooks; any `Hooks` (the CLI's rich bars, your own) as it is."""
    if progress is None:
        return Hooks()
    if isinstance(progress, Hooks):
        return progress
    if progress == "tqdm":
        return TqdmHooks()
    raise EdgetlError(f"progress must be None, 'tqdm' or an edgetl.Hooks (got {progress!r})")


class TqdmHooks(Hooks):
    """Progress as tqdm bars (tqdm.auto: widgets in a notebook, text in a terminal), each result as one line."""

    def __init__(self) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise EdgetlError("progress='tqdm' needs tqdm — pip install tqdm") from None
        self.tqdm = tqdm

    @contextlib.contextmanager
    def training(self) -> Iterator[_TqdmTrainCallbacks]:
        callbacks = _TqdmTrainCallbacks(self.tqdm)
        try:
            yield callbacks
        finally:
            callbacks.close()

    def trained(self, summary: TrainSummary) -> None:
        test = (f"; test acc {100 * summary.test_acc:.1f} % on {summary.test_images} images"
                if summary.test_acc is not None else "")
        self.note(f"trained {summary.backbone}: best val acc {100 * summary.best_val_acc:.1f} % (epoch "
                  f"{summary.best_epoch}) in {summary.wall_seconds:.0f} s{test} · {summary.run_dir}")

    def exported(self, result: Any) -> None:
        self.note(f"exported {', '.join(a.file for a in result.artifacts)} · {result.out_dir}")

    @contextlib.contextmanager
    def verifying(self) -> Iterator[Any]:
        bar = self.tqdm(desc="verify", bar_format="{desc}", leave=False)
        try:
            yield lambda step: bar.set_description_str(f"verify · {step}")
        finally:
            bar.close()

    def verified(self, result: Any) -> None:
        self.note(f"verify passed ({len(result.checks)} checks) · {result.json_path}")

    def note(self, message: str) -> None:
        self.tqdm.write(message)


class _TqdmTrainCallbacks:
    """The trainer's progress callbacks (edgetl.training.epoch.Callbacks) as one tqdm bar at a time."""

    def __init__(self, tqdm: Any) -> None:
        self.tqdm, self.bar = tqdm, None

    def data_progress(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=total, desc="decode images", unit="img")
        self.bar.update(done - self.bar.n)

    def phase_start(self, *, index: int, phase: Any, steps: int, trainable: dict[str, int], cached: bool) -> None:
        self.close()
        self.bar = self.tqdm(total=steps, desc=f"phase {index + 1} {phase.name}", unit="step")

    def step(self) -> None:
        self.bar.update()

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.bar.set_postfix_str(f"ep {record['phase_epoch']} val acc {100 * record['val_acc']:.1f} %")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
