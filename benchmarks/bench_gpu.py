"""The GPU path, measured: training throughput per backbone against timm's own benchmark, and a real-photo run.

    python benchmarks/bench_gpu.py --photos ../shared/data/flowers128 --timm-benchmark PATH/TO/timm/benchmark.py
    .venv/bin/python benchmarks/bench_gpu.py --quick     # CPU smoke test: tiny sizes, seconds

1. Throughput. Each backbone at 224 px, batch 256, every layer trainable, AdamW, label smoothing: images/s of
   edgetl's own training loop (`edgetl.training.train_one_epoch`: its bf16 autocast and channels_last choice)
   on device-resident inputs, and peak CUDA memory. The baseline is timm's `benchmark.py --bench train --amp
   --amp-dtype bfloat16 --channels-last --opt adamw` for the same architecture, run on the same GPU in the same
   job (timm publishes its training figures for an RTX 3090 only). Neither side counts data loading.
2. Real photos. `edgetl run --recipe efficientnet_lite0 --data PHOTOS --device cuda`, exactly as a user runs
   it (the progressive recipe, its cached phases, export, verify): time per phase, val accuracy, and verify's
   parity of the exported fp32 ONNX against the bf16-trained checkpoint (the fp32 bars).

Without a CUDA GPU, the default and --full modes skip (exit 0, a JSON that says why) unless `--device cpu` asks
for the CPU; --quick always runs, on the CPU when there is no GPU.

Writes JSON (`--out`); `--save` merges it into benchmarks/results/<machine>.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_gpu"
# edgetl's backbone -> the same architecture's name in timm
TIMM_NAMES = {"resnet18": "resnet18", "mobilenet_v3_small": "mobilenetv3_small_100",
              "mobilenet_v3_large": "mobilenetv3_large_100", "efficientnet_b0": "efficientnet_b0",
              "efficientnet_lite0": "tf_efficientnet_lite0"}


def edgetl_throughput(name: str, *, batch: int, size: int, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Images/s of edgetl's training loop with every layer trainable, inputs already on the device."""
    import torch
    from torch import nn

    from edgetl.backbones import get_backbone
    from edgetl.training import Batcher, Callbacks, memory_format, train_one_epoch

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    model = get_backbone(name).build(1000).to(dev, memory_format=memory_format(dev)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    # Normalised inputs resident on the device in the training memory format: the loop's `features` path takes
    # them as they are, so only the model's step is timed (as timm's benchmark does with its synthetic batch).
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=memory_format(dev))
    y = torch.randint(0, 1000, (batch,), device=dev)

    def batches(n_steps: int) -> tuple[Batcher, int]:
        images = x.repeat(n_steps, 1, 1, 1).contiguous(memory_format=memory_format(dev))
        data = Batcher(images, y.repeat(n_steps), preprocessing=None, device=dev, features=True)  # type: ignore[arg-type]
        return data, images.numel() * images.element_size()

    def epoch(data: Batcher) -> float:
        sync()
        started = time.perf_counter()
        train_one_epoch(model, data, optimizer=optimizer, scheduler=scheduler,
                        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1), batch_size=batch,
                        generator=torch.Generator().manual_seed(0), callbacks=Callbacks())
        sync()
        return time.perf_counter() - started

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    epoch(batches(warmup)[0])
    data, resident = batches(steps)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = epoch(data)
    # the step's own memory: the `steps` synthetic batches held on the device (4.3 GiB at 30 x 256 x 224 px) are
    # the benchmark's, not training's (timm's benchmark holds one batch)
    peak = (torch.cuda.max_memory_allocated() - resident) / 2**20 if dev.type == "cuda" else None
    return {"images_per_s": round(batch * steps / seconds, 1), "step_ms": round(1000 * seconds / steps, 2),
            "peak_memory_mib": None if peak is None else round(peak)}


