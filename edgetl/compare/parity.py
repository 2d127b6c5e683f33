"""Parity: how far an exported model's logits are from the checkpoint's, on the same inputs.

    figures = check_parity(runner, manifest, "model.onnx", gate, inputs=inputs, reference=ref_logits, bars=bars)

Names, then shapes, then values, one check each (optimum's `validate_model_outputs` order); the figures
come from `compare_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgetl.compare.gate import Bars, Gate
from edgetl.confusion import TOP_K, top_k_hits
from edgetl.data.inputs import Inputs
from edgetl.errors import describe_error
from edgetl.formats.base import Runner
from edgetl.formats.device_io import softmax
from edgetl.rundir import Manifest

PARITY_BATCH = 16  # images per call when the export has a dynamic batch: bounded memory at any input size


def compare_logits(reference: np.ndarray, logits: np.ndarray, *, targets: np.ndarray) -> dict[str, Any]:
    """Every parity figure of `logits` against `reference` ([N, classes]); accuracy on rows with a target >= 0.
    Top-5 figures (the overlap of the two top-5 sets, top-5 accuracy) are None with 5 classes or fewer, where
    they would be 100 % by definition."""
    ref, out = reference.astype(np.float64), logits.astype(np.float64)
    diff = np.abs(out - ref)
    # Relative to each row's largest reference logit (elementwise |d| / |ref| explodes on logits near zero), and
    # at least the set's typical one: a near tie (logits of +-0.01 on a 2-class model) would make any rounding
    # look like half the scale, while a file with scaled, shifted or swapped logits still fails on every row.
    rows = np.abs(ref).max(axis=1)
    scale = np.maximum(rows, max(float(np.median(rows)), float(np.finfo(np.float32).tiny)))
    ranked = ref.shape[1] > TOP_K
    top_ref, top_out = np.argsort(-ref, axis=1)[:, :TOP_K], np.argsort(-out, axis=1)[:, :TOP_K]
    overlap = [len(set(a) & set(b)) / TOP_K for a, b in zip(top_ref, top_out)]
    return {
        "inputs": int(ref.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float((diff.max(axis=1) / scale).max()),
        "softmax_max_diff": float(np.abs(softmax(out) - softmax(ref)).max()),
        "top1_agreement": float((top_ref[:, 0] == top_out[:, 0]).mean()),
        "top5_overlap": float(np.mean(overlap)) if ranked else None,
        "top5_k": TOP_K,
        "accuracy": accuracy(logits, targets),
        "reference_accuracy": accuracy(reference, targets),
        "top5_accuracy": top5_accuracy(logits, targets),
        "reference_top5_accuracy": top5_accuracy(reference, targets),
        **_intervals(reference, logits, targets),
    }


def _intervals(reference: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """How many labelled images the accuracies stand on, and their 95 % intervals."""
    labelled = targets >= 0
    n = int(labelled.sum())
    if n == 0:
        return {}
    hits = {key: int((out[labelled].argmax(axis=1) == targets[labelled]).sum())
            for key, out in (("accuracy_ci", logits), ("reference_accuracy_ci", reference))}
    return {"labelled": n, **{key: accuracy_interval(k, n) for key, k in hits.items()}}


def accuracy_interval(correct: int, n: int, *, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval of an accuracy `correct / n`: honest at a few hundred images and near
    100 %, where the normal approximation's is not (written out: five lines, no statistics package needed)."""
    if n == 0:
        return [0.0, 1.0]
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]


def run_batched(runner: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, batch: int,
                static: bool = False) -> np.ndarray:
    """Logits for every row of `x`, `batch` rows per call; with a `static` batch the last call is zero-padded."""
    out = []
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        n = len(part)
        if static and n < batch:
            part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), dtype=part.dtype)])
        out.append(np.asarray(runner(np.ascontiguousarray(part)))[:n])
    return np.concatenate(out)


def run_all(runner: Runner, x: np.ndarray) -> np.ndarray:
    """Every row of `x` through `runner`, PARITY_BATCH rows a call, or exactly the batch its file fixes."""
    first = runner.inputs[0].shape[0] if runner.inputs else None
    static = first if isinstance(first, int) and first > 0 else None
    return run_batched(runner, x, batch=static or PARITY_BATCH, static=static is not None)


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float | None:
    """Top-1 accuracy over the rows with a target (>= 0); None when no row has one."""
    labelled = targets >= 0
    return float((logits[labelled].argmax(axis=1) == targets[labelled]).mean()) if labelled.any() else None


def top5_accuracy(logits: np.ndarray, targets: np.ndarray) -> float | None:
    """Top-5 accuracy over the rows with a target (>= 0); None when no row has one, or with 5 classes or fewer."""
    labelled = targets >= 0
    hits = top_k_hits(logits, targets)
    return float(hits[labelled].mean()) if hits is not None and labelled.any() else None


