"""`edgetl verify` as a CI gate: integrity, parity and latency bars, exit codes, the report's keys, baselines."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.export.stage import export_run
from edgetl.files import write_json
from edgetl.rundir import read_json
from edgetl.testing import make_run

FAST = ["--latency-seconds", "0.02"]  # the timing loop still runs, briefly: at most 0.06 s per setting
REPORT_KEYS = ["schema_version", "edgetl_version", "created", "run_dir", "passed", "failures", "warnings", "checks", "bars", "inputs",
               "reference", "parity", "per_class", "latency", "gate", "regression", "go_no_go", "engines", "golden", "localization", "settings", "machine", "versions",
               "manifest_sha256"]
PARITY_KEYS = ["inputs", "max_abs_diff", "mean_abs_diff", "max_rel_diff", "softmax_max_diff", "top1_agreement",
               "top5_overlap", "top5_k", "accuracy", "reference_accuracy", "top5_accuracy", "reference_top5_accuracy",
               "labelled", "accuracy_ci", "reference_accuracy_ci", "atol_bar"]
LATENCY_KEYS = ["runtime", "file", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
                "iterations", "warmup", "cold_start_ms", "first_call_ms", "rss_delta_mb", "file_bytes",
                "speedup_vs_eager"]
MACHINE_KEYS = ["cpu_model", "machine", "system", "cores", "physical_cores", "isa", "onnxruntime", "id"]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, ["verify", *map(str, args)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One real export shared by the module (exporting takes most of its time); tests damage copies of it."""
    run = make_run(tmp_path_factory.mktemp("exported"), backbone="mobilenet_v3_small", image_size=32)
    export_run(run)
    return run


def _rehash(run: Path, file: str) -> None:
    """Record a changed file's size and sha256 in the manifest, as if the exporter had written it so."""
    path, manifest = run / "export" / file, read_json(run / "export" / "manifest.json")
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    write_json(run / "export" / "manifest.json", manifest)


@pytest.fixture
def run(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / exported.name))


@pytest.fixture(scope="module")
def verified(exported, images, tmp_path_factory) -> tuple[Path, object]:
    """A copy of the export verified once through the CLI: (run, CliRunner result)."""
    run = Path(shutil.copytree(exported, tmp_path_factory.mktemp("verified") / exported.name))
    return run, invoke(run, "--data", images, *FAST)


def test_verify_passes_on_a_fresh_export(verified):
    run, result = verified
    assert result.exit_code == 0, result.output
    assert "verify passed" in result.output
    report = read_json(run / "verify.json")
    assert report["passed"] is True and report["failures"] == []
    # manifest.json: its meaning (labels, preprocessing, shapes) against the checkpoint, and that parity ran;
    # MODEL_CARD.md: its integrity, like every file the manifest lists
    # the golden vectors and the device snippets: integrity too (this export had no val photos: no golden);
    # export/: that it holds nothing the manifest does not list
    assert {c["artifact"] for c in report["checks"]} == {"model.onnx", "model.torchscript.pt", "checkpoints/best.pt",
                                                        "manifest.json", "MODEL_CARD.md", "device_predict.py",
                                                        "device_predict.cpp", "export/"}
    assert report["inputs"]["images"] == 9 and report["inputs"]["labelled"] == 9 and report["inputs"]["random"] == 4
    assert report["parity"]["model.onnx"]["top1_agreement"] == 1.0


def test_verify_reports_each_file_per_class_on_the_labelled_images(verified, images):
    run, result = verified
    report = read_json(run / "verify.json")
    per_class = report["per_class"]
    assert list(per_class) == ["checkpoints/best.pt", "model.onnx", "model.torchscript.pt"]
    for name, figures in per_class.items():
        matrix = figures["confusion"]
        assert figures["labels"] == ["class_0", "class_1", "class_2"]
        assert [sum(row) for row in matrix] == [3, 3, 3], name  # three images per class folder
        assert figures["images"] == report["inputs"]["labelled"] == 9
        assert figures["accuracy"] == pytest.approx(report["parity"].get(name, report["reference"])["accuracy"])
        assert matrix == per_class["checkpoints/best.pt"]["confusion"]  # fp32 files predict what the checkpoint does
    assert (run / "verify-confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "per class on the verify images" in result.output
    assert "checkpoints/best.pt = model.onnx = model.torchscript.pt" in result.output


def test_verify_json_has_the_promised_keys(verified):
    run, _ = verified
    report = read_json(run / "verify.json")
    assert list(report) == REPORT_KEYS
    for name in ("model.onnx", "model.torchscript.pt"):
        assert list(report["parity"][name]) == PARITY_KEYS
        assert report["bars"]["parity"][name] == {"precision": "fp32", "atol": 1e-4, "min_top1": 1.0}
    assert report["bars"]["latency"] == {"max_latency_ms": None, "max_regression": None}
    assert list(report["machine"]) == MACHINE_KEYS
    assert list(report["gate"]) == ["runtime", "file", "batch", "threads", "p50_ms"]
    assert list(report["checks"][0]) == ["artifact", "kind", "measure", "value", "op", "bar", "passed", "unit",
                                         "detail"]
    kinds = [c["kind"] for c in report["checks"] if c["artifact"] == "model.onnx"]
    assert kinds == sorted(kinds, key=["integrity", "meaning", "load", "names", "shapes", "values"].index)
    rows = report["latency"]
    assert {r["runtime"] for r in rows} == {"eager", "onnx", "torchscript"}
    for row in rows:
        assert list(row) == LATENCY_KEYS
        assert row["iterations"] >= 1 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in rows if r["runtime"] == "eager")
    assert report["settings"]["timing"]["memory_method"].startswith("psutil RSS")


