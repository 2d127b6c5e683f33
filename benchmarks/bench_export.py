"""Export: seconds and file size per format and backbone, and what folding BatchNorm buys at inference.

    .venv/bin/python benchmarks/bench_export.py            # mobilenet_v3_small, efficientnet_lite0, resnet18 at 224 px
    .venv/bin/python benchmarks/bench_export.py --quick    # mobilenet_v3_small at 64 px, short timings
    .venv/bin/python benchmarks/bench_export.py --full     # all five backbones, longer timings

Per backbone, a random model with realistic BatchNorm statistics (a run directory, no training) is exported
three ways from the SAME checkpoint:

* edgetl (folded): `edgetl.export.export_run` (BN folded into the convs, ONNX + TorchScript; seconds and bytes
  from its manifest, plus the wall time of the whole call: load, fold, fold check, MAC count, writers);
* plain export: `torch.onnx.export` of the raw (unfolded) eval model with the same options as edgetl's writer
  (dynamo, dynamic batch, default opset, one self-contained file) — its onnxscript optimizer runs by default;
* plain, optimize=False: the same without the exporter's optimizer: the graph as traced, BN nodes and all.

Each ONNX file is timed in onnxruntime (batch 1, `--threads`, default 1) at ORT_ENABLE_ALL (its default) and
ORT_DISABLE_ALL, and the graph onnxruntime actually runs at ORT_ENABLE_ALL is saved and its BatchNormalization
nodes counted: so the table shows where a fold happens (edgetl, the exporter's optimizer, or onnxruntime) and
what it is worth at run time.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_export"
ALL_BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_b0", "resnet18")
MODES: dict[str, dict[str, Any]] = {
    "quick": {"backbones": ["mobilenet_v3_small"], "image_size": 64},
    "default": {"backbones": ["mobilenet_v3_small", "efficientnet_lite0", "resnet18"], "image_size": 224},
    "full": {"backbones": list(ALL_BACKBONES), "image_size": 224},
}
LEVELS = ("all", "none")  # ORT_ENABLE_ALL, ORT_DISABLE_ALL
EDGETL, PLAIN, RAW = "edgetl (folded)", "plain export", "plain, optimize=False"


def export_plain(run_dir: Path, path: Path, *, image_size: int, optimize: bool) -> float:
    """`torch.onnx.export` of the checkpoint's raw eval model (BN unfolded), as edgetl's writer calls it; seconds."""
    import torch

    from edgetl.formats.base import INPUT_NAME, OUTPUT_NAME
    from edgetl.model.checkpoint import load_model
    from edgetl.quiet import quiet

    model, _ = load_model(run_dir / "checkpoints" / "best.pt")
    example = torch.randn(2, 3, image_size, image_size)
    start = time.perf_counter()
    with quiet("onnxscript", "onnx_ir"):
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, verbose=False, external_data=False,
                          optimize=optimize, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: "batch"},))
    return time.perf_counter() - start


def warm_up_exporter(folder: Path) -> float:
    """Export a one-conv model once, so the first backbone does not pay the exporter's one-time start-up
    (imports, op registry) that every later export in the process skips; returns those seconds."""
    import torch

    from edgetl.quiet import quiet

    start = time.perf_counter()
    with quiet("onnxscript", "onnx_ir"):
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),), str(folder / "warm-up.onnx"),
                          dynamo=True, verbose=False, external_data=False)
    return time.perf_counter() - start


def op_counts(path: Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def ort_optimized_ops(path: Path, out: Path) -> Counter:
    """The op types of the graph onnxruntime runs at ORT_ENABLE_ALL (it writes its optimized model to `out`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return op_counts(out)


def bench_backbone(backbone: str, *, root: Path, image_size: int, threads: int, plan) -> dict[str, Any]:
    import numpy as np

    from edgetl.export import export_run
    from edgetl.verify import time_runner

    run_dir = common.make_fake_run(root, backbone=backbone, image_size=image_size)
    start = time.perf_counter()
    exported = export_run(run_dir, formats=("onnx", "torchscript"))
    export_run_s = time.perf_counter() - start
    files = {EDGETL: exported.out_dir / "model.onnx", PLAIN: root / f"{backbone}-plain.onnx",
             RAW: root / f"{backbone}-plain-no-optimizer.onnx"}
    plain_s = {name: export_plain(run_dir, files[name], image_size=image_size, optimize=name == PLAIN) for name in (PLAIN, RAW)}

    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    graphs = {}
    for name, path in files.items():
        ops, optimized = op_counts(path), ort_optimized_ops(path, root / f"{path.stem}.ort-optimized.onnx")
        latency = {}
        for level in LEVELS:
            t = time_runner(functools.partial(common.onnx_session, path, threads=threads, level=level), runtime=f"onnx/{level}",
                            x=x, threads=threads, plan=plan, file=path)
            latency[level] = {"p50_ms": t.p50_ms, "p90_ms": t.p90_ms, "iterations": t.iterations}
        graphs[name] = {"file_bytes": path.stat().st_size, "nodes": sum(ops.values()),
                        "bn_nodes": ops.get("BatchNormalization", 0), "conv_nodes": ops.get("Conv", 0),
                        "nodes_after_ort": sum(optimized.values()),
                        "bn_nodes_after_ort": optimized.get("BatchNormalization", 0), "latency": latency,
                        "export_s": plain_s.get(name)}
    base = graphs[EDGETL]["latency"]
    for g in graphs.values():
        g["p50_vs_edgetl"] = {level: g["latency"][level]["p50_ms"] / base[level]["p50_ms"] for level in LEVELS}
    return {"backbone": backbone, "image_size": image_size, "threads": threads, "export_run_s": export_run_s,
            "artifacts": [a.model_dump(exclude_none=True) for a in exported.manifest.artifacts], "bn_in_model": exported.deploy.bn_before,
            "bn_folded": exported.deploy.bn_folded, "graphs": graphs}


def print_report(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        art = {a["format"]: a for a in r["artifacts"]}
        plain, raw = r["graphs"][PLAIN], r["graphs"][RAW]
        rows.append((r["backbone"], f"{r['export_run_s']:.1f} s", f"{art['onnx']['seconds']:.1f} s",
                     f"{art['onnx']['bytes'] / 1e6:.2f} MB", f"{art['torchscript']['seconds']:.1f} s",
                     f"{art['torchscript']['bytes'] / 1e6:.2f} MB", f"{plain['export_s']:.1f} s",
                     f"{raw['export_s']:.1f} s", f"{raw['file_bytes'] / 1e6:.2f} MB"))
    common.console.print(common.table(
        "bench_export · seconds and sizes",
        ["backbone", "export_run", "onnx", "size", "torchscript", "size", "plain onnx", "optimize=False", "size"], rows,
        caption=f"{results[0]['image_size']} px. export_run: the whole edgetl call (load, fold, fold check, MACs, both "
                "writers, manifest); onnx / torchscript: each writer alone, from the manifest. plain: torch.onnx.export "
                "of the unfolded model (with / without the exporter's optimizer)."))
    rows = []
    for r in results:
        for i, (name, g) in enumerate(r["graphs"].items()):
            lat, vs = g["latency"], g["p50_vs_edgetl"]
            rows.append((r["backbone"] if i == 0 else "", name, g["nodes"], g["bn_nodes"],
                         f"{g['nodes_after_ort']} / {g['bn_nodes_after_ort']}",
                         f"{lat['all']['p50_ms']:.2f}", f"{vs['all']:.2f}×", f"{lat['none']['p50_ms']:.2f}", f"{vs['none']:.2f}×"))
    common.console.print(common.table(
        "bench_export · BatchNorm folding in onnxruntime",
        ["backbone", "ONNX file", "nodes", "BN", "ORT nodes/BN", "ALL p50 ms", "vs edgetl", "NONE p50 ms", "vs edgetl"],
        rows,
        caption=f"onnxruntime CPU, batch 1, {results[0]['threads']} thread(s); ALL = ORT_ENABLE_ALL (default), NONE = "
                "ORT_DISABLE_ALL. 'ORT graph' is the graph onnxruntime runs at ALL (its optimized model, saved and "
                "counted): BN 0 there means the BN is folded by then, whoever did it. vs edgetl: this p50 / edgetl's at "
                "the same level (> 1: edgetl's file is faster).", left=2))


def main() -> None:
    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the latency (default: %(default)s)")
    args = p.parse_args()
    common.quiet_logs()
    mode_name = common.mode_of(args)
    mode = MODES[mode_name]
    busy = common.warn_if_busy()
    started = time.perf_counter()
    plan = common.timing_plan(mode_name)
    results = []
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        warm_up_s = warm_up_exporter(Path(tmp))
        for backbone in args.backbone or mode["backbones"]:
            common.console.print(f"[bold]{backbone}[/]: export with edgetl and plainly (two ways), time each in onnxruntime")
            results.append(bench_backbone(backbone, root=Path(tmp), image_size=args.image_size or mode["image_size"],
                                          threads=args.threads, plan=plan))
    print_report(results)
    common.console.print(f"The exporter's one-time start-up in a fresh process ({warm_up_s:.1f} s, a one-conv export) was "
                         f"paid before the first backbone and is not in its times.")
    summary = [{"backbone": r["backbone"], "export_run_s": r["export_run_s"],
                **{f"{a['format']}_s": a["seconds"] for a in r["artifacts"]},
                **{f"{a['format']}_mb": a["bytes"] / 1e6 for a in r["artifacts"]},
                "bn_nodes": {name: g["bn_nodes"] for name, g in r["graphs"].items()},
                "bn_nodes_after_ort_all": {name: g["bn_nodes_after_ort"] for name, g in r["graphs"].items()},
                "p50_vs_edgetl_ort_all": {name: g["p50_vs_edgetl"]["all"] for name, g in r["graphs"].items() if name != EDGETL},
                "p50_vs_edgetl_ort_none": {name: g["p50_vs_edgetl"]["none"] for name, g in r["graphs"].items() if name != EDGETL}}
               for r in results]
    data = {"script": SCRIPT, "mode": mode_name, "machine": common.fingerprint(), "environment": common.environment(),
            "busy_at_start": busy, "others_during_run": noise, "exporter_warm_up_s": warm_up_s, "timing_plan": plan.to_dict(), "seconds": time.perf_counter() - started,
            "results": results, "summary": summary}
    common.write_results("export", data, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
