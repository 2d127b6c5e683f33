"""The gate: checks are collected with their bars, never raised one by one; each says what failed and by how much."""

from __future__ import annotations

import logging

from edgetl.compare.gate import Check, Gate


def test_a_check_message_names_artifact_measure_value_and_bar():
    check = Check("model.onnx", "values", "max abs diff", 0.0032, "<=", 1e-4, passed=False)
    assert check.message() == "model.onnx: max abs diff 0.0032 fails the bar ≤ 0.0001"
    assert check.line().startswith("✗ model.onnx · values · max abs diff")


def test_the_gate_collects_every_check_and_lists_the_failures_in_order(caplog):
    gate = Gate()
    with caplog.at_level(logging.INFO, logger="edgetl.compare.gate"):
        results = [
            gate.check("model.onnx", "values", "max abs diff", 3e-6, "<=", 1e-4),
            gate.check("model.onnx", "values", "top-1 agreement", 0.75, ">=", 1.0, unit="%"),
            gate.check("model.onnx", "names", "input name", "images", "==", "input"),
            gate.check("model.torchscript.pt", "latency", "p50", 12.5, "<=", 10.0, unit="ms", detail="batch 1"),
        ]
    assert results == [True, False, False, False]
    assert len(gate.checks) == 4 and [c.passed for c in gate.checks] == results
    assert [c.measure for c in gate.failures] == ["top-1 agreement", "input name", "p50"]
    assert [c.message() for c in gate.failures] == [
        "model.onnx: top-1 agreement 75.0 % fails the bar ≥ 100.0 %",
        "model.onnx: input name 'images' fails the bar = 'input'",
        "model.torchscript.pt: p50 12.5 ms fails the bar ≤ 10 ms — batch 1",
    ]
    # one ✓/✗ line each: passes at INFO, failures at WARNING
    assert [(r.levelname, r.getMessage()[0]) for r in caplog.records] == [
        ("INFO", "✓"), ("WARNING", "✗"), ("WARNING", "✗"), ("WARNING", "✗")]


def test_a_signed_percentage_and_a_passing_check_print_as_such():
    gate = Gate()
    assert gate.check("model.onnx", "regression", "p50 change vs baseline", -0.05, "<=", 0.10, unit="+%")
    [check] = gate.checks
    assert check.line() == "✓ model.onnx · regression · p50 change vs baseline -5.0 % (bar ≤ +10.0 %)"
    assert gate.failures == []

