"""`edgetl verify --runtime`: the ONNX file in OpenVINO and OpenCV too, same bars, one row per engine."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.formats import engines

runner = CliRunner()
FAST = ["--latency-seconds", "0.05", "--threads", "1"]


def needs(*names):
    missing = [n for n in names if engines.get_engine(n).missing()]
    return pytest.mark.skipif(bool(missing), reason=f"needs the {', '.join(missing)} extra (pip install 'edgetl[all]')")


@needs("openvino", "opencv")
def test_every_engine_runs_the_export_right(exported_both_copy):
    run = exported_both_copy
    result = runner.invoke(app, ["verify", str(run), "--runtime", "openvino", "--runtime", "opencv", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "verify.json").read_text())
    for engine in ("openvino", "opencv"):
        figures = report["parity"][f"model.onnx ({engine})"]
        assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] < 1e-4
        assert report["engines"][engine]["version"] and report["engines"][engine]["files"]["model.onnx"]["problems"] == []
        assert any(r["runtime"] == engine and r["file"] == "model.onnx" for r in report["latency"])
    assert report["gate"]["runtime"] == "onnx"  # the latency bar stays onnxruntime's


@needs("openvino")
def test_an_engine_that_computes_differently_fails_the_gate_by_name(exported_both_copy, monkeypatch):
    """An engine whose logits differ (as OpenCV 4.8 computes the exporter's ReduceMean) fails verify, named."""
    real = engines.ENGINES["openvino"]

    def drifting(path, **kw):
        inner = real.load(path, **kw)
        return dataclasses.replace(inner, run=lambda x: inner.run(x) + np.float32(0.5))

    monkeypatch.setitem(engines.ENGINES, "openvino", dataclasses.replace(real, load=drifting))
    result = runner.invoke(app, ["verify", str(exported_both_copy), "--runtime", "openvino", *FAST])
    assert result.exit_code == 1, result.output
    assert "model.onnx (openvino)" in result.output and "max abs diff" in result.output


def test_a_missing_engine_names_the_pip_command(exported_both_copy, monkeypatch):
    monkeypatch.setitem(engines.ENGINES, "opencv", dataclasses.replace(engines.ENGINES["opencv"], module="no_such_cv2"))
    result = runner.invoke(app, ["verify", str(exported_both_copy), "--runtime", "opencv"])
    assert result.exit_code == 2
    assert "pip install 'edgetl[opencv]'" in result.output and "Traceback" not in result.output


@needs("openvino", "opencv")
def test_predict_runs_the_onnx_file_in_each_engine_alike(exported_both, tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(image)
    answers = []
    for extra in ([], ["--runtime", "openvino"], ["--runtime", "opencv"]):
        result = runner.invoke(app, ["predict", str(exported_both), str(image), "--json", *extra])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output)[0])
    assert answers[0]["label"] == answers[1]["label"] == answers[2]["label"]
    result = runner.invoke(app, ["predict", str(exported_both), str(image), "--runtime", "opencv", "--format",
                                 "torchscript"])
    assert result.exit_code == 2 and "runs ONNX files, not torchscript" in result.output
