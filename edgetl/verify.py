"""Verify an exported run before it ships: integrity, parity with the trained checkpoint, latency — a CI gate.

    edgetl verify artifacts/my-run --max-latency-ms 15 --baseline ci/verify.json

Integrity first: every file the manifest lists must have its size and sha256. Then each artifact runs in its
runtime (onnxruntime CPU for ONNX, `torch.jit.load` for TorchScript) on real validation images preprocessed
from the manifest alone, plus random tensors, against the checkpoint it was exported from (unfolded, eval,
fp32): names, then shapes, then values, one ✓/✗ line each. Latency follows (`latency.py`). Every failure is
collected and raised once (`ChecksFailed`, exit 1); the report goes to RUN/verify.json either way.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__
from edgetl.checkpoint import load_model
from edgetl.errors import EdgetlError, RunDirError, VerifyFailed
from edgetl.files import read_json, sha256_file, write_json
from edgetl.latency import TimingPlan, all_threads, check_regression, gate_latency, machine_fingerprint, measure_latency
from edgetl.parity import accuracy, compare_logits, run_batched
from edgetl.runtimes import RUNNERS, Runner, torch_runner
from edgetl.verify_inputs import Inputs, gather_inputs

log = logging.getLogger(__name__)

PARITY_BATCH = 16  # images per call when the export has a dynamic batch: bounded memory at any input size
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Bars:
    atol: float  # max |artifact - reference| over every logit
    min_top1: float  # fraction of inputs whose top-1 class must agree with the reference


# Per precision: how close an artifact must stay to the fp32 checkpoint. Writers of fp16 / int8 artifacts add
# their entry here with the reason for its numbers; a precision without one fails verify, it never passes.
BARS: dict[str, Bars] = {"fp32": Bars(atol=1e-4, min_top1=1.0)}
OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}
SYMBOLS = {"<=": "≤", ">=": "≥", "==": "="}


@dataclass(frozen=True)
class VerifySettings:
    """The flags of `edgetl verify`; None for a bar means the precision's default (BARS) or no bar."""

    data: str | None = None  # images to check with; None: the run's validation split
    samples: int = 32
    atol: float | None = None
    min_top1: float | None = None
    batch: int | None = None  # also timed, besides batch 1
    max_latency_ms: float | None = None
    baseline: Path | None = None
    max_regression: float = 0.10
    threads: tuple[int, ...] | None = None  # None: 1 and all cores
    timing: TimingPlan = field(default_factory=TimingPlan)

    def validate(self) -> None:
        """Bad flag values are usage errors (exit 2), never silently corrected."""
        t = self.threads or ()
        problems = [
            (self.samples < 0, f"--samples must be >= 0 (got {self.samples})"),
            (self.atol is not None and self.atol < 0, f"--atol must be >= 0 (got {self.atol})"),
            (self.min_top1 is not None and not 0 <= self.min_top1 <= 1,
             f"--min-top1 is a fraction in [0, 1] (got {self.min_top1})"),
            (self.batch is not None and self.batch < 1, f"--batch must be >= 1 (got {self.batch})"),
            (self.max_latency_ms is not None and self.max_latency_ms <= 0,
             f"--max-latency-ms must be > 0 (got {self.max_latency_ms})"),
            (self.max_regression < 0, f"--max-regression is a fraction >= 0, e.g. 0.10 (got {self.max_regression})"),
            (any(n < 1 for n in t), f"--threads must be >= 1 (got {list(t)})"),
            (self.timing.seconds <= 0, f"--latency-seconds must be > 0 (got {self.timing.seconds})"),
        ]
        for bad, message in problems:
            if bad:
                raise EdgetlError(message)


@dataclass(frozen=True)
class Check:
    artifact: str
    kind: str  # integrity | load | names | shapes | values | latency | regression
    measure: str
    value: Any
    op: str  # a key of OPS
    bar: Any
    passed: bool
    unit: str = ""  # how value and bar print: "" (as they are), "%", "+%" (signed), "ms"
    detail: str = ""

    def line(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.artifact} · {self.kind} · {self.measure} " \
               f"{_fmt(self.value, self.unit)} (bar {SYMBOLS[self.op]} {_fmt(self.bar, self.unit)})"

    def message(self) -> str:
        text = f"{self.artifact}: {self.measure} {_fmt(self.value, self.unit)} fails the bar " \
               f"{SYMBOLS[self.op]} {_fmt(self.bar, self.unit)}"
        return f"{text} — {self.detail}" if self.detail else text


