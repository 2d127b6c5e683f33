"""The CLI's tables: each row of a typed result, with its figures formatted, in a recorded rich console."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from edgetl import rundir
from edgetl.cli.catalog import recipes_data, recipes_table
from edgetl.cli.tables import (
    info_tables,
    latency_table,
    parity_table,
    predict_table,
    run_table,
    train_table,
)
from edgetl.pipeline import RunOutcome, describe
from edgetl.predict import Prediction
from edgetl.recipe import known_recipes
from edgetl.rundir import PhaseSummary, RunDir, TrainSummary, VerifyReport

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-0.1.0"  # written by edgetl 0.1.0, weights left out


def render(*tables) -> str:
    console = Console(record=True, width=200)
    for table in tables:
        console.print(table)
    return console.export_text()


def line_of(text: str, first_cell: str) -> str:
    """The one table row whose first cell is `first_cell`."""
    [line] = [line for line in text.splitlines() if line.startswith(f"│ {first_cell} ")]
    return line


def cells(text: str, first_cell: str) -> list[str]:
    return [cell.strip() for cell in line_of(text, first_cell).split("│")[1:-1]]


def summary(**changes) -> TrainSummary:
    phases = [PhaseSummary(name="head", epochs=3, planned_epochs=3, best_val_acc=0.625, best_val_loss=0.9123,
                           seconds=4.25, stopped_early=False),  # a train.json from before val_acc_gain
              PhaseSummary(name="all", epochs=2, planned_epochs=5, best_val_acc=0.875, best_val_loss=0.4121,
                           seconds=12.34, stopped_early=True, val_acc_gain=0.25,
                           ended="no better val figure in 3 epochs")]
    return TrainSummary(run_dir="artifacts/demo", backbone="mobilenet_v3_small", device="cpu", best_val_acc=0.875,
                        best_val_loss=0.4121, best_epoch=4, seconds=16.6, phases=phases, weights="imagenet",
                        wall_seconds=21.04, **changes)


def check(artifact: str, measure: str, passed: bool) -> dict:
    return {"artifact": artifact, "kind": "values", "measure": measure, "value": 0, "op": "<=", "bar": 1,
            "passed": passed, "unit": "", "detail": ""}


def timing(runtime: str, file: str, threads: int, p50: float, speedup: float) -> dict:
    return {"runtime": runtime, "file": file, "batch": 1, "threads": threads, "p50_ms": p50, "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.5, "mean_ms": p50, "throughput": 1e3 / p50, "iterations": 57, "warmup": 5,
            "cold_start_ms": 41.7, "first_call_ms": 3.25, "rss_delta_mb": 12.0, "file_bytes": 6 * 2**20,
            "speedup_vs_eager": speedup}


@pytest.fixture
def report() -> VerifyReport:
    figures = {"inputs": 13, "max_abs_diff": 3.1e-6, "mean_abs_diff": 4.2e-7, "max_rel_diff": 8.8e-7,
               "softmax_max_diff": 1.5e-7, "top1_agreement": 1.0, "top5_overlap": 0.9, "top5_k": 3, "accuracy": 0.75,
               "reference_accuracy": 0.8}
    return VerifyReport(
        run_dir="artifacts/demo", passed=False,
        checks=[check("model.onnx", "max abs diff", True), check("model.onnx", "top-1 agreement", True),
                check("model.torchscript.pt", "loads in its runtime", False),
                check("model.torchscript.pt", "sha256", True)],
        bars={"parity": {"model.onnx": {"precision": "fp32"}, "model.torchscript.pt": {"precision": "fp32"}},
              "latency": {"max_latency_ms": 5.0}},
        inputs={"source": "data", "images": 9, "labelled": 8, "random": 4},
        reference={"file": "checkpoints/best.pt"}, parity={"model.onnx": figures, "model.torchscript.pt": None},
        latency=[timing("eager", "best.pt", 1, 8.0, 1.0), timing("onnx", "model.onnx", 1, 2.0, 4.0),
                 timing("onnx", "model.onnx", 8, 0.5, 16.0)],
        gate={"runtime": "onnx", "file": "model.onnx", "batch": 1, "threads": 8, "p50_ms": 0.5},
        regression={"status": "checked", "baseline_p50_ms": 0.4, "change": 0.25, "max_regression": 0.1},
        settings={"timing": {"clock": "time.perf_counter_ns", "memory_method": "psutil RSS growth"}},
        machine={"cpu_model": "Test CPU 9000", "cores": 8, "onnxruntime": "1.99", "id": "abcd1234", "isa": ["avx2"]})


def test_the_train_table_has_a_row_per_phase_and_the_best_checkpoint():
    text = render(train_table(summary()))
    assert "edgetl train · mobilenet_v3_small on cpu · artifacts/demo" in text
    assert cells(text, "head") == ["head", "3/3", "62.5 %", "0.912", "4.2 s", "—", "all its epochs"]
    # +25 pts in 12.34 s: the gain per minute says whether the phase paid for its time; the last column, why it ended
    assert cells(text, "all") == ["all", "2/5", "87.5 %", "0.412", "12.3 s", "+25.0 pts · +121.6/min",
                                  "no better val figure in 3 epochs"]
    assert cells(text, "best.pt") == ["best.pt", "epoch 4", "87.5 %", "0.412", "21.0 s in all", "", ""]


def test_the_parity_table_shows_figures_per_artifact_and_its_checks(report):
    text = render(parity_table(report))
    assert "parity vs checkpoints/best.pt · 9 images (data, 8 labelled) + 4 random" in text
    assert cells(text, "model.onnx") == ["model.onnx", "fp32", "3.1e-06", "4.2e-07", "8.8e-07", "1.5e-07", "100.0 %", "90.0 % (k=3)",
                    "80.0 % → 75.0 %", "✓ 2"]
    assert cells(text, "model.torchscript.pt") == ["model.torchscript.pt", "fp32", *["—"] * 7, "✗ 1 of 2"]


def test_the_latency_table_has_a_row_per_setting_and_the_gate_and_baseline_in_its_caption(report):
    text = render(latency_table(report))
    assert "latency on Test CPU 9000 · 8 cores · onnxruntime 1.99 · machine abcd1234" in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│ ")]
    table = [row for row in cells if row[1] in ("eager", "onnx")]
    assert len(table) == 3
    assert table[2][:9] == ["model.onnx", "onnx", "1", "8", "0.50", "0.55", "0.75", "2000", "16.00×"]
    assert table[0][0] == "best.pt" and table[0][9:] == ["42 ms", "3.2 ms", "12 MiB", "6.0 MiB", "57"]
    assert "ISA: avx2" in text
    assert "gate (bold): model.onnx p50 0.50 ms, bar ≤ 5 ms; vs baseline 0.40 ms: +25.0 % (bar ≤ +10 %)" in text


def test_a_skipped_regression_and_a_report_without_a_gate_say_so(report):
    skipped = report.model_copy(update={"regression": {"status": "skipped", "reason": "another machine"}})
    assert "regression check skipped: another machine" in render(latency_table(skipped))
    ungated = report.model_copy(update={"gate": None, "inputs": None})
    assert "no latency gate (no model.onnx timed)" in render(latency_table(ungated))
    assert "parity vs checkpoints/best.pt · integrity only" in render(parity_table(ungated))


def test_the_run_table_puts_checkpoint_and_artifacts_side_by_side_with_the_scratch_comparison(tmp_path):
    run = RunDir(FIXTURE)
    train = rundir.read_train_summary(run.train_json)
    scratch = train.model_copy(update={"best_val_acc": train.best_val_acc - 0.125})
    outcome = RunOutcome(run_dir=tmp_path, train=train, manifest=rundir.read_manifest(run.manifest),
                         verify=rundir.read_verify_report(run.verify_json), scratch=scratch, seconds=42.0)
    text = render(run_table(outcome))
    assert "edgetl run · mobilenet_v3_small · best val acc 33.3 % (epoch 1) · 42 s" in text
    eager = outcome.verify.latency[0]
    assert f"{eager['p50_ms']:.2f}" in line_of(text, "checkpoint (PyTorch eager)")
    onnx = line_of(text, "model.onnx")
    assert f"{outcome.verify.parity['model.onnx']['max_abs_diff']:.2g}" in onnx and "✓" in onnx
    assert "+12.5 pts" in line_of(text, "pretrained weights bring")
    timed = RunOutcome(**{**outcome.__dict__, "stage_seconds": {"train": 61.5, "export": 9.25, "verify": 12.0}})
    text = render(run_table(timed))
    assert "train 61.5 s · export 9.2 s · verify 12.0 s; ships model.onnx" in text  # no int8 file: fp32 ships
    assert f"{timed.manifest.artifacts[0].seconds:.1f}" in line_of(text, "model.onnx")
    doc = timed.to_dict()
    assert doc["stage_seconds"] == {"train": 61.5, "export": 9.25, "verify": 12.0} and doc["shipped"] == "model.onnx"
    assert set(doc["export_seconds"]) == {a.file for a in timed.manifest.artifacts}


def test_run_ships_the_fastest_lower_precision_file_verify_says_ships(tmp_path):
    run = RunDir(FIXTURE)
    verify = rundir.read_verify_report(run.verify_json)
    rows = [{"file": "model.int8.onnx", "decision": "ship", "speedup": 2.2},
            {"file": "model.fp16.onnx", "decision": "ship", "speedup": 0.7},  # ships to fp16 hardware, not here
            {"file": "model.int8.pte", "decision": "don't ship", "speedup": 3.0}]
    outcome = RunOutcome(run_dir=tmp_path, train=rundir.read_train_summary(run.train_json),
                         manifest=rundir.read_manifest(run.manifest), scratch=None, seconds=1.0,
                         verify=verify.model_copy(update={"go_no_go": rows}))
    assert outcome.shipped == "model.int8.onnx"


def test_the_info_table_shows_every_stage_of_a_run(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    text = render(*info_tables(describe(run)))
    assert "mobilenet_v3_small · weights none" in line_of(text, "backbone")
    assert "circle, cross, ring" in line_of(text, "classes")
    assert "2 epochs done" in line_of(text, "training")
    assert "export/model.onnx" in line_of(text, "onnx") and "export/model.torchscript.pt" in line_of(text, "torchscript")
    # the fixture leaves the model files out, so its verify report is not shown as passed: info re-hashes them
    assert "not verified" in line_of(text, "verify")
    assert any("model.onnx, which it vouched for, is missing" in p for p in describe(run).damaged)


def test_the_predict_table_lists_the_runner_ups():
    prediction = Prediction(image="cat.jpg", label="cat", index=0, probability=0.8123,
                            top=[("cat", 0.8123), ("dog", 0.15), ("fox", 0.0377)])
    assert cells(render(predict_table([prediction])), "cat.jpg") == ["cat.jpg", "cat", "81.2 %", "dog 15 %, fox 4 %"]


def test_the_recipes_table_lists_every_shipped_recipe():
    text = render(recipes_table(recipes_data()))
    for name in known_recipes():
        assert line_of(text, name)
    assert "efficientnet_lite0 + LoRA r8" in line_of(text, "quickstart_lora")
