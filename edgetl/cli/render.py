"""How the CLI shows the stages: rich progress bars while they run, tables when they finish.

    hooks = RichHooks(); run_pipeline(request, hooks=hooks)

Logs and CI pipes are not terminals: rich would squeeze tables to 80 columns there, so they get 150 unless
COLUMNS says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgetl.cli import tables
from edgetl.confusion import same_figures
from edgetl.pipeline import Hooks
from edgetl.rundir import RunDir, TrainSummary

_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150
console = Console(stderr=False, width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


@contextlib.contextmanager
def tables_on_stderr(active: bool = True) -> Iterator[None]:
    """While stdout carries one JSON document (`--json -`), the tables go to stderr with the progress bars."""
    if active:
        console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None  # back to whatever sys.stdout is


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


class RichTrainCallbacks:
    """Renders the trainer's progress hooks as rich progress bars: decoding, then one bar per phase."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.decode_task: Any = None

    def data_progress(self, done: int, total: int) -> None:
        if self.decode_task is None:
            self.decode_task = self.progress.add_task("decode images", total=total, info="")
        self.progress.update(self.decode_task, completed=done)

    def phase_start(self, *, index: int, phase: Any, steps: int, trainable: dict[str, int], cached: bool) -> None:
        n = sum(trainable.values())
        note = " · cached features" if cached else ""
        groups = ", ".join(f"{g} {c:,}" for g, c in trainable.items() if c)
        self.progress.console.print(f"phase {index + 1} [bold]{tables.shown(phase.name)}[/]: trains {groups} ({n:,} parameters){note}",
                                    highlight=False)
        self.task = self.progress.add_task(f"phase {index + 1} {tables.shown(phase.name)}", total=steps, info=f"{n:,} trainable{note}")

    def step(self) -> None:
        self.progress.advance(self.task)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.progress.update(self.task, info=f"ep {record['phase_epoch']} val acc {100 * record['val_acc']:.1f} % "
                                             f"loss {record['val_loss']:.3f} · {record['images_per_s']:.0f} img/s")


def show_per_class(summary: TrainSummary) -> None:
    """best.pt per class on the val split, then on the test split when the run has one, (a table up to
    MAX_TABLE_CLASSES), then its most confidently wrong images."""
    figures = summary.per_class
    if figures is None:
        return
    confusion = tables.shown(RunDir(Path(summary.run_dir)).confusion)
    if len(figures.labels) <= tables.MAX_TABLE_CLASSES:
        console.print(tables.per_class_table(figures, title="best.pt per class on the val split", caption=confusion))
        if summary.test_per_class is not None:
            console.print(tables.per_class_table(summary.test_per_class,
                                                 title="best.pt per class on the test split (held out)",
                                                 caption=confusion))
    else:
        worst = sorted((c for c in figures.classes if c.recall is not None), key=lambda c: c.recall)[:3]
        console.print(f"per class: {len(figures.labels)} classes in {confusion} and train.json; lowest recall: "
                      + ", ".join(f"{tables.shown(c.label)} {100 * c.recall:.0f} %" for c in worst), highlight=False)
    if summary.confidently_wrong:
        console.print(f"most confidently wrong val images ({len(summary.confidently_wrong)} in train.json):", highlight=False)
        for line in tables.wrong_lines(summary.confidently_wrong):
            console.print(line, highlight=False)


def show_verify_per_class(report: Any) -> None:
    """Per class on the labelled verify images: one table per distinct confusion matrix (up to MAX_TABLE_CLASSES)."""
    groups = same_figures(report.per_class)
    if not groups:
        return
    png = tables.shown(RunDir(Path(report.run_dir)).verify_confusion)
    labels = groups[0][1].labels
    if len(labels) > tables.MAX_TABLE_CLASSES:
        console.print(f"per class on the verify images: {len(labels)} classes in {png} and verify.json", highlight=False)
        return
    for names, figures in groups:  # the files that predict alike share a table
        console.print(tables.per_class_table(figures, title="per class on the verify images",
                                             caption=f"{tables.shown(' = '.join(names))} · {png}"))


def show_verify(report: Any) -> None:
    console.print(tables.parity_table(report))
    show_verify_per_class(report)
    if report.latency:
        console.print(tables.latency_table(report))
    if report.go_no_go:
        console.print(tables.go_no_go_table(report))


class RichHooks(Hooks):
    """The pipeline's hooks, rendered: progress bars and status lines on stderr, tables on stdout."""

    @contextlib.contextmanager
    def training(self) -> Iterator[RichTrainCallbacks]:
        with progress_bar() as progress:
            yield RichTrainCallbacks(progress)

    def trained(self, summary: TrainSummary) -> None:
        console.print(tables.train_table(summary))
        show_per_class(summary)
        if summary.skipped:
            err_console.print(f"[yellow]{len(summary.skipped)} unreadable file(s) skipped; see "
                              f"{tables.shown(RunDir(Path(summary.run_dir)).data)}")

    @contextlib.contextmanager
    def exporting(self) -> Iterator[None]:
        with err_console.status("export"):
            yield

    def exported(self, result: Any) -> None:
        console.print(tables.export_table(result))
        if result.manifest.card is not None:
            console.print(f"model card: {tables.shown(Path(result.out_dir) / result.manifest.card.file)} (completed by "
                          f"edgetl verify)", highlight=False)

    @contextlib.contextmanager
    def verifying(self) -> Iterator[Callable[[str], None]]:
        with err_console.status("verify") as status:
            yield lambda step: status.update(f"verify · {step}")

    def verified(self, result: Any) -> None:
        show_verify(result.report)
        console.print(f"[green]✓ verify passed[/] ({len(result.checks)} checks) · {tables.shown(result.json_path)}")

    def note(self, message: str) -> None:
        err_console.print(tables.shown(message))
