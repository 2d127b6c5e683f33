"""Presentation only: rich tables of results other modules computed.

    console.print(train_table(summary))
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgetl.card import verify_images
from edgetl.errors import printable
from edgetl.formats import FORMATS
from edgetl.rundir import PerClass, TrainSummary, VerifyReport, WrongImage

MAX_TABLE_CLASSES = 10  # per-class tables in the terminal up to this many classes; beyond, confusion.png


def shown(value: object) -> str:
    """A path or name from the user's files, for a markup string: escaped, control characters made visible."""
    return escape(printable(str(value)))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def train_table(result: TrainSummary) -> Table:
    table = Table(title=f"edgetl train · {result.backbone} on {result.device} · {shown(result.run_dir)}",
                  caption=best_accuracy_line(result))
    for col in ("phase", "epochs", "best val acc", "best val loss", "time", "gain", "ended after"):
        table.add_column(col, justify="left" if col in ("phase", "ended after") else "right")
    for p in result.phases:
        epochs = f"{p.epochs}/{p.planned_epochs}"
        gain = "—" if p.val_acc_gain is None else f"{100 * p.val_acc_gain:+.1f} pts · {p.gain_per_minute:+.1f}/min"
        ended = p.ended or ("an early stop" if p.stopped_early else "all its epochs")
        table.add_row(Text(printable(p.name)), epochs, _pct(p.best_val_acc), f"{p.best_val_loss:.3f}",
                      f"{p.seconds:.1f} s", gain, ended)
    table.add_section()
    table.add_row("best.pt", f"epoch {result.best_epoch}", _pct(result.best_val_acc), f"{result.best_val_loss:.3f}",
                  f"{result.wall_seconds:.1f} s in all", "", "", style="bold")
    return table


def best_accuracy_line(result: TrainSummary) -> str | None:
    """best.pt's accuracy on each split it was measured on, with top-5 where it applies and the images it
    stands on: "best.pt (epoch 4): val 87.5 % (top-5 97.5 %) on 40 images, chose it · test 85.0 % (top-5 96.0 %)
    on 40 images, held out"."""
    splits = [("val", result.per_class, "chose it"), ("test", result.test_per_class, "held out")]
    parts = [f"{name} {_pct(f.accuracy)}{_top5(f.top5_accuracy)} on {f.images} images, {role}"
             for name, f, role in splits if f is not None]
    return f"best.pt (epoch {result.best_epoch}): " + " · ".join(parts) if parts else None


def _top5(x: float | None) -> str:
    return "" if x is None else f" (top-5 {_pct(x)})"


def per_class_table(figures: PerClass, *, title: str, caption: str | None = None) -> Table:
    """One row per class: its images, precision, recall, F1 and what it is most often mistaken for."""
    table = Table(title=f"{title} · accuracy {_pct(figures.accuracy)}{_top5(figures.top5_accuracy)} on "
                        f"{figures.images} images", caption=caption)
    for col in ("class", "images", "precision", "recall", "F1", "most often predicted instead"):
        table.add_column(col, justify="left" if col in ("class", "most often predicted instead") else "right")
    for c in figures.classes:
        instead = next((p for p in figures.most_confused if p.label == c.label), None)
        low = c.recall is not None and c.recall < figures.accuracy
        table.add_row(Text(printable(c.label)), str(c.support), _pct(c.precision),
                      Text(_pct(c.recall), style="yellow" if low else ""), _pct(c.f1),
                      Text(printable(f"{instead.predicted} ({instead.count})")) if instead else "—")
    return table


def wrong_lines(wrong: list[WrongImage], *, limit: int = 5) -> list[Text]:
    """The most confidently wrong val images, one line each (path last: it is the longest)."""
    return [Text(printable(f"  {100 * w.confidence:5.1f} % {w.predicted} (is {w.label})  {w.path}")) for w in wrong[:limit]]


# --- edgetl verify ------------------------------------------------------------------------------------------

def _g(x: float | None, spec: str = ".2g") -> str:
    return "—" if x is None else format(x, spec)


