"""export/MODEL_CARD.md: the export described for a person — written at export, completed by verify.

    text = render_card(RunDir(run_dir), manifest)                  # at export: "not verified yet"
    text = render_card(RunDir(run_dir), manifest, report=report)   # verify fills in parity and latency

What a model card says (Hugging Face's cards, Model Maker's metadata): the backbone and where its weights came
from, the data (classes, counts, split), the recipe, accuracy overall and per class on the val split (which chose
the checkpoint) and on the held-out test split when there is one, parity and latency per file on the machine
verify ran on, the preprocessing in words, intended use and known limits. Every figure is read
from the run's own files (train.json, split.json, data.json, manifest.json, verify.json), never retyped, so the
card says what they say. The manifest lists the card with its sha256; verify re-hashes it when it completes it.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgetl import files, rundir
from edgetl.errors import RunDirError
from edgetl.rundir import FileEntry, Manifest, PerClass, RunDir, TrainSummary, VerifyReport
from edgetl.version import __version__

CARD = "MODEL_CARD.md"
LOW_RECALL = 0.8  # a class below this recall (or 10 points below the overall accuracy) is a known limit
FEW_IMAGES = 20  # per class: below this, per-class figures move by 5+ points per image
MAX_LISTED_CLASSES = 30  # classes named in the summary line; the tables list them all


def render_card(run: RunDir, manifest: Manifest, *, report: VerifyReport | None = None) -> str:
    """The card's Markdown, from the run's files and `manifest` (and verify's `report`, when it has run)."""
    train = _optional(run.train_json, rundir.read_train_summary)
    split = _optional(run.split, rundir.read_split)
    data = _optional(run.data, rundir.read_json)
    sections = [_title(manifest, report), _summary(run, manifest, train), _data(split, data), _training(run, train),
                _accuracy(train), _test_accuracy(train), _files(manifest), _verification(run, manifest, report), _preprocessing(manifest),
                _intended_use(manifest, split), _limits(manifest, train, split, data, report)]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def write_card(path: Path, text: str) -> FileEntry:
    """Write the card atomically; its manifest entry (name, size, sha256)."""
    files.write_text(path, text)
    return FileEntry(file=path.name, bytes=path.stat().st_size, sha256=files.sha256_file(path))


def _optional(path: Path, read: Callable[[Path], Any]) -> Any | None:
    """A run file the card can do without: None when it is absent or damaged (a bare checkpoint folder exports)."""
    try:
        return read(path) if path.is_file() else None
    except RunDirError:
        return None


# --- figures as the card prints them (tests compare verify.json's numbers in these forms) ------------------------

def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def diff(x: float | None) -> str:
    return "—" if x is None else f"{x:.2g}"


def ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def top5(x: float | None) -> str:
    """", top-5 97.0 %" where top-5 applies (more than 5 classes), else nothing."""
    return "" if x is None else f", top-5 {pct(x)}"


def verify_images(inputs: dict[str, Any] | None) -> str:
    """Which real images verify judged on, and how many: "all 90 images of the test split", "32 of the 90
    images of the val split", "12 images of photos/test"."""
    i = inputs or {}
    n, listed = i.get("images", 0), i.get("listed")
    if not n:
        return "no real images"
    if i.get("source") == "split":
        where = f"the {i.get('part', 'val')} split"
    else:
        root = str(i.get("root") or "--data")
        where = str(Path(root) / i["part"]) if i.get("part") else root
    count = f"all {n}" if listed == n else f"{n} of the {listed}" if listed else str(n)
    return f"{count} images of {where}"


def _code(text: object) -> str:
    """Inline code that a backtick or a pipe in a label or path cannot break out of (or split a table row at)."""
    text = str(text).replace("|", "\\|").replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]], *, right: int = 1) -> str:
    """A Markdown table; columns from `right` on are right-aligned (numbers)."""
    header = list(header)
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- sections ------------------------------------------------------------------------------------------------

def _title(manifest: Manifest, report: VerifyReport | None) -> str:
    n = len(manifest.labels)
    made = f"Written by edgetl {manifest.edgetl_version or __version__} with the export ({manifest.created or '—'})"
    if report is None:
        made += "; the verification section is filled in by `edgetl verify`."
    else:
        made += f"; the verification section by `edgetl verify` ({report.created or '—'}), from its verify.json."
    return (f"# Model card: {manifest.run.backbone} image classifier, {n} classes\n\n{made} `manifest.json` lists every "
            f"file below with its sha256, this card included.")


