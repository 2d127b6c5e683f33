"""Backbones by name at full size: the example systems through export and verify on real photos, and a by-name
backbone with offline ImageNet weights trained on photos beside its shipped twin.

    .venv/bin/python benchmarks/bench_backbones.py --save                 # flowers128 (default --photos)
    .venv/bin/python benchmarks/bench_backbones.py --quick                # small variants at 32 px: a smoke test

Part 1, the example systems (none has ImageNet weights that load offline here): ResNet-50 with an MLP head,
EfficientNet-B4 at its 380 px, ViT-B/16 with LoRA on its Linear layers, ConvNeXt-Base — each at its weights' own
input size, with random weights made to give real-magnitude logits (`edgetl.testing.make_run`: BatchNorm
statistics calibrated, head scaled, LoRA B non-zero), (set on 32 train photos), exported as `edgetl export` does (fold BatchNorm, merge LoRA,
ONNX + TorchScript) and verified as `edgetl verify` does (parity with the checkpoint on `--samples` flowers val
photos plus noise, with verify's bars; latency in onnxruntime at batch 1). Also one training step's throughput at
that size (batch 16, the last two groups and the head trainable, AdamW): what a phase of a user's run costs here.
No accuracy: these weights are random; with a user's own weights (`--weights PATH`) the same files come out.

Part 2, weights offline: `timm:tf_efficientnet_lite0` by name against the shipped `efficientnet_lite0` (the same
network), each trained with the shipped Lite0 recipe on `--per-class` train photos per class and the whole val
split: best val accuracy, training time, ONNX size and p50. The by-name model is grouped by timm's group_matcher
and found sequential by the probe, so it caches like the shipped one; the two should agree.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_backbones"
DEFAULT_PHOTOS = common.REPO.parent / "shared" / "data" / "flowers128"
SYSTEMS = {  # backbone -> (what the example does, make_run extras)
    "torchvision:resnet50": ("ResNet-50 + MLP head", {"head": {"hidden": [512], "dropout": 0.2}}),
    "torchvision:efficientnet_b4": ("EfficientNet-B4, replaced head", {}),
    "torchvision:vit_b_16": ("ViT-B/16 + LoRA on Linear", {"lora": {"rank": 8, "targets": ["linear"]}}),
    "torchvision:convnext_base": ("ConvNeXt-Base, replaced head", {}),
}
QUICK = {
    "timm:resnet18": ("timm ResNet-18 + MLP head", {"head": {"hidden": [32], "dropout": 0.2}}),
    "timm:vit_tiny_patch16_224": ("ViT-Tiny + LoRA on Linear", {"lora": {"rank": 4, "targets": ["linear"]}}),
}


def train_step_throughput(backbone: str, *, image_size: int, head: dict | None, steps: int) -> float:
    """Images/s of AdamW steps with the last two groups and the head trainable, batch 16, at `image_size`.

    The phase a recipe's `train = "last:2"` sets up, in plain torch on the backbone's public layer groups: those
    groups train (the rest frozen, in eval mode), BatchNorm frozen (eval statistics, affine terms not trained, the
    recipe's default `bn = "frozen"`), rates 1e-4 (body) and 1e-3 (head), weight decay 0.01 except on norms,
    biases and tokens."""
    import torch
    from torch import nn

    from edgetl.backbones import MLPHead, create_model, get_backbone

    bb = get_backbone(backbone)
    model = create_model(bb, num_classes=5, image_size=image_size, head=MLPHead(tuple(head["hidden"]), head["dropout"])
                         if head else None)
    groups = bb.groups(model)
    trainable = [*groups[:-1][-2:], groups[-1]]
    model.requires_grad_(False)
    model.eval()
    for group in trainable:
        for module in group.modules:
            module.requires_grad_(True)
            module.train()
        for param in group.params:  # a ViT's class token and position embeddings
            param.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            module.requires_grad_(False)
            module.eval()
    param_groups = []
    for group in trainable:
        lr = 1e-3 if group is groups[-1] else 1e-4
        params = [p for p in group.parameters() if p.requires_grad]
        tokens = {id(p) for p in group.params}
        decayed = [p for p in params if p.ndim > 1 and id(p) not in tokens]
        rest = [p for p in params if p.ndim <= 1 or id(p) in tokens]
        param_groups += [{"params": ps, "lr": lr, "weight_decay": wd} for wd, ps in ((0.01, decayed), (0.0, rest)) if ps]
    optimizer = torch.optim.AdamW(param_groups)
    x, y = torch.randn(16, 3, image_size, image_size), torch.randint(0, 5, (16,))
    times = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return 16 / (sum(times[1:]) / steps)


def calibration_photos(photos: Path, preprocessing, *, count: int = 32):
    """`count` train photos, round-robin over classes, preprocessed as the model's weights expect: what a random
    net's BatchNorm statistics and head scale are set on, so its logits on photos have a real magnitude."""
    import numpy as np
    import torch

    from edgetl.preprocessing import preprocess_image

    classes = [sorted(p for p in d.iterdir() if p.is_file()) for d in sorted((photos / "train").iterdir()) if d.is_dir()]
    picked = [files[i] for i in range(count) for files in classes if i < len(files)][:count]
    return torch.from_numpy(np.stack([preprocess_image(p, preprocessing) for p in picked]))


def example_system(backbone: str, extras: dict, *, root: Path, photos: Path | None, samples: int, quick: bool
                   ) -> dict[str, Any]:
    from edgetl.backbones import get_backbone
    from edgetl.export import export_run
    from edgetl.testing import make_run
    from edgetl.verify import ChecksFailed, TimingPlan, VerifySettings, verify_run

    size = 32 if quick else get_backbone(backbone).preprocessing.crop_size
    started = time.perf_counter()
    calibration = calibration_photos(photos, get_backbone(backbone).preprocessing.scaled(size)) if photos else None
    run = make_run(root, backbone=backbone, num_classes=5, image_size=size, calibration=calibration, **extras)
    made = time.perf_counter()
    export_run(run, formats=("onnx", "torchscript"))
    export_s = time.perf_counter() - made
    settings = VerifySettings(data=str(photos / "val") if photos else None, samples=samples, threads=(2,),
                              timing=TimingPlan(seconds=0.3 if quick else 1.0, min_iterations=5 if quick else 10))
    try:
        report = verify_run(run, settings).report
    except ChecksFailed as e:  # a failed bar is a result to show: the exception carries the whole report
        report = e.result.report
    onnx = report.parity["model.onnx"]
    latency = {(r["runtime"], r["threads"]): r["p50_ms"] for r in report.latency if r["batch"] == 1}
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return {
        "backbone": backbone, "image_size": size, "params": manifest["model"]["params"],
        "bn_folded": manifest["model"]["bn_folded"], "norms_kept": manifest["model"].get("norms_kept"),
        "lora_merged": manifest["model"]["lora_merged"],
        "onnx_mb": round((run / "export" / "model.onnx").stat().st_size / 2**20, 1),
        "export_s": round(export_s, 1), "make_s": round(made - started, 1),
        "onnx_max_abs_diff": onnx["max_abs_diff"], "reference": report.reference,
        "top1_agreement": onnx["top1_agreement"],
        "torchscript_max_abs_diff": report.parity["model.torchscript.pt"]["max_abs_diff"],
        "ort_p50_ms": latency.get(("onnx", 2)), "eager_p50_ms": latency.get(("eager", 2)),
        "verify_passed": report.passed, "failures": report.failures,
        "train_img_s": round(train_step_throughput(backbone, image_size=size, head=extras.get("head"),
                                                   steps=2 if quick else 3), 2),
    }


def trained_pair(photos: Path, *, per_class: int, root: Path, quick: bool) -> list[dict[str, Any]]:
    from bench_train import photo_subset

    from edgetl.export import export_run
    from edgetl.recipe import load_recipe
    from edgetl.training import train_run
    from edgetl.verify import VerifySettings, verify_run

    data = photo_subset(photos, root / "photos", per_class=per_class)
    rows = []
    for backbone in ("efficientnet_lite0", "timm:tf_efficientnet_lite0"):
        overrides = {"data": str(data), "backbone": backbone, **({"image_size": 64} if quick else {})}
        recipe = load_recipe("efficientnet_lite0", overrides=overrides, epochs_scale=0.2 if quick else None)
        run = root / backbone.replace(":", "-")
        started = time.perf_counter()
        summary = train_run(recipe, run_dir=run, device="cpu")
        train_s = time.perf_counter() - started
        export_run(run, formats=("onnx",))
        report = verify_run(run, VerifySettings(samples=64, threads=(2,))).report
        rows.append({"backbone": backbone, "best_val_acc": summary.best_val_acc, "train_s": round(train_s, 1),
                     "onnx_mb": round((run / "export" / "model.onnx").stat().st_size / 2**20, 1),
                     "ort_p50_ms": next(r["p50_ms"] for r in report.latency if r["runtime"] == "onnx" and r["batch"] == 1),
                     "onnx_accuracy": report.parity["model.onnx"]["accuracy"], "verify_passed": report.passed})
    return rows


def main() -> None:
    p = common.parser(SCRIPT, __doc__)
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="flowers128-like folder (train/, val/)")
    p.add_argument("--samples", type=int, default=64, help="val photos verify checks each system on")
    p.add_argument("--per-class", type=int, default=100, help="train photos per class for part 2")
    p.add_argument("--skip-training", action="store_true", help="part 1 only")
    args = p.parse_args()
    common.quiet_logs()
    from edgetl.errors import EdgetlError

    quick = args.quick
    photos = args.photos if args.photos.is_dir() else None
    busy = common.warn_if_busy()
    systems = QUICK if quick else SYSTEMS
    with tempfile.TemporaryDirectory(dir=common.OUT_DIR.parent if common.OUT_DIR.parent.is_dir() else None) as tmp:
        rows = []
        for backbone, (what, extras) in systems.items():
            print(f"{backbone}: {what}", file=sys.stderr, flush=True)
            try:
                rows.append({"system": what, **example_system(backbone, extras, root=Path(tmp) / "systems",
                                                              photos=photos, samples=args.samples, quick=quick)})
            except EdgetlError as e:  # a stage refused this stand-in: the reason is the result
                rows.append({"system": what, "backbone": backbone, "error": str(e)})
        pair = ([] if args.skip_training or photos is None else
                trained_pair(photos, per_class=args.per_class, root=Path(tmp) / "pair", quick=quick))
    common.console.print(common.table(
        "Example systems by name, full size, random weights (export + verify on flowers photos)",
        ["system", "input", "params", "ONNX MB", "BN folded", "ONNX max |Δ|", "agreement", "ORT p50",
         "eager p50", "train img/s", "verify"],
        [(r["system"], "—", "—", "—", "—", "—", "—", "—", "—", "—", f"refused: {r['error'][:60]}") if "error" in r else
         (r["system"], f"{r['image_size']} px", f"{r['params'] / 1e6:.1f} M", r["onnx_mb"],
          r["bn_folded"] or "0 (LN)", common.fmt(r["onnx_max_abs_diff"], ".1e"),
          f"{100 * r['top1_agreement']:.0f} %", common.fmt(r["ort_p50_ms"], ".1f", " ms"),
          common.fmt(r["eager_p50_ms"], ".1f", " ms"), r["train_img_s"], "pass" if r["verify_passed"] else "FAIL")
         for r in rows]))
    if pair:
        common.console.print(common.table(
            f"By name with offline weights: shipped Lite0 recipe, {args.per_class} train photos per class",
            ["backbone", "best val acc", "train s", "ONNX MB", "ORT p50 2 thr", "verify"],
            [(r["backbone"], f"{100 * r['best_val_acc']:.1f} %", r["train_s"], r["onnx_mb"],
              common.fmt(r["ort_p50_ms"], ".1f", " ms"), "pass" if r["verify_passed"] else "FAIL") for r in pair]))
    common.write_results(SCRIPT, {"machine": common.fingerprint(), "environment": common.environment(), "busy": busy,
                                  "mode": common.mode_of(args), "photos": str(photos), "systems": rows, "pair": pair},
                         out=args.out, save=args.save)


if __name__ == "__main__":
    main()
