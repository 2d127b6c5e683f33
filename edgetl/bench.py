"""A backbone and input size picked for a latency budget: candidates timed on this machine, their cost, and where
ImageNet weights load here, a head-only accuracy on the user's own photos.

    edgetl bench --max-latency-ms 5 --threads 2 --data photos/ --write-recipe picked.toml --json bench.json

    report = run_bench(["efficientnet_lite0", "resnet18"], image_sizes=[128, 160], max_latency_ms=5, threads=2)
    report.chosen                                  # the best row within the budget (None: none is)
    write_recipe(report, Path("picked.toml"))      # the shipped recipe of its backbone, at its size

Latency needs no trained weights: each candidate is built with random weights (`num_classes` outputs), folded
as export folds it (`deploy_model`), written by export's own ONNX writer, its INT8 / fp16 files made by the
same onnxruntime tools export uses (INT8 calibrated on noise: the graph sets the speed, not the ranges), timed at
batch 1 in the chosen engine and threads with `time_runner`, verify's clock. MACs are torch's count
(`count_macs`), params those of the folded model, the size that of the file timed.

With `data`, every candidate whose ImageNet weights load here (Lite0's ship with edgetl; torchvision's come from
torch hub's cache or a download) also gets a head-only accuracy: its frozen features of the train split (one
pass, the center crop, no augmentation), a linear head fitted on them (L-BFGS, full batch), top-1 on the val
split. It ranks backbones and sizes on the user's photos in minutes; a fine-tune (`edgetl train`) adds to it.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetl import files
from edgetl.backbones import BACKBONES, Backbone, create_model, get_backbone
from edgetl.compare.parity import accuracy_interval
from edgetl.data.arrays import NAMED
from edgetl.data.augment import center_crop_batch, normalize
from edgetl.data.datasets import DataBundle, load_data
from edgetl.data.folders import stratified_first
from edgetl.errors import EdgetlError, WeightsError, describe_error
from edgetl.export import deploy_model
from edgetl.formats import ENGINE_FORMAT, FORMATS
from edgetl.formats.base import ExportMeta, Source
from edgetl.formats.engines import REFERENCE_ENGINE, engine_version, load_engine, require_engine
from edgetl.formats.onnx_precision import boundary_nodes, preprocessed, quantize_int8, to_fp16
from edgetl.model.macs import count_macs
from edgetl.model.weights import load_pretrained
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import Recipe, known_recipes, load_recipe
from edgetl.training.cache import inference_layout, onnx_prefix
from edgetl.verify import TimingPlan, all_threads, machine_fingerprint, time_runner
from edgetl.version import __version__

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZES = (128, 160, 224)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # 32: five stride-2 stages leave 1 px; 1024: the recipe's own bound
DEFAULT_CLASSES = 10  # outputs of a candidate without --data: the classifier is a sliver of any backbone's cost
MAX_SECONDS = 600.0  # per candidate, as verify's --latency-seconds: a bench a person can wait for
DEFAULT_SECONDS = 0.4  # per file: ~0.4-0.8 s with warm-up, enough for a stable p50 of a 1-50 ms model
CALIBRATION_IMAGES = 8  # noise rows INT8 is calibrated on: the graph, not the ranges, sets the speed
FEATURE_BATCH = 64
DEFAULT_SUBSET: int | None = None  # all train images: on flowers128 1000 of 3457 cost 5 points of top-1 (74 -> 69 %)
HEAD_STEPS = 100  # L-BFGS iterations of the linear head: converged on flowers128's 5 classes well before
HEAD_WEIGHT_DECAY = 1e-3  # on standardized features; keeps a separable few-hundred-image problem finite
BASE_RECIPE = "efficientnet_lite0"  # the recipe tuned on photos: the base for a backbone with no recipe of its own
Progress = Callable[[int, int, str], None]  # (files timed so far, files in all, what runs now)


@dataclass
class BenchRow:
    """One candidate file: its cost and timing; the head-only accuracy is its backbone and size's (fp32 features)."""

    backbone: str
    image_size: int
    precision: str
    params: int | None = None
    macs: int | None = None
    file_bytes: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    iterations: int | None = None
    within_budget: bool | None = None  # p50 <= max_latency_ms; None without a budget or a time
    head_only_top1: float | None = None
    head_only_top1_ci: list[float] | None = None  # its 95 % Wilson interval on the val images
    head_only_note: str | None = None  # why there is no accuracy (no --data, no weights that load here)
    error: str | None = None  # the candidate failed to build, export or run here: one line

    @property
    def label(self) -> str:
        return f"{self.backbone} @ {self.image_size} px {self.precision}"