def _summary(run: RunDir, manifest: Manifest, train: TrainSummary | None) -> str:
    labels = manifest.labels
    shown = ", ".join(_code(label) for label in labels[:MAX_LISTED_CLASSES])
    shown += f", … ({len(labels) - MAX_LISTED_CLASSES} more)" if len(labels) > MAX_LISTED_CLASSES else ""
    source = manifest.run
    i, o = manifest.input, manifest.output
    chosen = source.checkpoint == "best"
    figures = train if chosen else None  # train.json's per-class and test figures are best.pt's
    rows = [("task", f"image classification into {len(labels)} classes: {shown}"),
            ("backbone", _code(source.backbone)),
            ("weights fine-tuned from", _code(train.weights) if train else "— (no train.json)"),
            ("exported checkpoint", f"`checkpoints/{source.checkpoint}.pt`"
                                    + (f", epoch {source.epoch}" if source.epoch is not None else "")),
            ("val accuracy of that checkpoint" + (" (it chose it)" if chosen else ""), pct(source.val_acc)
             + (top5(figures.best_val_top5) + f" on {figures.per_class.images} images"
                if figures and figures.per_class else "")),
            *([("test accuracy of that checkpoint (held out)", f"{pct(figures.test_acc)}{top5(figures.test_top5)} "
                                                               f"on {figures.test_per_class.images} images")]
              if figures and figures.test_per_class else []),
            ("recipe", f"`{run.recipe.name}`, sha256 `{source.recipe_sha256 or '—'}`"),
            ("parameters, MACs per image", f"{manifest.model.params:,}, "
                                           + (f"{manifest.model.macs:,}" if manifest.model.macs else "—")),
            ("input → output", f"`{i.name}` {i.dtype} {_shape(i.shape)} → `{o.name}` {o.dtype} {_shape(o.shape)}")]
    return "## Summary\n\n" + "\n".join(f"- **{key}**: {value}" for key, value in rows)


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _data(split: dict[str, Any] | None, data: dict[str, Any] | None) -> str:
    if split is None or not (split.get("train") or split.get("val")):
        return "## Data\n\nNot recorded: the run has no split.json (a checkpoint exported without its run)."
    parts = ["train", "val", "test"] if split.get("test") else ["train", "val"]
    counts = {part: Counter(c for _, c in split[part]) for part in parts}
    classes = split.get("classes") or sorted(set().union(*counts.values()))
    layout = split.get("layout")
    how = {"train/val": "its own train/ and val/ folders" + (" (and a held-out test/ folder)" if "test" in parts
                                                             else ""),
           "train split/test": f"its own train/ and test/ folders, val split off train/ by edgetl (val fraction "
                               f"{split.get('val_fraction')}, seed {split.get('seed')})",
           "split": f"a stratified split by edgetl (val fraction {split.get('val_fraction')}, seed "
                    f"{split.get('seed')})"}.get(layout, f"its {layout or 'own'} split")
    root = f" ({_code(split['root'])})" if split.get("root") and split["root"] != split.get("source") else ""
    text = f"## Data\n\nSource {_code(split.get('source'))}{root}, divided by {how}"
    text += f", train images capped at {split['subset']}" if split.get("subset") else ""
    totals = {part: sum(counts[part].values()) for part in parts}
    text += f"; `split.json` lists every file. {_and([f'{n} {part}' for part, n in totals.items()])} images.\n\n"
    rows = [(_code(c), *(counts[part][c] for part in parts)) for c in classes] + [("**all**", *totals.values())]
    text += _table(("class", *(f"{part} images" for part in parts)), rows)
    skipped = (data or {}).get("skipped") or []
    if skipped:
        text += f"\n\n{len(skipped)} unreadable file(s) were skipped (listed in `data.json`)."
    for key, what, of, counted in (("duplicates", "val", "train", "the model trained on"),
                                   ("test_duplicates", "test", "train or val", "that trained it or chose it")):
        copies = (data or {}).get(key) or []
        if copies:
            text += (f"\n\n{len(copies)} {what} image(s) are byte-identical copies of {of} images (listed in "
                     f"`data.json`): {what} accuracy counts images {counted}.")
    return text


