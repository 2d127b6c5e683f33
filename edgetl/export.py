"""Export a run: fold its checkpoint into a deploy model, write ONNX and TorchScript and a manifest.

    edgetl export artifacts/20250101-120000-quickstart --format all

Writes `<run>/export/{model.onnx, model.torchscript.pt, manifest.json}`. Each format is one small writer
function in `FORMATS`, wrapped by `_write`, which times it and records size and sha256. The new export is
built in a temp folder beside the old one and swapped in at the end, so a failure midway leaves the
previous export exactly as it was. The manifest is written last: its presence marks a complete export.

ONNX goes through `torch.onnx.export(dynamo=True)` for all five backbones (checked on torch 2.14). The
default opset is the exporter's own (20 on torch 2.14): its op library is written for opset >= 18, and lower
ones go through a version converter that fails on these graphs, so a request the exporter cannot honour is
an error rather than a silently different file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import importlib.metadata
import json
import logging
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from edgetl import __version__, files
from edgetl.checkpoint import check_belongs, load_model
from edgetl.deploy import DeployReport, deploy_model
from edgetl.errors import CheckpointError, EdgetlError, ExportError, RunDirError
from edgetl.preprocessing import Preprocessing

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
CHECKPOINTS = ("best", "last")
EXAMPLE_IMAGES = 8  # val images the fold is checked on (plus RANDOM_INPUTS noise tensors)
RANDOM_INPUTS = 2
MIN_OPSET = 18  # the dynamo exporter's op library starts here; converting lower fails on these graphs
# Per unit of logit scale (max |logit|, at least 1): in fp32 the *checkpoint itself* is 2.6e-4 off a float64
# reference on efficientnet_b0's logits of ~18, so a flat 1e-4 would fail on rounding, not on folding.
FOLD_ATOL = 1e-4
MANIFEST = "manifest.json"
VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript")


@dataclass(frozen=True)
class ExportMeta:
    """What every writer needs to make its file describe itself."""

    backbone: str
    labels: list[str]
    preprocessing: dict[str, Any]
    recipe_sha256: str | None
    batch: int | None  # None: dynamic batch axis
    opset: int | None  # None: the exporter's default

    def describe(self) -> dict[str, str]:
        """Flat string metadata (ONNX metadata_props, TorchScript extra file)."""
        return {"labels": json.dumps(self.labels), "preprocessing": json.dumps(self.preprocessing),
                "edgetl_version": __version__, "backbone": self.backbone, "recipe_sha256": self.recipe_sha256 or ""}

    def io(self) -> dict[str, dict[str, Any]]:
        """The input and output tensors: name, shape ("batch" for a dynamic axis), dtype."""
        batch: int | str = "batch" if self.batch is None else self.batch
        size = self.preprocessing["crop_size"]
        return {"input": {"name": INPUT_NAME, "shape": [batch, 3, size, size], "dtype": "float32"},
                "output": {"name": OUTPUT_NAME, "shape": [batch, len(self.labels)], "dtype": "float32"}}


@dataclass(frozen=True)
class Artifact:
    format: str
    file: str
    bytes: int
    sha256: str
    precision: str
    seconds: float
    opset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        seconds = d.pop("seconds")
        if d["opset"] is None:
            del d["opset"]
        return {**d, "seconds": seconds}  # the manifest's key order: seconds last


@dataclass(frozen=True)
class ExportResult:
    run_dir: Path
    out_dir: Path
    artifacts: list[Artifact]
    deploy: DeployReport
    macs: int | None
    manifest: dict[str, Any]


# --- writers: one small function per format ----------------------------------------------------------------


class Writer(Protocol):
    """Write `model` (traced/exported on `example`) to `path`; return extra manifest fields (e.g. the opset)."""

    def __call__(self, model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]: ...


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """One self-contained .onnx file, BatchNorm-free, checked, with labels and preprocessing in its metadata."""
    import onnx

    dynamic = ({0: "batch"},) if meta.batch is None else None
    with _quiet("onnxscript", "onnx_ir"):  # their optimizer logs every pass at INFO: hundreds of lines
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=meta.opset, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, meta.describe())
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if meta.opset is not None and opset != meta.opset:  # it falls back to 18 when it cannot convert
        raise ExportError(f"the exporter cannot write opset {meta.opset} (it produced {opset}) — use an opset from "
                          f"{MIN_OPSET} to {onnx.defs.onnx_opset_version()}, or leave --opset unset")
    onnx.checker.check_model(proto, full_check=True)
    bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert not bn, f"BatchNormalization left in the ONNX graph after folding: {bn[:3]}"
    # One self-contained file: weights inline, never a side `.onnx.data` (what `torch.onnx.export(f=...)`
    # writes unless external_data=False). Models here are far below protobuf's 2 GB limit.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return {"opset": opset}


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise these libraries' loggers to WARNING for the block, then restore them."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(max(saved[name], logging.WARNING))
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


_JIT_DEPRECATION = r"`torch\.jit\.(trace|trace_method|freeze|save)` is deprecated"


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """A traced, frozen TorchScript file that loads with torch alone; `edgetl.json` extra file describes it."""
    # torch 2.14 deprecates TorchScript in favour of torch.export, but a frozen .pt is still what LibTorch and
    # PyTorch Mobile load. That deprecation is not a problem with this model: say it once, quietly. Any other
    # warning (a TracerWarning about data-dependent control flow, say) still reaches the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        with torch.no_grad():
            # check_trace re-traces to compare graphs and costs 3-5x the trace; output parity is verify's job.
            frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        described = {**meta.describe(), "labels": meta.labels, "preprocessing": meta.preprocessing, **meta.io()}
        torch.jit.save(frozen, str(path), _extra_files={"edgetl.json": json.dumps(described)})
    log.info("torchscript: torch.jit is deprecated in torch %s, but a frozen trace is still what LibTorch loads",
             torch.__version__)
    return {}


@dataclass(frozen=True)
class Format:
    file: str
    write: Writer
    precision: str = "fp32"


FORMATS: dict[str, Format] = {
    "onnx": Format("model.onnx", write_onnx),
    "torchscript": Format("model.torchscript.pt", write_torchscript),
}


def _write(name: str, model: nn.Module, example: torch.Tensor, folder: Path, *, meta: ExportMeta) -> Artifact:
    """Run one writer, timed; check it left exactly its one file."""
    fmt = FORMATS[name]
    path = folder / fmt.file
    before = set(folder.iterdir())
    start = time.perf_counter()
    extra = fmt.write(model, example, path, meta=meta)
    seconds = time.perf_counter() - start
    written = set(folder.iterdir()) - before
    assert written == {path}, f"{name} writer wrote {sorted(p.name for p in written)}, expected only {fmt.file}"
    artifact = Artifact(format=name, file=fmt.file, bytes=path.stat().st_size, sha256=files.sha256_file(path),
                        precision=fmt.precision, seconds=round(seconds, 3), **extra)
    log.info("%s: %s, %.1f MB in %.1f s", name, fmt.file, artifact.bytes / 1e6, seconds)
    return artifact


# --- inputs, MACs, manifest -----------------------------------------------------------------------------------


def resolve_formats(names: Sequence[str]) -> list[str]:
    """Format names in order, `all` expanded, duplicates dropped; an unknown name is a usage error."""
    resolved: list[str] = []
    for name in names:
        for n in FORMATS if name == "all" else [name]:
            if n not in FORMATS:
                hint = difflib.get_close_matches(n, list(FORMATS), n=1)
                maybe = f" — did you mean {hint[0]!r}?" if hint else ""
                raise EdgetlError(f"unknown export format {n!r}; known: {', '.join(FORMATS)}, all{maybe}")
            if n not in resolved:
                resolved.append(n)
    if not resolved:
        raise EdgetlError(f"no export format given; known: {', '.join(FORMATS)}, all")
    return resolved


def _val_paths(run_dir: Path) -> list[Path]:
    """The validation images split.json lists that are still on disk (folder datasets only)."""
    path = run_dir / "split.json"
    if not path.is_file():
        return []
    try:
        split = files.read_json(path, what="split file")
        root = Path(split["root"]) if split.get("root") else None
        entries = split.get("val") or []
    except (RunDirError, KeyError, TypeError, AttributeError):
        log.warning("%s is unreadable; checking the fold on random inputs", path)
        return []
    if root is None:  # torchvision array datasets: not worth decoding a cache just for this check
        return []
    return [root / e[0] for e in entries if (root / e[0]).is_file()]


def example_batch(run_dir: Path, preprocessing: Preprocessing, *, images: int = EXAMPLE_IMAGES,
                  random: int = RANDOM_INPUTS, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(inputs, how many are real): val images preprocessed as a device would, then N(0, 1) tensors.

    Real images give real-magnitude logits, so the fold check means what it says; the noise covers runs whose
    images are gone.
    """
    from edgetl.device_preprocess import preprocess_image

    real = []
    for path in _val_paths(run_dir)[:images]:
        try:
            real.append(torch.from_numpy(preprocess_image(path, preprocessing.to_dict())))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a damaged file
            log.warning("skipped %s: %s", path, e)
    size = preprocessing.crop_size
    noise = torch.randn(random, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.stack(real), noise]) if real else noise, len(real)