@dataclass
class BenchReport:
    rows: list[BenchRow]
    runtime: str
    threads: int
    num_classes: int
    max_latency_ms: float | None
    timing: dict[str, Any]
    machine: dict[str, Any]
    data: dict[str, Any] | None = None  # the photos the accuracy stands on: folder, classes, image counts
    chosen_index: int | None = None
    chosen_reason: str = ""
    seconds: float = 0.0
    batch: int = 1
    engine_version: str | None = None
    edgetl_version: str = __version__

    @property
    def chosen(self) -> BenchRow | None:
        return None if self.chosen_index is None else self.rows[self.chosen_index]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document `edgetl bench --json` writes."""
        out = {k: v for k, v in asdict(self).items() if k not in ("rows", "chosen_index")}
        return {**out, "candidates": [asdict(r) for r in self.rows],
                "chosen": None if self.chosen is None else asdict(self.chosen)}


# --- the request -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchRequest:
    """What to time, checked before any work (usage errors, exit 2)."""

    backbones: tuple[str, ...]
    image_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    runtime: str
    threads: int
    num_classes: int | None
    max_latency_ms: float | None
    data: str | None
    seconds: float
    subset: int | None

    @classmethod
    def checked(cls, backbones: Sequence[str] | None = None, image_sizes: Sequence[int] | None = None,
                precisions: Sequence[str] | None = None, *, runtime: str = REFERENCE_ENGINE,
                threads: int | None = None, num_classes: int | None = None, max_latency_ms: float | None = None,
                data: str | None = None, seconds: float = DEFAULT_SECONDS,
                subset: int | None = DEFAULT_SUBSET) -> BenchRequest:
        names = tuple(dict.fromkeys(backbones or BACKBONES))
        for name in names:
            get_backbone(name)  # BackboneError with the known names and the closest one
        sizes = tuple(dict.fromkeys(image_sizes or DEFAULT_IMAGE_SIZES))
        bad = [s for s in sizes if not MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE]
        if bad:
            raise EdgetlError(f"--image-size {bad[0]}: an input size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px "
                              f"(a classifier halves it five times) — e.g. --image-size 128 --image-size 160")
        fmt = FORMATS[ENGINE_FORMAT]
        made = tuple(dict.fromkeys(precisions or fmt.precisions[:1]))
        unknown = [p for p in made if p not in fmt.all_precisions]
        if unknown:
            raise EdgetlError(f"unknown precision {unknown[0]!r}; known: {', '.join(fmt.all_precisions)}")
        require_engine(runtime)  # unknown or not installed: one line naming the pip command
        if threads is not None and threads < 1:
            raise EdgetlError(f"--threads must be 1 or more (got {threads})")
        if num_classes is not None and num_classes < 2:
            raise EdgetlError(f"--num-classes must be 2 or more (got {num_classes})")
        if num_classes is not None and data is not None:
            raise EdgetlError("--num-classes with --data: the data's classes set the outputs — drop one of them")
        if max_latency_ms is not None and not max_latency_ms > 0:
            raise EdgetlError(f"--max-latency-ms must be > 0 (got {max_latency_ms})")
        if subset is not None and subset < 1:
            raise EdgetlError(f"--subset must be a positive number of train images (got {subset})")
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
            raise EdgetlError(f"--seconds must be > 0 and <= {MAX_SECONDS:g} per candidate (got {seconds})")
        if max_latency_ms is not None and not math.isfinite(max_latency_ms):
            raise EdgetlError(f"--max-latency-ms must be a finite number (got {max_latency_ms})")
        if data is not None and not _named_set(data) and not Path(data).expanduser().is_dir():
            raise EdgetlError(f"--data {data}: folder not found — pass a folder of class folders (or with train/ "
                              f"and val/ inside), or 'sample'")
        return cls(backbones=names, image_sizes=sizes, precisions=made, runtime=runtime,
                   threads=threads or all_threads(), num_classes=num_classes, max_latency_ms=max_latency_ms,
                   data=data, seconds=seconds, subset=subset)


def _named_set(spec: str) -> bool:
    return spec == "sample" or spec.lower() in NAMED


# --- the bench ---------------------------------------------------------------------------------------------------

def run_bench(backbones: Sequence[str] | None = None, image_sizes: Sequence[int] | None = None,
              precisions: Sequence[str] | None = None, *, runtime: str = REFERENCE_ENGINE, threads: int | None = None,
              num_classes: int | None = None, max_latency_ms: float | None = None, data: str | None = None,
              seconds: float = DEFAULT_SECONDS, subset: int | None = DEFAULT_SUBSET, seed: int = 0,
              progress: Progress | None = None) -> BenchReport:
    """Time every backbone x image size x precision (batch 1, `threads`, engine `runtime`), mark those within
    `max_latency_ms`, add the head-only accuracy on `data` where weights load, and choose one (`choose`)."""
    request = BenchRequest.checked(backbones, image_sizes, precisions, runtime=runtime, threads=threads,
                                   num_classes=num_classes, max_latency_ms=max_latency_ms, data=data, seconds=seconds,
                                   subset=subset)
    started = time.perf_counter()
    plan = TimingPlan(seconds=request.seconds, min_iterations=10, max_seconds=3 * request.seconds, warmup=3)
    photos = None
    if request.data is not None:
        photos = _Photos(request.data, seed=seed, subset=request.subset)
        # decoded first at a size an accuracy will use, so the listing that gives the classes is not extra work
        first = next((b for b in request.backbones if photos.weights_load(get_backbone(b))), request.backbones[0])
        photos.bundle(get_backbone(first).preprocessing.scaled(request.image_sizes[0]))
    labels = photos.classes() if photos else [f"class_{i}" for i in range(request.num_classes or DEFAULT_CLASSES)]
    total = len(request.backbones) * len(request.image_sizes) * len(request.precisions)
    report_progress = progress or (lambda done, total, what: None)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        for name in request.backbones:
            backbone = get_backbone(name)
            for size in request.image_sizes:
                step = functools.partial(report_progress, len(rows), total)
                rows += _bench_one(backbone, size, request, labels=labels, plan=plan, folder=Path(tmp),
                                   photos=photos, seed=seed, step=step)
    report_progress(total, total, "done")
    mark_budget(rows, request.max_latency_ms)
    index, reason = choose(rows, max_latency_ms=request.max_latency_ms, accuracy=photos is not None)
    return BenchReport(rows=rows, runtime=request.runtime, threads=request.threads, num_classes=len(labels),
                       max_latency_ms=request.max_latency_ms, timing=plan.to_dict(), machine=machine_fingerprint(),
                       data=photos.describe() if photos else None, chosen_index=index, chosen_reason=reason,
                       seconds=round(time.perf_counter() - started, 1), engine_version=engine_version(request.runtime))


def _bench_one(backbone: Backbone, size: int, request: BenchRequest, *, labels: list[str], plan: TimingPlan,
               folder: Path, photos: _Photos | None, seed: int, step: Callable[[str], None]) -> list[BenchRow]:
    """The rows of one backbone at one size: one per precision, each timed; a failure is the rows' error."""
    what = f"{backbone.name} · {size} px"
    rows = [BenchRow(backbone.name, size, p) for p in request.precisions]
    torch.manual_seed(seed)
    try:
        model = create_model(backbone, num_classes=len(labels), image_size=size).eval()
    except EdgetlError as e:  # a size this model cannot take (a ViT's patches): the others still run
        for row in rows:
            row.error = str(e)
        return rows
    if photos is None:
        accuracy: dict[str, Any] = {"head_only_note": "no --data"}
    else:
        step(f"{what} · head-only accuracy")
        accuracy = photos.head_only(model, backbone, size)
    for row in rows:
        for key, value in accuracy.items():
            setattr(row, key, value)
    prep = backbone.preprocessing.scaled(size)
    example = torch.randn(2, 3, size, size)  # 2: the dynamic batch axis is traced on more than one image
    try:
        step(f"{what} · fold, count, export")
        deployed, deploy = deploy_model(model)
        macs = count_macs(deployed, example[:1])
        meta = ExportMeta(backbone=backbone.name, labels=labels, preprocessing=prep.to_dict(), recipe_sha256=None,
                          batch=None, opset=None)
        fmt = FORMATS[ENGINE_FORMAT]
        fp32 = folder / fmt.file
        fmt.write(deployed, example, fp32, meta=meta)
    except Exception as e:  # noqa: BLE001 — one candidate that does not export here must not end the bench
        log.warning("%s: %s", what, describe_error(e))
        for row in rows:
            row.error = f"export failed: {describe_error(e)}"
        return rows
    source = Source(fp32=fp32, model=deployed, example=example, meta=meta)
    for row in rows:
        row.params, row.macs = deploy.params, macs
        step(f"{what} · {row.precision}")
        try:
            path = _precision_file(source, row.precision, folder, seed=seed)
            timing = time_runner(functools.partial(load_engine, request.runtime, path, threads=request.threads),
                                 runtime=request.runtime, x=example[:1].numpy(), threads=request.threads, plan=plan,
                                 file=path)
        except Exception as e:  # noqa: BLE001 — an engine that refuses one file (an INT8 op) is a finding, not a stop
            log.warning("%s %s: %s", what, row.precision, describe_error(e))
            row.error = describe_error(e)
            continue
        row.file_bytes, row.p50_ms, row.p99_ms = timing.file_bytes, timing.p50_ms, timing.p99_ms
        row.iterations = timing.iterations
    for path in folder.iterdir():  # the next candidate's files take their names
        path.unlink()
    return rows


