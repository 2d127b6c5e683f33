"""The go/no-go per lower-precision file: does it pay on this model and this CPU?

    rows = go_no_go(manifest, report, gate)   # [{"file": "model.int8.onnx", "decision": "ship", ...}]

Each fp16 / int8 file is compared with the fp32 file of its format: speed-up (p50 in the format's own runtime,
batch 1 or a fixed-batch export's batch, all threads), size ratio, accuracy change on the labelled verify images,
top-1 agreement; then one word with the reason.
A file that fails its bars is "don't ship" (and verify fails). An INT8 file that passes but is not at least
MIN_SPEEDUP faster is "don't ship" too, without failing verify: the fp32 file is exact and as fast (INT8 pays
only where the CPU has fast integer kernels and the ops quantize; MobileNet-V3's hardswish and SE stay float).
fp16 is for GPUs and NPUs: it ships on its bars and size, and the reason says how this CPU runs it.
"""

from __future__ import annotations

from typing import Any

from edgetl.compare.gate import Gate
from edgetl.formats import FORMATS
from edgetl.rundir import Manifest, VerifyReport

MIN_SPEEDUP = 1.2  # below this an INT8 file's accuracy risk buys too little


def go_no_go(manifest: Manifest, report: VerifyReport, gate: Gate) -> list[dict[str, Any]]:
    # batch 1, or the one batch a fixed-batch export was timed at; each file in its format's own runtime (with
    # --runtime the same file is also timed in other engines, under the same file name)
    batches = {r["batch"] for r in report.latency}
    batch = 1 if 1 in batches or not batches else min(batches)
    single = [r for r in report.latency if r["batch"] == batch]
    threads = max((r["threads"] for r in single), default=None)
    p50 = {(r["runtime"], r["file"]): r["p50_ms"] for r in single if r["threads"] == threads}
    rows = []
    for artifact in manifest.artifacts:
        fmt = FORMATS.get(artifact.format)
        if artifact.precision == "fp32" or fmt is None:
            continue
        base = next((a for a in manifest.artifacts if a.file == fmt.file), None)
        parity = report.parity.get(artifact.file) or {}
        mine, theirs = p50.get((artifact.format, artifact.file)), p50.get((artifact.format, base.file)) if base else None
        speedup = theirs / mine if mine and theirs else None
        accuracy, reference = parity.get("accuracy"), parity.get("reference_accuracy")
        row = {"file": artifact.file, "precision": artifact.precision, "versus": fmt.file, "threads": threads,
               "batch": batch,
               "speedup": speedup, "size_ratio": artifact.bytes / base.bytes if base else None,
               "accuracy_delta": None if accuracy is None or reference is None else accuracy - reference,
               "top1_agreement": parity.get("top1_agreement"), "images": parity.get("labelled"),
               "split": (report.inputs or {}).get("part") if (report.inputs or {}).get("source") == "split" else None,
               "accuracy": accuracy, "accuracy_ci": parity.get("accuracy_ci"), "reference_accuracy": reference,
               "reference_accuracy_ci": parity.get("reference_accuracy_ci"),
               "export_guard": _guard(artifact.quantization)}
        row["decision"], row["reason"] = _decide(row, [c for c in gate.failures if c.artifact == artifact.file])
        rows.append(row)
    return rows


def _guard(quantization: dict[str, Any] | None) -> dict[str, Any] | None:
    """What export's accuracy guard found for the file it kept: its verdict and the images it stands on."""
    guard = (quantization or {}).get("guard") or {}
    rounds = guard.get("rounds") or []
    kept = rounds[guard.get("kept_round", len(rounds) - 1)] if rounds else None
    if not kept or not kept.get("images"):
        return None
    return {"passed": kept.get("passed"), "images": kept["images"], "split": kept.get("split", "val"),
            "accuracy_drop": kept.get("accuracy_drop")}


def _accuracy_words(row: dict[str, Any]) -> str:
    """"accuracy -1.3 pt on 153 test images (94.1 % [90.0–96.6] vs 95.4 % [91.7–97.8])": the drop and what it
    stands on, so a 1-point difference on a few hundred images reads as what it is."""
    if row["accuracy_delta"] is None:
        return ""
    text = f"accuracy {100 * row['accuracy_delta']:+.1f} pt"
    if row.get("images") and row.get("accuracy_ci") and row.get("reference_accuracy_ci"):
        def pct(value: float, ci: list[float]) -> str:
            return f"{100 * value:.1f} % [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"

        split = f"{row['split']} " if row.get("split") else ""
        text += (f" on {row['images']} {split}images ({pct(row['accuracy'], row['accuracy_ci'])} vs "
                 f"{pct(row['reference_accuracy'], row['reference_accuracy_ci'])}, 95 % intervals)")
    guard = row.get("export_guard")
    if guard and row.get("images") and (guard["images"], guard.get("split")) != (row["images"], row.get("split")):
        # Same bars, other images: say so rather than contradict export's verdict silently
        verdict = "held" if guard["passed"] else "failed"
        text += (f"; export's guard {verdict} on {guard['images']} {guard.get('split', 'val')} images "
                 f"({100 * -(guard['accuracy_drop'] or 0.0) + 0.0:+.1f} pt)")  # + 0.0: a drop of 0 is +0.0, not -0.0
    return text


def _decide(row: dict[str, Any], failures: list) -> tuple[str, str]:
    figures = ", ".join(part for part in (
        f"{row['speedup']:.2f}× the fp32 speed" if row["speedup"] is not None else "not timed",
        f"{row['size_ratio']:.2f}× the size" if row["size_ratio"] is not None else "",
        _accuracy_words(row),
    ) if part)
    if failures:
        return "don't ship", f"fails {failures[0].measure} ({len(failures)} check(s)); {figures}"
    if row["precision"] == "int8":
        if row["speedup"] is None:
            return "don't ship", f"its speed was not measured here; {figures}"
        if row["speedup"] < MIN_SPEEDUP:
            return "don't ship", f"{figures}: under {MIN_SPEEDUP}× faster, the exact fp32 file is the better buy"
        return "ship", figures
    cpu = "" if row["speedup"] is None or row["speedup"] >= 1 else " (slower on this CPU: ship it to fp16 hardware)"
    return "ship", figures + cpu