def check_parity(runner: Runner, manifest: Manifest, name: str, gate: Gate, *, inputs: Inputs,
                 reference: np.ndarray, bars: Bars | None,
                 keep_logits: dict[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    """Names, then shapes, then values of one artifact against the reference logits. The file is held to its own
    tensors where its manifest entry lists them (a batch-1 ExecuTorch file, a full-integer TFLite file), else to
    the manifest's. The logits of a file that ran go to `keep_logits[name]` (verify's per-class figures)."""
    want_in, want_out = manifest.io_of(name)
    if runner.inputs is not None:  # the format declares its graph signature: compare it with the manifest
        if not (gate.check(name, "names", "input count", len(runner.inputs), "==", 1)
                & gate.check(name, "names", "output count", len(runner.outputs), "==", 1)):
            return None
        got_in, got_out = runner.inputs[0], runner.outputs[0]
        ok = True
        if got_in.name is not None:  # a .pte names no tensors
            ok &= gate.check(name, "names", "input name", got_in.name, "==", want_in.name)
            ok &= gate.check(name, "names", "output name", got_out.name, "==", want_out.name)
        ok &= gate.check(name, "shapes", "input dtype", got_in.dtype, "==", want_in.dtype)
        ok &= gate.check(name, "shapes", "output dtype", got_out.dtype, "==", want_out.dtype)
        ok &= gate.check(name, "shapes", "input shape", _dims(got_in.shape), "==", _dims(want_in.shape))
        ok &= gate.check(name, "shapes", "output shape", _dims(got_out.shape), "==", _dims(want_out.shape))
        for which, got, want in (("input", got_in, want_in), ("output", got_out, want_out)):
            if got.scale is not None or want.scale is not None:  # what a device quantizes with must be the file's
                ok &= gate.check(name, "shapes", f"{which} scale, zero point", [got.scale, got.zero_point], "==",
                                 [want.scale, want.zero_point])
        if not ok:
            return None
    static = want_in.shape[0] if isinstance(want_in.shape[0], int) else None
    try:
        logits = run_batched(runner, inputs.x, batch=static or PARITY_BATCH, static=static is not None)
    except Exception as e:  # noqa: BLE001 — any runtime error is this artifact's failure, reported with the rest
        gate.check(name, "shapes", "runs on the inputs", describe_error(e), "==", "ok")
        return None
    if not gate.check(name, "shapes", "logits shape", list(logits.shape), "==", list(reference.shape)):
        return None
    if keep_logits is not None:
        keep_logits[name] = logits
    if static is None and not _same_at_batch_1(runner, inputs.x, logits, name, gate):
        return None
    figures = compare_logits(reference, logits, targets=inputs.targets)
    real = int(inputs.info.get("images", 0))
    if bars is not None and bars.atol is None and real:
        # A lossy precision is judged on the real images: INT8 is calibrated on photos, and noise tensors far
        # outside its ranges say nothing about the deployed model (fp32 must match everywhere, noise included).
        figures["judged_on"] = f"{real} real images"
        figures.update({k: v for k, v in compare_logits(reference[:real], logits[:real], targets=inputs.targets[:real]
                                                        ).items() if k in ("max_rel_diff", "top1_agreement")})
    if bars is not None:
        if bars.atol is not None:
            # fp32 rounding grows with the values summed: the bar is `atol` on logits up to 1 and scales with the
            # reference's largest |logit| beyond (a net whose logits reach 500 differs by ~1e-5 relative in
            # every runtime); top-1 agreement stays exact.
            scale = max(1.0, float(np.abs(reference).max()))
            figures["atol_bar"] = bars.atol * scale
            gate.check(name, "values", "max abs diff", figures["max_abs_diff"], "<=", bars.atol * scale,
                       detail="" if scale == 1.0 else f"{bars.atol:g} × the largest |logit| {scale:.3g}")
        if bars.rtol is not None:
            gate.check(name, "values", "max diff / logit scale", figures["max_rel_diff"], "<=", bars.rtol)
        gate.check(name, "values", "top-1 agreement", figures["top1_agreement"], ">=", bars.min_top1, unit="%")
        if bars.max_accuracy_drop is not None and figures["accuracy"] is not None:
            drop = figures["reference_accuracy"] - figures["accuracy"]
            gate.check(name, "values", "accuracy drop", drop, "<=", bars.max_accuracy_drop, unit="%",
                       detail=f"{100 * figures['accuracy']:.1f} % vs {100 * figures['reference_accuracy']:.1f} % "
                              f"for the checkpoint on {int((inputs.targets >= 0).sum())} labelled images")
    return figures


BATCH_1_IMAGES = 4  # run one at a time: the batch a device runs
BATCH_1_RTOL = 1e-3  # of the logit scale: the same kernels at another batch size differ by rounding only


def _same_at_batch_1(runner: Runner, x: np.ndarray, batched: np.ndarray, name: str, gate: Gate) -> bool:
    """The file gives the same outputs one image at a time as in verify's batches: a graph that changes only at
    batch 1 (the batch a device runs) must not pass on batched parity."""
    k = min(BATCH_1_IMAGES, len(x))
    try:
        single = np.concatenate([runner(x[i:i + 1]) for i in range(k)])
    except Exception as e:  # noqa: BLE001 — a file that cannot run one image fails here, with the reason
        return gate.check(name, "shapes", "runs at batch 1", describe_error(e), "==", "ok")
    scale = max(1.0, float(np.abs(batched[:k]).max()))
    diff = float(np.abs(single.astype(np.float64) - batched[:k]).max()) if single.shape == batched[:k].shape \
        else math.inf
    return gate.check(name, "values", "batch 1 vs batched max diff", diff, "<=", BATCH_1_RTOL * scale,
                      detail=f"{k} images one at a time against the same images in a batch")


def _dims(shape: Sequence[Any]) -> list[Any]:
    """Fixed dims as ints, symbolic ones as "dynamic": exporters name a dynamic dim as they like."""
    return [d if isinstance(d, int) else "dynamic" for d in shape]