def _precision_file(source: Source, precision: str, folder: Path, *, seed: int) -> Path:
    """The fp32 file itself, or its INT8 / fp16 file made by onnxruntime's tools as export makes it: INT8 static
    QDQ with the stem and classifier float from the start, calibrated on noise. Export's weight re-rounding and
    accuracy guard are left out: they change int8 values, not the graph that sets the speed (and cost 10 s)."""
    fmt = FORMATS[ENGINE_FORMAT]
    if precision == fmt.precisions[0]:
        return source.fp32
    out = folder / fmt.file_for(precision)
    if precision == "int8":
        size = source.example.shape[-1]
        noise = np.random.default_rng(seed).standard_normal((CALIBRATION_IMAGES, 3, size, size), np.float32)
        with tempfile.TemporaryDirectory(prefix="edgetl-bench-int8-") as tmp:
            pre = preprocessed(source.fp32, Path(tmp))
            quantize_int8(source.fp32, out, calibration=noise, exclude=boundary_nodes(pre), pre=pre)
        return out
    if precision == "fp16":
        to_fp16(source.fp32, out)
        return out
    raise AssertionError(f"internal: bench makes no {precision} file")


# --- head-only accuracy on the user's photos ------------------------------------------------------------------

@dataclass
class _Photos:
    """The user's photos, decoded once per preprocessing (backbones of one family share it at a size)."""

    spec: str
    seed: int
    subset: int | None = None  # train images the head is fitted on (None: all); val stays whole
    _decoded: dict[Preprocessing, DataBundle] = field(default_factory=dict)
    _first: DataBundle | None = None
    _weights: dict[str, str | None] = field(default_factory=dict)  # backbone -> why its weights do not load

    def bundle(self, prep: Preprocessing) -> DataBundle:
        if prep not in self._decoded:
            self._decoded.clear()  # one at a time: a large folder decoded at three sizes would not fit
            self._decoded[prep] = load_data(self.spec, preprocessing=prep, seed=self.seed)
            self._first = self._first or self._decoded[prep]
        return self._decoded[prep]

    def _train_rows(self, bundle: DataBundle) -> torch.Tensor:
        """The train images the head is fitted on: all, or `subset` of them spread evenly over the classes."""
        if self.subset is None or self.subset >= len(bundle.train):
            return torch.arange(len(bundle.train))
        return torch.tensor(stratified_first(bundle.train.targets.tolist(), self.subset))

    def classes(self) -> list[str]:
        assert self._first is not None, "classes() before the first bundle()"
        return list(self._first.classes)

    def weights_load(self, backbone: Backbone) -> bool:
        """Whether its ImageNet weights load here (asked once per backbone: a download is tried at most once)."""
        if backbone.name not in self._weights:
            try:
                load_pretrained(create_model(backbone, num_classes=DEFAULT_CLASSES), backbone, "imagenet")
                self._weights[backbone.name] = None
            except WeightsError as e:
                log.info("%s: no head-only accuracy (%s)", backbone.name, e)
                self._weights[backbone.name] = "no ImageNet weights here (offline)"
        return self._weights[backbone.name] is None

    def describe(self) -> dict[str, Any]:
        first = self._first
        assert first is not None, "describe() after classes()"
        return {"data": self.spec, "classes": first.classes, "train_images": len(self._train_rows(first)),
                "train_images_found": len(first.train), "val_images": len(first.val),
                "features": "fp32, center crop, no augmentation",
                "head": f"linear, L-BFGS {HEAD_STEPS} steps, weight decay {HEAD_WEIGHT_DECAY:g} on standardized "
                        "features"}

    def head_only(self, model: nn.Module, backbone: Backbone, size: int) -> dict[str, Any]:
        """{head_only_top1, head_only_top1_ci} where ImageNet weights load into `model`, else {head_only_note}."""
        if not self.weights_load(backbone):
            return {"head_only_note": self._weights[backbone.name]}
        load_pretrained(model, backbone, "imagenet")
        prep = backbone.preprocessing.scaled(size)
        bundle = self.bundle(prep)
        rows = self._train_rows(bundle)
        # A big pass runs in onnxruntime, as training's cache does (3.4x eager here); a small one stays eager.
        prefix = onnx_prefix(model, backbone, backbone.groups(model)[:-1], pool=True, crop=prep.crop_size,
                             rows=len(rows) + len(bundle.val))
        train = features(model, backbone, bundle.train.images[rows], prep, prefix=prefix)
        val = features(model, backbone, bundle.val.images, prep, prefix=prefix)
        head = fit_linear_head(train, bundle.train.targets[rows], num_classes=len(bundle.classes))
        with torch.no_grad():
            correct = int((head(val).argmax(1) == bundle.val.targets).sum())
        n = len(bundle.val)
        return {"head_only_top1": correct / n, "head_only_top1_ci": accuracy_interval(correct, n)}


