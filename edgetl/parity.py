"""Parity figures: how far an exported model's logits are from the checkpoint's, on the same inputs.

    figures = compare_logits(reference, run_batched(runner, x, batch=16), targets=targets)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def compare_logits(reference: np.ndarray, logits: np.ndarray, *, targets: np.ndarray) -> dict[str, Any]:
    """Every parity figure of `logits` against `reference` ([N, classes]); accuracy on rows with a target >= 0."""
    ref, out = reference.astype(np.float64), logits.astype(np.float64)
    diff = np.abs(out - ref)
    # Relative to each row's largest reference logit: elementwise |d| / |ref| explodes on logits near zero.
    scale = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float32).tiny)
    k = min(5, ref.shape[1])
    top_ref, top_out = np.argsort(-ref, axis=1)[:, :k], np.argsort(-out, axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_out)]
    return {
        "inputs": int(ref.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float((diff.max(axis=1) / scale).max()),
        "softmax_max_diff": float(np.abs(softmax(out) - softmax(ref)).max()),
        "top1_agreement": float((top_ref[:, 0] == top_out[:, 0]).mean()),
        "top5_overlap": float(np.mean(overlap)),
        "top5_k": k,
        "accuracy": accuracy(logits, targets),
        "reference_accuracy": accuracy(reference, targets),
    }


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


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float | None:
    """Top-1 accuracy over the rows with a target (>= 0); None when no row has one."""
    labelled = targets >= 0
    return float((logits[labelled].argmax(axis=1) == targets[labelled]).mean()) if labelled.any() else None


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
