"""The verify stage: integrity, parity with the trained checkpoint, latency — a CI gate.

    edgetl verify artifacts/my-run --max-latency-ms 15 --baseline ci/verify.json

Integrity first: every file the manifest lists must have its size and sha256. Then each artifact runs in its
format's runtime (`edgetl.formats`) on the run's held-out images (its test split when it has one, else its val
split: the images export's INT8 guard judged) preprocessed from the manifest alone, plus random tensors, against the checkpoint it was exported from (unfolded, eval, fp32): names, then shapes, then
values, one ✓/✗ line each (`parity.py`, `gate.py`). Latency follows (`latency.py`). Every failure is
collected and raised once (`ChecksFailed`, exit 1); the report goes to RUN/verify.json either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import rundir
from edgetl.card import CARD, render_card, write_card
from edgetl.compare.gate import BARS, Bars, Check, Gate
from edgetl.compare.golden import check_golden
from edgetl.compare.parity import PARITY_BATCH, accuracy, check_parity, run_batched, top5_accuracy
from edgetl.confusion import per_class, plot_confusion, same_figures, top_k_hits
from edgetl.data.inputs import JUDGED_IMAGES, Inputs, gather_inputs
from edgetl.errors import EdgetlError, RunDirError, VerifyFailed, describe_error
from edgetl.files import LOCK_NAME, sha256_file
from edgetl.formats import FORMATS
from edgetl.formats.base import PROBS_NAME, Runner, adapt, torch_runner
from edgetl.formats.device_io import from_device_input, softmax, to_device_input
from edgetl.formats.engines import ENGINES, REFERENCE_ENGINE, engine_version, load_engine, require_engine
from edgetl.formats.onnx_portable import check_portable
from edgetl.model.checkpoint import checkpoint_meta, load_model
from edgetl.model.deploy import deploy_model
from edgetl.model.macs import count_macs
from edgetl.preprocessing import Preprocessing
from edgetl.rundir import ArtifactEntry, CheckpointMeta, Manifest, RunDir, VerifyReport
from edgetl.verify.decide import go_no_go
from edgetl.verify.latency import (
    TimingPlan,
    all_threads,
    check_regression,
    gate_latency,
    machine_fingerprint,
    measure_latency,
)
from edgetl.verify.localize import localize, worst_rows
from edgetl.version import __version__

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAX_LATENCY_SECONDS = 600.0  # per timed setting: a bar a CI job can wait for
MAX_BATCH = 1024  # latency of a bigger batch says nothing a device needs, and its input alone takes GBs
# what the report records the versions of: edgetl's own stack, then every format's writer and runtime
_VERSIONED = tuple(dict.fromkeys(("edgetl", "torch", "onnx", "onnxruntime", "numpy", "pillow",
                                  *(p for fmt in FORMATS.values() for p in fmt.packages))))


@dataclass(frozen=True)
class VerifySettings:
    """The flags of `edgetl verify`; None for a bar means the precision's default (BARS) or no bar."""

    data: str | None = None  # images to check with; None: the run's test split, else its val split
    samples: int | None = None  # real images to check on; None: all of that split, up to JUDGED_IMAGES
    atol: float | None = None
    min_top1: float | None = None
    batch: int | None = None  # also timed, besides batch 1
    max_latency_ms: float | None = None
    baseline: Path | None = None
    max_regression: float = 0.10
    threads: tuple[int, ...] | None = None  # None: 1 and all cores
    runtimes: tuple[str, ...] = (REFERENCE_ENGINE,)  # the engines the ONNX files must run right in (--runtime)
    timing: TimingPlan = field(default_factory=TimingPlan)

    def validate(self) -> None:
        """Bad flag values are usage errors (exit 2), never silently corrected."""
        t, cores = self.threads or (), all_threads()
        seconds = self.timing.seconds
        finite = {"--atol": self.atol, "--min-top1": self.min_top1, "--max-latency-ms": self.max_latency_ms,
                  "--max-regression": self.max_regression}
        for flag, value in finite.items():  # the API passes values as they come: True is not a tolerance
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise EdgetlError(f"{flag} must be a number (got {value!r})")
        for flag, value in (("--samples", self.samples), ("--batch", self.batch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise EdgetlError(f"{flag} must be a whole number (got {value!r})")
        problems = [(value is not None and not math.isfinite(value), f"{flag} must be a finite number (got {value})")
                    for flag, value in finite.items()] + [
            (self.samples is not None and self.samples < 0, f"--samples must be >= 0 (got {self.samples})"),
            (self.atol is not None and self.atol < 0, f"--atol must be >= 0 (got {self.atol})"),
            (self.min_top1 is not None and not 0 <= self.min_top1 <= 1,
             f"--min-top1 is a fraction in [0, 1] (got {self.min_top1})"),
            (self.batch is not None and self.batch < 1, f"--batch must be >= 1 (got {self.batch})"),
            (self.max_latency_ms is not None and self.max_latency_ms <= 0,
             f"--max-latency-ms must be > 0 (got {self.max_latency_ms})"),
            (self.max_regression < 0, f"--max-regression is a fraction >= 0, e.g. 0.10 (got {self.max_regression})"),
            (any(n < 1 for n in t), f"--threads must be >= 1 (got {list(t)})"),
            (any(n > cores for n in t), f"--threads must be at most this machine's {cores} cores (got {list(t)})"),
            (not math.isfinite(seconds) or not 0 < seconds <= MAX_LATENCY_SECONDS,
             f"--latency-seconds must be a number of seconds in (0, {MAX_LATENCY_SECONDS}] (got {seconds})"),
            (self.batch is not None and self.batch > MAX_BATCH, f"--batch must be at most {MAX_BATCH} (got {self.batch})"),
        ]
        for bad, message in problems:
            if bad:
                raise EdgetlError(message)
        if not self.runtimes:
            raise EdgetlError(f"--runtime needs an engine; known: {', '.join(ENGINES)}")
        for name in self.runtimes:
            require_engine(name)  # unknown, or its optional extra missing: one line with the pip command

    @property
    def other_engines(self) -> list[str]:
        """The engines besides onnxruntime (which runs every ONNX file as its format's own runtime)."""
        return [name for name in dict.fromkeys(self.runtimes) if name != REFERENCE_ENGINE]


@dataclass
class VerifyResult:
    run_dir: Path
    json_path: Path
    report: VerifyReport  # exactly what verify.json holds
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


class ChecksFailed(VerifyFailed):
    """One or more bars failed; `result` holds the whole report (also written to verify.json)."""

    def __init__(self, result: VerifyResult) -> None:
        failures = [c.message() for c in result.checks if not c.passed]
        where = "".join(f"; {w['line']}" for w in result.report.localization.values())
        super().__init__(f"verify failed {len(failures)} check(s) (report: {result.json_path}): "
                         + "; ".join(failures) + where)  # one line: the tables above hold the detail
        self.result = result


def verify_run(run_dir: Path, settings: VerifySettings = VerifySettings(), *, json_path: Path | None = None,
               export_dir: Path | None = None, progress: Progress = lambda stage: None) -> VerifyResult:
    """Run every check on RUN/export (or `export_dir`, an export of RUN written elsewhere) and write the report;
    raise ChecksFailed if any bar fails."""
    run = RunDir(run_dir, export=export_dir)
    settings.validate()
    manifest = read_manifest(run)
    old = rundir.read_verify_report(settings.baseline) if settings.baseline is not None else None
    report = _new_report(run, settings, baseline=old is not None)
    gate = Gate()
    progress("integrity")
    check_integrity(run.export_dir, manifest, gate)
    if not gate.failures:  # never load a file that is not the one exported
        runnable, checkpoint = _check_parity_all(run, manifest, settings, gate, report, progress)
        if not any(c.kind == "meaning" for c in gate.failures):  # a misstated manifest sizes no batch
            progress("golden vectors")
            report.golden = check_golden(manifest, run.export_dir, gate)
            _check_latency(run, manifest, runnable, checkpoint, settings, gate, report, old, progress)
    report.go_no_go = go_no_go(manifest, report, gate)
    report.passed = not gate.failures
    report.failures = [c.message() for c in gate.failures]
    report.checks = [dataclasses.asdict(c) for c in gate.checks]
    json_path = Path(json_path) if json_path is not None else run.report
    if json_path.resolve() == run.report.resolve():  # a report written elsewhere touches neither run nor export
        if run.own_export:
            _plot_per_class(run, report)
        _complete_card(run, manifest, report, gate)
    rundir.write(json_path, report)
    result = VerifyResult(run_dir=run.root, json_path=json_path, report=report, checks=gate.checks)
    if not result.passed:
        raise ChecksFailed(result)
    return result


def _new_report(run: RunDir, settings: VerifySettings, *, baseline: bool) -> VerifyReport:
    """verify.json's skeleton: every key is always there, whatever stage a failure stops at."""
    return VerifyReport(
        edgetl_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), run_dir=str(run.root),
        bars={"parity": {}, "latency": {"max_latency_ms": settings.max_latency_ms,
                                        "max_regression": settings.max_regression if baseline else None}},
        settings={"data": settings.data, "samples": settings.samples, "batches": None, "threads": None,
                  "timing": settings.timing.to_dict()},
        machine=machine_fingerprint(), versions=rundir.package_versions(*_VERSIONED),
        manifest_sha256=sha256_file(run.manifest),
    )


def read_manifest(run: RunDir) -> Manifest:
    if not run.root.is_dir():
        raise RunDirError(f"run directory {run.root} not found")
    if not run.manifest.is_file():
        out = "" if run.own_export else f" --out {run.export_dir}"
        raise RunDirError(f"{run.manifest} not found — run `edgetl export {run.root}{out}` first")
    return rundir.read_manifest(run.manifest)


CHECKPOINT_NAMES = ("best", "last")  # what a manifest's run.checkpoint may name: a file of the run's own
# What an export folder may hold besides its listed files: its manifest; verify's report and lock when the export
# was written elsewhere (`edgetl verify RUN --export DIR` writes them there).
BOOKKEEPING = frozenset({rundir.MANIFEST_NAME, rundir.REPORT_NAME, LOCK_NAME})


def check_integrity(export_dir: Path, manifest: Manifest, gate: Gate) -> None:
    """Every listed file is there with the manifest's byte size and sha256: nothing truncated or altered; the
    folder holds nothing the manifest does not list; no listed name stands for two files (a card entry naming a
    model); each file's own content says what the manifest says of it (`Format.audit`)."""
    if not manifest.artifacts:
        gate.check("manifest.json", "integrity", "artifacts listed", 0, ">=", 1)
    names = [entry.file for entry in manifest.listed]
    gate.check("manifest.json", "integrity", "names listed twice", sorted({n for n in names if names.count(n) > 1}),
               "==", [], detail="one name, one file: a manifest entry may not stand for another listed file")
    if manifest.card is not None:
        gate.check("manifest.json", "integrity", "model card file", manifest.card.file, "==", CARD,
                   detail="verify rewrites the card: it must be the export's own MODEL_CARD.md")
    present = sorted(p.name for p in export_dir.iterdir()) if export_dir.is_dir() else []
    unlisted = [p for p in present if p not in {*names, *BOOKKEEPING}]
    gate.check("export/", "integrity", "files not in the manifest", unlisted, "==",
               [], detail="an export folder holds only what its manifest lists (a model's weights moved into a side "
                          "file, a stray copy): remove them or re-run `edgetl export`")
    for artifact in manifest.listed:  # the models, then the model card
        name, path = artifact.file, export_dir / artifact.file
        inside = path.resolve().is_relative_to(export_dir.resolve())
        if not gate.check(name, "integrity", "path", "inside export/" if inside else "outside export/", "==",
                          "inside export/", detail="a manifest lists only files of its own export folder"):
            continue  # never open, hash or load a file elsewhere
        if not gate.check(name, "integrity", "file", "present" if path.is_file() else "missing", "==", "present",
                          detail=f"listed in {export_dir / 'manifest.json'} — re-run `edgetl export`"):
            continue
        fix = "the file changed after export; re-run `edgetl export` or restore it"
        gate.check(name, "integrity", "bytes", path.stat().st_size, "==", artifact.bytes, detail=fix)
        gate.check(name, "integrity", "sha256", sha256_file(path), "==", artifact.sha256, detail=fix)
    for artifact in manifest.artifacts:
        _audit(export_dir, artifact, manifest, gate)


def _audit(export_dir: Path, artifact: ArtifactEntry, manifest: Manifest, gate: Gate) -> None:
    """What the file itself says against what the manifest says of it: its precision (from its ops), no weights
    outside it, no metadata given twice; and a lower precision's fp32 reference is still listed."""
    name, fmt = artifact.file, FORMATS.get(artifact.format)
    if artifact.precision != "fp32":
        reference = [a.file for a in manifest.artifacts if a.format == artifact.format and a.precision == "fp32"]
        gate.check(name, "integrity", f"fp32 {artifact.format} file listed beside it", len(reference), ">=", 1,
                   detail="a lower precision is judged against its format's fp32 file: re-run `edgetl export`")
    path = export_dir / name
    if fmt is None or not path.is_file() or not path.resolve().is_relative_to(export_dir.resolve()):
        return
    try:
        precision, problems = fmt.audit(path)
    except Exception:  # noqa: BLE001 — a file its reader refuses fails its load check, that artifact only
        return
    if precision is not None:
        gate.check(name, "integrity", "precision of its ops", precision, "==", artifact.precision,
                   detail="the manifest states another precision than the file's graph has: re-run `edgetl export`")
    for problem in problems:
        gate.check(name, "integrity", "self-contained, metadata once", problem, "==", "none")


def _check_parity_all(run: RunDir, manifest: Manifest, settings: VerifySettings, gate: Gate,
                      report: VerifyReport, progress: Progress) -> tuple[list[ArtifactEntry], Path]:
    """Every artifact with a runtime against the checkpoint; returns the artifacts that ran, and the checkpoint."""
    checkpoint = _trusted_checkpoint(run, manifest, gate, report)
    if checkpoint is None:
        return [], run.checkpoint("best")
    artifacts = [a for a in manifest.artifacts if a.format in FORMATS]
    for a in manifest.artifacts:
        if a.format not in FORMATS:
            _warn(report, f"{a.file}: no runtime for format {a.format!r} (known: {', '.join(FORMATS)}); "
                          f"integrity checked only")
    progress("reference")
    model, ckpt = load_model(checkpoint)
    meta = checkpoint_meta(ckpt, source=checkpoint)
    name = str(checkpoint.relative_to(run.root))
    fix = "the checkpoint changed after export; re-run `edgetl export`"
    saved = {"epoch": meta.at_epoch, "recipe_sha256": meta.recipe_sha256}
    for key, value in saved.items():
        exported = getattr(manifest.run, key)
        if exported is not None:  # the reference must be the checkpoint the export was made from
            gate.check(name, "integrity", key, value, "==", exported, detail=fix)
    gate.check(name, "integrity", "backbone", meta.backbone, "==", manifest.run.backbone, detail=fix)
    if manifest.run.val_acc is not None and manifest.run.checkpoint == "best":
        gate.check(name, "integrity", "val accuracy", meta.val_acc, "==", manifest.run.val_acc, detail=fix)
    check_meaning(manifest, meta, gate, export_dir=run.export_dir, warn=lambda message: _warn(report, message))
    check_model_facts(manifest, model, meta, gate)
    if any(c.kind == "meaning" for c in gate.failures):
        return [], checkpoint  # never run a file by a manifest that misstates it (its shapes size the batches)
    reference = torch_runner(model)
    progress("inputs")
    inputs = gather_inputs(run.root, labels=manifest.labels, preprocessing=manifest.preprocessing,
                           data=settings.data, samples=JUDGED_IMAGES if settings.samples is None else settings.samples)
    report.warnings += inputs.warnings
    if input_type(manifest) == "uint8":  # the noise tensors as images a device could hold: the files and the
        inputs = _on_uint8_grid(inputs, manifest.preprocessing)  # checkpoint must see the same pixels
    ref_logits = run_batched(reference, inputs.x, batch=PARITY_BATCH)
    report.inputs = inputs.info
    report.reference = {"file": name, "accuracy": accuracy(ref_logits, inputs.targets),
                        "top5_accuracy": top5_accuracy(ref_logits, inputs.targets)}
    logits = {name: ref_logits}
    runnable = []
    for artifact in artifacts:
        name = artifact.file
        progress(f"parity {name}")
        bars = _bars(artifact, settings, gate)
        own = {k: v for k, v in dataclasses.asdict(bars).items() if v is not None} if bars else {}  # its bars only
        report.bars["parity"][name] = {"precision": artifact.precision, **own}
        try:
            runner = FORMATS[artifact.format].open(run.export_dir / name)
        except Exception as e:  # noqa: BLE001 — a file its runtime refuses fails this artifact, not the whole run
            gate.check(name, "load", f"loads in its runtime ({artifact.format})", describe_error(e), "==", "ok")
            continue
        figures = check_parity(runner, manifest, name, gate, inputs=inputs, reference=_as_given(ref_logits, runner),
                               bars=bars, keep_logits=logits)
        report.parity[name] = figures
        if figures is not None:
            runnable.append(artifact)
    for artifact in [a for a in runnable if _in_engines(a)]:
        _check_engines(run, manifest, artifact, settings, gate, report, inputs=inputs, reference=ref_logits,
                       progress=progress, keep_logits=logits)
    _localize_failures(run, manifest, settings, gate, report, runnable, model=model, inputs=inputs,
                       reference=ref_logits, logits=logits)
    for name, out in logits.items():  # per class on the labelled verify images: the checkpoint, then each file
        figures = per_class(inputs.targets, out.argmax(axis=1), labels=manifest.labels,
                            top5_hits=top_k_hits(out, inputs.targets))
        if figures is not None:
            report.per_class[name] = figures
    # A manifest whose every file was renamed to a format verify cannot run must not pass on integrity alone.
    gate.check("manifest.json", "values", "artifacts checked for parity", len(runnable), ">=", 1,
               detail=f"no listed file ran in a runtime edgetl knows ({', '.join(FORMATS)})")
    return runnable, checkpoint


def _localize_failures(run: RunDir, manifest: Manifest, settings: VerifySettings, gate: Gate, report: VerifyReport,
                       runnable: list[ArtifactEntry], *, model: Any, inputs: Inputs, reference: np.ndarray,
                       logits: dict[str, np.ndarray]) -> None:
    """Each row that failed a parity bar on its values: the stage it first departs at, then the node, one line."""
    failed = {c.artifact for c in gate.failures if c.kind == "values"}
    rows = [(a, None) for a in runnable] + [(a, e) for a in runnable if _in_engines(a) for e in settings.other_engines]
    for artifact, engine in rows:
        row = artifact.file if engine is None else engine_row(artifact.file, engine)
        if row not in failed or row not in logits:
            continue
        bars = _bars(artifact, settings, Gate())  # its bars again, without checking twice
        ref = softmax(reference) if manifest.io_of(artifact.file)[1].name == PROBS_NAME else reference
        x, out, real = inputs.x, logits[row], int(inputs.info.get("images", 0))
        if bars is not None and bars.atol is None and real:  # a lossy file is judged on the real images
            x, ref, out = x[:real], ref[:real], out[:real]
        try:
            where = localize(run, manifest, artifact, worst_rows(x, ref, out), bars=bars, model=model,
                             engine=engine)
        except Exception as e:  # noqa: BLE001 — failing to localize must not hide the failure it explains
            _warn(report, f"{row}: cannot localize where it departs ({describe_error(e)})")
            continue
        if where is not None:
            log.warning(where.line)
            report.localization[row] = where.to_dict()


def _trusted_checkpoint(run: RunDir, manifest: Manifest, gate: Gate, report: VerifyReport) -> Path | None:
    """The one thing verify trusts: the run's own checkpoint, the manifest's `best` or `last`, with the sha256 the
    export pinned. Anything else (a path out of the run, another file) is refused before it is loaded."""
    name = manifest.run.checkpoint
    if name not in CHECKPOINT_NAMES:
        gate.check("manifest.json", "integrity", "run.checkpoint", name, "==", " or ".join(CHECKPOINT_NAMES),
                   detail="the reference is the run's own checkpoints/best.pt or last.pt")
        return None
    path = run.checkpoint(name)
    if not gate.check(str(path.relative_to(run.root)), "integrity", "file", "present" if path.is_file() else "missing",
                      "==", "present", detail="the checkpoint this export was made from"):
        return None
    pinned = manifest.run.checkpoint_sha256
    if pinned is None:
        _warn(report, f"the manifest pins no checkpoint sha256 (exported by an older edgetl): {path.name} is trusted "
                      f"as it is; re-export to pin it")
        return path
    ok = gate.check(str(path.relative_to(run.root)), "integrity", "sha256", sha256_file(path), "==", pinned,
                    detail="not the checkpoint this export was made from: re-run `edgetl export`")
    return path if ok else None


def _check_engines(run: RunDir, manifest: Manifest, artifact: ArtifactEntry, settings: VerifySettings, gate: Gate,
                   report: VerifyReport, *, inputs: Inputs, reference: np.ndarray, progress: Progress,
                   keep_logits: dict[str, np.ndarray] | None = None) -> None:
    """The ONNX file in every other engine asked for: it loads, and its logits meet the same bars as in
    onnxruntime (a row `model.onnx (openvino)` each). Run at the engine's default threads: OpenCV 4.8 computes
    the exporter's ReduceMean wrong only with more than one."""
    import onnx

    path = run.export_dir / artifact.file
    proto = onnx.load(str(path), load_external_data=False)
    for engine in settings.other_engines:
        version = engine_version(engine)
        problems = [str(p) for p in check_portable(proto, engine=engine, version=version) if p.breaks]
        report.engines.setdefault(engine, {"title": ENGINES[engine].title, "version": version, "files": {}})
        report.engines[engine]["files"][artifact.file] = {"problems": problems}
        name = engine_row(artifact.file, engine)
        progress(f"parity {name}")
        bars = _bars(artifact, settings, gate)
        try:
            runner = adapt(load_engine(engine, path), FORMATS[artifact.format].read_meta(path))
        except Exception as e:  # noqa: BLE001 — an engine that refuses the file fails this row, with its reason
            gate.check(name, "load", f"loads in {ENGINES[engine].title} {version}", describe_error(e), "==", "ok")
            continue
        report.parity[name] = check_parity(runner, manifest, name, gate, inputs=inputs,
                                           reference=_as_given(reference, runner), bars=bars, keep_logits=keep_logits)


def _complete_card(run: RunDir, manifest: Manifest, report: VerifyReport, gate: Gate) -> None:
    """Fill in the model card's verification section from this report, and re-hash it in the manifest (through
    the manifest's own writer), so the next verify's integrity check holds. Only the run's own report completes
    it (a --json copy elsewhere does not), only a card the manifest lists, and only when every listed file was
    the one exported: a card or model that changed after export fails integrity and is left as it is."""
    if manifest.card is None or any(c.kind == "integrity" for c in gate.failures):
        return
    entry = write_card(run.export_dir / manifest.card.file, render_card(run, manifest, report=report))
    rundir.write(run.manifest, manifest.model_copy(update={"card": entry}))
    report.manifest_sha256 = sha256_file(run.manifest)  # the manifest as verify leaves it


def _plot_per_class(run: RunDir, report: VerifyReport) -> None:
    """RUN/verify-confusion.png: a panel per distinct confusion matrix, titled with the files that have it. Without
    labelled images there is none, and an earlier one (of other images) is removed, never left to mislead."""
    if not report.per_class:
        run.verify_confusion.unlink(missing_ok=True)
        return
    plot_confusion([(" = ".join(names), figures) for names, figures in same_figures(report.per_class)],
                   run.verify_confusion)


def _in_engines(artifact: ArtifactEntry) -> bool:
    """Whether the --runtime engines run this file (its format says so)."""
    fmt = FORMATS.get(artifact.format)
    return fmt is not None and fmt.runs_in_engines


def engine_row(file: str, engine: str) -> str:
    """How a file run by another engine is named in the checks, the parity figures and the latency rows."""
    return f"{file} ({engine})"


def check_meaning(manifest: Manifest, meta: CheckpointMeta, gate: Gate, *, export_dir: Path,
                  warn: Callable[[str], None]) -> None:
    """What a device reads from the manifest must be what the model was trained with: labels in order, the
    preprocessing, the input and output shapes; and what each file says of itself must be the manifest's.
    Hashes prove the bytes; these prove the meaning."""
    fix = "the manifest was edited after export; re-run `edgetl export`"
    gate.check("manifest.json", "meaning", "labels", manifest.labels, "==", meta.labels, detail=fix)
    gate.check("manifest.json", "meaning", "output size", manifest.output.shape[-1], "==", len(meta.labels),
               detail=fix)
    gate.check("manifest.json", "meaning", "preprocessing", manifest.preprocessing.to_dict(), "==",
               meta.preprocessing.to_dict(), detail=fix)
    gate.check("manifest.json", "meaning", "input shape", manifest.input.shape[1:], "==", image_shape(manifest, meta),
               detail=fix)
    batch = manifest.input.shape[0]  # it sizes every batch verify and predict run: bounded before anything runs
    if isinstance(batch, int):
        gate.check("manifest.json", "meaning", "fixed input batch", batch, ">=", 1, detail=fix)
        gate.check("manifest.json", "meaning", "fixed input batch", batch, "<=", MAX_BATCH, detail=fix)
    files = [a.file for a in manifest.artifacts]
    gate.check("manifest.json", "meaning", "files listed twice", sorted({f for f in files if files.count(f) > 1}),
               "==", [], detail=fix)
    for artifact in manifest.artifacts:
        if artifact.input is not None or artifact.output is not None:
            _check_own_io(artifact, manifest, meta, gate, fix=fix)
        path = export_dir / artifact.file
        fmt = FORMATS.get(artifact.format)
        if fmt is None or not path.resolve().is_relative_to(export_dir.resolve()) or not path.is_file():
            continue  # integrity reports these; never open a file outside the export
        try:
            embedded = fmt.read_meta(path)
        except Exception as e:  # noqa: BLE001 — a file that cannot be read fails its load check, once
            warn(f"{artifact.file}: cannot read its embedded labels and preprocessing ({describe_error(e)})")
            continue
        if embedded is None:
            if manifest.run.checkpoint_sha256 is not None:  # an export that pins its checkpoint embeds them too
                gate.check(artifact.file, "meaning", "embedded labels and preprocessing", "missing", "==", "present",
                           detail="a device reads them from the file: its metadata was stripped after export; "
                                  "re-run `edgetl export`")
            else:
                warn(f"{artifact.file} carries no labels or preprocessing of its own (exported by an older edgetl); "
                     f"only the manifest's were checked")
            continue
        edited = "the file's own metadata differs from the manifest: one was edited after export; " \
                 "re-run `edgetl export`"
        gate.check(artifact.file, "meaning", "embedded labels", embedded["labels"], "==", manifest.labels,
                   detail=edited)
        gate.check(artifact.file, "meaning", "embedded preprocessing", embedded["preprocessing"], "==",
                   manifest.preprocessing.to_dict(), detail=edited)
        gate.check(artifact.file, "meaning", "embedded input type", embedded.get("input_type", "float"), "==",
                   input_type(manifest), detail=edited)
        gate.check(artifact.file, "meaning", "embedded output type", embedded.get("output_type", "logits"), "==",
                   "probs" if manifest.output.name == PROBS_NAME else "logits", detail=edited)
        if "precision" in embedded:  # files from before 0.2 do not say
            gate.check(artifact.file, "meaning", "embedded precision", embedded["precision"], "==",
                       artifact.precision, detail=edited)
        if embedded.get("opset") is not None and artifact.opset is not None:
            gate.check(artifact.file, "meaning", "opset", embedded["opset"], "==", artifact.opset, detail=edited)


def check_model_facts(manifest: Manifest, model: Any, meta: CheckpointMeta, gate: Gate) -> None:
    """The manifest's `model` facts (parameters, MACs, BatchNorms folded, LoRA adapters merged) re-derived from the
    checkpoint: its deploy model is rebuilt as export built it (~0.3 s for Lite0, one forward pass for the MACs)."""
    import torch

    try:
        deployed, deploy = deploy_model(model)
    except EdgetlError as e:  # the checkpoint's model no longer folds: nothing here to compare with
        gate.check("manifest.json", "meaning", "deploy model rebuilt from the checkpoint", describe_error(e), "==",
                   "ok")
        return
    fix = "the manifest's model facts are not its checkpoint's: it was edited after export; re-run `edgetl export`"
    stated = manifest.model
    gate.check("manifest.json", "meaning", "model.params", stated.params, "==", deploy.params, detail=fix)
    gate.check("manifest.json", "meaning", "model.bn_folded", stated.bn_folded, "==", deploy.bn_folded, detail=fix)
    gate.check("manifest.json", "meaning", "model.lora_merged", stated.lora_merged, "==", deploy.lora_merged,
               detail=fix)
    if stated.macs is not None:
        crop = meta.preprocessing.crop_size
        gate.check("manifest.json", "meaning", "model.macs", stated.macs, "==",
                   count_macs(deployed, torch.zeros(1, 3, crop, crop)), detail=fix)


def _on_uint8_grid(inputs: Inputs, prep: Preprocessing) -> Inputs:
    """Real images are uint8 crops already; the random tensors are rounded (and clipped) to the nearest uint8
    image, so that a uint8-input file is fed exactly what the checkpoint is fed."""
    x = from_device_input(to_device_input(inputs.x, mean=prep.mean, std=prep.std), mean=prep.mean, std=prep.std)
    return dataclasses.replace(inputs, x=x)


def _as_given(reference: np.ndarray, runner: Runner) -> np.ndarray:
    """The checkpoint's logits in the form the file gives them: probabilities for a file that ends in a softmax."""
    return softmax(reference) if runner.gives == "probs" else reference


def input_type(manifest: Manifest) -> str:
    """What the export's files take: the device's uint8 NHWC crop, or float NCHW (edgetl.formats.device_io)."""
    return "uint8" if manifest.input.dtype == "uint8" else "float"


def image_shape(manifest: Manifest, meta: CheckpointMeta) -> list[int]:
    crop = meta.preprocessing.crop_size
    return [crop, crop, 3] if input_type(manifest) == "uint8" else [3, crop, crop]


def _check_own_io(artifact: ArtifactEntry, manifest: Manifest, meta: CheckpointMeta, gate: Gate, *,
                  fix: str) -> None:
    """A file's own tensors (a fixed batch, integer io) may differ from the manifest's only in batch, dtype and
    quantization: the image it takes and the classes it gives are the model's."""
    want_in, want_out = manifest.io_of(artifact.file)
    name = artifact.file
    gate.check(name, "meaning", "listed input shape", want_in.shape[1:], "==", image_shape(manifest, meta), detail=fix)
    gate.check(name, "meaning", "listed output size", want_out.shape[-1], "==", len(meta.labels), detail=fix)
    for spec in (want_in, want_out):
        batch = spec.shape[0]
        if isinstance(batch, int):  # it sizes the batches verify and predict run this file at
            gate.check(name, "meaning", f"listed {spec.name} batch", batch, ">=", 1, detail=fix)
            gate.check(name, "meaning", f"listed {spec.name} batch", batch, "<=", MAX_BATCH, detail=fix)


def _check_latency(run: RunDir, manifest: Manifest, artifacts: list[ArtifactEntry], checkpoint: Path,
                   settings: VerifySettings, gate: Gate, report: VerifyReport, old: VerifyReport | None,
                   progress: Progress) -> None:
    progress("latency")
    shape, crop = manifest.input.shape, manifest.preprocessing.crop_size
    static = shape[0] if isinstance(shape[0], int) else None
    if static and settings.batch not in (None, static):
        _warn(report, f"the export has a fixed batch of {static}: latency is timed at batch {static} only")
    batches = [static] if static else sorted({1, settings.batch or 1})
    hw = (crop, crop)
    threads = sorted(set(settings.threads or (1, all_threads())))
    engines = [(engine, a) for a in artifacts if _in_engines(a) for engine in settings.other_engines
               if report.parity.get(engine_row(a.file, engine)) is not None]  # only where it ran the file
    report.latency = measure_latency(artifacts, export_dir=run.export_dir, checkpoint=checkpoint, input_hw=hw,
                                     batches=batches, threads=threads, plan=settings.timing, progress=progress,
                                     engines=engines, uint8_input=input_type(manifest) == "uint8")
    report.settings.update(batches=batches, threads=threads)
    report.gate = gate_latency(report.latency, gate, max_latency_ms=settings.max_latency_ms)
    if old is not None and report.gate is None:
        reason = (f"--baseline {settings.baseline}: no file of this export gates latency (an ONNX file), so there is "
                  f"nothing to compare with it")
        _warn(report, f"{reason}: latency regression check skipped")
        report.regression = {"baseline": str(settings.baseline), "status": "skipped", "reason": reason}
    elif old is not None:
        report.regression = check_regression(report.gate, gate, old=old, baseline=settings.baseline,
                                             machine=report.machine, max_regression=settings.max_regression,
                                             warn=lambda message: _warn(report, message))


def _bars(artifact: ArtifactEntry, settings: VerifySettings, gate: Gate) -> Bars | None:
    """The precision's bars; --atol applies where the precision has an absolute bar, --min-top1 to all."""
    if artifact.precision not in BARS:
        gate.check(artifact.file, "values", "precision with bars", artifact.precision, "==", " | ".join(BARS),
                   detail=f"no bars are defined for {artifact.precision}; add them to edgetl.compare.gate.BARS")
        return None
    default = BARS[artifact.precision]
    return dataclasses.replace(
        default, atol=default.atol if settings.atol is None or default.atol is None else settings.atol,
        min_top1=default.min_top1 if settings.min_top1 is None else settings.min_top1)


def _warn(report: VerifyReport, message: str) -> None:
    log.warning(message)
    report.warnings.append(message)