def count_macs(model: nn.Module, x: torch.Tensor) -> int | None:
    """Multiply-accumulates of one forward pass on `x` (conv and matmul; FLOPs / 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except Exception as e:  # a counting failure must not block an export
        log.warning("could not count MACs (%s: %s)", type(e).__name__, e)
        return None
    return counter.get_total_flops() // 2


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_manifest(*, ckpt: dict[str, Any], checkpoint: str, meta: ExportMeta, report: DeployReport,
                   macs: int | None, artifacts: list[Artifact]) -> dict[str, Any]:
    return {
        "edgetl_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {"backbone": meta.backbone, "checkpoint": checkpoint,
                "epoch": ckpt.get("epoch", ckpt.get("global_epoch")), "val_acc": ckpt.get("val_acc"),
                "recipe_sha256": meta.recipe_sha256},
        "labels": meta.labels,
        "preprocessing": meta.preprocessing,
        **meta.io(),
        "model": {"params": report.params, "macs": macs, "bn_folded": report.bn_folded,
                  "lora_merged": report.lora_merged, "fold_max_abs_diff": report.max_abs_diff},
        "versions": {**{p: _version(p) for p in VERSIONED}, "python": platform.python_version()},
        "artifacts": [a.to_dict() for a in artifacts],
    }


# --- the stage ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _step(what: str, out: Path) -> Iterator[None]:
    """Turn any failure of one export step into an ExportError that says which step and that `out` is intact."""
    try:
        yield
    except Exception as e:  # the exporters raise anything from RuntimeError to onnx's ValidationError
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        why = text if isinstance(e, EdgetlError) else f"{type(e).__name__}: {text}"
        raise ExportError(f"export failed at {what}: {why} — {out} is left as it was") from e


def _check_replaceable(out: Path) -> None:
    """Only an export (or an empty folder) may be replaced wholesale: never a folder of the user's files."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise EdgetlError(f"{out} exists and is not an edgetl export (no {MANIFEST}) — pass --out a new or empty folder")


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` with the folder `new` by renames on one file system; the old export goes only at the end.

    Between the two renames `out` is briefly absent; a crash there leaves the old export as `<out>.old-*`.
    """
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    try:
        new.rename(out)
    except OSError:
        if old is not None:
            (old / out.name).rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_request(*, opset: int | None, batch: int | None, checkpoint: str) -> None:
    """Refuse bad flags before any work (usage errors, exit code 2)."""
    import onnx

    if checkpoint not in CHECKPOINTS:
        raise EdgetlError(f"unknown checkpoint {checkpoint!r}; known: {', '.join(CHECKPOINTS)}")
    if batch is not None and batch < 1:
        raise EdgetlError(f"batch must be a positive size or dynamic (got {batch})")
    if opset is not None and not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise EdgetlError(f"--opset {opset} is not supported: torch's ONNX exporter writes opset {MIN_OPSET} to "
                          f"{onnx.defs.onnx_opset_version()} — leave it unset for its default")


def load_run(run_dir: Path, *, checkpoint: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's model (eval mode) and its metadata; a bad run directory is a one-line RunDirError."""
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found — pass the folder `edgetl train` wrote")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    model, ckpt = load_model(path)
    missing = [k for k in ("labels", "preprocessing") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} — it was not written by `edgetl train`; retrain")
    _check_belongs(run_dir, path, ckpt)
    return model, ckpt


def _check_belongs(run_dir: Path, path: Path, ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint copied in from another run: compare it with the run's recipe and labels.json."""
    import tomllib

    labels_path, recipe_path = run_dir / "labels.json", run_dir / "recipe.resolved.toml"
    labels = list(files.read_json(labels_path, what="labels file")) if labels_path.is_file() else list(ckpt["labels"])
    try:
        backbone = tomllib.loads(recipe_path.read_text(encoding="utf-8")).get("backbone", ckpt["backbone"])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        backbone = ckpt["backbone"]  # no readable recipe: nothing to compare the backbone with
    check_belongs(ckpt, backbone=backbone, labels=labels, source=path)


def fold_checked(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, DeployReport]:
    """deploy_model, refusing a fold whose outputs drift beyond FOLD_ATOL per unit of logit scale."""
    deployed, report = deploy_model(model, example=x)
    bar = FOLD_ATOL * max(1.0, report.max_abs_logit or 0.0)
    if report.max_abs_diff is not None and report.max_abs_diff > bar:
        raise ExportError(f"the folded model differs from the checkpoint by {report.max_abs_diff:.2e} (bar "
                          f"{bar:.1e} at logits up to {report.max_abs_logit:.1f}) — report it with the backbone name")
    return deployed, report


def export_run(run_dir: Path, *, formats: Sequence[str] = ("onnx", "torchscript"), opset: int | None = None,
               batch: int | None = None, checkpoint: str = "best", out: Path | None = None) -> ExportResult:
    """Export `run_dir`'s checkpoint to `out` (default `run_dir/export`), replacing any previous export."""
    run_dir = Path(run_dir)
    names = resolve_formats(formats)
    _check_request(opset=opset, batch=batch, checkpoint=checkpoint)
    out = Path(out) if out is not None else run_dir / "export"
    model, ckpt = load_run(run_dir, checkpoint=checkpoint)
    _check_replaceable(out)
    try:  # before the slow work: an --out under a file, or on a read-only disk, is a usage error
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetlError(f"cannot write into {out.parent}: {files.folder_problem(out.parent, e)} — pass --out a "
                          f"folder you can write to") from None

    preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    x, real = example_batch(run_dir, preprocessing)
    log.info("checking the fold on %d val image(s) and %d random input(s)", real, len(x) - real)
    deployed, report = fold_checked(model, x)
    macs = count_macs(deployed, x[:1])
    meta = ExportMeta(backbone=ckpt["backbone"], labels=list(ckpt["labels"]), preprocessing=preprocessing.to_dict(),
                      recipe_sha256=ckpt.get("recipe_sha256"), batch=batch, opset=opset)
    # The traced batch: 2 for a dynamic axis (torch.export specialises sizes 0 and 1), else exactly `batch`.
    n = batch or 2
    example = x.repeat(-(-n // len(x)), 1, 1, 1)[:n]

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise EdgetlError(f"cannot write into {out.parent}: {files.folder_problem(out.parent, e)} — pass --out a "
                          f"folder you can write to") from None
    try:
        artifacts = []
        for name in names:
            with _step(f"{name} ({FORMATS[name].file})", out):
                artifacts.append(_write(name, deployed, example, tmp, meta=meta))
        manifest = build_manifest(ckpt=ckpt, checkpoint=checkpoint, meta=meta, report=report, macs=macs,
                                  artifacts=artifacts)
        with _step(MANIFEST, out):
            files.write_json(tmp / MANIFEST, manifest)  # last: a folder with a manifest is a complete export
        with _step(f"replacing {out}", out):
            _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(run_dir=run_dir, out_dir=out, artifacts=artifacts, deploy=report, macs=macs, manifest=manifest)