@torch.no_grad()
def features(model: nn.Module, backbone: Backbone, images: torch.Tensor, prep: Preprocessing, *,
             prefix: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Pooled features (the head's input) of uint8 images, center-cropped to the crop size, in eval mode;
    `prefix` computes them instead of eager PyTorch (training's `onnx_prefix`)."""
    model.eval()
    out = []
    with inference_layout(model, torch.device("cpu")) as layout:
        for start in range(0, len(images), FEATURE_BATCH):
            x = normalize(center_crop_batch(images[start:start + FEATURE_BATCH], prep.crop_size), prep)
            y = prefix(x) if prefix is not None else backbone.features(model, x.contiguous(memory_format=layout))
            out.append(y.float())
    return torch.cat(out)


def fit_linear_head(x: torch.Tensor, y: torch.Tensor, *, num_classes: int) -> nn.Module:
    """A logistic-regression head on standardized features (full-batch L-BFGS from zeros: deterministic)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    z = (x - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=HEAD_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(z), y) + HEAD_WEIGHT_DECAY * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return nn.Sequential(_Standardize(mean, std), linear).eval()


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# --- the choice and its recipe ------------------------------------------------------------------------------------

def mark_budget(rows: Sequence[BenchRow], max_latency_ms: float | None) -> None:
    """`within_budget` from each timed row's measured p50 (None without a budget, or for a row not timed)."""
    for row in rows:
        timed = max_latency_ms is not None and row.p50_ms is not None
        row.within_budget = row.p50_ms <= max_latency_ms if timed else None


def choose(rows: Sequence[BenchRow], *, max_latency_ms: float | None, accuracy: bool) -> tuple[int | None, str]:
    """The best row within the budget (every timed row without one): the most accurate head-only where there are
    accuracies, else the one with the most MACs (the most capacity the budget buys); ties go to the faster."""
    scope = "of all (no --max-latency-ms)" if max_latency_ms is None else f"within {max_latency_ms:g} ms"
    timed = [i for i, r in enumerate(rows) if r.p50_ms is not None]
    within = [i for i in timed if rows[i].within_budget is not False]
    if not within:
        if not timed:
            return None, "no candidate could be timed here"
        fastest = min(timed, key=lambda i: rows[i].p50_ms)
        return None, (f"none {scope}: the fastest is {rows[fastest].label} at {rows[fastest].p50_ms:.2f} ms "
                      f"— raise --max-latency-ms, or add smaller sizes or backbones")
    scored = [i for i in within if rows[i].head_only_top1 is not None]
    if accuracy and scored:
        best = max(scored, key=lambda i: (rows[i].head_only_top1, -rows[i].p50_ms))
        return best, f"the most accurate head-only {scope} ({100 * rows[best].head_only_top1:.1f} %)"
    best = max(within, key=lambda i: (rows[i].macs or 0, -rows[i].p50_ms))
    why = " (none of them has weights that load here to score)" if accuracy else ""
    return best, f"the most MACs {scope}{why}"


def recipe_for(report: BenchReport) -> tuple[Recipe, str]:
    """The chosen row as a recipe: its backbone's shipped recipe (else the photo-tuned `efficientnet_lite0` one,
    its backbone swapped), at its image size, on the bench's data, exporting its precision; and a header saying
    where it came from. EdgetlError when nothing was chosen."""
    row = report.chosen
    if row is None:
        raise NothingWithinBudget(f"no recipe written: {report.chosen_reason}")
    base = row.backbone if row.backbone in known_recipes() else BASE_RECIPE
    overrides: dict[str, Any] = {"backbone": row.backbone, "image_size": row.image_size}
    if report.data is not None:
        spec = report.data["data"]
        overrides["data"] = spec if _named_set(spec) else str(Path(spec).expanduser().resolve())
    if row.precision != FORMATS[ENGINE_FORMAT].precisions[0]:
        overrides["export"] = {"precisions": [FORMATS[ENGINE_FORMAT].precisions[0], row.precision]}
    recipe = load_recipe(base, overrides=overrides)
    header = [f"Written by `edgetl bench` (edgetl {__version__}): {row.label}, {report.chosen_reason}.",
              f"p50 {row.p50_ms:.2f} ms at batch 1 on {report.threads} thread(s) of {report.machine.get('cpu_model')} "
              f"({report.runtime}); {row.params or 0:,} params, {(row.macs or 0) / 1e6:.0f} M MACs.",
              f"Based on the shipped `{base}` recipe; `edgetl train --recipe THIS_FILE` trains it."]
    if report.data is not None and row.head_only_top1 is None:
        header.append("Its ImageNet weights did not load here: train where they download, or set weights to a "
                      "state-dict file (or \"none\").")
    return recipe, "".join(f"# {line}\n" for line in header) + "\n" + recipe.to_toml()


def write_recipe(report: BenchReport, path: Path) -> Recipe:
    """Write the chosen row's recipe to `path`, then load it back with the recipe loader (what train will do)."""
    recipe, text = recipe_for(report)
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgetlError(f"--write-recipe {path}: folder {path.parent} not found — create it or pass another path")
    files.write_text(path, text)
    loaded = load_recipe(str(path))
    assert (loaded.backbone, loaded.image_size) == (recipe.backbone, recipe.image_size), "recipe did not round-trip"
    return loaded


class NothingWithinBudget(EdgetlError):
    """No candidate met the budget, so there is no recipe to write: a finding (exit 1), not a usage error."""

    exit_code = 1
