"""The portable rewrite keeps outputs, clears what the compatibility table flags; other engines agree with ORT.

    EDGETL_OPENCV_TARGETS=/opt/cv455:/opt/cv481 pytest tests/formats/test_onnx_portable.py   # old OpenCV wheels too

Tiny backbones at 64 px (small enough to export in seconds, big enough that a squeeze-excitation gate of
[N, C, 1, 1] broadcasts over its input), BatchNorm folded as export does, real-magnitude logits (std about 4).
Lite0 holds the ReLU6 Clips and one ReduceMean; MobileNetV3-Small holds ten ReduceMeans and nine HardSigmoid gates.
OpenVINO and OpenCV are optional: their tests skip when the extra is not installed. Old OpenCV wheels (which need
numpy < 2) are tested from the folders listed in EDGETL_OPENCV_TARGETS, each made by
`pip install --target DIR opencv-python-headless==4.5.5.64 'numpy<2'`.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgetl.backbones import get_backbone
from edgetl.errors import EdgetlError
from edgetl.formats.base import INPUT_NAME, OUTPUT_NAME
from edgetl.formats.engines import Engine, EngineError, engine_version, get_engine, load_engine, require_engine
from edgetl.formats.onnx_portable import LOW_OPSET, check_portable, make_portable, parse_version, raise_opset
from edgetl.model.deploy import deploy_model
from edgetl.quiet import quiet
from edgetl.testing import randomize_for_parity

SIZE = 64
TARGETS = [pytest.param(Path(p), id=Path(p).name) for p in os.environ.get("EDGETL_OPENCV_TARGETS", "").split(os.pathsep)
           if p] or [pytest.param(None, marks=pytest.mark.skip(
               reason="no old OpenCV folders: set EDGETL_OPENCV_TARGETS=DIR[:DIR], each made by pip install --target DIR "
                      "opencv-python-headless==4.5.5.64 'numpy<2'"))]


def export(name: str) -> tuple[onnx.ModelProto, torch.nn.Module]:
    """What edgetl's ONNX writer gets from torch's exporter (before any rewrite), for a folded tiny backbone; and
    that folded model."""
    torch.manual_seed(0)
    model = randomize_for_parity(get_backbone(name).build(3), image_size=SIZE)
    deployed, _ = deploy_model(model)
    example = torch.randn(2, 3, SIZE, SIZE)
    with quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(deployed, (example,), dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: "batch"},))
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"labels": '["a", "b", "c"]', "backbone": name})
    return proto, deployed


@pytest.fixture(scope="module", params=["efficientnet_lite0", "mobilenet_v3_small"])
def graphs(request, tmp_path_factory):
    """(name, the exporter's graph, its portable rewrite, what was rewritten, the folder both are saved in, and
    PyTorch's logits for `inputs()`)."""
    default, deployed = export(request.param)
    portable, changes = make_portable(default)
    folder = tmp_path_factory.mktemp(request.param)
    onnx.save(default, folder / "default.onnx")
    onnx.save(portable, folder / "portable.onnx")
    with torch.no_grad():
        eager = deployed(torch.from_numpy(inputs())).numpy()
    return request.param, default, portable, changes, folder, eager


def inputs(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def ort_logits(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x})[0]


def ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


# --- the rewrite ------------------------------------------------------------------------------------------------

def test_the_rewrite_keeps_the_outputs_of_the_exported_graph(graphs):
    """≤ 1e-5 apart in onnxruntime. Where squeeze-excitation pools inside the network (MobileNetV3), ORT's
    GlobalAveragePool sums in another order than its ReduceMean, and the difference (a few 1e-6 of the logits'
    scale) is as large as the exported graph's own distance from PyTorch: there, the bar is that relative one,
    and the rewritten graph must be no further from PyTorch than the exported one."""
    name, default, portable, _, _, eager = graphs
    x = inputs()
    before, after = ort_logits(default, x), ort_logits(portable, x)
    assert before.std() > 1, "logits of real magnitude, so 1e-5 means something"
    scale = float(np.abs(before).max())
    atol = 1e-5 if name == "efficientnet_lite0" else 1e-5 * scale
    np.testing.assert_allclose(after, before, rtol=0, atol=atol, err_msg=f"{name}: portable vs exported graph")
    assert (after.argmax(1) == before.argmax(1)).all()
    assert np.abs(after - eager).max() <= np.abs(before - eager).max() + 1e-5


def test_the_rewrite_replaces_each_pattern_and_keeps_the_rest(graphs):
    name, default, portable, changes, _, _ = graphs
    was, now = ops(default), ops(portable)
    assert was["ReduceMean"] > 0 and now["ReduceMean"] == 0
    assert now["GlobalAveragePool"] == was["ReduceMean"] + was["GlobalAveragePool"]
    assert now["Conv"] == was["Conv"] and now["Gemm"] == was["Gemm"]
    if name == "efficientnet_lite0":  # ReLU6: Clip in its attribute form, the graph at opset 10
        assert now["Clip"] == was["Clip"] > 0
        assert all(len(n.input) == 1 for n in portable.graph.node if n.op_type == "Clip")
        assert portable.opset_import[0].version == LOW_OPSET
        assert f"opset {default.opset_import[0].version} → {LOW_OPSET} (every op means the same there)" in changes
    else:  # each HardSigmoid gate now passes through an Identity, gate first
        assert now["Identity"] == was["HardSigmoid"] == 9
        assert now["Mul"] == was["Mul"]
        assert portable.opset_import[0].version == default.opset_import[0].version
    assert f"ReduceMean over H, W → GlobalAveragePool ×{was['ReduceMean']}" in changes
    assert [i.name for i in portable.graph.input] == [INPUT_NAME]
    assert [o.name for o in portable.graph.output] == [OUTPUT_NAME]
    assert {p.key: p.value for p in portable.metadata_props} == {p.key: p.value for p in default.metadata_props}
    unused = {i.name for i in portable.graph.initializer} - {i for n in portable.graph.node for i in n.input}
    assert not unused, f"initializers left over by the rewrite: {sorted(unused)[:3]}"


def test_a_file_that_keeps_its_opset_keeps_its_clips_and_a_lowered_one_can_be_raised_again(graphs):
    name, default, portable, _, _, _ = graphs
    if name != "efficientnet_lite0":
        pytest.skip("only the ReLU6 graph is lowered")
    kept, changes = make_portable(default, lower_opset=False)
    assert kept.opset_import[0].version == default.opset_import[0].version
    assert [str(p).split(" (")[0] for p in check_portable(kept) if p.breaks] == ["OpenCV < 4.7 rejects Clip with min/max inputs"]
    raised = raise_opset(portable, 13)  # what onnxruntime's QDQ quantizer needs
    assert raised.opset_import[0].version == 13 and ops(raised)["Clip"] == ops(portable)["Clip"]
    x = inputs()
    np.testing.assert_array_equal(ort_logits(raised, x), ort_logits(portable, x))
    assert raise_opset(default, 13) is default


def test_the_rewrite_is_idempotent(graphs):
    _, _, portable, _, _, _ = graphs
    again, changes = make_portable(portable)
    assert changes == []
    assert ops(again) == ops(portable)


def test_check_portable_flags_the_exported_graph_and_passes_the_rewritten_one(graphs):
    name, default, portable, _, _, _ = graphs
    flagged = [str(p) for p in check_portable(default) if p.breaks]
    assert any(line.startswith("OpenCV < 4.8 rejects ReduceMean with axes as an input") for line in flagged)
    if name == "efficientnet_lite0":
        assert any(line.startswith("OpenCV < 4.7 rejects Clip with min/max inputs") for line in flagged)
    else:
        assert any(line.startswith("OpenCV ≥ 4.9 computes a HardSigmoid gate broadcast by Mul") for line in flagged)
    assert [str(p) for p in check_portable(portable) if p.breaks] == []
    # What no rewrite serves: OpenCV 4.5/4.6 run a squeeze-excitation graph one image per call only.
    left = [str(p) for p in check_portable(portable, fixable=False)]
    if name == "efficientnet_lite0":
        assert left == []
    else:
        assert len(left) == 1 and left[0].startswith(
            "OpenCV < 4.7 fails at batch > 1 on a Mul broadcasting one computed tensor over another "
            "(squeeze-excitation) (nodes ") and left[0].endswith(": feed it one image per call")


def test_check_portable_narrows_to_one_installed_version(graphs):
    name, default, _, _, _, _ = graphs
    on_455 = {p.kind for p in check_portable(default, engine="opencv", version="4.5.5.64")}
    assert "rejects" in on_455
    on_481 = [p for p in check_portable(default, engine="opencv", version="4.8.1") if p.breaks]
    assert [p.versions for p in on_481] == ["4.8 (on > 1 thread)"]
    on_50 = [p for p in check_portable(default, engine="opencv", version="5.0.0") if p.breaks]
    assert bool(on_50) == (name == "mobilenet_v3_small")
    on_ov = [str(p) for p in check_portable(default, engine="openvino", version="2024.2.0")]
    assert len(on_ov) == 1 and on_ov[0].startswith("OpenVINO < 2024.3 rejects ReduceMean with axes as an input")
    assert check_portable(default, engine="openvino", version="2026.4.1") == []


def test_a_problem_is_one_line_naming_the_engine_versions_pattern_and_nodes():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="/features/0/Clip"),
         onnx.helper.make_node("Softmax", ["y"], ["z"], name="/head/softmax")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.float32(0), "lo"), onnx.numpy_helper.from_array(np.float32(6), "hi")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    assert [str(p) for p in check_portable(model)] == [
        "OpenCV < 4.7 rejects Clip with min/max inputs (ReLU6 at opset ≥ 11) (node /features/0/Clip)",
        "OpenCV was not measured with these ops (node /head/softmax: Softmax)",
    ]
    # Softmax changed meaning at opset 13: the graph is not lowered, the Clip stays and is still reported.
    portable, changes = make_portable(model)
    assert changes == [] and portable.opset_import[0].version == 20
    assert parse_version("2026.4.1-22982-e213a147257") == (2026, 4, 1)