def _size(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def parity_table(report: VerifyReport) -> Table:
    """One row per artifact: its parity figures against the checkpoint and whether all its checks held. The top-k
    figures only where there are more classes than k (with fewer, both are 100 % by definition)."""
    ref = report.reference or {}
    table = Table(title=f"edgetl verify · parity vs {ref.get('file', 'checkpoint')} · {_inputs_line(report)}")
    figures = [p for p in report.parity.values() if p]
    overlap = any(p.get("top5_overlap") is not None for p in figures)
    top5 = any(p.get("top5_accuracy") is not None for p in figures)
    columns = ["artifact", "precision", "max |Δ|", "mean |Δ|", "max rel", "softmax Δ", "top-1 agree",
               *(["top-k overlap"] * overlap), "accuracy ref → file", *(["top-5 ref → file"] * top5), "checks"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("artifact", "checks") else "right")
    checks = report.checks
    for name in dict.fromkeys(c["artifact"] for c in checks):
        mine = [c for c in checks if c["artifact"] == name]
        failed = sum(not c["passed"] for c in mine)
        status = f"[green]✓ {len(mine)}[/]" if not failed else f"[red]✗ {failed} of {len(mine)}[/]"
        p = report.parity.get(name)
        precision = report.bars.get("parity", {}).get(name, {}).get("precision", "")
        if p is None:
            table.add_row(name, precision, *["—"] * (len(columns) - 3), status)
            continue
        k_overlap = [f"{_pct(p['top5_overlap'])} (k={p['top5_k']})" if p.get("top5_overlap") is not None else "—"]
        table.add_row(name, precision, _g(p["max_abs_diff"]), _g(p["mean_abs_diff"]), _g(p["max_rel_diff"]),
                      _g(p["softmax_max_diff"]), _pct(p["top1_agreement"]), *(k_overlap * overlap),
                      f"{_pct(p['reference_accuracy'])} → {_pct(p['accuracy'])}",
                      *([f"{_pct(p.get('reference_top5_accuracy'))} → {_pct(p.get('top5_accuracy'))}"] * top5),
                      status)
    return table


def _inputs_line(report: VerifyReport) -> str:
    i = report.inputs
    if not i:
        return "integrity only"
    n, listed, part = i["images"], i.get("listed"), i.get("part")
    if i["source"] == "split" and n:  # which split, and whether all of it: "all of the test split"
        where = f"all of the {part} split" if listed == n else f"of the {part} split's {listed}" if listed \
            else f"the {part} split"
    else:
        where = f"{i['source']} {part}/" if part else i["source"]
    return f"{n} images ({where}, {i['labelled']} labelled) + {i['random']} random"


def latency_table(report: VerifyReport) -> Table:
    """One row per (runtime, batch, threads), with the speed-up over PyTorch eager in the same setting."""
    m, timing = report.machine, report.settings.get("timing", {})
    table = Table(title=f"edgetl verify · latency on {m.get('cpu_model')} · {m.get('cores')} cores · "
                        f"onnxruntime {m.get('onnxruntime')} · machine {m.get('id')}",
                  caption=f"{timing.get('clock', '')}; memory: {timing.get('memory_method', '')}\n"
                          f"ISA: {' '.join(m.get('isa', [])) or '—'}\n{_gate_line(report)}")
    for col in ("file", "runtime", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "img/s", "vs eager",
                "cold start", "first call", "RSS Δ", "size", "iters"):
        table.add_column(col, justify="left" if col in ("file", "runtime") else "right",
                         min_width=len("model.int8.tflite") if col == "file" else None)
    gate = report.gate or {}
    for r in report.latency:
        is_gate = gate and all(r[k] == gate[k] for k in ("file", "batch", "threads"))
        table.add_row(Text(printable(Path(r["file"] or "").name)), r["runtime"], str(r["batch"]), str(r["threads"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['throughput']:.0f}", f"{r['speedup_vs_eager']:.2f}×",
                      f"{r['cold_start_ms']:.0f} ms", f"{r['first_call_ms']:.1f} ms", f"{r['rss_delta_mb']:.0f} MiB",
                      _size(r["file_bytes"]), str(r["iterations"]), style="bold" if is_gate else None)
    return table


def go_no_go_table(report: VerifyReport) -> Table:
    """Per fp16 / int8 file: does it pay here? (edgetl.verify.decide)"""
    threads = report.go_no_go[0]["threads"] if report.go_no_go else None
    batch = report.go_no_go[0].get("batch", 1) if report.go_no_go else 1
    table = Table(title=f"edgetl verify · go/no-go vs fp32 (p50, batch {batch}, {threads} threads; accuracy on "
                        f"{verify_images(report.inputs)})")
    for col in ("file", "precision", "speed-up", "size", "accuracy Δ", "top-1 agree", "decision", "why"):
        table.add_column(col, justify="right" if col in ("speed-up", "size", "accuracy Δ", "top-1 agree") else "left")
    for r in report.go_no_go:
        ship = r["decision"] == "ship"
        table.add_row(r["file"], r["precision"], "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
                      "—" if r["size_ratio"] is None else f"{r['size_ratio']:.2f}×",
                      "—" if r["accuracy_delta"] is None else f"{100 * r['accuracy_delta']:+.1f} pt",
                      _pct(r["top1_agreement"]), Text(r["decision"], style="bold green" if ship else "bold red"),
                      Text(r["reason"]))
    return table


def _gate_line(report: VerifyReport) -> str:
    gate, bars, regression = report.gate, report.bars.get("latency", {}), report.regression
    if not gate:
        return "no latency gate (no " + " or ".join(f.file for f in FORMATS.values() if f.gates_latency) + " timed)"
    line = f"gate (bold): {gate['file']} p50 {gate['p50_ms']:.2f} ms"
    if bars.get("max_latency_ms") is not None:
        line += f", bar ≤ {bars['max_latency_ms']:g} ms"
    if regression:
        if regression["status"] == "checked":
            line += (f"; vs baseline {regression['baseline_p50_ms']:.2f} ms: {100 * regression['change']:+.1f} % "
                     f"(bar ≤ +{100 * regression['max_regression']:.0f} %)")
        else:
            line += f"; regression check skipped: {regression['reason']}"
    return line


# --- edgetl export / run / info / predict ------------------------------------------------------------------

def export_table(result: Any) -> Table:
    table = Table(title=f"edgetl export · {shown(result.out_dir)}")
    table.add_column("format")
    table.add_column("file", no_wrap=True, min_width=len("model.torchscript.pt"))
    table.add_column("precision")
    for col in ("size", "params", "BN folded", "seconds", "guard"):
        table.add_column(col, justify="right")
    for a in result.artifacts:
        table.add_row(a.format, a.file, a.precision, _size(a.bytes), f"{result.deploy.params:,}",
                      str(result.deploy.bn_folded) + (" (LN/GN)" if result.deploy.norms_kept else ""),
                      f"{a.seconds:.1f}", _guard(a.quantization))
    return table


def _guard(quantization: dict[str, Any] | None) -> str:
    """The accuracy guard's last round, in a few words."""
    guard = (quantization or {}).get("guard") or {}
    if not guard.get("rounds"):
        return "—"
    last = guard["rounds"][guard.get("kept_round", -1)]  # the round whose file was kept
    kept = len(guard.get("excluded_nodes") or [])
    agree = f"{100 * last['top1_agreement']:.1f} % agree" if "top1_agreement" in last else last.get("why", "")
    return f"{'✓' if last.get('passed') else '✗'} {agree}" + (f", {kept} node(s) float" if kept else "")


def run_table(outcome: Any) -> Table:
    """The final report of `edgetl run`: accuracy, artifacts, parity and latency side by side."""
    train, manifest, verify, scratch = outcome.train, outcome.manifest, outcome.verify, outcome.scratch
    inputs = verify.inputs or {}
    title = f"edgetl run · {train.backbone} · {_split_accuracy(train)} · {outcome.seconds:.0f} s · {shown(train.run_dir)}"
    stages = " · ".join(f"{stage} {s:.1f} s" for stage, s in outcome.stage_seconds.items())
    caption = f"accuracy and parity on {verify_images(inputs)} ({inputs.get('labelled', 0)} labelled)" + \
        (f"\n{stages}; ships {outcome.shipped}" if stages else "")
    table = Table(title=title, caption=caption)
    latency, checks, parity = verify.latency, verify.checks, verify.parity
    reference = verify.reference or {}
    top5 = reference.get("top5_accuracy") is not None  # more than 5 classes
    split = inputs.get("part") if inputs.get("source") == "split" else None
    for col in ("model", "size", "export s", f"{split} acc" if split else "accuracy", *(["top-5"] * top5),
                "max |Δ| vs PyTorch", "top-1 agree", "p50 ms (1 thread)", "p50 ms (all)", "verify"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    reference_acc = reference.get("accuracy", next((p.get("reference_accuracy") for p in parity.values() if p), None))
    table.add_row("checkpoint (PyTorch eager)", "—", "—", _pct(reference_acc),
                  *([_pct(reference.get("top5_accuracy"))] * top5), "—", "—",
                  *(_p50(latency, "eager", t) for t in _threads(latency)), "—")
    for a in manifest.artifacts:
        p = parity.get(a.file) or {}
        mine = [c for c in checks if c["artifact"] == a.file]
        status = "—" if not mine else "[green]✓[/]" if all(c["passed"] for c in mine) else "[red]✗[/]"
        table.add_row(a.file, _size(a.bytes), f"{a.seconds:.1f}", _pct(p.get("accuracy")),
                      *([_pct(p.get("top5_accuracy"))] * top5), _g(p.get("max_abs_diff")),
                      _pct(p.get("top1_agreement")), *(_p50(latency, a.format, t, file=a.file) for t in _threads(latency)),
                      status)
    if scratch is not None:
        table.add_section()
        blank = [""] * (len(table.columns) - 4)
        table.add_row("best val acc, pretrained", "", "", _pct(train.best_val_acc), *blank)
        table.add_row("best val acc, from scratch", "", "", _pct(scratch.best_val_acc), *blank)
        table.add_row("pretrained weights bring", "", "", f"{100 * (train.best_val_acc - scratch.best_val_acc):+.1f} pts",
                      *blank)
    return table


def _split_accuracy(train: TrainSummary) -> str:
    """best.pt's accuracy per split, each with its image count where train.json has it: "best val acc 98.9 % on
    90 images (epoch 11) · test acc 97.8 % on 90 images"."""
    def on(f: PerClass | None) -> str:
        return f"{_top5(f.top5_accuracy)} on {f.images} images" if f is not None else ""

    text = f"best val acc {_pct(train.best_val_acc)}{on(train.per_class)} (epoch {train.best_epoch})"
    if train.test_per_class is not None:
        text += f" · test acc {_pct(train.test_acc)}{on(train.test_per_class)}"
    return text


def _threads(latency: list[dict[str, Any]]) -> list[int]:
    counts = sorted({r["threads"] for r in latency})
    return [counts[0], counts[-1]] if counts else [1, 0]


def _p50(latency: list[dict[str, Any]], runtime: str, threads: int, *, file: str | None = None) -> str:
    """The batch-1 p50 of a runtime (of one file of it: a format's int8 file is timed beside its fp32 one)."""
    rows = [r for r in latency if r["runtime"] == runtime and r["threads"] == threads and r["batch"] == 1
            and (file is None or r["file"] == file)]
    return f"{rows[0]['p50_ms']:.2f}" if rows else "—"


def info_tables(info: Any) -> list[Table]:
    """`edgetl info RUN`: the recipe at a glance, training results, artifacts, verify status."""
    recipe = info.recipe
    head = Table(title=f"edgetl info · {shown(info.run_dir)}", show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    head.add_row("backbone", f"{recipe.backbone} · weights {recipe.weights} · data {recipe.data}")
    head.add_row("phases", Text(printable(" → ".join(f"{p.name} ({p.train}, {p.epochs} ep)" for p in recipe.phases))))
    head.add_row("classes", Text(printable(", ".join(info.labels or []))))
    train = info.train
    head.add_row("training", f"{info.epochs_done} epochs done" + (
        f" · {_split_accuracy(train)} · {train.seconds:.0f} s" if train else " · not finished"))
    if info.manifest:
        for a in info.manifest.artifacts:
            head.add_row(a.format, f"export/{a.file} · {_size(a.bytes)} · sha256 {a.sha256[:12]}…")
        if info.manifest.card is not None:
            head.add_row("model card", f"export/{shown(info.manifest.card.file)}")
    else:
        head.add_row("export", "not exported")
    verify = info.verify
    if verify:
        gate = verify.gate or {}
        state = "[green]passed[/]" if verify.passed else f"[red]failed[/] ({len(verify.failures)} failures)"
        head.add_row("verify", f"{state} · {verify.created or ''}" + (f" · ONNX p50 {gate['p50_ms']:.2f} ms" if gate else ""))
    else:
        head.add_row("verify", "not verified")
    if info.next_stage:
        step = f"edgetl run --resume {shown(shlex.quote(str(info.run_dir)))}  (continues at {info.next_stage})"
    elif info.verify is not None and not info.verify.passed:  # every stage ran, but the gate said no
        step = (f"verify failed ({len(info.verify.failures)} check(s)): fix what it names, re-export, then "
                f"edgetl verify {shown(shlex.quote(str(info.run_dir)))}")
    else:
        step = "all stages done, verify passed"
    head.add_row("next", step)
    return [head]


BACKBONE_FORMS = """\
Any other classifier by name, as a recipe's backbone = "...":
  torchvision:NAME  a torchvision classification model, e.g. torchvision:resnet50, torchvision:efficientnet_b4,
                    torchvision:vit_b_16, torchvision:convnext_base (weights: its DEFAULT weights enum)
  timm:NAME         any timm model, e.g. timm:convnext_atto, timm:vit_tiny_patch16_224 (weights: timm's pretrained
                    ones, from the Hugging Face cache or hub)
Offline, --weights PATH takes a .pth/.pt/.safetensors state dict. `edgetl backbones --groups NAME` shows the
layer groups that `train = "last:N"` and `group_lr` count."""


def groups_table(name: str) -> Table:
    """`edgetl backbones --groups NAME`: a backbone's layer groups, input to output, with their sizes."""
    from edgetl.backbones import create_model, get_backbone

    bb = get_backbone(name)
    model = create_model(bb, num_classes=2)
    named = dict((id(m), n) for n, m in model.named_modules())
    named_params = dict((id(p), n) for n, p in model.named_parameters())
    table = Table(title=f"{name} · {'sequential' if bb.sequential else 'not sequential: only head phases cache'}")
    for col in ("group", "parameters", "modules"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for g in bb.groups(model):
        parts = [named.get(id(m)) or type(m).__name__ for m in g.modules] + [named_params[id(p)] for p in g.params]
        shown_parts = ", ".join(parts[:4]) + (f", … ({len(parts)})" if len(parts) > 4 else "")
        table.add_row(g.name, f"{sum(p.numel() for p in g.parameters()):,}", Text(printable(shown_parts)))
    return table


def predict_table(rows: list[Any]) -> Table:
    """One row per image: its prediction, or (an `edgetl.predict.Failure`) why it could not be used."""
    table = Table(title="edgetl predict")
    for col in ("image", "label", "probability", "top-k"):
        table.add_column(col, justify="right" if col == "probability" else "left")
    for p in rows:
        if hasattr(p, "error"):
            table.add_row(Text(printable(p.image)), "—", "—", Text(printable(p.error), style="red"))
        else:
            table.add_row(Text(printable(p.image)), Text(printable(p.label)), f"{100 * p.probability:.1f} %",
                          Text(printable(", ".join(f"{lab} {100 * q:.0f} %" for lab, q in p.top[1:]))))
    return table
