"""Golden vectors: a few real held-out crops (uint8, as the device holds them) and each file's output on them.

    out = run_on_crops(FORMATS["onnx"].open(path), crops, preprocessing=prep, batch=None)   # export writes these
    check_golden(manifest, export_dir, gate)                                                # verify re-runs them

A device-side test does what `check_golden` does: feed `golden-inputs.npy` to the file, compare with the file's
`golden-<file>.npy` within the manifest's `atol`, and require the same top-1 class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.compare.gate import BARS, Gate
from edgetl.compare.parity import run_batched
from edgetl.errors import describe_error
from edgetl.formats import FORMATS
from edgetl.formats.base import Runner
from edgetl.formats.device_io import from_device_input
from edgetl.preprocessing import Preprocessing
from edgetl.rundir import Manifest

INT8_RTOL = 0.05  # of the output scale: int8 kernels of two runtimes may round a requantization step apart


def run_on_crops(runner: Runner, crops: np.ndarray, *, preprocessing: Preprocessing, batch: Any) -> np.ndarray:
    """The file's output on uint8 NHWC crops: fed as they are to a device-input file, else normalized to float
    NCHW exactly as training and verify normalize them. `batch`: the file's fixed batch, or a name (dynamic)."""
    x = crops if runner.takes == "uint8" else from_device_input(crops, mean=preprocessing.mean,
                                                                 std=preprocessing.std)
    static = batch if isinstance(batch, int) else None
    return run_batched(runner, x, batch=static or len(x), static=static is not None)


def tolerance(precision: str, expected: np.ndarray) -> float:
    """How far a runtime's output on the golden inputs may be from the expected one, per precision: fp32's atol
    and fp16's rtol from verify's bars; for int8 INT8_RTOL, not verify's int8 value bar, which measures the
    quantization's loss against the checkpoint (half the scale): a golden output is the same file's own."""
    scale = max(1.0, float(np.abs(expected).max()))
    if precision == "int8":
        return INT8_RTOL * scale
    bars = BARS.get(precision, BARS["fp32"])
    return (bars.atol if bars.atol is not None else bars.rtol) * scale


def check_golden(manifest: Manifest, export_dir: Path, gate: Gate) -> dict[str, Any]:
    """Every listed file against its golden output: max |diff| within its atol, the same top-1 class. Figures per
    file for the report; a file that cannot run here is reported by its load check, not twice."""
    golden = manifest.golden
    if golden is None:
        return {}
    crops = np.load(export_dir / golden.inputs.file, allow_pickle=False)
    figures: dict[str, Any] = {}
    for entry in golden.outputs:
        artifact = next((a for a in manifest.artifacts if a.file == entry.of), None)
        if artifact is None or artifact.format not in FORMATS:
            gate.check(entry.file, "golden", f"its model file {entry.of}", "not listed", "==", "listed")
            continue
        expected = np.load(export_dir / entry.file, allow_pickle=False)
        try:
            got = run_on_crops(FORMATS[artifact.format].open(export_dir / entry.of), crops,
                               preprocessing=manifest.preprocessing, batch=manifest.io_of(entry.of)[0].shape[0])
        except Exception as e:  # noqa: BLE001 — reported once, as this file's golden check
            gate.check(entry.of, "golden", "runs on the golden inputs", describe_error(e), "==", "ok")
            continue
        if not gate.check(entry.of, "golden", "golden output shape", list(got.shape), "==", list(expected.shape)):
            continue
        diff = float(np.abs(got - expected).max())
        same = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
        gate.check(entry.of, "golden", "golden max abs diff", diff, "<=", entry.atol, detail=entry.file)
        gate.check(entry.of, "golden", "golden top-1 match", same, ">=", 1.0, unit="%", detail=entry.file)
        figures[entry.of] = {"max_abs_diff": diff, "top1_match": same, "atol": entry.atol, "images": len(crops)}
    return figures
