"""The device-input INT8 ONNX file (uint8 NHWC crop in) against the float-input one (normalized NCHW in).

    .venv/bin/python benchmarks/bench_device_input.py --run artifacts/flowers      # a trained run
    .venv/bin/python benchmarks/bench_device_input.py --quick                      # a tiny untrained run: a smoke test

From one run's checkpoint, three INT8 exports (`edgetl export -f onnx -p int8`): the float input with logits out
(the baseline: what export wrote before `--input uint8` existed), `--input uint8` with logits out, and
`--input uint8 --output probs`. Each file is timed with verify's timing (`edgetl.verify.time_runner`, batch 1,
`--threads`) in `--rounds` rounds, the files in a rotating order within a round, so a busy spell of the machine
hits them alike; reported: the median of the rounds' p50s, and each round's ratio to the baseline. The float file
also gets the work a device must do outside it (uint8 HWC -> float CHW, /255, normalize: numpy, as the manifest
says), timed the same way and added: the end-to-end figure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_device_input"
VARIANTS = {"float in, logits out (baseline)": ("float", "logits"), "uint8 in, logits out": ("uint8", "logits"),
            "uint8 in, probs out": ("uint8", "probs")}
BASELINE = "float in, logits out (baseline)"


def tiny_run(root: Path) -> Path:
    """A run without training whose INT8 export has train images to calibrate on (edgetl.testing.make_run)."""
    from edgetl.data.sample import make_image_folder
    from edgetl.testing import make_run

    data = make_image_folder(root / "data", classes=[f"class_{i}" for i in range(3)], per_class=8, size=64, seed=0)
    return make_run(root, backbone="efficientnet_lite0", num_classes=3, image_size=64, data=data)


def export_variants(run: Path, root: Path) -> tuple[dict[str, Path], dict[str, float], dict[str, Any]]:
    """Each variant's INT8 file, export seconds, and how many nodes its guard kept float (each export's guard
    chooses for itself: a file with more float nodes is slower for that reason, not for its input)."""
    from edgetl.export import export_run

    files, seconds, kept = {}, {}, {}
    for name, (input_type, output_type) in VARIANTS.items():
        started = time.perf_counter()
        result = export_run(run, formats=["onnx"], precisions=["int8"], out=root / input_type / output_type,
                            input_type=input_type, output_type=output_type, replace=True)
        seconds[name] = time.perf_counter() - started
        files[name] = next(result.out_dir / a.file for a in result.artifacts if a.precision == "int8")
        entry = next(a for a in result.manifest.artifacts if a.precision == "int8")
        kept[name] = (entry.quantization or {}).get("guard", {}).get("excluded_nodes")
    return files, seconds, kept


def main() -> None:
    p = common.parser(SCRIPT, __doc__)
    p.add_argument("--run", type=Path, help="a trained run folder (required unless --quick)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default: %(default)s)")
    p.add_argument("--rounds", type=int, help="timing rounds per file (default 9; --quick 2)")
    args = p.parse_args()
    if args.run is None and not args.quick:
        p.error("--run RUN is required (a trained run folder), or --quick")
    mode = common.mode_of(args)
    rounds = args.rounds or (2 if args.quick else 9)
    plan = common.timing_plan(mode)
    common.quiet_logs()
    before = common.warn_if_busy()

    from edgetl.formats.device_io import from_device_input
    from edgetl.formats.onnx import load_onnx
    from edgetl.preprocessing import Preprocessing
    from edgetl.rundir import RunDir
    from edgetl.verify import time_runner

    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp, common.others_load() as load:
        root = Path(tmp)
        run = tiny_run(root / "run") if args.run is None else args.run
        files, export_s, kept_float = export_variants(run, root / "export")
        prep = Preprocessing.from_dict(common.json.loads(RunDir(run).preprocessing.read_text()))
        crop = prep.crop_size
        image = np.random.default_rng(0).integers(0, 256, (1, crop, crop, 3), dtype=np.uint8)
        normalized = from_device_input(image, mean=prep.mean, std=prep.std)
        inputs = {name: image if VARIANTS[name][0] == "uint8" else normalized for name in VARIANTS}
        names = list(VARIANTS)
        p50: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                timing = time_runner(lambda n=name: load_onnx(files[n], threads=args.threads).run, runtime="onnx",
                                     x=inputs[name], threads=args.threads, plan=plan, file=files[name])
                p50[name].append(timing.p50_ms)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        host = time_runner(lambda: (lambda x: from_device_input(x, mean=prep.mean, std=prep.std)), runtime="numpy",
                           x=image, threads=args.threads, plan=plan)

    base = np.asarray(p50[BASELINE])
    results = []
    for name in names:
        ms = np.asarray(p50[name])
        outside = host.p50_ms if VARIANTS[name][0] == "float" else 0.0
        results.append({"file": name, "input": VARIANTS[name][0], "output": VARIANTS[name][1],
                        "bytes": sizes[name], "export_s": export_s[name], "nodes_kept_float": kept_float[name],
                        "p50_ms_rounds": ms.tolist(), "p50_ms": float(np.median(ms)),
                        "ratio_to_baseline_rounds": (ms / base).tolist(),
                        "ratio_to_baseline": float(np.median(ms / base)),
                        "rounds_at_most_baseline": int((ms <= base).sum()),
                        "device_preprocessing_ms": outside, "end_to_end_p50_ms": float(np.median(ms)) + outside})
    rows = [(r["file"], f"{r['p50_ms']:.3f}", f"{r['ratio_to_baseline']:.3f}×",
             f"{r['rounds_at_most_baseline']}/{rounds}", f"{r['device_preprocessing_ms']:.3f}",
             f"{r['end_to_end_p50_ms']:.3f}", f"{r['bytes'] / 2**20:.2f}",
             len(r["nodes_kept_float"] or [])) for r in results]
    common.console.print(common.table(
        f"INT8 ONNX by input type · {prep.crop_size} px · batch 1 · {args.threads} threads",
        ["file", "p50 ms", "/ baseline", "rounds ≤ baseline", "device prep ms", "end to end ms", "MiB", "nodes float"],
        rows,
        caption=f"p50: the median of {rounds} rounds' p50s (verify's timing); / baseline: the median of the rounds' "
                f"ratios. device prep: numpy uint8 HWC -> normalized float CHW, which a float-input file needs "
                f"outside it. nodes float: what each export's INT8 guard kept float (the uint8 input's own "
                f"Transpose/Cast/Mul/Add among them; names in the JSON)."))
    data: dict[str, Any] = {"machine": common.fingerprint(), "environment": common.environment(), "mode": mode,
                            "run": None if args.run is None else str(args.run), "crop_size": crop,
                            "threads": args.threads, "rounds": rounds, "busy_before": before, "others_load": load,
                            "timing_plan": plan.to_dict(), "results": results}
    common.write_results("device_input", data, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
