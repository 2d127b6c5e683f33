"""The export stage: fold a run's checkpoint into a deploy model, write each format, then the manifest.

    edgetl export artifacts/20250101-120000-quickstart --format all

Writes `<run>/export/{model.onnx, model.torchscript.pt, MODEL_CARD.md, manifest.json}` (and `model.pte`, `model.tflite`, the
int8 / fp16 files, when asked). Each format is a module of `edgetl.formats`; `_write` runs its writer, timed,
and records size, sha256, its runtime and the versions of the packages that wrote it. The new export is built in a
temp folder beside the old one and swapped in at the end, so a failure midway leaves the previous export
exactly as it was. The manifest is written last: its presence marks a complete export.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgetl import files, rundir
from edgetl.card import CARD, render_card, write_card
from edgetl.data.inputs import gather_inputs
from edgetl.errors import EdgetlError, ExportError, RunDirError, describe_error
from edgetl.export.golden import GOLDEN_IMAGES, write_golden
from edgetl.export.manifest import Written, build_manifest
from edgetl.export.precision import QuantPlan, check_precisions, derive_precision
from edgetl.export.snippets import write_snippets
from edgetl.formats import DEFAULT_FORMATS, FORMATS, resolve_formats
from edgetl.formats.base import ExportMeta, Source
from edgetl.formats.device_io import device_model, to_device_input
from edgetl.model.checkpoint import check_belongs, checkpoint_meta, load_model
from edgetl.model.deploy import DeployReport, deploy_model
from edgetl.model.macs import count_macs
from edgetl.recipe import INPUT_TYPES, OUTPUT_TYPES
from edgetl.rundir import CheckpointMeta, Manifest, RunDir

log = logging.getLogger(__name__)

CHECKPOINTS = ("best", "last")
EXAMPLE_IMAGES = 8  # val images the fold is checked on (plus RANDOM_INPUTS noise tensors)
RANDOM_INPUTS = 2
# Per unit of logit scale (max |logit|, at least 1): in fp32 the *checkpoint itself* is 2.6e-4 off a float64
# reference on efficientnet_b0's logits of ~18, so a flat 1e-4 would fail on rounding, not on folding.
FOLD_ATOL = 1e-4
MANIFEST = rundir.MANIFEST_NAME
MAX_BATCH = 256  # a fixed batch is traced with that many images: beyond this, gigabytes for nothing a device uses


@dataclass(frozen=True)
class ExportResult:
    run_dir: Path
    out_dir: Path
    artifacts: list[Written]
    deploy: DeployReport
    macs: int | None
    manifest: Manifest


def _write(name: str, model: nn.Module, example: torch.Tensor, folder: Path, *, meta: ExportMeta) -> Written:
    """Run one format's writer, timed; check it left exactly its one file."""
    fmt = FORMATS[name]
    path = folder / fmt.file
    before = set(folder.iterdir())
    start = time.perf_counter()
    extra = fmt.write(model, example, path, meta=meta)
    seconds = time.perf_counter() - start
    written = set(folder.iterdir()) - before
    assert written == {path}, f"{name} writer wrote {sorted(p.name for p in written)}, expected only {fmt.file}"
    artifact = Written(format=name, file=fmt.file, bytes=path.stat().st_size, sha256=files.sha256_file(path),
                       precision=fmt.precisions[0], seconds=round(seconds, 3), runtime=fmt.runtime,
                       versions=fmt.versions(), **extra)
    log.info("%s: %s, %.1f MiB in %.1f s", name, fmt.file, artifact.bytes / 2**20, seconds)
    return artifact


@contextlib.contextmanager
def _step(what: str, out: Path) -> Iterator[None]:
    """Turn any failure of one export step into an ExportError that says which step and that `out` is intact."""
    try:
        yield
    except EdgetlError as e:  # bad input found midway (no images to calibrate on): still a usage error, exit 2
        raise type(e)(f"export failed at {what}: {e} — {out} is left as it was") from e
    except Exception as e:  # the exporters raise anything from RuntimeError to onnx's ValidationError
        raise ExportError(f"export failed at {what}: {describe_error(e, limit=300)} — {out} is left as it was") from e


def _check_outside_data(out: Path, run_dir: Path) -> None:
    """An export inside the run's data folder would be read as a class of images by the next training."""
    split = RunDir(run_dir).split
    root = rundir.read_split(split).get("root") if split.is_file() else None
    if root and Path(root).is_dir() and out.resolve().is_relative_to(Path(root).resolve()):
        raise EdgetlError(f"--out {out} is inside the run's data folder {root}: the next training would read it as "
                          f"data — pass --out a folder outside it")


