"""Shared helpers for the benchmark scripts: flags, tables, JSON, the machine, peak memory, fake runs, timing.

    .venv/bin/python benchmarks/run_all.py --quick     # every script, tiny sizes, seconds each

Not a library: the scripts import it by path (`sys.path` holds `benchmarks/` when a script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"  # gitignored: scratch runs
RESULTS_DIR = BENCH_DIR / "results"  # committed: one file per machine, written only with --save
MODES = ("quick", "default", "full")

console = Console(highlight=False)
if not console.is_terminal:  # piped into a log (make bench | tee): rich's 80-column default wraps the captions
    console = Console(highlight=False, width=120)


# --- flags --------------------------------------------------------------------------------------------------


def parser(script: str, doc: str | None, *, models: bool = False) -> argparse.ArgumentParser:
    """The flags every script takes: --quick / --full / --save / --out (and --backbone / --image-size with `models`)."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{script}.py", description=(doc or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that runs in seconds")
    size.add_argument("--full", action="store_true", help="large sizes for a GPU box: more epochs, 224 px, all backbones")
    p.add_argument("--save", action="store_true",
                   help="also merge the results into benchmarks/results/<machine>.json (committed)")
    p.add_argument("--out", type=Path, default=OUT_DIR / f"{script}.json", help="where to write the JSON (default: %(default)s)")
    if models:
        p.add_argument("--backbone", action="append", help="backbone (repeatable; default per mode)")
        p.add_argument("--image-size", type=int, help="input size (default: 224; --quick: 64)")
    return p


def mode_of(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


# --- the machine ----------------------------------------------------------------------------------------------


def fingerprint() -> dict[str, Any]:
    """edgetl's machine fingerprint (CPU model, cores, ISA, onnxruntime) plus a short file-name slug."""
    from edgetl.verify import machine_fingerprint

    fp = machine_fingerprint()
    cpu = re.sub(r"[^a-z0-9]+", "-", fp["cpu_model"].lower()).strip("-")[:40] or "cpu"
    return {**fp, "slug": f"{cpu}-{fp['cores']}c-{fp['id'][:8]}"}


def environment() -> dict[str, Any]:
    """Versions, threads and the load average: a number means little without them."""
    import onnxruntime
    import torch

    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_1m": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def warn_if_busy(seconds: float = 1.0) -> dict[str, float]:
    """How busy the cores are before we start: other processes' CPU use over `seconds` (this one is idle),
    and the 1-minute load average. Warns when others use more than a quarter of the machine.

    The CPU share, not the load average, decides: the load average decays over minutes, so right after the
    previous script of `run_all` it still counts that script's own work.
    """
    import psutil

    from edgetl.verify import all_threads

    busy = psutil.cpu_percent(interval=seconds)
    load = os.getloadavg()[0]
    if busy > 25:
        console.print(f"[yellow]other processes keep {busy:.0f} % of the {all_threads()} core(s) busy (load average "
                      f"{load:.2f}): timings will be noisy[/]")
    return {"cpu_busy_pct": busy, "loadavg_1m": load}


@contextmanager
def others_load() -> Iterator[dict[str, float]]:
    """How many cores OTHER processes kept busy, on average, during the block: the machine's busy CPU time
    minus this process's own (its waited-for children included), over the wall time. Near 0: a clean run."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def own() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    result: dict[str, float] = {}
    start, busy0, own0 = time.perf_counter(), busy(), own()
    try:
        yield result
    finally:
        wall = time.perf_counter() - start
        result["other_cores_busy"] = max(0.0, (busy() - busy0) - (own() - own0)) / max(wall, 1e-9)
        result["wall_s"] = wall
        if result["other_cores_busy"] > 0.25:
            console.print(f"[yellow]other processes kept {result['other_cores_busy']:.2f} core(s) busy on average during "
                          f"this run: its timings are noisy[/]")


# --- output ---------------------------------------------------------------------------------------------------


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None,
          left: int = 1, no_wrap: int | None = None) -> RenderableType:
    """A rich table: the first `left` columns left-aligned, the rest right-aligned, None shown as an em dash; the
    first `no_wrap` columns (default: `left`) never wrap.

    The caption goes below as its own paragraph, wrapped at the console's width rather than the table's.
    """
    t = Table(title=title)
    keep = left if no_wrap is None else no_wrap
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right", no_wrap=i < keep)
    for row in rows:
        t.add_row(*("—" if v is None else str(v) for v in row))
    return Group(t, Text(caption, style="dim")) if caption else t


def fmt(x: float | None, spec: str = ".3g", unit: str = "") -> str | None:
    return None if x is None else f"{x:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def write_results(section: str, data: dict[str, Any], *, out: Path, save: bool) -> list[Path]:
    """Write `data` to `out`; with `save`, also merge it as `section` into results/<machine>.json."""
    written = [write_json(out, data)]
    if save:
        fp = data.get("machine") or fingerprint()
        path = RESULTS_DIR / f"{fp['slug']}.json"
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged["machine"] = fp
        merged[section] = data
        written.append(write_json(path, merged))
    for path in written:
        console.print(f"wrote {_rel(path)}")
    return written


def write_json(path: Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- peak memory ------------------------------------------------------------------------------------------------


def _vm_hwm_mb() -> float | None:
    """The kernel's resident-set high-water mark of this process (Linux /proc/self/status VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextmanager
def peak_rss(interval_s: float = 0.02) -> Iterator[dict[str, float | None]]:
    """Peak resident memory of this process over the block, in MB.

    psutil samples RSS every `interval_s` in a thread (portable, may miss a short spike); on Linux the kernel's
    exact high-water mark (VmHWM) is reported too. VmHWM covers the process's whole life, so run what you
    measure in a fresh process (the scripts re-invoke themselves per side) for the two sides not to mix.
    """
    import psutil

    proc = psutil.Process()
    result: dict[str, float | None] = {"start_rss_mb": proc.memory_info().rss / 2**20}
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        result["peak_rss_mb"] = peak[0] / 2**20
        result["vm_hwm_mb"] = _vm_hwm_mb()


# --- timing ---------------------------------------------------------------------------------------------------------


def timing_plan(mode: str):
    """How long each latency setting is timed, per mode (edgetl verify's adaptive plan)."""
    from edgetl.verify import TimingPlan

    return {"quick": TimingPlan(seconds=0.2, min_iterations=5, max_seconds=0.5, warmup=2),
            "default": TimingPlan(seconds=1.0, min_iterations=30, max_seconds=3.0, warmup=5),
            "full": TimingPlan(seconds=3.0, min_iterations=100, max_seconds=10.0, warmup=10)}[mode]


def matmul_peak(*, threads: int, n: int, seconds: float = 1.0) -> dict[str, Any]:
    """The machine's practical fp32 peak at `threads`: GFLOP/s of an n×n `torch.mm`, from its fastest call.

    The fastest call, not the median: a peak is what the cores can do when nothing else runs; the median is
    reported too, as a noise check (the two far apart: the machine is busy).
    """
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    a, b, out = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    times = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):  # warm-up: thread pool start, page faults on `out`
            torch.mm(a, b, out=out)
        start = time.perf_counter_ns()
        while len(times) < 5 or (time.perf_counter_ns() - start < seconds * 1e9 and len(times) < 1000):
            t0 = time.perf_counter_ns()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter_ns() - t0)
    finally:
        torch.set_num_threads(previous)
    flop = 2 * n**3
    best, median = min(times) / 1e9, float(np.median(times)) / 1e9
    return {"n": n, "threads": threads, "iterations": len(times), "best_ms": best * 1e3, "p50_ms": median * 1e3,
            "gflops": flop / best / 1e9, "gflops_p50": flop / median / 1e9}


def onnx_session(path: Path, *, threads: int, level: str = "all"):
    """An onnxruntime CPU session at a graph-optimization level ("all" = ORT_ENABLE_ALL, "none" = ORT_DISABLE_ALL)."""
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return lambda x: session.run(None, {feed: x})[0]


def make_fake_run(root: Path, *, backbone: str, image_size: int = 224, num_classes: int = 6, seed: int = 0,
                  calibrate_size: int = 64) -> Path:
    """A run directory without training (edgetl.testing), BatchNorm calibrated at a cheap 64 px."""
    from edgetl.testing import make_run

    run = make_run(Path(root) / f"{backbone}-{image_size}", backbone=backbone, num_classes=num_classes,
                   image_size=image_size, seed=seed, calibrate_size=calibrate_size)
    return run


def quiet_logs() -> None:
    """Keep library INFO chatter (onnxscript's optimizer passes, edgetl's own) out of the tables."""
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "edgetl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
