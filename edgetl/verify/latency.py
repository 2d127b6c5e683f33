"""Latency on this machine: honest timing per runtime setting, the machine's fingerprint, the latency bars.

    time_runner(lambda: FORMATS["onnx"].load(path, threads=1), runtime="onnx", x=np.zeros((1, 3, 224, 224), np.float32), threads=1)

Timing uses `time.perf_counter_ns` around every call; warm-up calls are excluded; the number of timed calls
adapts to the model (at least `min_iterations` and `seconds`, never past `max_seconds`) and is reported.
Cold start is the time to create the runner (an onnxruntime session, `torch.jit.load`, building the eager
model). Memory is the growth of the process's resident set (psutil RSS), sampled after creating the runner
and after the timed calls: an approximation of the runner's peak footprint, not an allocator trace.

A latency figure means something only on the machine that measured it, so every report carries
`machine_fingerprint()`, and `check_regression` compares with a baseline only when the fingerprints are equal.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from edgetl.compare.gate import Gate
from edgetl.formats import FORMATS
from edgetl.formats.base import Runner, torch_runner
from edgetl.rundir import ArtifactEntry, VerifyReport, damaged

MEMORY_METHOD = "psutil RSS growth, sampled after creating the runner and after the timed calls"
CLOCK = "time.perf_counter_ns, per call, warm-up excluded"
# Instruction-set extensions that change which kernels onnxruntime and PyTorch pick (x86, then ARM).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")

@dataclass(frozen=True)
class TimingPlan:
    """How long to time one configuration: at least `seconds` and `min_iterations`, at most `max_seconds`."""

    seconds: float = 1.0
    min_iterations: int = 50
    max_seconds: float = 3.0
    warmup: int = 5  # calls, or fewer when one call already takes half of `seconds`

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clock": CLOCK, "memory_method": MEMORY_METHOD}


@dataclass(frozen=True)
class Timing:
    runtime: str  # "onnx", "torchscript", "eager"
    file: str | None  # the timed file (for eager: the checkpoint)
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # images per second over the timed calls
    iterations: int
    warmup: int
    cold_start_ms: float  # creating the runner: session / jit.load / model build and load
    first_call_ms: float  # the first inference after creation (lazy allocations, kernel selection)
    rss_delta_mb: float
    file_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def all_threads() -> int:
    """The cores this process may run on (its CPU affinity, so containers and `taskset` are respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set PyTorch's intra-op threads for the block and restore the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_runner(make: Callable[[], Callable[[np.ndarray], Any]], *, runtime: str, x: np.ndarray, threads: int,
                plan: TimingPlan = TimingPlan(), file: Path | None = None) -> Timing:
    """Create a runner with `make()` (timed: the cold start), warm it up, then time calls on `x`."""
    process = psutil.Process()
    with torch_threads(threads):
        # No gc.collect() around this: it costs ~0.3 s per call with torch loaded, and runners hold no cycles,
        # so the previous one is already freed by reference counting when `make()` starts.
        rss_before = process.memory_info().rss
        start = time.perf_counter_ns()
        runner = make()
        cold_ns = time.perf_counter_ns() - start
        rss_loaded = process.memory_info().rss
        first_ns, warmup = _warm_up(runner, x, plan)
        times = _timed_calls(runner, x, plan)
        rss_after = process.memory_info().rss
        del runner
    ms = np.asarray(times, dtype=np.float64) / 1e6
    return Timing(
        runtime=runtime, file=None if file is None else Path(file).name, batch=int(x.shape[0]), threads=threads,
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        throughput=float(x.shape[0] * len(ms) / (ms.sum() / 1e3)), iterations=len(ms), warmup=warmup,
        cold_start_ms=cold_ns / 1e6, first_call_ms=first_ns / 1e6,
        rss_delta_mb=max(0, max(rss_loaded, rss_after) - rss_before) / 2**20,
        file_bytes=None if file is None else Path(file).stat().st_size,
    )


def _warm_up(runner: Callable[[np.ndarray], Any], x: np.ndarray, plan: TimingPlan) -> tuple[int, int]:
    """Run the warm-up calls; return the first call's time (ns) and the number of calls made.

    `plan.warmup` calls within half of `plan.seconds`, and beyond that for as long as each call still takes under
    half the time of the one before (within `plan.max_seconds`): a runtime whose first calls pay one-time set-up
    (PyTorch's first ViT calls here: 2.3 s, 1.6 s, then 40 ms) is timed once it is warm, not on the set-up."""
    start = time.perf_counter_ns()
    runner(x)
    first = previous = time.perf_counter_ns() - start
    calls, speeding_up = 1, True
    while time.perf_counter_ns() - start < plan.max_seconds * 1e9 and (
            speeding_up or (calls < plan.warmup and time.perf_counter_ns() - start < plan.seconds * 0.5e9)):
        t0 = time.perf_counter_ns()
        runner(x)
        took = time.perf_counter_ns() - t0
        speeding_up, previous, calls = took < previous / 2, took, calls + 1
    return first, calls


def _timed_calls(runner: Callable[[np.ndarray], Any], x: np.ndarray, plan: TimingPlan) -> list[int]:
    times: list[int] = []
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        runner(x)
        t1 = time.perf_counter_ns()
        times.append(t1 - t0)
        elapsed = (t1 - start) / 1e9
        if elapsed >= plan.max_seconds or (elapsed >= plan.seconds and len(times) >= plan.min_iterations):
            return times


# --- the machine ---------------------------------------------------------------------------------------------