@pytest.mark.parametrize("damage, measure", [("flip", "sha256"), ("truncate", "bytes"), ("delete", "file")])
def test_a_damaged_artifact_fails_integrity_first(run, damage, measure):
    path = run / "export" / "model.onnx"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-100]))
    else:
        path.unlink()
    result = invoke(run, *FAST)
    assert result.exit_code == 1, result.output
    assert f"model.onnx: {measure}" in result.output
    report = read_json(run / "verify.json")
    assert list(report) == REPORT_KEYS  # the same keys whatever stage stopped it
    assert report["passed"] is False and report["parity"] == {} and report["latency"] == []  # never loaded


def test_an_impossible_latency_bar_fails_naming_artifact_measure_value_and_bar(run, images):
    result = invoke(run, "--data", images, "--max-latency-ms", "1e-6", "--threads", "1", *FAST)
    assert result.exit_code == 1, result.output
    report = read_json(run / "verify.json")
    [failure] = report["failures"]
    p50 = report["gate"]["p50_ms"]
    assert failure == f"model.onnx: p50 latency (batch 1, 1 threads) {p50:.3g} ms fails the bar ≤ 1e-06 ms"
    assert failure in result.output


def test_a_wrong_onnx_fails_parity_with_the_default_bar(run, images):
    """An export whose weights drifted (the classifier's, by 1 %; manifest updated to match) passes
    integrity and is caught by the values check."""
    path = run / "export" / "model.onnx"
    model = onnx.load(path)
    [weight] = [t for t in model.graph.initializer if sorted(t.dims) == [3, 1024]]  # mobilenet_v3_small's head
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01), weight.name))
    onnx.save(model, path)
    _rehash(run, "model.onnx")
    result = invoke(run, "--data", images, "--threads", "1", *FAST)
    assert result.exit_code == 1, result.output
    report = read_json(run / "verify.json")
    diff = report["parity"]["model.onnx"]["max_abs_diff"]
    assert diff > 1e-3  # logits of a few units move by hundredths; a positive scale keeps every top-1
    bar = report["parity"]["model.onnx"]["atol_bar"]
    assert 1e-4 < bar < diff  # 1e-4 times the largest |logit| of the checkpoint (a few units)
    assert report["failures"] == [f"model.onnx: max abs diff {diff:.3g} fails the bar ≤ {bar:.3g} — 0.0001 × the "
                                  f"largest |logit| {bar / 1e-4:.3g}"]
    assert report["parity"]["model.torchscript.pt"]["max_abs_diff"] <= 1e-4  # the other artifact still passes


def test_a_file_its_runtime_refuses_fails_that_artifact_only(run, images):
    path = run / "export" / "model.onnx"
    path.write_bytes(b"not an onnx model")
    _rehash(run, "model.onnx")
    result = invoke(run, "--data", images, "--threads", "1", *FAST)
    assert result.exit_code == 1, result.output
    report = read_json(run / "verify.json")
    [failure] = report["failures"]
    assert failure.startswith("model.onnx: loads in its runtime (onnx) 'InvalidProtobuf: ")
    assert {r["runtime"] for r in report["latency"]} == {"eager", "torchscript"}  # the rest is still measured


def test_a_checkpoint_changed_after_export_fails(run, images):
    manifest = read_json(run / "export" / "manifest.json")
    manifest["run"]["epoch"] = 7  # as if best.pt had been overwritten by more training since the export
    write_json(run / "export" / "manifest.json", manifest)
    result = invoke(run, "--data", images, "--threads", "1", *FAST)
    assert result.exit_code == 1, result.output
    assert read_json(run / "verify.json")["failures"] == [
        "checkpoints/best.pt: epoch 1 fails the bar = 7 — the checkpoint changed after export; re-run `edgetl export`"]


def test_a_run_without_an_export_is_a_usage_error(fake_run):
    run = fake_run(backbone="mobilenet_v3_small", image_size=32)
    result = invoke(run)
    assert result.exit_code == 2, result.output
    assert f"run `edgetl export {run}` first" in result.output


def test_bad_flag_values_are_usage_errors(verified):
    run, _ = verified
    result = invoke(run, "--min-top1", "1.5")
    assert result.exit_code == 2, result.output
    assert "--min-top1 is a fraction in [0, 1] (got 1.5)" in result.output


def test_a_slower_run_than_the_baseline_on_the_same_machine_fails(verified, run, images, tmp_path):
    baseline = read_json(verified[0] / "verify.json")
    baseline["gate"]["p50_ms"] = 1e-6
    write_json(tmp_path / "old.json", baseline)
    result = invoke(run, "--data", images, "--baseline", tmp_path / "old.json", *FAST)
    assert result.exit_code == 1, result.output
    report = read_json(run / "verify.json")
    assert report["regression"]["status"] == "checked" and report["regression"]["passed"] is False
    [failure] = report["failures"]
    assert failure.startswith("model.onnx: p50 change vs baseline +") and "fails the bar ≤ +10.0 %" in failure


def test_a_baseline_from_another_machine_is_skipped_with_a_warning(verified, run, images, tmp_path):
    baseline = read_json(verified[0] / "verify.json")
    baseline["gate"]["p50_ms"] = 1e-6  # would fail, were it comparable
    baseline["machine"]["cpu_model"] = "Some Other CPU"
    write_json(tmp_path / "old.json", baseline)
    result = invoke(run, "--data", images, "--baseline", tmp_path / "old.json", *FAST)
    assert result.exit_code == 0, result.output
    report = read_json(run / "verify.json")
    assert report["regression"]["status"] == "skipped"
    assert "another machine (cpu_model: 'Some Other CPU' → " in report["regression"]["reason"]
    assert any("regression check skipped" in w for w in report["warnings"])
    assert "WARNING" in result.output
