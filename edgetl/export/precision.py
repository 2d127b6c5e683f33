"""Lower-precision files beside the fp32 ones: INT8 calibrated on train images and guarded on held-out ones, fp16.

    source = Source(fp32=tmp / "model.onnx", model=deployed, example=example, meta=meta)
    written = derive_precision("onnx", "int8", source, tmp, run_dir=run, plan=QuantPlan())

Each format says how it makes a precision (`Format.derive`: ONNX rewrites its fp32 file with onnxruntime's
tools; ExecuTorch and LiteRT quantize the deploy model with PT2E and convert it again); this module runs them
the same way. INT8 calibrates on a seeded draw of train-split images, preprocessed exactly as the device does
(the same draw for every format). The accuracy guard then compares the INT8 file with the fp32 file of its
format on the run's held-out images (its test split when it has one, else its val split), against verify's int8
bars (top-1 agreement, accuracy drop, max diff / logit scale): the same images and bars as verify, so the two
print one verdict. While a bar fails, the model's ends (already float from the first attempt where the format
measured them no slower float), then the layers whose own quantization is noisiest (where the format can rank
them: onnxruntime's QDQ debugging helpers) stay float and the file is quantized again, until the bars hold or the
rounds run out.
What was excluded, and the figures of every round, go into the manifest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import files
from edgetl.compare.gate import BARS
from edgetl.compare.parity import compare_logits, run_all
from edgetl.data.inputs import JUDGED_IMAGES, Inputs, calibration_images, gather_inputs
from edgetl.errors import EdgetlError
from edgetl.export.manifest import Written
from edgetl.formats import FORMATS
from edgetl.formats.base import Source
from edgetl.formats.device_io import to_device_input
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import ACTIVATIONS, CALIBRATION_METHODS, PRECISIONS

log = logging.getLogger(__name__)

GUARD_ROUNDS = 2  # attempts after the first; each costs a quantization and a judgement (about 8 s for Lite0)
GUARD_STEP = 2
MAX_FLOAT_FRACTION = 0.1  # of the graph's nodes: beyond it the INT8 file is mostly float, and slow
DEBUG_IMAGES = 16  # calibration images the per-node errors are measured on


@dataclass(frozen=True)
class QuantPlan:
    """How INT8 is calibrated (the recipe's [export] table, or export's flags)."""

    method: str = "minmax"  # measured: MinMax matched Entropy and Percentile on real photos, and is the fastest
    activations: str = "uint8"  # uint8 | int8 | auto: quantize both, keep the faster on this CPU
    calibration_images: int = 128  # measured: 120 matched 240 and 600 on real photos, at a third of the time
    guard_images: int = JUDGED_IMAGES  # held-out images the guard judges on (test, else val): all, as verify does
    seed: int = 0

    def validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise EdgetlError(f"unknown calibration method {self.method!r}; known: {', '.join(CALIBRATION_METHODS)}")
        if self.activations not in ACTIVATIONS:
            raise EdgetlError(f"unknown INT8 activation type {self.activations!r}; known: {', '.join(ACTIVATIONS)}")
        if not 1 <= self.calibration_images <= 10_000:
            raise EdgetlError(f"calibration images must be in [1, 10000] (got {self.calibration_images})")


def check_precisions(formats: list[str], precisions: list[str]) -> None:
    """Every requested precision must be made by at least one requested format (usage error, exit 2)."""
    for precision in precisions:
        if precision not in PRECISIONS:
            raise EdgetlError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if not any(precision in FORMATS[f].all_precisions for f in formats):
            able = [f for f in FORMATS if precision in FORMATS[f].all_precisions]
            fix = f"add --format {able[0]}" if able else "drop it"
            raise EdgetlError(f"--precision {precision} is made by {', '.join(able) or 'no format'}, not by "
                              f"{', '.join(formats)} — {fix}")


def derive_precision(fmt_name: str, precision: str, source: Source, folder: Path, *, run_dir: Path,
                     plan: QuantPlan) -> Written:
    """One lower-precision file made from `source` (the fp32 file and the deploy model), written into `folder`,
    described for the manifest."""
    fmt = FORMATS[fmt_name]
    derivation = fmt.derive[precision]
    out = folder / fmt.file_for(precision)
    meta = source.meta
    prep = Preprocessing.coerce(meta.preprocessing)
    started = time.perf_counter()
    held_out = gather_inputs(run_dir, labels=meta.labels, preprocessing=prep, data=None,
                             samples=plan.guard_images, random=0)
    with tempfile.TemporaryDirectory(prefix=f"edgetl-{precision}-") as tmp:
        prepared = derivation.prepare(source, Path(tmp))
        if precision == "int8":
            calibration, drawn = calibration_images(run_dir, labels=meta.labels, preprocessing=prep,
                                                    samples=plan.calibration_images, seed=plan.seed)
            if meta.input == "uint8":  # the file takes the device's crops: calibrate on exactly those
                calibration = to_device_input(calibration, mean=prep.mean, std=prep.std)
            if len(calibration) == 0:
                raise EdgetlError(f"no train images to calibrate INT8 on (split.json of {run_dir}) — INT8 needs "
                                  f"the run's data folder on this machine")
            settings = _guarded_int8(fmt_name, prepared, source.fp32, out, Path(tmp), calibration=calibration,
                                     held_out=held_out, plan=plan)
            settings["calibration"] = {**drawn, "method": settings.get("method", plan.method)}
        else:
            settings = derivation.make(prepared, out)
            settings["guard"] = {"rounds": [_judge(fmt_name, source.fp32, out, held_out, precision)]}
    fields = settings.pop("fields", {})  # the file's own manifest fields (its io, its delegation)
    seconds = time.perf_counter() - started
    log.info("%s %s: %s, %.1f MiB in %.1f s", fmt_name, precision, out.name, out.stat().st_size / 2**20, seconds)
    return Written(format=fmt_name, file=out.name, bytes=out.stat().st_size, sha256=files.sha256_file(out),
                   precision=precision, seconds=round(seconds, 3), quantization=settings, runtime=fmt.runtime,
                   versions=fmt.versions(), **fields)


def _guarded_int8(fmt_name: str, prepared: Any, fp32: Path, out: Path, folder: Path, *, calibration: np.ndarray,
                  held_out: Inputs, plan: QuantPlan) -> dict[str, Any]:
    """Quantize, judge, and while a bar fails keep more layers float: first the model's ends (its first conv and
    its classifier, the layers CNN quantization hurts most; float from the start where the format says so), then
    the layers with the noisiest own quantization where the format can rank them, GUARD_STEP more per round, at
    most MAX_FLOAT_FRACTION of the graph (beyond that the file is mostly float and its speed-up gone). The first
    round that passes is kept; if none does, the one with the smallest drop, then the best agreement."""
    derivation = FORMATS[fmt_name].derive["int8"]
    suffix = "".join(fp32.suffixes)
    rounds: list[dict[str, Any]] = []
    activations, timed = _activations(fmt_name, prepared, folder, calibration=calibration, plan=plan)
    ends, wrapper = derivation.ends(prepared), derivation.wrapper(prepared)
    cap = max(2, int(MAX_FLOAT_FRACTION * derivation.size(prepared)))
    excluded: list[str] = list(ends) if derivation.ends_float_from_start else []  # the model's layers kept float
    ranked: list[str] | None = None
    for round_ in range(GUARD_ROUNDS + 1):
        path = folder / f"round{round_}{suffix}"
        settings = derivation.make(prepared, path, calibration=calibration, method=plan.method,
                                   exclude=wrapper + excluded, activations=activations)
        rounds.append({**_judge(fmt_name, fp32, path, held_out, "int8"), "excluded_nodes": list(excluded),
                       "file": path, "settings": settings})
        if rounds[-1]["passed"] is not False or round_ == GUARD_ROUNDS:
            break
        if ranked is None:  # the per-layer errors of the first attempt, worst first
            noisiest = derivation.noisiest
            ranked = [] if noisiest is None else [n for n in noisiest(prepared, path, calibration[:DEBUG_IMAGES])
                                                  if n not in ends and n not in wrapper]
        missing_ends = [n for n in ends if n not in excluded]
        more = missing_ends or [n for n in ranked if n not in excluded][:GUARD_STEP]
        if not more or len(excluded) + len(more) > cap:
            break
        excluded = excluded + more
        log.info("int8 guard: %s; keeping %d layer(s) float and quantizing again", rounds[-1]["why"], len(excluded))
    passing = [r for r in rounds if r["passed"] is not False]
    # None passes: the smallest drop, then the best agreement, then the fewest float layers
    chosen = passing[0] if passing else min(rounds, key=lambda r: (r["accuracy_drop"], -r.get("top1_agreement", 0.0),
                                                                   len(r["excluded_nodes"])))
    shutil.copyfile(chosen["file"], out)
    settings = chosen["settings"]
    for r in rounds:
        del r["file"], r["settings"]
    if chosen["passed"] is False:
        log.warning("int8 guard: a bar still fails (%s, the best of %d rounds kept); verify will say don't ship",
                    chosen["why"], len(rounds))
    settings["excluded_nodes"] = wrapper + chosen["excluded_nodes"]  # what the file keeps float, all of it
    return {**settings, "activations_p50_ms": timed,
            "guard": {"passed": chosen["passed"], "kept_round": rounds.index(chosen), "excluded_nodes":
                      chosen["excluded_nodes"], "wrapper_nodes": wrapper, "rounds": rounds}}


def _activations(fmt_name: str, prepared: Any, folder: Path, *, calibration: np.ndarray,
                 plan: QuantPlan) -> tuple[str, dict[str, float] | None]:
    """The INT8 activation type: the plan's where the format makes it; with `auto` and a choice, the faster one
    here. A format with one type (PT2E's int8) makes that one whatever the plan says, and the manifest says so."""
    made = FORMATS[fmt_name].derive["int8"].activations
    if plan.activations in made:
        return plan.activations, None
    if plan.activations == "auto" and len(made) > 1:
        return _faster_activations(fmt_name, prepared, folder, calibration=calibration, plan=plan)
    if plan.activations != "auto":
        log.info("%s int8: %s activations are not made by its quantizer; %s instead", fmt_name, plan.activations,
                 made[0])
    return made[0], None


def _faster_activations(fmt_name: str, prepared: Any, folder: Path, *, calibration: np.ndarray,
                        plan: QuantPlan) -> tuple[str, dict[str, float]]:
    """Quantize with each activation type the format makes and time them here (batch 1, all threads): which one
    pays depends on the CPU's integer kernels (VNNI favours uint8; S8S8 was slower than fp32 on one such CPU)."""
    fmt = FORMATS[fmt_name]
    derivation = fmt.derive["int8"]
    timed = {}
    for activations in derivation.activations:
        path = folder / f"{activations}{''.join(Path(fmt.file).suffixes)}"
        derivation.make(prepared, path, calibration=calibration, method=plan.method, exclude=[],
                        activations=activations)
        runner = fmt.load(path)
        batch = runner.inputs[0].shape[0] if runner.inputs else None
        x = np.repeat(calibration[:1], batch if isinstance(batch, int) else 1, axis=0)  # a fixed batch takes its size
        timed[activations] = round(_p50_ms(runner, x), 4)
    log.info("int8 activations: %s here", ", ".join(f"{a} p50 {ms:.2f} ms" for a, ms in timed.items()))
    return min(timed, key=timed.__getitem__), timed


def _p50_ms(runner: Any, x: np.ndarray, *, seconds: float = 0.5, warmup: int = 3) -> float:
    """A quick median latency: enough to tell a 2x difference, not a benchmark (verify times the result)."""
    for _ in range(warmup):
        runner(x)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _judge(fmt_name: str, fp32: Path, candidate: Path, held_out: Inputs, precision: str) -> dict[str, Any]:
    """The candidate against the fp32 file on the guard's held-out images (the run's test split, else its val
    split), by verify's bars for `precision`: `passed` (every bar; None when there are no labelled images to
    judge on)."""
    load = FORMATS[fmt_name].open
    labelled = held_out.targets >= 0
    split = held_out.info.get("part", "val")
    if not labelled.any():
        return {"passed": None, "why": f"no labelled {split} images to judge on", "images": 0, "split": split,
                "accuracy_drop": 0.0}
    x, targets = held_out.x[labelled], held_out.targets[labelled]
    figures = compare_logits(run_all(load(fp32), x), run_all(load(candidate), x), targets=targets)
    bars = BARS[precision]
    drop = figures["reference_accuracy"] - figures["accuracy"]
    images = f"{len(x)} {split} images"
    failing = [f"top-1 agreement {figures['top1_agreement']:.1%} < {bars.min_top1:.0%} on {images}"] \
        if figures["top1_agreement"] < bars.min_top1 else []
    if bars.max_accuracy_drop is not None and drop > bars.max_accuracy_drop:
        failing.append(f"accuracy drop {100 * drop:.1f} pt > {100 * bars.max_accuracy_drop:.0f} pt on {images} "
                       f"({100 * figures['accuracy']:.1f} % vs {100 * figures['reference_accuracy']:.1f} %)")
    if bars.rtol is not None and figures["max_rel_diff"] > bars.rtol:
        failing.append(f"max diff / logit scale {figures['max_rel_diff']:.3g} > {bars.rtol:g} on {images}")
    return {"passed": not failing, "accuracy_drop": drop, "why": "; ".join(failing) or "bars hold",
            "images": int(len(x)), "split": split,
            "top1_agreement": figures["top1_agreement"], "accuracy": figures["accuracy"],
            "fp32_accuracy": figures["reference_accuracy"], "max_rel_diff": figures["max_rel_diff"],
            "accuracy_ci": figures["accuracy_ci"], "fp32_accuracy_ci": figures["reference_accuracy_ci"]}
