"""Every export format × precision of one trained run: size, speed, parity and accuracy on real photos.

    .venv/bin/python benchmarks/bench_formats.py --save                     # Lite0 recipe on flowers128 (default)
    .venv/bin/python benchmarks/bench_formats.py --run artifacts/RUN        # reuse a trained run: no training
    .venv/bin/python benchmarks/bench_formats.py --quick                    # generated shapes, 32 px: a smoke test

The run: by default the shipped `efficientnet_lite0` recipe (ImageNet weights) trained on the train split of
`--photos` (default ../shared/data/flowers128; `--per-class N` takes the first N train photos of each class); it is
kept under `--work` and its path printed, so `--run DIR` can reuse it later. Then each format of the registry
(onnx, torchscript, executorch, litert) is exported on its own (`export_run(out=WORK/export/<format>)`, so a
converter failure or a missing extra skips that format with its reason and the others still run) at fp32 and at
int8 where the format makes it (`FORMATS[name].all_precisions`), INT8 calibrated and guarded as `edgetl export` does.

Per file: size (MiB), p50 at batch 1 on 1 thread and on all threads (verify's `time_runner`: the file loaded in
its own runtime at that thread count, warm-up excluded, at least `--iterations` calls and `--seconds`), and parity
with the PyTorch checkpoint on `--images` val photos (round-robin over classes) plus verify's 4 noise tensors,
preprocessed from the manifest exactly as verify does (`gather_inputs`, `check_parity` with verify's bars per
precision): max |Δ| of the logits, top-1 agreement, accuracy on the photos, and whether verify's bars hold. The
manifest's per-file facts (runtime, versions, ExecuTorch's XNNPACK delegation share, how INT8 was made) go to the
JSON. The val photos are the split training chose its best epoch on, as in bench_quant: accuracy is the same for
every file, and the differences between files are what this measures.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_formats"
DEFAULT_PHOTOS = common.REPO.parent / "shared" / "data" / "flowers128"
PRECISIONS = ("fp32", "int8")
MIB = 2**20


# --- the run --------------------------------------------------------------------------------------------------


def train_run(backbone: str, *, data: Path, image_size: int, quick: bool, run: Path) -> dict[str, Any]:
    """bench_quant's recipe (Lite0: the shipped recipe; others: every layer from random weights), on `data`."""
    from bench_quant import PRETRAINED, recipe_for

    from edgetl.training import train_run

    if run.exists():
        shutil.rmtree(run)
    started = time.perf_counter()
    summary = train_run(recipe_for(backbone, data=str(data), image_size=image_size, quick=quick), run_dir=run,
                    device="cpu")
    return {"backbone": backbone, "pretrained": backbone in PRETRAINED and not quick, "image_size": image_size,
            "train_s": round(time.perf_counter() - started, 1), "best_val_acc_train": summary.best_val_acc}


def export_formats(run: Path, root: Path, *, quick: bool) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """Each format into its own folder at fp32 (+ int8 where it makes it); a failure skips that format only."""
    from edgetl.errors import EdgetlError
    from edgetl.export import QuantPlan, export_run
    from edgetl.formats import FORMATS

    plan = QuantPlan(calibration_images=16 if quick else 200, guard_images=16 if quick else 200)
    exported, skipped, seconds = {}, {}, {}
    for name, fmt in FORMATS.items():
        missing = fmt.missing()
        if missing:
            skipped[name] = missing
            common.console.print(f"[yellow]skip {name}: {missing}[/]")
            continue
        precisions = [p for p in PRECISIONS if p in fmt.all_precisions]
        common.console.print(f"  export {name} ({', '.join(precisions)})")
        started = time.perf_counter()
        try:
            export_run(run, formats=[name], precisions=precisions, plan=plan, out=root / name)
        except EdgetlError as e:  # ExportError included: a converter gap is a result, not a crash
            skipped[name] = str(e)
            common.console.print(f"[yellow]skip {name}: {e}[/]")
            continue
        seconds[name] = round(time.perf_counter() - started, 1)
        exported[name] = root / name
    return exported, skipped, seconds