def _and(items: list[str]) -> str:
    """"a and b", "a, b and c"."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _training(run: RunDir, train: TrainSummary | None) -> str:
    if train is None:
        return ""
    recipe = _optional(run.recipe, lambda _: rundir.read_recipe(run))
    how = {p.name: f"`{p.train}`" for p in recipe.phases} if recipe else {}
    rows = [(_code(p.name), how.get(p.name, "—"), f"{p.epochs}/{p.planned_epochs}" + (" (early stop)" if p.stopped_early else ""),
             pct(p.best_val_acc), f"{p.seconds:.1f}") for p in train.phases]
    head = (f"## Training\n\nThe recipe in `{run.recipe.name}`, on {train.device}"
            + (f" ({train.world_size} processes)" if train.world_size > 1 else "")
            + f", {train.wall_seconds:.0f} s in all; best epoch {train.best_epoch}.\n\n")
    return head + _table(("phase", "trains", "epochs", "best val acc", "seconds"), rows, right=2)


def _accuracy(train: TrainSummary | None) -> str:
    if train is None or train.per_class is None:
        return "## Accuracy\n\nNo per-class results recorded (train.json is missing or from before they were kept)."
    f = train.per_class
    text = (f"## Accuracy on the val split\n\n`checkpoints/best.pt` (epoch {train.best_epoch}): **{pct(f.accuracy)}** "
            f"of {f.images} val images right{top5(f.top5_accuracy)}; macro F1 {pct(f.macro_f1)}. The val split "
            f"chose this checkpoint, so its figures lean optimistic"
            + ("; the test split below is held out." if train.test_per_class else
               " (a test/ folder beside train/ and val/ would give held-out figures).") + " Per class:\n\n")
    text += _class_table(f, "val") + _most_confused(f)
    if train.confidently_wrong:
        text += "\n\nThe most confidently wrong val images (all in `train.json`):\n\n"
        text += "\n".join(f"- {_code(w.path)}: {_code(w.label)}, predicted {_code(w.predicted)} at {pct(w.confidence)}"
                          for w in train.confidently_wrong[:5])
    return text


def _test_accuracy(train: TrainSummary | None) -> str:
    if train is None or train.test_per_class is None:
        return ""
    f = train.test_per_class
    text = (f"## Accuracy on the test split\n\n`checkpoints/best.pt` (epoch {train.best_epoch}) on the held-out test "
            f"split, which neither trained it nor chose it: **{pct(f.accuracy)}** of {f.images} test images "
            f"right{top5(f.top5_accuracy)}; macro F1 {pct(f.macro_f1)}. Per class:\n\n")
    return text + _class_table(f, "test") + _most_confused(f)


def _class_table(f: PerClass, split: str) -> str:
    return _table(("class", f"{split} images", "precision", "recall", "F1"),
                  [(_code(c.label), c.support, pct(c.precision), pct(c.recall), pct(c.f1)) for c in f.classes])


def _most_confused(f: PerClass) -> str:
    if not f.most_confused:
        return ""
    return "\n\nMost confused: " + "; ".join(f"{_code(p.label)} taken for {_code(p.predicted)} ({p.count})"
                                             for p in f.most_confused[:5]) + "."


def _files(manifest: Manifest) -> str:
    rows = [(f"`{a.file}`", a.format, a.precision, a.runtime or "—", f"`{a.sha256}`", f"{a.bytes:,}")
            for a in manifest.artifacts]
    rows.append(("`manifest.json`", "—", "—", "—", "labels, preprocessing, tensors, every file's sha256", "—"))
    rows.append((f"`{CARD}`", "—", "—", "—", "this card (its sha256 is in `manifest.json`)", "—"))
    return "## Files\n\n" + _table(("file", "format", "precision", "runs in", "sha256", "bytes"), rows, right=5)


def _verification(run: RunDir, manifest: Manifest, report: VerifyReport | None) -> str:
    if report is None:
        return (f"## Verification\n\nNot verified yet: `edgetl verify {shlex.quote(str(run.root))}` checks every "
                f"file against the checkpoint and times it, and fills in this section.")
    state = "**passed**" if report.passed else f"**failed** ({len(report.failures)} check(s))"
    i, m = report.inputs or {}, report.machine
    text = (f"## Verification\n\n`edgetl verify` {state} on {report.created or '—'}: every file's sha256, then its "
            f"outputs against `{(report.reference or {}).get('file', 'the checkpoint')}` on {verify_images(i)} "
            f"({i.get('labelled', 0)} labelled) and {i.get('random', 0)} random inputs."
            f"\n\nMachine: {m.get('cpu_model', '—')}, {m.get('cores', '—')} cores ({m.get('machine', '—')}, "
            f"{m.get('system', '—')}), onnxruntime {m.get('onnxruntime', '—')}, fingerprint `{m.get('id', '—')}`.")
    timed = sorted({r["threads"] for r in report.latency if r["batch"] == 1})
    threads = sorted({timed[0], timed[-1]}) if timed else []  # one thread and all cores, as verify times them
    reference = report.reference or {}
    ranked = reference.get("top5_accuracy") is not None  # top-5 where there are more than 5 classes
    header = ["file", "runs in", "accuracy", *(["top-5 accuracy"] * ranked), "max abs diff vs checkpoint",
              "top-1 agreement", *(f"p50 ms, {t} thread{'s' * (t > 1)}" for t in threads), "checks"]
    rows = [(f"`{reference.get('file', 'checkpoint')}`", "PyTorch eager", pct(reference.get("accuracy")),
             *([pct(reference.get("top5_accuracy"))] * ranked), "—", "—",
             *(ms(_p50(report, "eager", None, t)) for t in threads), "—")]
    for name, file, runtime in _verified_rows(manifest, report):
        p = report.parity.get(name) or {}
        mine = [c for c in report.checks if c["artifact"] == name]
        failed = sum(not c["passed"] for c in mine)
        rows.append((f"`{name}`", runtime, pct(p.get("accuracy")), *([pct(p.get("top5_accuracy"))] * ranked),
                     diff(p.get("max_abs_diff")),
                     pct(p.get("top1_agreement")), *(ms(_p50(report, runtime, file, t)) for t in threads),
                     "—" if not mine else f"✓ {len(mine)}" if not failed else f"✗ {failed} of {len(mine)}"))
    text += "\n\n" + _table(header, rows, right=2)
    if report.failures:
        text += "\n\nFailures:\n\n" + "\n".join(f"- {_code(f)}" for f in report.failures)
    for row in report.go_no_go:
        text += f"\n\n`{row['file']}` ({row['precision']}): **{row['decision']}** — {row['reason']}."
    text += _verify_per_class(report)
    return text


def _verified_rows(manifest: Manifest, report: VerifyReport) -> list[tuple[str, str, str]]:
    """(row name, file, runtime) for each listed file, then each other engine that ran the ONNX file."""
    rows = [(a.file, a.file, a.format) for a in manifest.artifacts]
    for engine, facts in report.engines.items():
        rows += [(f"{file} ({engine})", file, engine) for file in facts.get("files", {})]
    return rows


def _p50(report: VerifyReport, runtime: str, file: str | None, threads: int) -> float | None:
    rows = [r for r in report.latency if r["runtime"] == runtime and r["batch"] == 1 and r["threads"] == threads
            and (file is None or r["file"] == file)]
    return rows[0]["p50_ms"] if rows else None


def _verify_per_class(report: VerifyReport) -> str:
    figures = report.per_class
    if not figures:
        return ""
    names = list(figures)
    first: PerClass = figures[names[0]]
    rows = [[_code(c.label), c.support, *(pct(figures[n].classes[k].recall) for n in names)]
            for k, c in enumerate(first.classes)]
    return (f"\n\nRecall per class on the labelled verify images ({verify_images(report.inputs)}; precision, F1 and "
            f"the confusion matrices are in verify.json):\n\n" + _table(("class", "images", *(f"`{n}`" for n in names)), rows))


def _preprocessing(manifest: Manifest) -> str:
    p = manifest.preprocessing
    three = ", ".join
    steps = [
        "Decode the image to RGB: EXIF rotation applied; grayscale, palette, CMYK and 16-bit images converted; "
        "transparency composited on white.",
        f"Resize it so that its shorter side is {p.resize_size} px ({p.interpolation}, antialiased), keeping its "
        f"aspect ratio.",
        f"Crop the central {p.crop_size} × {p.crop_size} px.",
    ]
    output = ("The output is one probability per class (the file ends in a softmax)"
              if manifest.output.name == "probs" else
              "The output is one logit per class (softmax for probabilities)") + ", in the order of the labels."
    if manifest.input.dtype == "uint8":
        steps.append(f"Feed the crop as it is: uint8 [batch, {p.crop_size}, {p.crop_size}, 3], channels in "
                     f"{p.channel_order} order; the file scales, normalizes and lays it out itself. {output}")
    else:
        steps += [
            "Scale the pixel values to [0, 1] (divide by 255).",
            f"Per channel ({', '.join(p.channel_order)}): subtract the mean ({three(f'{v:g}' for v in p.mean)}) and "
            f"divide by the standard deviation ({three(f'{v:g}' for v in p.std)}).",
            f"Feed float32 in {p.layout} layout: [batch, 3, {p.crop_size}, {p.crop_size}], channels in "
            f"{p.channel_order} order. {output}",
        ]
    if manifest.golden is not None:
        steps.append(f"Check the file on the device with the golden vectors: feed `{manifest.golden.inputs.file}` "
                     f"(uint8 crops) as above and compare with `golden-<file>.npy` within the manifest's `atol`, "
                     f"same top-1 class; `device_predict.py --golden` does it with onnxruntime.")
    return ("## Preprocessing\n\nWhat a device must do to a photo before the model sees it (the same figures are in "
            "`manifest.json`; `edgetl/preprocessing.py` is the reference in PIL and numpy):\n\n"
            + "\n".join(f"{k}. {step}" for k, step in enumerate(steps, start=1)))


def _intended_use(manifest: Manifest, split: dict[str, Any] | None) -> str:
    source = f" ({_code(split.get('source'))})" if split and split.get("source") else ""
    return (f"## Intended use\n\nSorting images like the ones it was trained on{source} into the "
            f"{len(manifest.labels)} classes above, with one of the files above and exactly the preprocessing "
            f"above, on a device or in a service. Not for images of anything else, or of another kind (other "
            f"cameras, lighting, framing, drawings instead of photos), without checking it on such images first: "
            f"`edgetl verify RUN --data FOLDER` measures it on a folder of labelled photos.")


def _limits(manifest: Manifest, train: TrainSummary | None, split: dict[str, Any] | None,
            data: dict[str, Any] | None, report: VerifyReport | None) -> str:
    limits = [f"It always answers one of its {len(manifest.labels)} classes: an image of something else gets one of "
              f"them too, often with a high probability. A threshold on the probability does not make it a detector "
              f"of unknown things."]
    # the held-out split says best what to expect: the test split when there is one, else val
    split_name, figures = ("test", train.test_per_class) if train and train.test_per_class else \
        ("val", train.per_class if train else None)
    if figures is not None:
        weak = [c for c in figures.classes if c.recall is not None
                and (c.recall < LOW_RECALL or c.recall < figures.accuracy - 0.1)]
        if weak:
            limits.append(f"Classes it finds less often than the others (recall on the {split_name} split): "
                          + ", ".join(f"{_code(c.label)} {pct(c.recall)} of {c.support}" for c in weak)
                          + ". Check these before relying on it.")
        fewest = min((c.support for c in figures.classes), default=0)
        if fewest < FEW_IMAGES:
            limits.append(f"The {split_name} split has as few as {fewest} image(s) of a class: one image moves that "
                          f"class's figures by {pct(1 / max(fewest, 1))}; treat differences of a few points as noise.")
    elif train is None:
        limits.append("Its accuracy per class is unknown here: the run's train.json is missing.")
    if (data or {}).get("duplicates"):
        limits.append("Some val images are copies of train images, so the val accuracy above is optimistic.")
    if (data or {}).get("test_duplicates"):
        limits.append("Some test images are copies of train or val images, so the test accuracy above is "
                      "optimistic.")
    if split and split.get("subset"):
        limits.append(f"It was trained on a subset of {split['subset']} train images.")
    if report is not None:
        labelled = (report.inputs or {}).get("labelled", 0)
        limits.append(f"Verification compares each file with the checkpoint on {labelled} labelled image(s) "
                      f"({verify_images(report.inputs)}): it proves the conversion, and measures accuracy only as "
                      f"well as so few images can.")
        if not report.passed:
            limits.append("Verification failed: do not ship these files until `edgetl verify` passes (see above).")
        for row in report.go_no_go:
            if row["decision"] != "ship":
                limits.append(f"`{row['file']}` is not worth shipping on this machine: {row['reason']}.")
    return "## Known limits\n\n" + "\n".join(f"- {line}" for line in limits)
