"""curves.png: loss and accuracy per epoch, train and val, with the phase boundaries marked.

    plot_curves(read_metrics(run.metrics), run.curves)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.errors import printable
from edgetl.files import atomic_path


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch for every phase, phase boundaries marked."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [m[f"train_{key}"] for m in metrics], "o-", label=f"train {label}")
        ax.plot(epochs, [m[f"val_{key}"] for m in metrics], "s-", label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    starts = [m for i, m in enumerate(metrics) if i == 0 or m["phase"] != metrics[i - 1]["phase"]]
    for m in starts:
        for ax in (ax_loss, ax_acc):
            ax.axvline(m["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(m["epoch"] - 0.45, 0.98, printable(m["phase"]), transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    ax_acc.set_ylim(0, 1.02)
    ax_loss.legend(loc="upper right")
    ax_acc.legend(loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