def existing_exports(root: Path) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """`--export DIR` from an earlier run of this script: DIR/<format>/manifest.json."""
    from edgetl.formats import FORMATS

    exported = {name: root / name for name in FORMATS if (root / name / "manifest.json").is_file()}
    skipped = {name: f"not in {root}" for name in FORMATS if name not in exported}
    return exported, skipped, {}


# --- the measurements ----------------------------------------------------------------------------------------------


def measure(run: Path, exported: dict[str, Path], *, data: str | None, images: int, threads: list[int],
            plan) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Parity and accuracy (verify's helpers and bars), then latency per thread count (verify's time_runner)."""
    import numpy as np

    from edgetl.compare.gate import BARS, Gate
    from edgetl.compare.parity import PARITY_BATCH, accuracy, check_parity, run_batched
    from edgetl.data.inputs import gather_inputs
    from edgetl.formats import FORMATS
    from edgetl.formats.base import torch_runner
    from edgetl.model.checkpoint import load_model
    from edgetl.rundir import RunDir, read_manifest
    from edgetl.verify import time_runner

    manifests = {name: read_manifest(folder / "manifest.json") for name, folder in exported.items()}
    first = next(iter(manifests.values()))
    checkpoint = RunDir(run).checkpoint(first.run.checkpoint)
    model, _ = load_model(checkpoint)
    inputs = gather_inputs(run, labels=first.labels, preprocessing=first.preprocessing, data=data, samples=images)
    reference = run_batched(torch_runner(model), inputs.x, batch=PARITY_BATCH)
    del model
    real = inputs.info["images"]
    eager = {"format": "pytorch", "precision": "fp32", "file": checkpoint.name, "bytes": None, "runtime": "eager",
             "path": checkpoint, "load": load_eager, "parity": {"accuracy": accuracy(reference, inputs.targets)}}
    rows = [eager]
    for name, manifest in manifests.items():
        for artifact in manifest.artifacts:
            path = exported[name] / artifact.file
            common.console.print(f"  parity {artifact.file} on {real} photos + {inputs.info['random']} noise")
            gate = Gate()
            row = {"format": name, "precision": artifact.precision, "file": artifact.file, "bytes": artifact.bytes,
                   "path": path, "load": FORMATS[name].load, **artifact_facts(artifact)}
            try:
                runner = FORMATS[name].load(path)
            except Exception as e:  # noqa: BLE001 — a file its runtime refuses is this row's result
                row.update(parity=None, bars_failed=[f"does not load: {e}"])
                rows.append(row)
                continue
            started = time.perf_counter()
            figures = check_parity(runner, manifest, artifact.file, gate, inputs=inputs, reference=reference,
                                   bars=BARS.get(artifact.precision))
            del runner
            row.update(parity=figures, parity_s=round(time.perf_counter() - started, 2),
                       bars=dataclasses.asdict(BARS[artifact.precision]) if artifact.precision in BARS else None,
                       bars_failed=[c.message() for c in gate.checks if not c.passed])
            rows.append(row)
    # Latency: per thread count, the checkpoint then every file, each loaded at that count (ExecuTorch's one
    # thread pool per process takes the last loaded runner's count), as `edgetl verify` times them.
    x = np.random.default_rng(0).standard_normal((1, *first.input.shape[1:])).astype(np.float32)
    for n in threads:
        for row in rows:
            if row.get("parity") is None:
                continue
            common.console.print(f"  latency {row['file']} · {n} thread(s)")
            timing = time_runner(functools.partial(row["load"], row["path"], threads=n), runtime=row["format"], x=x,
                                 threads=n, plan=plan, file=row["path"]).to_dict()
            row.setdefault("latency", {})[str(n)] = {k: timing[k] for k in (
                "p50_ms", "p90_ms", "mean_ms", "iterations", "warmup", "cold_start_ms", "first_call_ms", "rss_delta_mb")}
    for row in rows:
        del row["path"], row["load"]
    return rows, {**inputs.info, "reference_accuracy": eager["parity"]["accuracy"], "warnings": inputs.warnings}


def load_eager(path: Path, *, threads: int | None = None):
    """The checkpoint as PyTorch runs it (unfolded, eval, fp32), as `edgetl verify` times it; `time_runner` sets
    the threads."""
    from edgetl.formats.base import torch_runner
    from edgetl.model.checkpoint import load_model

    model, _ = load_model(path)
    return torch_runner(model)


def artifact_facts(artifact) -> dict[str, Any]:
    """The manifest entry's fields that matter here; INT8's guard rounds kept whole in the JSON."""
    entry = artifact.model_dump(exclude_none=True)
    return {k: entry[k] for k in ("runtime", "versions", "delegation", "quantization", "input", "output", "seconds",
                                  "opset", "sha256") if k in entry}


# --- the report -------------------------------------------------------------------------------------------------


def print_report(rows: list[dict[str, Any]], *, threads: list[int], title: str, caption: str) -> None:
    most = str(threads[-1])
    eager = (rows[0].get("latency") or {}).get(most, {}).get("p50_ms")
    table_rows = []
    for r in rows:
        p = r.get("parity") or {}
        lat = r.get("latency") or {}
        p50 = {t: lat.get(str(t), {}).get("p50_ms") for t in threads}
        share = (r.get("delegation") or {}).get("share")
        bars = "ref" if r["format"] == "pytorch" else "✗" if r.get("bars_failed") else "✓"
        table_rows.append([
            r["format"], r["precision"], common.fmt(r["bytes"] / MIB if r["bytes"] else None, ".2f"),
            *(common.fmt(p50[t], ".2f") for t in threads),
            common.fmt(common.ratio(eager, p50[threads[-1]]), ".2f", "×"),
            common.fmt(p.get("max_abs_diff"), ".1e"),
            common.fmt(100 * p["top1_agreement"] if p.get("top1_agreement") is not None else None, ".1f"),
            common.fmt(100 * p["accuracy"] if p.get("accuracy") is not None else None, ".1f"),
            common.fmt(100 * share if share is not None else None, ".0f"), bars])
    common.console.print(common.table(
        title, ["format", "precision", "MiB", *(f"p50 {t}t ms" for t in threads), f"vs eager {most}t",
                "max |Δ|", "agree %", "acc %", "XNNPACK %", "bars"], table_rows, left=2,
        caption="\n".join([caption, *(f"✗ {m}" for r in rows for m in r.get("bars_failed") or [])])))


def main() -> None:
    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--photos", type=Path, help=f"a folder with train/ and val/ class folders (default: {DEFAULT_PHOTOS}; "
                                               "--quick: generated shapes)")
    p.add_argument("--run", type=Path, help="reuse this trained run folder (its checkpoint): no training")
    p.add_argument("--export", type=Path, help="reuse WORK/export from an earlier run of this script: no export")
    p.add_argument("--work", type=Path, default=common.OUT_DIR / SCRIPT,
                   help="where the trained run and the exports go, replaced each time (default: %(default)s; "
                        "--quick: a temp folder)")
    p.add_argument("--per-class", type=int, help="train photos per class (default: the whole train split)")
    p.add_argument("--images", type=int, default=300, help="val photos for parity and accuracy (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per file and thread count (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=300, help="at least this many timed calls (default: %(default)s)")
    args = p.parse_args()
    common.quiet_logs()
    logging.getLogger("edgetl.compare.gate").setLevel(logging.ERROR)  # failed bars go into the table instead
    quick = args.quick
    backbones = args.backbone or (["resnet18"] if quick else ["efficientnet_lite0"])
    if len(backbones) != 1:
        p.error("one --backbone per invocation (the table is per backbone)")
    backbone = backbones[0]
    image_size = args.image_size or (32 if quick else 224)
    photos = args.photos or (None if quick else DEFAULT_PHOTOS)
    if photos is not None and not (photos / "val").is_dir():
        p.error(f"--photos {photos}: no val/ folder of class folders there")
    images = min(args.images, 12) if quick else args.images

    from edgetl.verify import TimingPlan, all_threads

    threads = sorted({1, all_threads()})
    plan = common.timing_plan("quick") if quick else TimingPlan(
        seconds=args.seconds, min_iterations=args.iterations, max_seconds=max(6.0, 4 * args.seconds), warmup=10)
    busy = common.warn_if_busy()
    started = time.perf_counter()
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        work = Path(tmp) if quick else args.work
        work.mkdir(parents=True, exist_ok=True)
        training: dict[str, Any] = {}
        if args.run is not None:
            run = args.run.resolve()
            source = f"reused run {run}"
            common.console.print(f"[bold]{run.name}[/]: reused (no training)")
        else:
            if photos is None:
                from edgetl.data.sample import make_image_folder

                data = make_image_folder(Path(tmp) / "data", classes=3, per_class=12, val_per_class=6, size=48, seed=0)
                source = "generated shapes"
            elif args.per_class:
                from bench_train import photo_subset

                data = photo_subset(photos, Path(tmp) / "photos", per_class=args.per_class)
                source = f"{photos} ({args.per_class} train photos per class)"
            else:
                data, source = photos, f"{photos} (whole train split)"
            run = work / f"run-{backbone}-{image_size}"
            common.console.print(f"[bold]{backbone}[/]: train on {source} ({image_size} px) → {run}")
            training = train_run(backbone, data=data, image_size=image_size, quick=quick, run=run)
        if args.export is not None:
            exported, skipped, export_s = existing_exports(args.export)
        else:
            common.console.print(f"export {', '.join(PRECISIONS)} per format → {work / 'export'}")
            exported, skipped, export_s = export_formats(run, work / "export", quick=quick)
        if not exported:
            common.console.print("[red]no format exported: nothing to measure[/]")
            sys.exit(1)
        val = str(photos) if photos is not None else (str(data / "val") if args.run is None else None)
        rows, checked = measure(run, exported, data=val, images=images, threads=threads, plan=plan)
    from edgetl.formats import FORMATS

    versions = "; ".join(f"{n} {', '.join(f'{k} {v}' for k, v in FORMATS[n].versions().items())}" for n in exported)
    caption = (f"{checked['images']} val photos + {checked['random']} noise tensors for parity (accuracy on the "
               f"{checked['labelled']} labelled); p50 at batch 1, {plan.seconds:g} s / ≥ {plan.min_iterations} calls per "
               f"setting; vs eager = PyTorch checkpoint p50 / file p50 at {threads[-1]} threads; XNNPACK = share of "
               f"the .pte graph delegated; bars: verify's for the precision. {versions}."
               + "".join(f"\nskipped {n}: {why}" for n, why in skipped.items()))
    print_report(rows, threads=threads, title=f"{backbone} at {image_size} px: format × precision", caption=caption)
    if not quick:
        common.console.print(f"the trained run stays in {run}: pass --run {run} to measure it again without training")
    data_out = {"script": SCRIPT, "mode": "photos" if photos is not None else common.mode_of(args), "source": source,
                "backbone": backbone, "image_size": image_size, "training": training, "run": str(run),
                "threads": threads, "timing": plan.to_dict(), "inputs": checked, "export_s": export_s,
                "skipped": skipped, "machine": common.fingerprint(), "environment": common.environment(),
                "busy_at_start": busy, "others_during_run": noise, "seconds": time.perf_counter() - started,
                "files": rows}
    common.write_results("formats_photos" if photos is not None else "formats", data_out, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
