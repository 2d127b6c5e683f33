"""The confusion matrix and what people read from it: precision, recall and F1 per class, the most confused
pairs, the most confidently wrong images, top-5 accuracy, and confusion.png.

    figures = per_class(targets, predicted, labels=["cat", "dog"]); plot_confusion([("val", figures)], path)

From predictions on labelled images (train: the val and test splits at the best epoch; verify: each exported
file on the verify images), counted with numpy's bincount: a few lines, no metrics library. One accuracy number
hides the class that matters: a model 92 % right overall can be 80 % right on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetl.errors import printable
from edgetl.files import atomic_path
from edgetl.rundir import ClassFigures, Confused, PerClass, WrongImage

MAX_MATRIX_CLASSES = 30  # beyond this a matrix's labels are unreadable: confusion.png draws the top pairs instead
MAX_COUNTS_CLASSES = 15  # counts are written in the cells up to this many classes
MAX_PAIRS = 20  # confused pairs kept in the figures, and drawn beyond MAX_MATRIX_CLASSES
WRONG_IMAGES = 10  # confidently wrong val images listed in train.json
TOP_K = 5  # top-5 accuracy beside top-1, where there are more classes than this (else it is 100 % by definition)


def top_k_hits(scores: np.ndarray, targets: Sequence[int] | np.ndarray, *, k: int = TOP_K) -> np.ndarray | None:
    """Per row of `scores` ([N, classes]: logits or probabilities), whether its target is among its k highest
    scores; None when there are k classes or fewer. Rows without a target (-1) are False."""
    if scores.shape[1] <= k:
        return None
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the k highest, in any order
    return (top == np.asarray(targets, dtype=np.int64)[:, None]).any(axis=1)


def per_class(targets: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, *,
              labels: Sequence[str], top5_hits: Sequence[bool] | np.ndarray | None = None) -> PerClass | None:
    """The figures of the rows with a target (>= 0; -1 marks an unlabelled image); None when no row has one.
    `top5_hits` (per row, `top_k_hits`) adds the top-5 accuracy."""
    t, p = np.asarray(targets, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    labelled = t >= 0
    if not labelled.any():
        return None
    n = len(labels)
    assert p.min() >= 0 and p.max() < n and t.max() < n, "a class index beyond the labels"
    matrix = np.bincount(t[labelled] * n + p[labelled], minlength=n * n).reshape(n, n)
    hits, support, called = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    classes = [ClassFigures(label=labels[i], support=int(support[i]), predicted=int(called[i]),
                            precision=_ratio(hits[i], called[i]), recall=_ratio(hits[i], support[i]),
                            f1=_ratio(2 * hits[i], support[i] + called[i]))  # = 2PR / (P + R), defined more often
               for i in range(n)]
    f1 = [c.f1 for c in classes if c.f1 is not None]
    top5 = None if top5_hits is None else float(np.asarray(top5_hits, dtype=bool)[labelled].mean())
    return PerClass(images=int(labelled.sum()), accuracy=float(hits.sum() / labelled.sum()), top5_accuracy=top5,
                    macro_f1=float(np.mean(f1)) if f1 else None, labels=list(labels), confusion=matrix.tolist(),
                    classes=classes, most_confused=most_confused(matrix, labels))


def _ratio(a: int, b: int) -> float | None:
    return float(a / b) if b else None


def most_confused(matrix: np.ndarray | list[list[int]], labels: Sequence[str], *, limit: int = MAX_PAIRS
                  ) -> list[Confused]:
    """The off-diagonal cells with images, most first (ties in label order)."""
    off = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(off, 0)
    cells = np.argsort(-off, axis=None, kind="stable")[:limit]
    n = len(labels)
    return [Confused(label=labels[k // n], predicted=labels[k % n], count=int(off.flat[k]))
            for k in map(int, cells) if off.flat[k] > 0]


def confidently_wrong(targets: Sequence[int], predicted: Sequence[int], confidence: Sequence[float], *,
                      paths: Sequence[str], labels: Sequence[str], limit: int = WRONG_IMAGES) -> list[WrongImage]:
    """The wrongly predicted images, most confident first: where a label is wrong or two classes look alike."""
    wrong = [i for i, (t, p) in enumerate(zip(targets, predicted)) if t >= 0 and t != p]
    wrong.sort(key=lambda i: -confidence[i])  # stable: equal confidences keep the val order
    return [WrongImage(path=str(paths[i]), label=labels[targets[i]], predicted=labels[predicted[i]],
                       confidence=round(float(confidence[i]), 6)) for i in wrong[:limit]]


def same_figures(figures: dict[str, PerClass]) -> list[tuple[list[str], PerClass]]:
    """The names whose confusion matrices are identical, grouped in order (an fp32 export predicts what its
    checkpoint predicts: one panel and one table for all of them, not one each)."""
    groups: dict[str, list[str]] = {}
    for name, f in figures.items():
        groups.setdefault(repr(f.confusion), []).append(name)
    return [(names, figures[names[0]]) for names in groups.values()]


def plot_confusion(panels: Sequence[tuple[str, PerClass]], path: Path) -> None:
    """One panel per (title, figures): the matrix normalized per true class (recall on the diagonal) with its
    counts; beyond MAX_MATRIX_CLASSES classes, a bar chart of the most confused pairs instead."""
    if not panels:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels[0][1].labels)
    side = min(max(4.5, 0.32 * n + 2.5), 14) if n <= MAX_MATRIX_CLASSES else 7
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side), constrained_layout=True,
                             squeeze=False)
    for ax, (title, figures) in zip(axes[0], panels):
        top5 = f", top-5 {100 * figures.top5_accuracy:.1f} %" if figures.top5_accuracy is not None else ""
        heading = f"{printable(title)}\naccuracy {100 * figures.accuracy:.1f} %{top5} on {figures.images} images"
        if n <= MAX_MATRIX_CLASSES:
            _matrix(ax, figures)
        else:
            _pairs(ax, figures)
            heading += f" · {n} classes: the most confused pairs"
        ax.set_title(heading, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _matrix(ax, figures: PerClass) -> None:
    counts = np.array(figures.confusion)
    n = len(counts)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [printable(label) for label in figures.labels]
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_COUNTS_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")


def _pairs(ax, figures: PerClass) -> None:
    pairs = figures.most_confused[::-1]  # barh draws bottom-up: the most confused on top
    ax.barh(range(len(pairs)), [p.count for p in pairs], color="tab:red")
    ax.set_yticks(range(len(pairs)), [f"{printable(p.label)} → {printable(p.predicted)}" for p in pairs], fontsize=8)
    ax.set_xlabel("images")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if not pairs:
        ax.text(0.5, 0.5, "no image confused", ha="center", va="center", transform=ax.transAxes)
