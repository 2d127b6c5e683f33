"""Inference: onnxruntime on edgetl's exported file vs PyTorch eager and TorchScript, batch 1, 1 thread and all.

    .venv/bin/python benchmarks/bench_inference.py            # mobilenet_v3_small, efficientnet_lite0, resnet18 at 224 px
    .venv/bin/python benchmarks/bench_inference.py --quick    # mobilenet_v3_small at 64 px, short timings
    .venv/bin/python benchmarks/bench_inference.py --full     # all five backbones, longer timings

Each backbone is a random model with realistic BatchNorm statistics written as a run directory (no training:
speed does not depend on the weights' values), exported with `edgetl.export.export_run` (BN folded, ONNX +
TorchScript). Timed per thread count (1, and every core this process may use), batch 1:

* onnx: onnxruntime CPUExecutionProvider on `model.onnx` (`FORMATS["onnx"].load`, ORT_ENABLE_ALL)
* eager NCHW: the checkpoint as PyTorch runs it, unfolded (`edgetl.model.checkpoint.load_model`, run as
  `edgetl verify` runs it: `edgetl.formats.base.torch_runner`), inference_mode
* eager channels_last: the same model and input converted to channels_last (the conversion is timed)
* torchscript: the exported frozen trace (`FORMATS["torchscript"].load`)

Timing is `edgetl.verify.time_runner`: perf_counter_ns around each call, warm-up excluded, adaptive iteration
count (reported). Achieved GFLOP/s = 2·MACs / p50 (MACs: conv + matmul, torch's FlopCounterMode, as in the
manifest), shown against the machine's practical fp32 peak: the fastest of repeated n×n `torch.mm` calls at the
same thread count, measured right before that backbone's runs.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_inference"
ALL_BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_b0", "resnet18")
MODES: dict[str, dict[str, Any]] = {
    "quick": {"backbones": ["mobilenet_v3_small"], "image_size": 64, "matmul_n": 512},
    "default": {"backbones": ["mobilenet_v3_small", "efficientnet_lite0", "resnet18"], "image_size": 224, "matmul_n": 1024},
    "full": {"backbones": list(ALL_BACKBONES), "image_size": 224, "matmul_n": 2048},
}
RUNTIMES = ("onnx", "eager NCHW", "eager channels_last", "torchscript")


def runners(run_dir: Path) -> dict[str, Any]:
    """runtime name -> (make(threads) -> runner, file it times)."""
    import torch

    from edgetl.formats import FORMATS
    from edgetl.formats.base import torch_runner
    from edgetl.model.checkpoint import load_model

    best, export = run_dir / "checkpoints" / "best.pt", run_dir / "export"

    def load_eager(path: Path, *, threads: int):
        model, _ = load_model(path)
        return torch_runner(model)

    def channels_last(path: Path, *, threads: int):
        model, _ = load_model(path)
        model = model.eval().to(memory_format=torch.channels_last)

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

        return run

    return {"onnx": (FORMATS["onnx"].load, export / FORMATS["onnx"].file), "eager NCHW": (load_eager, best),
            "eager channels_last": (channels_last, best),
            "torchscript": (FORMATS["torchscript"].load, export / FORMATS["torchscript"].file)}


def bench_backbone(backbone: str, *, root: Path, image_size: int, thread_counts: list[int], plan, matmul_n: int) -> dict[str, Any]:
    import numpy as np

    from edgetl.export import export_run
    from edgetl.verify import time_runner

    run_dir = common.make_fake_run(root, backbone=backbone, image_size=image_size)
    exported = export_run(run_dir, formats=("onnx", "torchscript"))
    macs = exported.macs
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    rows, peaks = [], {}
    for threads in thread_counts:
        peak = common.matmul_peak(threads=threads, n=matmul_n, seconds=plan.seconds)
        peaks[threads] = peak
        eager_p50 = None
        for name, (load, path) in runners(run_dir).items():
            t = time_runner(functools.partial(load, path, threads=threads), runtime=name, x=x, threads=threads, plan=plan, file=path)
            gflops = 2 * macs / (t.p50_ms * 1e6) if macs else None
            if name == "eager NCHW":
                eager_p50 = t.p50_ms
            rows.append({"runtime": name, "threads": threads, "p50_ms": t.p50_ms, "p90_ms": t.p90_ms,
                         "images_per_s": 1e3 / t.p50_ms, "iterations": t.iterations, "warmup": t.warmup,
                         "cold_start_ms": t.cold_start_ms, "file": t.file, "file_bytes": t.file_bytes,
                         "gflops": gflops, "pct_of_peak": 100 * gflops / peak["gflops"] if gflops else None})
        for row in rows:
            if row["threads"] == threads:
                row["speedup_vs_eager"] = common.ratio(eager_p50, row["p50_ms"])
    return {"backbone": backbone, "image_size": image_size, "macs": macs, "params": exported.deploy.params,
            "bn_folded": exported.deploy.bn_folded, "matmul_peak": peaks, "rows": rows}


def print_report(results: list[dict[str, Any]]) -> None:
    for r in results:
        body = []
        for row in r["rows"]:
            peak = r["matmul_peak"][row["threads"]]["gflops"]
            body.append((row["runtime"], row["threads"], f"{row['p50_ms']:.2f}", f"{row['p90_ms']:.2f}",
                         f"{row['images_per_s']:.0f}", row["iterations"], common.fmt(row["gflops"], ".1f"),
                         f"{row['pct_of_peak']:.0f} % of {peak:.0f}" if row["pct_of_peak"] else None,
                         common.fmt(row["speedup_vs_eager"], ".2f", "×")))
        caption = (f"batch 1, {r['image_size']} px, {r['macs'] / 1e6:.0f} M MACs, {r['params'] / 1e6:.2f} M params "
                   f"({r['bn_folded']} BN folded in the exported files; eager is unfolded). Peak: "
                   + ", ".join(f"torch.mm {p['n']}² at {t} thread(s) {p['gflops']:.0f} GFLOP/s (median call {p['gflops_p50']:.0f})" for t, p in r["matmul_peak"].items())
                   + ". Speed-up: eager NCHW p50 / this p50 at the same thread count.")
        common.console.print(common.table(f"bench_inference · {r['backbone']}",
                                          ["runtime", "threads", "p50 ms", "p90 ms", "img/s", "iters", "GFLOP/s", "of peak", "vs eager"],
                                          body, caption=caption))


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backbone: onnxruntime's speed-up over eager and its share of peak, at 1 thread and at all."""
    out = []
    for r in results:
        for threads in sorted({row["threads"] for row in r["rows"]}):
            by = {row["runtime"]: row for row in r["rows"] if row["threads"] == threads}
            out.append({"backbone": r["backbone"], "threads": threads, "onnx_p50_ms": by["onnx"]["p50_ms"],
                        "eager_p50_ms": by["eager NCHW"]["p50_ms"],
                        "onnx_speedup_vs_eager": by["onnx"]["speedup_vs_eager"],
                        "best_runtime": min(by.values(), key=lambda row: row["p50_ms"])["runtime"],
                        "onnx_pct_of_peak": by["onnx"]["pct_of_peak"]})
    return out


def main() -> None:
    from edgetl.verify import all_threads

    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--threads", type=int, action="append", help="thread count (repeatable; default: 1 and all cores)")
    args = p.parse_args()
    common.quiet_logs()
    mode_name = common.mode_of(args)
    mode = MODES[mode_name]
    busy = common.warn_if_busy()
    started = time.perf_counter()
    cores = all_threads()
    thread_counts = args.threads or sorted({1, cores})
    plan = common.timing_plan(mode_name)
    results = []
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for backbone in args.backbone or mode["backbones"]:
            common.console.print(f"[bold]{backbone}[/]: export, then {len(RUNTIMES)} runtimes × threads {thread_counts}")
            results.append(bench_backbone(backbone, root=Path(tmp), image_size=args.image_size or mode["image_size"],
                                          thread_counts=thread_counts, plan=plan, matmul_n=mode["matmul_n"]))
    print_report(results)
    data = {"script": SCRIPT, "mode": mode_name, "machine": common.fingerprint(), "environment": common.environment(),
            "busy_at_start": busy, "others_during_run": noise, "timing_plan": plan.to_dict(), "seconds": time.perf_counter() - started,
            "results": results, "summary": summarize(results)}
    common.write_results("inference", data, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
