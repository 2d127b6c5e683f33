"""Every benchmark in one run, then one summary table and one JSON: edgetl side by side with the plain way.

    .venv/bin/python benchmarks/run_all.py            # what `make bench` runs: the sample data, CPU-sized (< 15 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # a smoke test of every script
    .venv/bin/python benchmarks/run_all.py --full     # larger sizes for a GPU box
    .venv/bin/python benchmarks/run_all.py --save     # also write benchmarks/results/<machine>.json (to commit)

Each script runs in its own process (so one's memory and threads never bleed into the next), one after the
other, with --quick / --full passed through; their JSON lands in benchmarks/out/ and is gathered into one file.
A script that fails is reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPTS = {"train": "bench_train", "inference": "bench_inference", "export": "bench_export"}


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


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, case, measure, value) lines: the ratios and headline numbers of each script."""
    rows: list[tuple[str, str, str, str]] = []
    for run in (results.get("train") or {}).get("runs", []):
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
    for s in (results.get("inference") or {}).get("summary", []):
        rows.append(("inference", f"{s['backbone']} · {s['threads']} thr",
                     "onnxruntime p50 (vs eager NCHW; % of peak)",
                     f"{s['onnx_p50_ms']:.2f} ms ({s['onnx_speedup_vs_eager']:.2f}×; {s['onnx_pct_of_peak']:.0f} %)"))
    for s in (results.get("export") or {}).get("summary", []):
        rows.append(("export", s["backbone"], "export_run s (onnx, torchscript writers)",
                     f"{s['export_run_s']:.1f} s ({s['onnx_s']:.1f} s, {s['torchscript_s']:.1f} s)"))
        for name, value in s["p50_vs_edgetl_ort_all"].items():
            rows.append(("export", s["backbone"], f"ORT p50, {name} / edgetl's file", f"{value:.2f}×"))
    return rows


def main() -> None:
    p = common.parser("run_all", __doc__)
    args = p.parse_args()
    mode = common.mode_of(args)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failed: list[str] = []
    for section, script in SCRIPTS.items():
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
                                      caption=caption, left=3))
    data = {"script": "run_all", "mode": mode, "machine": common.fingerprint(), "environment": common.environment(),
            "seconds": time.perf_counter() - started, "script_seconds": timings, "failed": failed,
            "summary": [dict(zip(("benchmark", "case", "measure", "value"), r)) for r in rows], **results}
    common.write_results("run_all", data, out=args.out, save=False)
    if args.save:
        path = common.RESULTS_DIR / f"{data['machine']['slug']}.json"
        common._write_json(path, {k: v for k, v in data.items() if k != "script"})
        common.console.print(f"wrote {path.relative_to(common.REPO)}")
    if failed:
        common.console.print(f"[red]failed: {', '.join(failed)}[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
