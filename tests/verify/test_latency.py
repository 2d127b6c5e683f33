"""Latency: timing a runner, the machine's fingerprint, the figure the bars apply to, and the baseline comparison."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from edgetl.compare.gate import Gate
from edgetl.rundir import VerifyReport
from edgetl.verify.latency import (
    TimingPlan,
    check_regression,
    fingerprint_differences,
    gate_latency,
    machine_fingerprint,
    time_runner,
)

QUICK = TimingPlan(seconds=0.01, min_iterations=20, max_seconds=0.5, warmup=3)


def test_fingerprints_compare_field_by_field():
    here = machine_fingerprint()
    assert fingerprint_differences(here, dict(here)) == []
    assert fingerprint_differences(here, {**here, "cores": here["cores"] + 1}) == [
        f"cores: {here['cores']} → {here['cores'] + 1}"]


def test_the_fingerprint_id_hashes_the_fields():
    a, b = machine_fingerprint(), machine_fingerprint()
    assert a == b and len(a["id"]) == 16
    assert fingerprint_differences(a, {**a, "id": "0" * 16}) == []  # the id alone is no difference


def test_time_runner_times_at_least_min_iterations_and_orders_its_percentiles(tmp_path):
    calls = []

    def make():
        time.sleep(0.02)  # the cold start: creating the runner
        return lambda x: calls.append(len(x)) or x.sum()

    x = np.zeros((4, 3, 8, 8), dtype=np.float32)
    file = tmp_path / "model.bin"
    file.write_bytes(b"\0" * 1234)
    threads_before = torch.get_num_threads()
    t = time_runner(make, runtime="onnx", x=x, threads=1, plan=QUICK, file=file)
    assert torch.get_num_threads() == threads_before, "time_runner left PyTorch's thread count changed"
    # warm-up goes on past plan.warmup while calls still get 2x faster (a stub runner's first calls can)
    assert t.iterations >= QUICK.min_iterations and t.warmup >= QUICK.warmup
    assert len(calls) == t.iterations + t.warmup and set(calls) == {4}
    assert 0 < t.p50_ms <= t.p90_ms <= t.p99_ms
    assert t.cold_start_ms >= 20 and t.first_call_ms > 0 and t.rss_delta_mb >= 0
    assert (t.runtime, t.batch, t.threads, t.file, t.file_bytes) == ("onnx", 4, 1, "model.bin", 1234)
    assert t.throughput == pytest.approx(4 * 1e3 / t.mean_ms, rel=1e-6)


def test_time_runner_stops_at_max_seconds_before_min_iterations():
    plan = TimingPlan(seconds=0.01, min_iterations=10_000, max_seconds=0.05, warmup=1)
    started = time.perf_counter()
    t = time_runner(lambda: lambda x: time.sleep(0.005), runtime="eager", x=np.zeros((1, 3, 8, 8), np.float32),
                    threads=1, plan=plan)
    assert 1 <= t.iterations < 20 and time.perf_counter() - started < 1.0
    assert t.file is None and t.file_bytes is None


def test_a_runner_whose_first_calls_pay_set_up_is_timed_once_it_is_warm():
    """One-time set-up in the first calls (0.3 s, 0.12 s, then 2 ms) must not be what p50 measures, even when the
    first call alone takes longer than the warm-up's share of `seconds`."""
    costs = iter([0.3, 0.12, 0.05])

    def runner(x):
        time.sleep(next(costs, 0.002))

    plan = TimingPlan(seconds=0.2, min_iterations=10, max_seconds=2.0, warmup=1)
    t = time_runner(lambda: runner, runtime="eager", x=np.zeros((1, 3, 8, 8), np.float32), threads=1, plan=plan)
    assert t.warmup >= 4 and t.first_call_ms >= 300
    assert t.p90_ms < 10 and t.mean_ms < 10, t  # no set-up call among the timed ones


def row(runtime: str, batch: int, threads: int, p50: float) -> dict:
    file = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "eager": "best.pt"}[runtime]
    return {"runtime": runtime, "file": file, "batch": batch, "threads": threads, "p50_ms": p50}


ROWS = [row(r, b, t, p50) for b in (1, 8) for t in (1, 4)
        for r, p50 in (("eager", 10.0 * b / t), ("onnx", 2.0 * b / t), ("torchscript", 5.0 * b / t))]


def test_gate_latency_takes_the_onnx_row_at_the_smallest_batch_with_most_threads():
    gate = Gate()
    figure = gate_latency(ROWS[::-1], gate, max_latency_ms=None)
    assert figure == {"runtime": "onnx", "file": "model.onnx", "batch": 1, "threads": 4, "p50_ms": 0.5}
    assert gate.checks == []  # no bar, no check
    gate_latency(ROWS, gate, max_latency_ms=0.4)
    assert [c.message() for c in gate.failures] == [
        "model.onnx: p50 latency (batch 1, 4 threads) 0.5 ms fails the bar ≤ 0.4 ms"]


def test_gate_latency_without_an_onnx_row_fails_only_when_a_bar_was_asked_for():
    others = [r for r in ROWS if r["runtime"] != "onnx"]
    gate = Gate()
    assert gate_latency(others, gate, max_latency_ms=None) is None and gate.checks == []
    assert gate_latency(others, gate, max_latency_ms=5.0) is None
    assert [c.message() for c in gate.failures] == ["model.onnx: file to time 'missing' fails the bar = 'present'"]


def test_a_baseline_from_another_machine_is_skipped_with_a_warning():
    here = machine_fingerprint()
    now = {"runtime": "onnx", "file": "model.onnx", "batch": 1, "threads": 4, "p50_ms": 5.0}
    old = VerifyReport(run_dir="old", gate={**now, "p50_ms": 1e-6}, machine={**here, "cpu_model": "Some Other CPU"})
    gate, warnings = Gate(), []
    result = check_regression(now, gate, old=old, baseline="old.json", machine=here, max_regression=0.1,
                              warn=warnings.append)
    assert result["status"] == "skipped" and gate.checks == []  # a 5,000,000x slow-down, not compared
    assert result["reason"].startswith("baseline old.json was measured on another machine (cpu_model: 'Some Other CPU' → ")
    assert warnings == [f"{result['reason']}: latency regression check skipped"]


def test_a_baseline_of_another_setting_is_skipped_and_one_of_the_same_is_checked():
    here = machine_fingerprint()
    now = {"runtime": "onnx", "file": "model.onnx", "batch": 1, "threads": 4, "p50_ms": 1.2}
    gate, warnings = Gate(), []
    other = VerifyReport(run_dir="old", gate={**now, "threads": 1}, machine=here)
    result = check_regression(now, gate, old=other, baseline="old.json", machine=here, max_regression=0.1,
                              warn=warnings.append)
    assert result["status"] == "skipped" and "timed another setting" in result["reason"] and len(warnings) == 1

    same = VerifyReport(run_dir="old", gate={**now, "p50_ms": 1.0}, machine=here)
    result = check_regression(now, gate, old=same, baseline="old.json", machine=here, max_regression=0.1,
                              warn=warnings.append)
    assert result["status"] == "checked" and result["passed"] is False and len(warnings) == 1
    assert result["change"] == pytest.approx(0.2) and result["baseline_p50_ms"] == 1.0
    assert [c.message() for c in gate.failures] == [
        "model.onnx: p50 change vs baseline +20.0 % fails the bar ≤ +10.0 % — 1.2 ms now, 1 ms in old.json"]
