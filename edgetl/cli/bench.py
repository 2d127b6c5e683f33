"""`edgetl bench`: candidate backbones x input sizes x precisions timed on this machine, for a latency budget.

    edgetl bench --max-latency-ms 5 --threads 2                       # the five shipped backbones at 128/160/224 px
    edgetl bench --max-latency-ms 5 --data photos/ --write-recipe picked.toml --json -

The work is edgetl/bench.py; this file parses the flags and draws the progress bar and the table.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgetl import files
from edgetl.cli.options import Precision, RuntimeChoice
from edgetl.cli.render import console, err_console, progress_bar, tables_on_stderr
from edgetl.errors import printable
from edgetl.formats.engines import REFERENCE_ENGINE

if TYPE_CHECKING:
    from edgetl.bench import BenchReport, BenchRow

# edgetl.bench imports torch: it loads when the command runs, so `edgetl --help` stays fast. Its defaults are
# repeated here for --help (tests/test_bench.py checks they agree).
DEFAULT_IMAGE_SIZES = (128, 160, 224)
DEFAULT_SECONDS = 0.4
_sizes = ", ".join(map(str, DEFAULT_IMAGE_SIZES))
BackboneOpt = Annotated[Optional[list[str]], typer.Option("--backbone", "-b", help="A candidate, repeatable: a shipped backbone, timm:NAME or torchvision:NAME (default: the five shipped).")]
ImageSizeOpt = Annotated[Optional[list[int]], typer.Option("--image-size", "-s", help=f"An input size in px, repeatable (default: {_sizes}).")]
BenchPrecisionOpt = Annotated[Optional[list[Precision]], typer.Option("--precision", "-p", help="fp32 | int8 | fp16, repeatable (default: fp32). INT8 is calibrated on noise: right for timing, not for accuracy.")]
BenchMaxLatencyOpt = Annotated[Optional[float], typer.Option("--max-latency-ms", help="The budget: mark the candidates whose p50 (batch 1) is within it, and choose among them.")]
BenchThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="Threads the engine runs on (default: all cores).")]
BenchRuntimeOpt = Annotated[RuntimeChoice, typer.Option("--runtime", help="The engine that runs the ONNX files (openvino and opencv need pip install 'edgetl\\[openvino]' / 'edgetl\\[opencv]').")]
BenchDataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Your photos (class folders, or train/ + val/): adds a head-only accuracy (linear head on frozen features) for the backbones whose ImageNet weights load here.")]
BenchSubsetOpt = Annotated[Optional[int], typer.Option("--subset", min=1, help="Fit the head on only this many train images, spread over the classes (default: all; val stays whole). Faster, a few points lower.")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", min=2, help="Outputs of each candidate (default: --data's classes, else 10).")]
SecondsOpt = Annotated[float, typer.Option("--seconds", help="Time each file at least this long (capped at 3x).")]
WriteRecipeOpt = Annotated[Optional[Path], typer.Option("--write-recipe", metavar="PATH", help="Write a recipe for the chosen candidate (the most accurate within the budget with --data, else the most MACs) and check it loads.")]
BenchJsonOpt = Annotated[Optional[Path], typer.Option("--json", metavar="PATH", help="Also write the figures as JSON to this file; - prints them on stdout (the table goes to stderr).")]


def bench(
    backbone: BackboneOpt = None, image_size: ImageSizeOpt = None, precision: BenchPrecisionOpt = None,
    max_latency_ms: BenchMaxLatencyOpt = None, threads: BenchThreadsOpt = None,
    runtime: BenchRuntimeOpt = RuntimeChoice(REFERENCE_ENGINE), data: BenchDataOpt = None,
    subset: BenchSubsetOpt = None, num_classes: NumClassesOpt = None, seconds: SecondsOpt = DEFAULT_SECONDS,
    write_recipe_to: WriteRecipeOpt = None, json_out: BenchJsonOpt = None,
) -> None:
    """Pick a backbone and input size for a latency budget: params, MACs, file size and p50/p99 of each candidate
    on this machine (random weights; with --data, a head-only accuracy on your photos), in a table and JSON."""
    from edgetl.bench import run_bench, write_recipe

    json_stdout = json_out is not None and str(json_out) == "-"
    # While stdout carries the JSON document, anything a library prints there goes to stderr (torch hub prints
    # "Downloading: ..." on stdout when --data tries torchvision's weights).
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if json_stdout else contextlib.nullcontext()
    with tables_on_stderr(json_stdout), quiet_stdout:
        with progress_bar() as progress:
            task = progress.add_task("bench", total=None, info="")

            def show(done: int, total: int, what: str) -> None:
                progress.update(task, completed=done, total=total, info=escape(printable(what)))

            report = run_bench(backbone, image_size, [p.value for p in precision] if precision else None,
                               runtime=runtime.value, threads=threads, num_classes=num_classes,
                               max_latency_ms=max_latency_ms, data=data, subset=subset, seconds=seconds,
                               progress=show)
        console.print(bench_table(report))
        if report.chosen is not None:
            console.print(f"chosen: [bold]{escape(report.chosen.label)}[/] — {escape(report.chosen_reason)}",
                          highlight=False)
        elif write_recipe_to is None:
            err_console.print(f"[yellow]{escape(report.chosen_reason)}", highlight=False)
    if json_stdout:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif json_out is not None:
        files.write_json(json_out, report.to_dict())
    if write_recipe_to is not None:  # last: with nothing within the budget it fails (exit 1) after the figures
        recipe = write_recipe(report, write_recipe_to)
        shown = escape(printable(str(write_recipe_to)))
        data = "" if report.data is not None else " --data DIR"  # with --data, the recipe names the folder
        err_console.print(f"recipe: {shown} ({escape(recipe.backbone)} at {recipe.image_size} px) — "
                          f"edgetl train --recipe {shown}{data}", highlight=False)


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _count(n: int | None, *, unit: str = "") -> str:
    if n is None:
        return "—"
    return f"{n / 1e9:.2f} G{unit}" if n >= 1e9 else f"{n / 1e6:.1f} M{unit}"


def _budget(row: BenchRow) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "—"}[row.within_budget]


def _accuracy(row: BenchRow) -> str:
    if row.head_only_top1 is None:
        return escape(row.head_only_note or "—")
    low, high = row.head_only_top1_ci or (None, None)
    ci = "" if low is None else f" [dim][{100 * low:.0f}–{100 * high:.0f}][/]"
    return f"{100 * row.head_only_top1:.1f} %{ci}"


def bench_table(report: BenchReport) -> Table:
    budget = "" if report.max_latency_ms is None else f" · budget {report.max_latency_ms:g} ms"
    table = Table(title=f"edgetl bench · {report.runtime} · {report.threads} thread(s) · batch 1{budget}",
                  caption=f"{report.machine.get('cpu_model')} · {report.seconds:.0f} s · random weights for latency"
                          + ("" if report.data is None else
                             f" · head-only top-1 on {report.data['val_images']} val images of "
                             f"{escape(printable(report.data['data']))} (trained on {report.data['train_images']})"))
    columns = ["backbone", "size", "precision", "params", "MACs", "file", "p50 ms", "p99 ms", "≤ budget"]
    if report.data is not None:
        columns.append("head-only acc")
    for col in columns:
        table.add_column(col, justify="left" if col in ("backbone", "precision", "head-only acc") else "right")
    for i, row in enumerate(report.rows):
        cells = [escape(row.backbone), f"{row.image_size}", row.precision, _count(row.params), _count(row.macs),
                 "—" if row.file_bytes is None else f"{row.file_bytes / 2**20:.1f} MiB", _ms(row.p50_ms),
                 _ms(row.p99_ms), _budget(row)]
        if report.data is not None:
            cells.append(_accuracy(row))
        if row.error:
            cells[5:] = [f"[red]{escape(printable(row.error))}[/]", *[""] * (len(cells) - 6)]
        table.add_row(*cells, style="bold" if i == report.chosen_index else None,
                      end_section=i + 1 < len(report.rows) and report.rows[i + 1].backbone != row.backbone)
    return table
