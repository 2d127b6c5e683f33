"""fp16 and INT8 files (issue 12): made beside the fp32 file, guarded, listed, verified, chosen by predict."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.compare.gate import Bars
from edgetl.export import export_run
from edgetl.export import precision as precision_module
from edgetl.export.precision import QuantPlan
from edgetl.verify.decide import MIN_SPEEDUP, _decide

runner = CliRunner()
FAST = ["--latency-seconds", "0.01", "--threads", "1", "--samples", "8"]
PLAN = QuantPlan(calibration_images=16, guard_images=16, activations="uint8")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def quantized(straight, tmp_path_factory):
    """The tiny trained run, exported as fp32 + int8 + fp16 ONNX."""
    _, run = straight
    run = shutil.copytree(run, tmp_path_factory.mktemp("precision") / "run")
    export_run(run, formats=["onnx"], precisions=["fp32", "int8", "fp16"], plan=PLAN)
    return run


@pytest.fixture
def quantized_copy(quantized, tmp_path):
    return shutil.copytree(quantized, tmp_path / "run")


def test_int8_and_fp16_files_sit_beside_the_fp32_one_smaller_and_described(quantized):
    manifest = json.loads((quantized / "export" / "manifest.json").read_text())
    by_precision = {a["precision"]: a for a in manifest["artifacts"]}
    assert [a["file"] for a in manifest["artifacts"]] == ["model.onnx", "model.int8.onnx", "model.fp16.onnx"]
    assert by_precision["int8"]["bytes"] < 0.35 * by_precision["fp32"]["bytes"]
    assert by_precision["fp16"]["bytes"] < 0.6 * by_precision["fp32"]["bytes"]
    int8 = by_precision["int8"]["quantization"]
    assert int8["activations"] == "uint8" and int8["weights"] == "int8 per-channel" and int8["method"] == "minmax"
    assert int8["calibration"]["part"] == "train" and 0 < int8["calibration"]["images"] <= 16
    assert int8["guard"]["passed"] in (True, None) and "fp32" not in str(by_precision["fp32"].get("quantization"))
    for precision in ("int8", "fp16"):
        model = onnx.load(str(quantized / "export" / by_precision[precision]["file"]))
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["precision"] == precision and json.loads(props["labels"]) == manifest["labels"]
    ops = {n.op_type for n in onnx.load(str(quantized / "export" / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_verify_judges_each_precision_by_its_bars_and_says_go_or_no_go(quantized_copy):
    result = invoke("verify", quantized_copy, *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((quantized_copy / "verify.json").read_text())
    assert report["bars"]["parity"]["model.int8.onnx"]["max_accuracy_drop"] == 0.01
    assert report["bars"]["parity"]["model.fp16.onnx"]["rtol"] == 0.02
    measures = {(c["artifact"], c["measure"]) for c in report["checks"]}
    assert ("model.int8.onnx", "accuracy drop") in measures and ("model.int8.onnx", "max abs diff") not in measures
    assert ("model.fp16.onnx", "max diff / logit scale") in measures
    rows = {r["file"]: r for r in report["go_no_go"]}
    assert set(rows) == {"model.int8.onnx", "model.fp16.onnx"}
    assert rows["model.int8.onnx"]["versus"] == "model.onnx" and rows["model.int8.onnx"]["size_ratio"] < 0.35
    assert rows["model.int8.onnx"]["decision"] in ("ship", "don't ship") and rows["model.int8.onnx"]["reason"]
    # export's guard judged on the images verify judged on: the run's whole val split (it has no test split)
    guard = json.loads((quantized_copy / "export" / "manifest.json").read_text())["artifacts"][1]["quantization"]["guard"]
    assert {(r["split"], r["images"]) for r in guard["rounds"]} == {("val", report["inputs"]["labelled"])}
    assert report["inputs"]["part"] == "val" and rows["model.int8.onnx"]["split"] == "val"
    assert "export's guard" not in rows["model.int8.onnx"]["reason"]
    assert report["gate"]["file"] == "model.onnx"  # the latency gate times the fp32 file
    assert "go/no-go" in result.output


def test_a_precision_the_manifest_misstates_fails_verify(quantized_copy):
    path = quantized_copy / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"][1]["precision"] = "fp32"  # the int8 file claimed as fp32
    path.write_text(json.dumps(manifest))
    result = invoke("verify", quantized_copy, *FAST)
    assert result.exit_code == 1
    # its own ops say int8: the manifest's claim fails before the file runs (its embedded precision says so too)
    assert "model.int8.onnx: precision of its ops 'int8' fails the bar = 'fp32'" in result.output


def test_a_tampered_int8_file_fails_integrity(quantized_copy):
    with (quantized_copy / "export" / "model.int8.onnx").open("ab") as f:
        f.write(b"\0")
    result = invoke("verify", quantized_copy, *FAST)
    assert result.exit_code == 1 and "model.int8.onnx: bytes" in result.output


def test_auto_activations_times_both_types_here_and_keeps_the_faster(straight, tmp_path):
    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    result = export_run(run, formats=["onnx"], precisions=["int8"],
                        plan=QuantPlan(calibration_images=8, guard_images=8, activations="auto"))
    quantization = result.artifacts[1].quantization
    timed = quantization["activations_p50_ms"]
    assert set(timed) == {"uint8", "int8"} and all(ms > 0 for ms in timed.values())
    assert quantization["activations"] == min(timed, key=timed.get)


def test_the_guard_starts_with_the_ends_float_then_adds_the_noisiest_nodes_and_keeps_the_best_round(
        straight, tmp_path, monkeypatch):
    from edgetl.formats.onnx_precision import boundary_nodes, preprocessed

    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    # An impossible bar: every round fails, so the guard adds 2 more float nodes per round to the ends, then stops.
    monkeypatch.setitem(precision_module.BARS, "int8", Bars(min_top1=0.0, max_accuracy_drop=-1.0))
    monkeypatch.setattr(precision_module, "GUARD_ROUNDS", 2)
    result = export_run(run, formats=["onnx"], precisions=["int8"], plan=PLAN)
    guard = result.artifacts[1].quantization["guard"]
    excluded = [r["excluded_nodes"] for r in guard["rounds"]]
    ends = boundary_nodes(preprocessed(run / "export" / "model.onnx", tmp_path))
    assert len(ends) >= 2 and excluded[0] == ends and excluded[1][:len(ends)] == ends
    assert [len(e) for e in excluded] == [len(ends), len(ends) + 2, len(ends) + 4] and guard["passed"] is False
    assert all("accuracy drop" in r["why"] for r in guard["rounds"])
    ranks = [(r["accuracy_drop"], -r["top1_agreement"], len(r["excluded_nodes"])) for r in guard["rounds"]]
    assert guard["kept_round"] == ranks.index(min(ranks))  # none passes: the smallest drop (then agreement) is kept
    assert guard["excluded_nodes"] == excluded[guard["kept_round"]]


def test_the_guard_acts_on_every_bar_so_export_and_verify_agree(straight, tmp_path, monkeypatch):
    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    # An agreement bar no file meets (drop bar lax): the guard must not stop after the first round.
    monkeypatch.setitem(precision_module.BARS, "int8", Bars(min_top1=1.01, max_accuracy_drop=1.0))
    monkeypatch.setattr(precision_module, "GUARD_ROUNDS", 1)
    result = export_run(run, formats=["onnx"], precisions=["int8"], plan=PLAN)
    guard = result.artifacts[1].quantization["guard"]
    assert len(guard["rounds"]) == 2 and guard["passed"] is False
    assert "top-1 agreement" in guard["rounds"][0]["why"]


@pytest.mark.parametrize("batch", [1, 32])  # the device's batch; one larger than the 16 calibration images
def test_int8_of_a_fixed_batch_file_calibrates_rounds_and_judges_in_that_batch(straight, tmp_path, batch):
    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    result = export_run(run, formats=["onnx"], precisions=["fp32", "int8"], plan=PLAN, batch=batch)
    int8 = result.artifacts[1]
    graph = onnx.load(str(run / "export" / int8.file)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    assert int8.quantization["weight_rounding"]["images"] > 0 and int8.quantization["guard"]["rounds"][0]["images"] > 0
    result = invoke("verify", run, *FAST)
    assert result.exit_code == 0, result.output


def test_the_guard_holds_the_value_bar_too_as_verify_does(straight, tmp_path, monkeypatch):
    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    # only the values bar fails: any INT8 rounding moves the logits by more than 1e-9 of their scale
    monkeypatch.setitem(precision_module.BARS, "int8", Bars(min_top1=0.0, rtol=1e-9, max_accuracy_drop=1.0))
    monkeypatch.setattr(precision_module, "GUARD_ROUNDS", 0)
    result = export_run(run, formats=["onnx"], precisions=["int8"], plan=PLAN)
    guard = result.artifacts[1].quantization["guard"]
    assert guard["passed"] is False and guard["rounds"][0]["why"].startswith("max diff / logit scale ")


@pytest.mark.parametrize("args, message", [
    (["--format", "torchscript", "--precision", "int8"], "--precision int8 is made by onnx, executorch, litert, not by torchscript"),
    (["--precision", "int4"], "int4"),
    (["--calibration", "median"], "median"),
])
def test_a_precision_no_format_makes_is_a_usage_error_before_any_work(tmp_path, args, message):
    result = invoke("export", tmp_path / "not-a-run", *args)
    assert result.exit_code == 2 and message in result.output and "not found" not in result.output


def test_predict_uses_the_file_of_the_precision_asked_for(quantized, tmp_path, monkeypatch):
    import dataclasses

    import edgetl.predict

    loaded = []
    onnx_format = edgetl.predict.FORMATS["onnx"]
    spy = dataclasses.replace(onnx_format, load=lambda path, **kw: loaded.append(path.name) or onnx_format.load(path, **kw))
    monkeypatch.setitem(edgetl.predict.FORMATS, "onnx", spy)
    result = invoke("predict", quantized, _an_image(tmp_path), "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert loaded == ["model.int8.onnx"]


def _an_image(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (200, 20, 20)).save(path)
    return path


def test_predict_refuses_a_precision_the_export_lacks(quantized, tmp_path):
    shutil.copytree(quantized / "export", tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    manifest["artifacts"] = manifest["artifacts"][:1]
    (tmp_path / "export" / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("predict", tmp_path, _an_image(tmp_path), "--precision", "int8")
    assert result.exit_code == 2 and "lists no int8 file (it has: fp32)" in result.output


@pytest.mark.parametrize("row, failures, decision, words", [
    ({"precision": "int8", "speedup": 2.1, "size_ratio": 0.27, "accuracy_delta": -0.004}, [], "ship", "2.10×"),
    ({"precision": "int8", "speedup": 1.0, "size_ratio": 0.27, "accuracy_delta": 0.0}, [], "don't ship",
     f"under {MIN_SPEEDUP}× faster"),
    ({"precision": "int8", "speedup": 3.0, "size_ratio": 0.27, "accuracy_delta": -0.05}, ["accuracy drop"],
     "don't ship", "fails accuracy drop"),
    ({"precision": "fp16", "speedup": 0.6, "size_ratio": 0.5, "accuracy_delta": 0.0}, [], "ship", "fp16 hardware"),
])
def test_the_go_no_go_says_one_word_with_the_reason(row, failures, decision, words):
    class Failure:
        def __init__(self, measure):
            self.measure = measure

    got, reason = _decide(row, [Failure(m) for m in failures])
    assert got == decision and words in reason


def test_the_go_no_go_says_how_many_images_the_accuracy_stands_on_and_where_export_judged_otherwise():
    row = {"precision": "int8", "speedup": 2.1, "size_ratio": 0.27, "accuracy_delta": -2 / 153, "images": 153,
           "accuracy": 144 / 153, "accuracy_ci": [0.89, 0.97], "reference_accuracy": 146 / 153,
           "reference_accuracy_ci": [0.91, 0.98], "export_guard": {"passed": True, "images": 153, "accuracy_drop": 0.0}}
    _, reason = _decide(row, [])
    assert "accuracy -1.3 pt on 153 images (94.1 % [89.0–97.0] vs 95.4 % [91.0–98.0], 95 % intervals)" in reason
    assert "export's guard" not in reason  # the same images: one verdict, nothing to explain
    row["export_guard"] = {"passed": False, "images": 200, "accuracy_drop": 0.02}
    _, reason = _decide(row, [])
    assert reason.endswith("; export's guard failed on 200 val images (-2.0 pt)")
    # verify on the run's test split and the guard too: the reason names it; on another split, says so
    row.update(split="test", export_guard={"passed": True, "images": 153, "split": "test", "accuracy_drop": 0.0})
    _, reason = _decide(row, [])
    assert "accuracy -1.3 pt on 153 test images (" in reason and "export's guard" not in reason
    row["split"] = None  # verify judged --data images, as many as the guard's test images
    _, reason = _decide(row, [])
    assert reason.endswith("; export's guard held on 153 test images (+0.0 pt)")


@pytest.mark.parametrize("batch", [1, 4])  # 4: a fixed-batch export, timed at its own batch only
def test_the_go_no_go_speed_up_is_the_formats_own_runtime_at_the_timed_batch(batch):
    from types import SimpleNamespace

    from edgetl.compare.gate import Gate
    from edgetl.verify.decide import go_no_go

    def entry(file, precision):
        return SimpleNamespace(format="onnx", file=file, precision=precision, bytes=100, quantization=None)

    def timed(runtime, file, p50):
        return {"runtime": runtime, "file": file, "batch": batch, "threads": 2, "p50_ms": p50}

    manifest = SimpleNamespace(artifacts=[entry("model.onnx", "fp32"), entry("model.int8.onnx", "int8")])
    report = SimpleNamespace(parity={}, inputs={}, latency=[
        timed("eager", "best.pt", 20.0), timed("onnx", "model.onnx", 4.0), timed("onnx", "model.int8.onnx", 2.0),
        timed("openvino", "model.onnx", 3.0), timed("openvino", "model.int8.onnx", 2.9)])  # --runtime openvino
    [row] = go_no_go(manifest, report, Gate())
    assert row["speedup"] == pytest.approx(2.0) and row["batch"] == batch


def test_the_recipe_export_table_sets_what_run_exports(straight, tmp_path):
    from edgetl.pipeline import ExportRequest
    from edgetl.rundir import RunDir

    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    recipe = RunDir(run).recipe
    recipe.write_text(recipe.read_text() + '\n[export]\nprecisions = ["fp32", "int8"]\ncalibration = "entropy"\n')
    precisions, plan = ExportRequest().plan(run)
    assert precisions == ("fp32", "int8") and plan.method == "entropy"
    precisions, plan = ExportRequest(precisions=("fp16",), calibration="percentile").plan(run)
    assert precisions == ("fp16",) and plan.method == "percentile"  # flags win


def test_int8_without_train_images_to_calibrate_on_is_a_usage_error_and_keeps_the_export(fake_run):
    run = fake_run()  # a run whose split lists no images
    export_run(run, formats=["onnx"])
    before = (run / "export" / "manifest.json").read_bytes()
    result = invoke("export", run, "--format", "onnx", "--precision", "int8")
    assert result.exit_code == 2 and "no train images to calibrate INT8 on" in result.output
    assert (run / "export" / "manifest.json").read_bytes() == before
