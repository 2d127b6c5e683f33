"""The format registry, and every registered format's round trip: write a file, load it, same logits as torch."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgetl.errors import EdgetlError
from edgetl.formats import FORMATS, get_format, register, resolve_formats
from edgetl.formats.base import INPUT_NAME, OUTPUT_NAME, ExportMeta
from edgetl.formats.onnx import MIN_OPSET
from edgetl.preprocessing import Preprocessing
from edgetl.testing import randomize_for_parity

LABELS = ["cat", "dog", "ünïcode"]
PREP = Preprocessing(crop_size=32, resize_size=36, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def meta(*, batch: int | None = None, opset: int | None = None) -> ExportMeta:
    return ExportMeta(backbone="tiny", labels=LABELS, preprocessing=PREP.to_dict(), recipe_sha256="ab" * 32,
                      batch=batch, opset=opset)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A BatchNorm-free deploy-style model with real-magnitude logits (std about 4)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.Hardswish(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(LABELS)))
    return randomize_for_parity(net, image_size=32)


def test_the_registry_keys_formats_by_name_with_one_file_each_and_one_latency_gate():
    assert {"onnx", "torchscript"} <= set(FORMATS) and "all" not in FORMATS
    assert all(name == fmt.name for name, fmt in FORMATS.items())
    assert len({fmt.file for fmt in FORMATS.values()}) == len(FORMATS)
    assert [name for name, fmt in FORMATS.items() if fmt.gates_latency] == ["onnx"]


def test_an_unknown_format_suggests_the_closest_name():
    with pytest.raises(EdgetlError) as err:
        get_format("onxx")
    assert str(err.value) == ("unknown export format 'onxx'; known: onnx, torchscript, executorch, litert, all — "
                              "did you mean 'onnx'?")
    with pytest.raises(EdgetlError, match="did you mean 'torchscript'"):
        get_format("torchscrip")
    with pytest.raises(EdgetlError) as err:
        get_format("zzz")
    assert "did you mean" not in str(err.value)
    assert get_format("torchscript") is FORMATS["torchscript"]


def test_resolve_formats_expands_all_in_registry_order_and_drops_duplicates():
    assert resolve_formats(["all"]) == list(FORMATS)
    assert resolve_formats(["torchscript", "all", "onnx", "torchscript"]) == ["torchscript", "onnx", "executorch",
                                                                               "litert"]
    assert resolve_formats(["onnx", "onnx"]) == ["onnx"]
    with pytest.raises(EdgetlError, match="no export format given"):
        resolve_formats([])
    with pytest.raises(EdgetlError, match="unknown export format 'tflite'"):
        resolve_formats(["onnx", "tflite"])


def test_registering_a_name_twice_or_all_is_refused_and_changes_nothing():
    before = dict(FORMATS)
    with pytest.raises(ValueError, match="'onnx' is registered twice"):
        register(FORMATS["onnx"])
    with pytest.raises(ValueError, match="reserved name 'all'"):
        register(dataclasses.replace(FORMATS["onnx"], name="all", file="model.all"))
    assert before == FORMATS


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_writes_a_file_its_loader_runs_with_the_models_logits(model, tmp_path, name):
    fmt = FORMATS[name]
    if fmt.missing():
        pytest.skip(f"{fmt.missing()} (make test installs it)")
    path = tmp_path / fmt.file
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    extra = fmt.write(model, example, path, meta=meta())
    assert path.is_file() and list(tmp_path.iterdir()) == [path], "the format wrote more than its one file"
    runner = fmt.load(path, threads=1)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # not the traced batch size
    with torch.no_grad():
        want = model(x).numpy()
    got = runner(x.numpy())
    assert np.abs(want).max() > 1.0, "logits too small for the comparison to mean anything"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name}: logits differ from torch's")
    if name == "onnx":
        assert extra["opset"] >= MIN_OPSET
        assert [(s.name, s.dtype) for s in runner.inputs] == [(INPUT_NAME, "float32")]
        assert [s.name for s in runner.outputs] == [OUTPUT_NAME]
        proto = onnx.load(path)
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["labels"]) == LABELS and json.loads(props["preprocessing"])["crop_size"] == 32
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("Conv") == 2 and "BatchNormalization" not in ops
    elif fmt.extra:  # the on-device formats: batch-1 files that say so, run on any batch by their runners
        assert extra["input"]["shape"] == [1, 3, 32, 32] and extra["output"]["shape"] == [1, len(LABELS)]
        assert [s.shape for s in runner.inputs] == [[1, 3, 32, 32]] and runner.inputs[0].dtype == "float32"
        described = fmt.read_meta(path)
        assert described["labels"] == LABELS and described["precision"] == "fp32"
    else:
        assert extra == {} and runner.inputs is None
        with zipfile.ZipFile(path) as z:
            [described] = [n for n in z.namelist() if n.endswith("extra/edgetl.json")]
            info = json.loads(z.read(described))
        assert info["labels"] == LABELS and info["input"]["shape"] == ["batch", 3, 32, 32]


def test_onnx_refuses_an_opset_its_exporter_cannot_write_before_any_work():
    check = FORMATS["onnx"].check_request
    with pytest.raises(EdgetlError) as err:
        check(meta(opset=17))
    assert str(err.value) == (f"--opset 17 is not supported: torch's ONNX exporter writes opset {MIN_OPSET} to "
                              f"{onnx.defs.onnx_opset_version()} — leave it unset for its default")
    with pytest.raises(EdgetlError, match="is not supported"):
        check(meta(opset=onnx.defs.onnx_opset_version() + 1))
    check(meta(opset=None))
    check(meta(opset=MIN_OPSET))
    FORMATS["torchscript"].check_request(meta(opset=17))  # no opsets: nothing to refuse