def machine_fingerprint() -> dict[str, Any]:
    """What decides latency here: CPU model, cores, ISA extensions, onnxruntime version; `id` hashes them."""
    import onnxruntime

    cpuinfo = _cpuinfo()
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    fingerprint = {
        "cpu_model": cpuinfo.get("model name") or cpuinfo.get("Hardware") or platform.processor() or "unknown",
        "machine": platform.machine(),
        "system": platform.system(),
        "cores": all_threads(),
        "physical_cores": psutil.cpu_count(logical=False),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "onnxruntime": onnxruntime.__version__,
    }
    fingerprint["id"] = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return fingerprint


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields in which two fingerprints differ, as 'field: a → b' (empty: the same machine)."""
    keys = sorted((set(a) | set(b)) - {"id"})
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _cpuinfo() -> dict[str, str]:
    """The first value of every key in /proc/cpuinfo (Linux); empty elsewhere."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
    return info


# --- the sweep `edgetl verify` runs ----------------------------------------------------------------------------

def load_eager(path: Path, *, threads: int | None = None) -> Runner:
    """The trained checkpoint as PyTorch runs it: unfolded (LoRA unmerged, BN separate), eval, fp32 — the
    reference for parity and the baseline for speed-ups."""
    from edgetl.model.checkpoint import load_model

    model, _ = load_model(path)
    return torch_runner(model)


def measure_latency(artifacts: list[ArtifactEntry], *, export_dir: Path, checkpoint: Path, input_hw: tuple[int, int],
                    batches: list[int], threads: list[int], plan: TimingPlan = TimingPlan(),
                    progress: Callable[[str], None] = lambda stage: None, seed: int = 0,
                    engines: list[tuple[str, ArtifactEntry]] = (), uint8_input: bool = False) -> list[dict[str, Any]]:
    """Time the eager checkpoint and every artifact per (batch, threads), then each (engine, ONNX file) of
    `engines` (--runtime); each row gets its speed-up vs eager. `uint8_input`: the files take the device's uint8
    NHWC crops, and are timed on those (the checkpoint on float NCHW)."""
    from edgetl.formats.engines import load_engine

    runtimes = [("eager", checkpoint, load_eager)]
    runtimes += [(a.format, export_dir / a.file, FORMATS[a.format].load) for a in artifacts]
    runtimes += [(engine, export_dir / a.file, functools.partial(load_engine, engine)) for engine, a in engines]
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        x = rng.standard_normal((batch, 3, *input_hw)).astype(np.float32)
        image = rng.integers(0, 256, (batch, *input_hw, 3), dtype=np.uint8) if uint8_input else x
        for n in threads:
            eager_p50 = None
            for runtime, path, load in runtimes:
                progress(f"latency {runtime} · batch {batch} · {n} thread(s)")
                make = functools.partial(load, path, threads=n)
                timing = time_runner(make, runtime=runtime, x=x if runtime == "eager" else image, threads=n,
                                     plan=plan, file=path).to_dict()
                eager_p50 = eager_p50 or timing["p50_ms"]
                rows.append({**timing, "speedup_vs_eager": eager_p50 / timing["p50_ms"]})
    return rows


# --- the latency bars ------------------------------------------------------------------------------------------

def gate_latency(rows: list[dict[str, Any]], gate: Gate, *, max_latency_ms: float | None) -> dict[str, Any] | None:
    """The figure latency bars apply to: the gating format's p50 (ONNX) at the smallest batch, most threads."""
    gating = [name for name, fmt in FORMATS.items() if fmt.gates_latency]
    timed = [r for r in rows if r["runtime"] in gating and r["file"] == FORMATS[r["runtime"]].file]  # its fp32 file
    if not timed:
        if max_latency_ms is not None:
            files = " or ".join(FORMATS[name].file for name in gating)
            gate.check(files, "latency", "file to time", "missing", "==", "present")
        return None
    row = min(timed, key=lambda r: (r["batch"], -r["threads"]))
    if max_latency_ms is not None:
        gate.check(row["file"], "latency", f"p50 latency (batch {row['batch']}, {row['threads']} threads)",
                   row["p50_ms"], "<=", max_latency_ms, unit="ms")
    return {k: row[k] for k in ("runtime", "file", "batch", "threads", "p50_ms")}


def check_regression(now: dict[str, Any], gate: Gate, *, old: VerifyReport, baseline: Path | None,
                     machine: dict[str, Any], max_regression: float, warn: Callable[[str], None]) -> dict[str, Any]:
    """Compare the gate's p50 with a baseline verify.json's — only when both ran on the same machine."""
    result: dict[str, Any] = {"baseline": str(baseline), "max_regression": max_regression}
    then = old.gate or {}
    differences = fingerprint_differences(old.machine or {}, machine)
    if differences:
        reason = f"baseline {baseline} was measured on another machine ({'; '.join(differences)})"
    elif [then.get(k) for k in ("file", "batch", "threads")] != [now[k] for k in ("file", "batch", "threads")]:
        reason = f"baseline {baseline} timed another setting ({then or 'no ONNX latency'})"
    else:
        p50 = then.get("p50_ms")
        if not (isinstance(p50, (int, float)) and math.isfinite(p50) and p50 > 0):
            raise damaged(baseline or "baseline", f"gate.p50_ms is {p50!r}, not a time in ms", stage="verify")
        change = now["p50_ms"] / p50 - 1
        ok = gate.check(now["file"], "regression", "p50 change vs baseline", change, "<=", max_regression,
                        unit="+%", detail=f"{now['p50_ms']:.3g} ms now, {then['p50_ms']:.3g} ms in {baseline}")
        return {**result, "status": "checked", "passed": ok, "baseline_p50_ms": then["p50_ms"],
                "p50_ms": now["p50_ms"], "change": change}
    warn(f"{reason}: latency regression check skipped")
    return {**result, "status": "skipped", "reason": reason}