# --- the engines ------------------------------------------------------------------------------------------------

def test_a_missing_engine_is_one_line_naming_the_pip_command():
    absent = Engine("nothing", "Nothing", "edgetl_no_such_module", "nothing", (), lambda *a, **k: None)
    assert absent.missing() == ("--runtime nothing needs edgetl_no_such_module, which is not installed — "
                                "pip install 'edgetl[nothing]'")
    with pytest.raises(EdgetlError, match="unknown runtime 'openvin'; known: onnxruntime, openvino, opencv"):
        require_engine("openvin")
    assert get_engine("onnxruntime").missing() is None and engine_version("onnxruntime") == ort.__version__


def broken(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its first Conv's weights negated: every engine must now disagree with the original."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    weight = next(i for i in out.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weight), weight.name))
    return out


def test_openvino_agrees_with_onnxruntime_on_a_good_file_and_not_on_a_broken_one(graphs):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'edgetl[openvino]'")
    name, _, portable, _, folder, _ = graphs
    x = inputs()
    reference = ort_logits(portable, x)
    runner = load_engine("openvino", folder / "portable.onnx", threads=1)
    assert [s.name for s in runner.inputs] == [INPUT_NAME] and runner.inputs[0].shape == [None, 3, SIZE, SIZE]
    np.testing.assert_allclose(runner(x), reference, rtol=0, atol=1e-4, err_msg=f"{name}: OpenVINO vs onnxruntime")
    onnx.save(broken(portable), folder / "broken.onnx")
    assert np.abs(load_engine("openvino", folder / "broken.onnx", threads=1)(x) - reference).max() > 0.1


def test_opencv_agrees_with_onnxruntime_on_the_portable_file_and_fails_as_the_table_says_on_the_exported_one(graphs):
    pytest.importorskip("cv2", reason="OpenCV is an optional extra: pip install 'edgetl[opencv]'")
    check_engine_folder(graphs, target=None)


@pytest.mark.parametrize("target", TARGETS)
def test_an_old_opencv_from_its_own_folder_runs_the_portable_file_right(graphs, target):
    check_engine_folder(graphs, target=target)


def test_a_folder_without_opencv_is_one_line_naming_the_pip_command(tmp_path):
    with pytest.raises(EdgetlError) as err:
        load_engine("opencv", tmp_path / "model.onnx", target=tmp_path)
    assert str(err.value) == (f"{tmp_path}: no cv2 package there — pip install --target {tmp_path} "
                              "opencv-python-headless==4.5.5.64 'numpy<2' (or the version you need)")


def check_engine_folder(graphs, *, target: Path | None) -> None:
    """The portable file agrees with onnxruntime (one image per call, batch sizes 1 and 3); on the exported one,
    what COMPAT says this version rejects fails to load, and a HardSigmoid gate it mis-sizes gives other logits."""
    name, default, portable, _, folder, _ = graphs
    version = engine_version("opencv", target=target)
    x = inputs(3)
    reference = ort_logits(portable, x)
    runner = load_engine("opencv", folder / "portable.onnx", target=target)
    np.testing.assert_allclose(runner(x), reference, rtol=0, atol=1e-4, err_msg=f"{name}: OpenCV {version} vs ORT")
    np.testing.assert_allclose(runner(x[:1]), reference[:1], rtol=0, atol=1e-4)
    predicted = {p.pattern: p.kind for p in check_portable(default, engine="opencv", version=version) if p.breaks}
    if "rejects" in predicted.values():
        with pytest.raises(EngineError, match=f"OpenCV {version} cannot load default.onnx: "):
            load_engine("opencv", folder / "default.onnx", target=target)
    elif any(pattern.startswith("a HardSigmoid gate") for pattern in predicted):
        got = load_engine("opencv", folder / "default.onnx", target=target)(x)
        assert np.abs(got - ort_logits(default, x)).max() > 0.1, f"OpenCV {version} was expected to mis-size the gate"