def _is_report(path: Path) -> bool:
    """A verify report edgetl wrote: `edgetl verify RUN --export DIR` leaves one beside an export made with --out."""
    if not path.is_file():
        return False
    try:
        rundir.read_verify_report(path)
    except RunDirError:
        return False
    return True


def _check_replaceable(out: Path, *, own: bool = False) -> None:
    """Only an export (or an empty folder) may be replaced wholesale: a folder holding its manifest and the files
    it lists, nothing else — never a folder of the user's files that merely has a manifest.json in it. The run's
    own export folder (`own`) with a damaged manifest is replaced: verify and info send the user here to do it."""
    if not out.exists():
        return
    fix = "pass --out a new or empty folder"
    if not out.is_dir():
        raise EdgetlError(f"{out} exists and is not a folder — {fix}")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if MANIFEST not in entries:
        raise EdgetlError(f"{out} exists and is not an edgetl export (no {MANIFEST}) — {fix}")
    try:
        listed = {a.file for a in rundir.read_manifest(out / MANIFEST).listed}
    except RunDirError as e:
        if own:
            return  # _previous_manifest says it is replaced as a whole
        raise EdgetlError(f"{out} is not a readable edgetl export ({e}) — {fix}") from None
    # Bookkeeping of edgetl's own beside an export: its verify report, the lock an older verify took in it.
    ours = {MANIFEST, files.LOCK_NAME} | ({rundir.REPORT_NAME} if _is_report(out / rundir.REPORT_NAME) else set())
    # A listed name that is a folder or a link is not a file edgetl wrote: keep.txt inside "model.onnx/" is the user's.
    foreign = sorted((entries - listed - ours)
                     | {name for name in entries if (out / name).is_symlink() or not (out / name).is_file()})
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise EdgetlError(f"{out} holds files edgetl did not export ({shown}); replacing the folder would delete "
                          f"them — {fix}")


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` with the folder `new` by renames on one file system; the old export goes only at the end.

    Between the two renames `out` is briefly absent; a crash there leaves the old export in `<out>.old-*/`, and
    the next export puts it back first (`_restore_interrupted_swap`).
    """
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX.format(name=out.name), dir=out.parent))
        out.rename(old / out.name)
    try:
        new.rename(out)
    except OSError:
        if old is not None:
            (old / out.name).rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


OLD_PREFIX = "{name}.old-"  # where `_swap_in` holds the previous export until the new one is in place


def _restore_interrupted_swap(out: Path) -> None:
    """A crash between `_swap_in`'s two renames leaves no `out` and the previous export in `<out>.old-*/`: put the
    newest back, so the next export builds on it and nothing shipped is lost. Under the run's lock (no swap is
    under way); the other leftovers go with the stale-folder sweep."""
    if out.exists() or out.is_symlink():
        return
    left = [d / out.name for d in files.stale_temp_dirs(out, prefix=OLD_PREFIX.format(name=out.name))]
    left = [d for d in left if d.is_dir() and not d.is_symlink()]
    if left:
        left[-1].rename(out)
        log.warning("put the previous export back in %s: an export stopped between its two renames had left it in "
                    "%s", out, left[-1].parent.name)


def _previous_manifest(out: Path) -> Manifest | None:
    """The export already in `out`, if its manifest reads (a damaged one is replaced, not built on)."""
    try:
        return rundir.read_manifest(out / MANIFEST) if (out / MANIFEST).is_file() else None
    except EdgetlError as e:
        log.warning("replacing the export in %s as a whole: its manifest does not read (%s)", out, e)
        return None


def _same_model(previous: Manifest, manifest: Manifest) -> str | None:
    """Why the previous export's files cannot stand beside the new ones (None: they can)."""
    checks = {"checkpoint": (previous.run, manifest.run), "labels": (previous.labels, manifest.labels),
              "preprocessing": (previous.preprocessing, manifest.preprocessing),
              "input": (previous.input, manifest.input), "output": (previous.output, manifest.output),
              "model": (previous.model.params, manifest.model.params)}
    differ = [what for what, (old, new) in checks.items() if old != new]
    return f"its {', '.join(differ)} differ" if differ else None


def _keep_unasked(previous: Manifest | None, manifest: Manifest, out: Path, tmp: Path) -> list[Written]:
    """Copy the previous export's files that this export did not write into `tmp`, when they belong to the same
    model and still match their hashes; their entries, to list them again (golden outputs are recomputed)."""
    if previous is None:
        return []
    written = {(a.format, a.precision) for a in manifest.artifacts}
    unasked = [a for a in previous.artifacts if (a.format, a.precision) not in written]
    if not unasked:
        return []
    why = _same_model(previous, manifest)
    if why:
        log.warning("replacing the export in %s as a whole, dropping %s: %s", out,
                    ", ".join(a.file for a in unasked), why)
        return []
    kept = []
    for entry in unasked:
        source = out / entry.file
        if not source.is_file() or files.sha256_file(source) != entry.sha256:
            log.warning("dropping %s from the export: it no longer matches its manifest entry", entry.file)
            continue
        shutil.copy2(source, tmp / entry.file)
        kept.append(Written(**entry.model_dump()))
        log.info("kept %s from the previous export (not asked for this time)", entry.file)
    return kept


def check_request(formats: Sequence[str], *, opset: int | None, batch: int | None, checkpoint: str) -> list[str]:
    """Refuse bad flags before any work (usage errors, exit code 2); the format names, resolved."""
    names = resolve_formats(formats)
    if checkpoint not in CHECKPOINTS:
        raise EdgetlError(f"unknown checkpoint {checkpoint!r}; known: {', '.join(CHECKPOINTS)}")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise EdgetlError(f"--batch must be dynamic or a size from 1 to {MAX_BATCH} (got {batch})")
    request = ExportMeta(backbone="", labels=[], preprocessing={}, recipe_sha256=None, batch=batch, opset=opset)
    for name in names:
        missing = FORMATS[name].missing()
        if missing:
            raise EdgetlError(missing)
        FORMATS[name].check_request(request)
    return names


def load_run(run_dir: Path, *, checkpoint: str = "best") -> tuple[nn.Module, CheckpointMeta]:
    """The checkpoint's model (eval mode) and its metadata; a bad run directory is a one-line RunDirError."""
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found — pass the folder `edgetl train` wrote")
    run = RunDir(run_dir)
    path = run.checkpoint(checkpoint)
    model, ckpt = load_model(path)
    meta = checkpoint_meta(ckpt, source=path)
    _check_belongs(run, path, ckpt)
    return model, meta


def _check_belongs(run: RunDir, path: Path, ckpt: dict) -> None:
    """Refuse a checkpoint copied in from another run: compare it with the run's recipe and labels.json."""
    labels = rundir.read_labels(run.labels) if run.labels.is_file() else list(ckpt["labels"])
    try:
        backbone = rundir.read_recipe(run).backbone
    except EdgetlError:
        backbone = ckpt["backbone"]  # no readable recipe: nothing to compare the backbone with
    check_belongs(ckpt, backbone=backbone, labels=labels, source=path)


def check_io(input_type: str, output_type: str) -> None:
    if input_type not in INPUT_TYPES:
        raise EdgetlError(f"unknown input type {input_type!r}; known: {', '.join(INPUT_TYPES)}")
    if output_type not in OUTPUT_TYPES:
        raise EdgetlError(f"unknown output type {output_type!r}; known: {', '.join(OUTPUT_TYPES)}")


def fold_checked(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, DeployReport]:
    """deploy_model, refusing a fold whose outputs drift beyond FOLD_ATOL per unit of logit scale."""
    deployed, report = deploy_model(model, example=x)
    bar = FOLD_ATOL * max(1.0, report.max_abs_logit or 0.0)
    if report.max_abs_diff is not None and report.max_abs_diff > bar:
        raise ExportError(f"the folded model differs from the checkpoint by {report.max_abs_diff:.2e} (bar "
                          f"{bar:.1e} at logits up to {report.max_abs_logit:.1f}) — report it with the backbone name")
    return deployed, report


def export_run(run_dir: Path, *, formats: Sequence[str] = tuple(DEFAULT_FORMATS), opset: int | None = None,
               batch: int | None = None, checkpoint: str = "best", out: Path | None = None,
               precisions: Sequence[str] = ("fp32",), plan: QuantPlan = QuantPlan(), input_type: str = "float",
               output_type: str = "logits", replace: bool = False) -> ExportResult:
    """Export `run_dir`'s checkpoint to `out` (default `run_dir/export`). The files asked for are written (or
    rewritten); the previous export's other files are kept and listed, when it was made from the same checkpoint
    with the same tensors (`replace`: start from an empty folder). The folder is swapped in whole, so a failed
    export leaves the previous one as it was.

    Every format writes its fp32 file; each lower precision in `precisions` is made from it by the formats
    that can (`Format.derive`), beside it: the fp32 file stays, the reference its speed-up is measured against.
    `input_type` "uint8" and `output_type` "probs" make every file take the device's uint8 NHWC crop and return
    probabilities (`edgetl.formats.device_io`)."""
    run_dir = Path(run_dir)
    check_io(input_type, output_type)
    names = check_request(formats, opset=opset, batch=batch, checkpoint=checkpoint)
    check_precisions(names, list(precisions))
    plan.validate()
    out = Path(out) if out is not None else RunDir(run_dir).export_dir
    model, ckpt = load_run(run_dir, checkpoint=checkpoint)
    pinned = files.sha256_file(RunDir(run_dir).checkpoint(checkpoint))  # verify trusts this checkpoint only
    _check_outside_data(out, run_dir)
    _restore_interrupted_swap(out)
    _check_replaceable(out, own=out == RunDir(run_dir).export_dir)
    previous = None if replace else _previous_manifest(out)
    try:  # before the slow work: an --out under a file, or on a read-only disk, is a usage error
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetlError(f"cannot write into {out.parent}: {files.folder_problem(out.parent, e)} — pass --out a "
                          f"folder you can write to") from None

    inputs = gather_inputs(run_dir, labels=ckpt.labels, preprocessing=ckpt.preprocessing, data=None,
                           samples=EXAMPLE_IMAGES, random=RANDOM_INPUTS)
    x = torch.from_numpy(inputs.x)
    log.info("checking the fold on %d val image(s) and %d random input(s)", inputs.info["images"], RANDOM_INPUTS)
    deployed, report = fold_checked(model, x)
    macs = count_macs(deployed, x[:1])
    meta = ExportMeta(backbone=ckpt.backbone, labels=list(ckpt.labels), preprocessing=ckpt.preprocessing.to_dict(),
                      recipe_sha256=ckpt.recipe_sha256, batch=batch, opset=opset, input=input_type,
                      output=output_type)
    # The traced batch: 2 for a dynamic axis (torch.export specialises sizes 0 and 1), else exactly `batch`.
    n = batch or 2
    example = x.repeat(-(-n // len(x)), 1, 1, 1)[:n]
    prep = ckpt.preprocessing
    if (input_type, output_type) != ("float", "logits"):
        deployed = device_model(deployed, mean=prep.mean, std=prep.std, uint8_input=input_type == "uint8",
                                probs=output_type == "probs")
        if input_type == "uint8":
            example = torch.from_numpy(to_device_input(example.numpy(), mean=prep.mean, std=prep.std))

    try:  # a killed export's leftovers first (under the run's lock: nobody else writes them)
        files.remove_stale_temp_dirs(out, prefix=f"{out.name}.tmp-")
        if out.is_dir():  # the swap finished, or the previous export is back (else it waits in <out>.old-*/)
            files.remove_stale_temp_dirs(out, prefix=OLD_PREFIX.format(name=out.name))
        tmp = files.make_temp_dir(out, prefix=f"{out.name}.tmp-")
    except OSError as e:
        raise EdgetlError(f"cannot write into {out.parent}: {files.folder_problem(out.parent, e)} — pass --out a "
                          f"folder you can write to") from None
    try:
        artifacts = []
        for name in names:
            with _step(f"{name} ({FORMATS[name].file})", out):
                artifacts.append(_write(name, deployed, example, tmp, meta=meta))
            source = Source(fp32=tmp / FORMATS[name].file, model=deployed, example=example, meta=meta)
            for precision in (p for p in dict.fromkeys(precisions) if p in FORMATS[name].derive):
                with _step(f"{name} {precision} ({FORMATS[name].file_for(precision)})", out):
                    artifacts.append(derive_precision(name, precision, source, tmp, run_dir=run_dir, plan=plan))
        manifest = build_manifest(ckpt=ckpt, checkpoint=checkpoint, meta=meta, report=report, macs=macs,
                                  artifacts=artifacts, checkpoint_sha256=pinned)
        kept = _keep_unasked(previous, manifest, out, tmp)
        if kept:
            artifacts += kept
            manifest = build_manifest(ckpt=ckpt, checkpoint=checkpoint, meta=meta, report=report, macs=macs,
                                      artifacts=artifacts, checkpoint_sha256=pinned)
        with _step("golden vectors", out):  # real held-out crops, as the device holds them, and each file's output
            real = inputs.x[:int(inputs.info.get("images", 0))][:GOLDEN_IMAGES]
            manifest.golden = write_golden(tmp, artifacts, to_device_input(real, mean=prep.mean, std=prep.std),
                                           meta=meta, previous=previous.golden if previous else None,
                                           previous_dir=out)
        with _step("device snippets", out):
            manifest.snippets = write_snippets(tmp, manifest)
        with _step(CARD, out):  # for a person; verify completes it with its figures
            manifest.card = write_card(tmp / CARD, render_card(RunDir(run_dir), manifest))
        with _step(MANIFEST, out):
            rundir.write(tmp / MANIFEST, manifest)  # last: a folder with a manifest is a complete export
        with _step(f"replacing {out}", out):
            _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(run_dir=run_dir, out_dir=out, artifacts=artifacts, deploy=report, macs=macs, manifest=manifest)