def _fmt(x: Any, unit: str) -> str:
    if unit in ("%", "+%"):
        return f"{100 * x:+.1f} %" if unit == "+%" else f"{100 * x:.1f} %"
    if unit == "ms":
        return f"{x:.3g} ms"
    return f"{x:.3g}" if isinstance(x, float) else repr(x) if isinstance(x, str) else str(x)


class Gate:
    """Collects checks, logging one ✓/✗ line each; the failures are raised once, at the end."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def check(self, artifact: str, kind: str, measure: str, value: Any, op: str, bar: Any, *, unit: str = "",
              detail: str = "") -> bool:
        check = Check(artifact, kind, measure, value, op, bar, bool(OPS[op](value, bar)), unit, detail)
        self.checks.append(check)
        (log.info if check.passed else log.warning)(check.line())
        return check.passed

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


@dataclass
class VerifyResult:
    run_dir: Path
    json_path: Path
    report: dict[str, Any]  # exactly what verify.json holds
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


class ChecksFailed(VerifyFailed):
    """One or more bars failed; `result` holds the whole report (also written to verify.json)."""

    def __init__(self, result: VerifyResult) -> None:
        failures = [c.message() for c in result.checks if not c.passed]
        super().__init__(f"verify failed {len(failures)} check(s) (report: {result.json_path}):\n  "
                         + "\n  ".join(failures))
        self.result = result


def verify_run(run_dir: Path, settings: VerifySettings = VerifySettings(), *, json_path: Path | None = None,
               progress: Progress = lambda stage: None) -> VerifyResult:
    """Run every check on RUN/export and write the report; raise ChecksFailed if any bar fails."""
    run_dir = Path(run_dir)
    settings.validate()
    manifest = read_manifest(run_dir)
    old = read_json(settings.baseline, what="baseline report") if settings.baseline is not None else None
    report = _new_report(run_dir, settings, baseline=old is not None)
    gate = Gate()
    progress("integrity")
    check_integrity(run_dir / "export", manifest, gate)
    if not gate.failures:  # never load a file that is not the one exported
        runnable, checkpoint = _check_parity_all(run_dir, manifest, settings, gate, report, progress)
        _check_latency(run_dir, manifest, runnable, checkpoint, settings, gate, report, old, progress)
    report.update(passed=not gate.failures, failures=[c.message() for c in gate.failures],
                  checks=[dataclasses.asdict(c) for c in gate.checks])
    json_path = Path(json_path) if json_path is not None else run_dir / "verify.json"
    write_json(json_path, report)
    result = VerifyResult(run_dir=run_dir, json_path=json_path, report=report, checks=gate.checks)
    if not result.passed:
        raise ChecksFailed(result)
    return result


def _new_report(run_dir: Path, settings: VerifySettings, *, baseline: bool) -> dict[str, Any]:
    """verify.json's skeleton: every key is always there, in this order, whatever stage a failure stops at."""
    return {
        "edgetl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(run_dir),
        "passed": None, "failures": [], "warnings": [], "checks": [],
        "bars": {"parity": {}, "latency": {"max_latency_ms": settings.max_latency_ms,
                                           "max_regression": settings.max_regression if baseline else None}},
        "inputs": None, "reference": None, "parity": {}, "latency": [], "gate": None, "regression": None,
        "settings": {"data": settings.data, "samples": settings.samples, "batches": None, "threads": None,
                     "timing": settings.timing.to_dict()},
        "machine": machine_fingerprint(), "versions": _versions(),
        "manifest_sha256": sha256_file(run_dir / "export" / "manifest.json"),
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "export" / "manifest.json"
    if not Path(run_dir).is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    if not path.is_file():
        raise RunDirError(f"{path} not found — run `edgetl export {run_dir}` first")
    manifest = read_json(path, what="export manifest")
    missing = [k for k in ("run", "labels", "preprocessing", "input", "output", "artifacts") if k not in manifest]
    if missing:
        raise RunDirError(f"{path}: no {', '.join(missing)} entries — re-run `edgetl export {run_dir}`")
    return manifest


def check_integrity(export_dir: Path, manifest: dict[str, Any], gate: Gate) -> None:
    """Every listed file is there with the manifest's byte size and sha256: nothing truncated or altered."""
    if not manifest["artifacts"]:
        gate.check("manifest.json", "integrity", "artifacts listed", 0, ">=", 1)
    for artifact in manifest["artifacts"]:
        name, path = artifact["file"], export_dir / artifact["file"]
        if not gate.check(name, "integrity", "file", "present" if path.is_file() else "missing", "==", "present",
                          detail=f"listed in {export_dir / 'manifest.json'} — re-run `edgetl export`"):
            continue
        fix = "the file changed after export; re-run `edgetl export` or restore it"
        gate.check(name, "integrity", "bytes", path.stat().st_size, "==", artifact["bytes"], detail=fix)
        gate.check(name, "integrity", "sha256", sha256_file(path), "==", artifact["sha256"], detail=fix)


def _check_parity_all(run_dir: Path, manifest: dict[str, Any], settings: VerifySettings, gate: Gate,
                      report: dict[str, Any], progress: Progress) -> tuple[list[dict[str, Any]], Path]:
    """Every artifact with a runtime against the checkpoint; returns the artifacts that ran, and the checkpoint."""
    checkpoint = run_dir / "checkpoints" / _checkpoint_file(manifest["run"].get("checkpoint", "best"))
    artifacts = [a for a in manifest["artifacts"] if a["format"] in RUNNERS]
    for a in manifest["artifacts"]:
        if a["format"] not in RUNNERS:
            _warn(report, f"{a['file']}: no runtime for format {a['format']!r} (known: {', '.join(RUNNERS)}); "
                          f"integrity checked only")
    progress("reference")
    model, ckpt = load_model(checkpoint)
    name = str(checkpoint.relative_to(run_dir))
    fix = "the checkpoint changed after export; re-run `edgetl export`"
    saved = {"epoch": ckpt.get("epoch", ckpt.get("global_epoch")), "recipe_sha256": ckpt.get("recipe_sha256")}
    for key, value in saved.items():
        if manifest["run"].get(key) is not None:  # the reference must be the checkpoint the export was made from
            gate.check(name, "integrity", key, value, "==", manifest["run"][key], detail=fix)
    reference = torch_runner(model)
    progress("inputs")
    inputs = gather_inputs(run_dir, manifest, data=settings.data, samples=settings.samples)
    report["warnings"] += inputs.warnings
    ref_logits = run_batched(reference, inputs.x, batch=PARITY_BATCH)
    report.update(inputs=inputs.info, reference={"file": name, "accuracy": accuracy(ref_logits, inputs.targets)})
    runnable = []
    for artifact in artifacts:
        name = artifact["file"]
        progress(f"parity {name}")
        bars = _bars(artifact, settings, gate)
        report["bars"]["parity"][name] = {"precision": artifact.get("precision", "fp32"),
                                          **(dataclasses.asdict(bars) if bars else {})}
        try:
            runner = RUNNERS[artifact["format"]](run_dir / "export" / name)
        except Exception as e:  # noqa: BLE001 — a file its runtime refuses fails this artifact, not the whole run
            gate.check(name, "load", f"loads in its runtime ({artifact['format']})", _error(e), "==", "ok")
            continue
        figures = check_parity(runner, manifest, name, gate, inputs=inputs, reference=ref_logits, bars=bars)
        report["parity"][name] = figures
        if figures is not None:
            runnable.append(artifact)
    return runnable, checkpoint


def check_parity(runner: Runner, manifest: dict[str, Any], name: str, gate: Gate, *, inputs: Inputs,
                 reference: np.ndarray, bars: Bars | None) -> dict[str, Any] | None:
    """Names, then shapes, then values of one artifact against the reference logits."""
    want_in, want_out = manifest["input"], manifest["output"]
    if runner.inputs is not None:  # the format declares its graph signature: compare it with the manifest
        if not (gate.check(name, "names", "input count", len(runner.inputs), "==", 1)
                & gate.check(name, "names", "output count", len(runner.outputs), "==", 1)):
            return None
        got_in, got_out = runner.inputs[0], runner.outputs[0]
        ok = gate.check(name, "names", "input name", got_in.name, "==", want_in["name"])
        ok &= gate.check(name, "names", "output name", got_out.name, "==", want_out["name"])
        ok &= gate.check(name, "shapes", "input dtype", got_in.dtype, "==", want_in["dtype"])
        ok &= gate.check(name, "shapes", "input shape", _dims(got_in.shape), "==", _dims(want_in["shape"]))
        ok &= gate.check(name, "shapes", "output shape", _dims(got_out.shape), "==", _dims(want_out["shape"]))
        if not ok:
            return None
    static = want_in["shape"][0] if isinstance(want_in["shape"][0], int) else None
    try:
        logits = run_batched(runner, inputs.x, batch=static or PARITY_BATCH, static=static is not None)
    except Exception as e:  # noqa: BLE001 — any runtime error is this artifact's failure, reported with the rest
        gate.check(name, "shapes", "runs on the inputs", _error(e), "==", "ok")
        return None
    if not gate.check(name, "shapes", "logits shape", list(logits.shape), "==", list(reference.shape)):
        return None
    figures = compare_logits(reference, logits, targets=inputs.targets)
    if bars is not None:
        gate.check(name, "values", "max abs diff", figures["max_abs_diff"], "<=", bars.atol)
        gate.check(name, "values", "top-1 agreement", figures["top1_agreement"], ">=", bars.min_top1, unit="%")
    return figures


def _check_latency(run_dir: Path, manifest: dict[str, Any], artifacts: list[dict[str, Any]], checkpoint: Path,
                   settings: VerifySettings, gate: Gate, report: dict[str, Any], old: dict[str, Any] | None,
                   progress: Progress) -> None:
    progress("latency")
    shape, crop = manifest["input"]["shape"], int(manifest["preprocessing"]["crop_size"])
    static = shape[0] if isinstance(shape[0], int) else None
    if static and settings.batch not in (None, static):
        _warn(report, f"the export has a fixed batch of {static}: latency is timed at batch {static} only")
    batches = [static] if static else sorted({1, settings.batch or 1})
    hw = tuple(d if isinstance(d, int) else crop for d in shape[2:4])
    threads = sorted(set(settings.threads or (1, all_threads())))
    report["latency"] = measure_latency(artifacts, export_dir=run_dir / "export", checkpoint=checkpoint,
                                        input_hw=hw, batches=batches, threads=threads, plan=settings.timing,
                                        progress=progress)
    report["settings"].update(batches=batches, threads=threads)
    report["gate"] = gate_latency(report["latency"], gate, max_latency_ms=settings.max_latency_ms)
    if old is not None and report["gate"] is not None:
        report["regression"] = check_regression(report["gate"], gate, old=old, baseline=settings.baseline,
                                                machine=report["machine"], max_regression=settings.max_regression,
                                                warn=lambda message: _warn(report, message))


def _bars(artifact: dict[str, Any], settings: VerifySettings, gate: Gate) -> Bars | None:
    precision = artifact.get("precision", "fp32")
    if precision not in BARS:
        gate.check(artifact["file"], "values", "precision with bars", precision, "==", " | ".join(BARS),
                   detail=f"no bars are defined for {precision}; add them to edgetl.verify.BARS")
        return None
    default = BARS[precision]
    return Bars(atol=default.atol if settings.atol is None else settings.atol,
                min_top1=default.min_top1 if settings.min_top1 is None else settings.min_top1)


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:200]}"


def _dims(shape: Sequence[Any]) -> list[Any]:
    """Fixed dims as ints, symbolic ones as "dynamic": exporters name a dynamic dim as they like."""
    return [d if isinstance(d, int) else "dynamic" for d in shape]


def _checkpoint_file(name: str) -> str:
    return name if name.endswith(".pt") else f"{name}.pt"


def _warn(report: dict[str, Any], message: str) -> None:
    log.warning(message)
    report["warnings"].append(message)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import PIL
    import torch

    return {"edgetl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__}