def timm_throughput(script: Path, name: str, *, batch: int, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """timm's own benchmark.py, train mode, AMP bf16 + channels_last + AdamW, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "timm.json"
        cmd = [sys.executable, str(script), "--bench", "train", "--model", name, "--amp", "--amp-dtype", "bfloat16",
               "--channels-last", "--opt", "adamw", "-b", str(batch), "--img-size", str(size), "--num-classes", "1000",
               "--num-warm-iter", str(warmup), "--num-bench-iter", str(steps), "--no-retry",
               "--results-file", str(result), "--results-format", "json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not result.exists():
            return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
        rows = json.loads(result.read_text())
    row = rows[0] if isinstance(rows, list) else rows
    return {"images_per_s": round(float(row["train_samples_per_sec"]), 1), "step_ms": float(row["train_step_time"])}


def photo_run(photos: Path, *, recipe: str, device: str, out: Path, epochs_scale: float | None) -> dict[str, Any]:
    """`edgetl run` as a user types it; the figures come from the run's own train.json and verify.json."""
    run = out / "run"
    cmd = [sys.executable, "-m", "edgetl", "run", "--recipe", recipe, "--data", str(photos), "--device", device,
           "--out", str(run), "--samples", "256", "--format", "onnx"]
    if epochs_scale is not None:
        cmd += ["--epochs-scale", str(epochs_scale)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - started
    common.console.print(done.stdout[-4000:], markup=False)
    if done.returncode != 0:
        common.console.print(done.stderr[-4000:], markup=False)
    train = json.loads((run / "train.json").read_text()) if (run / "train.json").exists() else {}
    verify = json.loads((run / "verify.json").read_text()) if (run / "verify.json").exists() else {}
    return {"exit_code": done.returncode, "wall_seconds": round(wall, 1), "device": train.get("device"),
            "best_val_acc": train.get("best_val_acc"), "train_seconds": train.get("wall_seconds"),
            "phases": [{k: p[k] for k in ("name", "epochs", "seconds", "best_val_acc")} for p in train.get("phases", [])],
            "verify_passed": verify.get("passed"), "parity": verify.get("parity")}


def main() -> None:
    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--photos", type=Path, help="a folder with train/ and val/ class folders (real photos)")
    p.add_argument("--timm-benchmark", type=Path, help="timm's benchmark.py (from its repository) for the baseline")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    p.add_argument("--recipe", default="efficientnet_lite0", help="--photos: the recipe to run (default: %(default)s)")
    p.add_argument("--epochs-scale", type=float, help="--photos: multiply the recipe's epochs (a smoke test)")
    args = p.parse_args()
    import torch

    quick = args.quick
    if not quick and args.device is None and not torch.cuda.is_available():
        reason = "no CUDA GPU here: bench_gpu measures the GPU path (--quick: a CPU smoke test; --device cpu: force it)"
        common.console.print(f"[yellow]skipped: {reason}[/]")
        common.write_results("gpu", {"script": SCRIPT, "mode": common.mode_of(args), "skipped": reason,
                                     "environment": common.environment()}, out=args.out, save=False)
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbones = args.backbone or (["mobilenet_v3_small"] if quick else list(TIMM_NAMES))
    batch, size = (4, 64) if quick else (args.batch_size, args.image_size or 224)
    steps, warmup = (2, 1) if quick else (args.steps, 10)
    results: dict[str, Any] = {"environment": common.environment(), "device": device, "batch_size": batch,
                               "image_size": size, "steps": steps, "throughput": {}}
    for name in backbones:
        row = {"edgetl": edgetl_throughput(name, batch=batch, size=size, steps=steps, warmup=warmup, device=device)}
        if args.timm_benchmark and device == "cuda":
            row["timm"] = timm_throughput(args.timm_benchmark, TIMM_NAMES[name], batch=batch, size=size, steps=steps,
                                          warmup=warmup)
            if "images_per_s" in row["timm"]:
                row["ratio_to_timm"] = round(row["edgetl"]["images_per_s"] / row["timm"]["images_per_s"], 3)
        results["throughput"][name] = row
        common.console.print(f"{name}: {row}")
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            results["photos"] = photo_run(args.photos, recipe=args.recipe, device=device, out=Path(tmp),
                                          epochs_scale=args.epochs_scale)
        common.console.print(f"photos: {results['photos']}")
    common.write_results("gpu", results, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
