"""Every benchmark in one run, then one summary table and one JSON: edgetl side by side with the plain way.

    .venv/bin/python benchmarks/run_all.py            # what `make bench` runs: CPU-sized, < 15 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick    # a smoke test of every bench_*.py script (tiny sizes)
    .venv/bin/python benchmarks/run_all.py --full     # every script at its large sizes, for a GPU box (hours)
    .venv/bin/python benchmarks/run_all.py --only train --only export   # just these sections, in the mode given
    .venv/bin/python benchmarks/run_all.py --save     # also merge into benchmarks/results/<machine>.json (to commit)

Which scripts run:

* --quick: all eleven (SCRIPTS), in that order; --full: all but bench_run and bench_device_input (QUICK_ONLY: the
  photo run goes by itself, or with --only run; the device-input one needs a trained --run). bench_gpu runs a CPU smoke test under --quick when there is no GPU;
  bench_ddp skips (exit 0, a JSON that says why) on a torch build without torch.distributed (gloo).
* the default: train, inference, export, ddp, gpu and engines (DEFAULT) — bench_train on the sample data
  (quickstart recipe, 96 px, ~3 min on 2 cores), bench_inference and bench_export at 224 px on three backbones
  (~1 and ~1.5 min), bench_ddp on generated images (128 px, 2 epochs per phase, 1 process vs 2: ~1 min),
  bench_gpu (skips in seconds without a CUDA GPU) and bench_engines (five backbones at 224 px in every installed
  engine, on flowers128's val photos or generated shapes: ~3.5 min). About 10 min on 2 cores, under 15.
  The other three train or run at full size (formats: the Lite0 recipe on flowers128; quant: three backbones
  fine-tuned at 224 px; backbones: ResNet-50 to ConvNeXt-Base at full size — tens of minutes to hours on a
  CPU): run them with --quick, --full, --only, or by themselves.

Each script runs in its own process (so one's memory and threads never bleed into the next), one after the
other, with --quick / --full passed through; their JSON lands in benchmarks/out/ and is gathered into one file.
A script that fails is reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# section (the key in the JSON) -> script, in the order they run
SCRIPTS = {"train": "bench_train", "inference": "bench_inference", "export": "bench_export", "ddp": "bench_ddp",
           "gpu": "bench_gpu", "formats": "bench_formats", "quant": "bench_quant", "engines": "bench_engines",
           "backbones": "bench_backbones", "run": "bench_run", "device_input": "bench_device_input"}
DEFAULT = ("train", "inference", "export", "ddp", "gpu", "engines")  # CPU-sized: about 10 min on 2 cores
QUICK_ONLY = ("run", "device_input")  # by themselves (a photo chain; a trained run); run_all takes their --quick smoke tests


def sections_for(mode: str, only: list[str] | None) -> list[str]:
    if only:
        return [s for s in SCRIPTS if s in only]
    if mode == "default":
        return list(DEFAULT)
    return [s for s in SCRIPTS if mode == "quick" or s not in QUICK_ONLY]


def run_script(script: str, *, mode: str, out: Path) -> tuple[dict[str, Any] | None, float, int]:
    cmd = [sys.executable, str(common.BENCH_DIR / f"{script}.py"), "--out", str(out)]
    if mode != "default":
        cmd.append(f"--{mode}")
    common.console.rule(f"[bold]{script}[/] ({mode})")
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    seconds = time.perf_counter() - start
    data = json.loads(out.read_text()) if rc == 0 and out.is_file() else None
    return data, seconds, rc


Row = tuple[str, str, str, str]


def train_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in data.get("runs", []):
        bb, r = run["config"]["backbone"], run["ratios_edgetl_over_plain"]
        acc = f"{run['edgetl']['final_val_acc']:.3f} vs {run['plain']['final_val_acc']:.3f}"
        rows += [("train", bb, "images/s, whole run (edgetl/plain)", common.fmt(r["images_per_s"], ".2f", "×")),
                 ("train", bb, "images/s, train loop (edgetl/plain)", common.fmt(r["train_loop_images_per_s"], ".2f", "×")),
                 *(("train", bb, f"time to val acc {t['val_acc']:.3f}, {rule} (edgetl/plain)",
                    common.fmt(t["edgetl_over_plain"], ".2f", "×")
                    or f"not reached by {' or '.join(s for s in ('edgetl', 'plain') if t[f'{s}_s'] is None)}")
                   for rule, t in run["time_to_target"].items()),
                 ("train", bb, "final val acc (edgetl vs plain)", acc),
                 ("train", bb, "peak RSS (edgetl/plain)", common.fmt(r["peak_rss_mb"], ".2f", "×"))]
    return rows


def inference_rows(data: dict[str, Any]) -> list[Row]:
    return [("inference", f"{s['backbone']} · {s['threads']} thr", "onnxruntime p50 (vs eager NCHW; % of peak)",
             f"{s['onnx_p50_ms']:.2f} ms ({s['onnx_speedup_vs_eager']:.2f}×; "
             f"{common.fmt(s['onnx_pct_of_peak'], '.0f', ' %') or '?'})") for s in data.get("summary", [])]


def export_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for s in data.get("summary", []):
        rows.append(("export", s["backbone"], "export_run s (onnx, torchscript writers)",
                     f"{s['export_run_s']:.1f} s ({s['onnx_s']:.1f} s, {s['torchscript_s']:.1f} s)"))
        for name, value in s["p50_vs_edgetl_ort_all"].items():
            rows.append(("export", s["backbone"], f"ORT p50, {name} / edgetl's file", f"{value:.2f}×"))
    return rows


def ddp_rows(data: dict[str, Any]) -> list[Row]:
    procs = next((k.split("_")[0] for k in data if k.endswith("_processes")), "N")
    return [("ddp", f"{Path(data['data']).name} · {data['image_size']} px", f"epoch time, wall ({procs} procs / 1)",
             f"{data['epoch_time_ratio']:.2f}×, {data['wall_ratio']:.2f}×")]


def gpu_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, row in data.get("throughput", {}).items():
        value = f"{row['edgetl']['images_per_s']:.1f}"
        if row.get("ratio_to_timm") is not None:
            value += f" ({row['ratio_to_timm']:.2f}× timm)"
        rows.append(("gpu", f"{name} · {data['device']}", f"training images/s, batch {data['batch_size']}", value))
    if data.get("photos"):
        ph = data["photos"]
        rows.append(("gpu", "edgetl run on photos", "best val acc · train s",
                     f"{common.fmt(ph.get('best_val_acc'), '.3f') or '?'} · "
                     f"{common.fmt(ph.get('train_seconds'), '.0f', ' s') or '?'}"))
    return rows


def formats_rows(data: dict[str, Any]) -> list[Row]:
    most = str(max(data.get("threads") or [1]))
    rows: list[Row] = []
    for f in data.get("files", []):
        p50 = ((f.get("latency") or {}).get(most) or {}).get("p50_ms")
        agree = (f.get("parity") or {}).get("top1_agreement")
        bars = "ref" if f["format"] == "pytorch" else "fail" if f.get("bars_failed") else "hold"
        rows.append(("formats", f"{f['format']} {f['precision']}", f"p50 {most} thr · top-1 agree · bars",
                     f"{common.fmt(p50, '.2f', ' ms') or '—'} · "
                     f"{common.fmt(100 * agree if agree is not None else None, '.1f', ' %') or '—'} · {bars}"))
    return rows


def quant_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in data.get("runs", []):
        most = str(run["threads"][-1]) if run.get("threads") else None
        decisions = {g["precision"]: g.get("decision") for g in run.get("go_no_go") or []}
        for precision, f in run["files"].items():
            p50 = f["p50_ms"].get(most) if most else None
            acc = f.get("accuracy")
            rows.append(("quant", f"{run['backbone']} {precision}", f"p50 {most} thr · val acc · go/no-go",
                         f"{common.fmt(p50, '.2f', ' ms') or '—'} · "
                         f"{common.fmt(100 * acc if acc is not None else None, '.1f', ' %') or '—'} · "
                         f"{decisions.get(precision, 'baseline')}"))
    return rows


def engines_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in data.get("runs", []):
        rows += [("engines", run["backbone"], "ORT p50, portable / exporter's graph",
                  common.fmt(run["ort_p50_portable_over_exporter"], ".3f", "×")),
                 ("engines", run["backbone"], "portable graph agrees in every engine",
                  "yes" if run["portable_runs_everywhere"] else "NO"),
                 ("engines", run["backbone"], "fastest agreeing engine", run["fastest_agreeing_engine"])]
    return rows


def backbones_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for r in data.get("systems", []):
        if "error" in r:
            rows.append(("backbones", r["system"], "export + verify", f"refused: {r['error'][:40]}"))
            continue
        rows.append(("backbones", f"{r['system']} · {r['image_size']} px", "ORT p50 2 thr · agree · verify",
                     f"{common.fmt(r['ort_p50_ms'], '.1f', ' ms') or '—'} · {100 * r['top1_agreement']:.0f} % · "
                     f"{'pass' if r['verify_passed'] else 'FAIL'}"))
    for r in data.get("pair", []):
        rows.append(("backbones", r["backbone"], "best val acc · ORT p50 2 thr",
                     f"{100 * r['best_val_acc']:.1f} % · {common.fmt(r['ort_p50_ms'], '.1f', ' ms') or '—'}"))
    return rows


def run_rows(data: dict[str, Any]) -> list[Row]:
    s = data["summary"]
    case = f"{s['edgetl_shipped']} vs plain int8"
    return [("run", case, "shipped: val acc (edgetl vs plain)",
             f"{100 * s['shipped_accuracy']['edgetl']:.1f} % vs {100 * s['shipped_accuracy']['plain']:.1f} %"),
            ("run", case, "shipped: p50 2 thr (edgetl vs plain)",
             f"{s['shipped_p50_ms']['edgetl']:.2f} vs {s['shipped_p50_ms']['plain']:.2f} ms"),
            ("run", case, "photos to shipped file, stages (edgetl/plain)",
             f"{s['stages_total_s']['edgetl']:.0f} s / {s['stages_total_s']['plain']:.0f} s = "
             f"{common.fmt(s['ratios_edgetl_over_plain']['stages_total_s'], '.2f', '×')}")]


def device_input_rows(data: dict[str, Any]) -> list[Row]:
    return [("device_input", r["file"], "INT8 ONNX p50 (/ float-input file)",
             f"{r['p50_ms']:.3f} ms ({r['ratio_to_baseline']:.3f}×)") for r in data["results"]]


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "train": train_rows, "inference": inference_rows, "export": export_rows, "ddp": ddp_rows, "gpu": gpu_rows,
    "formats": formats_rows, "quant": quant_rows, "engines": engines_rows, "backbones": backbones_rows,
    "run": run_rows, "device_input": device_input_rows}


def summary_rows(results: dict[str, Any]) -> list[Row]:
    """(benchmark, case, measure, value) lines: the ratios and headline numbers of each script that ran.

    A script that failed, skipped itself, or wrote a JSON this does not know (no rows function, or one that no
    longer matches its shape) gets one line that says so instead: the summary never fails the run."""
    rows: list[Row] = []
    for section, data in results.items():
        if data is None:
            rows.append((section, "—", "no results", "the script failed (see its output above)"))
            continue
        if data.get("skipped"):
            rows.append((section, "—", "skipped", str(data["skipped"])))
            continue
        try:
            found = ROWS[section](data) if section in ROWS else []
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            found = [(section, "—", "no summary", f"its JSON did not match ({type(e).__name__}: {e}); see its table")]
        rows += found or [(section, "—", "no summary rows", "see its table above and its JSON")]
    return rows


def main() -> None:
    p = common.parser("run_all", __doc__)
    p.add_argument("--only", action="append", choices=list(SCRIPTS), metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SCRIPTS)}")
    args = p.parse_args()
    mode = common.mode_of(args)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failed: list[str] = []
    for section in sections_for(mode, args.only):
        script = SCRIPTS[section]
        data, seconds, rc = run_script(script, mode=mode, out=common.OUT_DIR / f"{script}.json")
        timings[section] = seconds
        results[section] = data
        if data is None:
            failed.append(f"{script} (exit code {rc})")

    rows = summary_rows(results)
    noise = {k: ((v or {}).get("others_during_run") or {}).get("other_cores_busy") for k, v in results.items()}
    caption = ("Per-script wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
               + f"; total {time.perf_counter() - started:.0f} s. Cores other processes kept busy meanwhile (0 = a clean "
               + "run): " + ", ".join(f"{k} {common.fmt(v, '.2f') or '?'}" for k, v in noise.items())
               + ". Details in each script's tables above and in the JSON.")
    common.console.rule("[bold]summary[/]")
    common.console.print(common.table(f"edgetl vs the plain way · {mode}", ["benchmark", "case", "measure", "value"], rows,
                                      caption=caption, left=3, no_wrap=2))
    data = {"script": "run_all", "mode": mode, "machine": common.fingerprint(), "environment": common.environment(),
            "seconds": time.perf_counter() - started, "script_seconds": timings, "failed": failed,
            "sections": list(results),
            "summary": [dict(zip(("benchmark", "case", "measure", "value"), r)) for r in rows], **results}
    common.write_results("run_all", data, out=args.out, save=False)
    if args.save:
        path = common.RESULTS_DIR / f"{data['machine']['slug']}.json"  # merged: sections saved by one script stay
        merged = json.loads(path.read_text()) if path.is_file() else {}
        common.write_json(path, {**merged, **{k: v for k, v in data.items() if k != "script"}})
        common.console.print(f"wrote {path.relative_to(common.REPO)}")
    if failed:
        common.console.print(f"[red]failed: {', '.join(failed)}[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
