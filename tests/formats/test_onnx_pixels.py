"""A device-input INT8 file turns the uint8 image into floats in one DequantizeLinear, with the same outputs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgetl.formats.device_io import device_model
from edgetl.formats.onnx_pixels import image_in_one_op

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _export(tmp_path, *, uint8_input: bool, padding: int = 1):
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=padding), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    model = device_model(inner, mean=MEAN, std=STD, uint8_input=uint8_input, probs=False)
    x = torch.zeros(3, 16, 16, 3, dtype=torch.uint8) if uint8_input else torch.zeros(3, 3, 16, 16)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], dynamo=True, external_data=False)
    return path


def _run(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


@pytest.mark.parametrize("padding", [0, 1])
def test_one_dequantize_replaces_the_cast_and_normalization_with_the_same_outputs(tmp_path, padding):
    path = _export(tmp_path, uint8_input=True, padding=padding)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    before = _run(path, images)
    assert image_in_one_op(path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Cast" not in ops and "Mul" not in ops and ops.count("DequantizeLinear") == 1
    after = _run(path, images)
    # exact but for the padding, which stands for the rounded mean pixel: under half a grey level of the border
    tolerance = 0 if padding == 0 else 0.5 / 255 / min(STD) * 0.5
    np.testing.assert_allclose(after, before, atol=1e-5 + tolerance, rtol=1e-5)
    assert not image_in_one_op(path)  # already done: nothing left to rewrite


def test_a_float_input_file_is_left_as_it_is(tmp_path):
    path = _export(tmp_path, uint8_input=False)
    before = path.read_bytes()
    assert not image_in_one_op(path)
    assert path.read_bytes() == before


def test_the_uint8_input_adds_only_its_own_ops_to_the_graph(tmp_path):
    """The permuted image is made contiguous: a strided NCHW view made the exporter trace the pooling as an
    as_strided Shape/Range/Gather chain, ~0.1 ms a call on Lite0 (the uint8 file was slower than the float one)."""
    (tmp_path / "f").mkdir()
    (tmp_path / "u").mkdir()
    float_ops = sorted(n.op_type for n in onnx.load(str(_export(tmp_path / "f", uint8_input=False))).graph.node)
    uint8_ops = [n.op_type for n in onnx.load(str(_export(tmp_path / "u", uint8_input=True))).graph.node]
    for op in ("Transpose", "Cast", "Mul", "Add"):  # the image's layout, dtype and normalization
        uint8_ops.remove(op)
    assert sorted(uint8_ops) == float_ops
