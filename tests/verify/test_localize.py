"""Localizing a failed parity bar (issue 29): the stage a file first departs at, then the node in that file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgetl import rundir
from edgetl.compare.gate import BARS, Gate
from edgetl.compare.parity import check_parity
from edgetl.data.inputs import Inputs
from edgetl.files import sha256_file
from edgetl.formats import FORMATS
from edgetl.formats.onnx_precision import to_fp16
from edgetl.model.checkpoint import load_model
from edgetl.rundir import RunDir
from edgetl.verify.localize import (
    FOLD,
    FP32,
    FP32_NODE_RTOL,
    PORTABLE,
    PORTABLE_RULES,
    RULE,
    localize,
    worst_rows,
)

CONV, BN = "features.3.block.1.0", "features.3.block.1.1"  # a depthwise conv of MobileNetV3-Small and its BatchNorm


@pytest.fixture
def run(exported_both, tmp_path) -> Path:
    """A copy of the shared ONNX + TorchScript export, to break."""
    return Path(shutil.copytree(exported_both, tmp_path / "run"))


def manifest_of(run: Path) -> rundir.Manifest:
    return rundir.read_manifest(run / "export" / "manifest.json")


def rehash(run: Path, file: str) -> None:
    """Record a changed file's size and sha256 in the manifest, as if the exporter had written it so."""
    path, manifest_path = run / "export" / file, run / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    manifest_path.write_text(json.dumps(manifest))


def edit_initializers(path: Path, change) -> onnx.NodeProto:
    """Apply `change(arrays)` to the weights of CONV's node (a dict name -> array); return that node."""
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] == f"{CONV}.weight")
    inits = {i.name: i for i in proto.graph.initializer if i.name in node.input}
    arrays = {name: numpy_helper.to_array(i).copy() for name, i in inits.items()}
    change(arrays)
    for name, array in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.save(proto, str(path))
    return node


def rows_that_depart(run: Path, file: str) -> tuple[np.ndarray, torch.nn.Module]:
    """The checkpoint's model and the 4 of 16 noise inputs the file gets most wrong (what verify passes)."""
    manifest = manifest_of(run)
    model, _ = load_model(RunDir(run).checkpoint(manifest.run.checkpoint))
    crop = manifest.preprocessing.crop_size
    x = np.random.default_rng(0).standard_normal((16, 3, crop, crop)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    fmt = FORMATS[manifest.artifact(file).format]
    return worst_rows(x, reference, fmt.open(run / "export" / file)(x)), model


def where(run: Path, file: str = "model.onnx", rows: np.ndarray | None = None):
    if rows is None:
        rows, model = rows_that_depart(run, file)
    else:
        model = None  # localize loads the checkpoint itself
    manifest = manifest_of(run)
    return localize(run, manifest, manifest.artifact(file), rows, model=model)


def test_a_wrong_weight_in_one_conv_fails_parity_and_is_named_with_its_node(run):
    def wrong_weight(arrays):
        weight = arrays[f"{CONV}.weight"]
        weight.flat[weight.size // 2] += 3 * np.abs(weight).max()

    node = edit_initializers(run / "export" / "model.onnx", wrong_weight)
    rows, model = rows_that_depart(run, "model.onnx")
    with torch.no_grad():
        reference = model(torch.from_numpy(rows)).numpy()
    gate = Gate()  # verify's own parity check fails it on its values: a file verify stops
    check_parity(FORMATS["onnx"].open(run / "export" / "model.onnx"), manifest_of(run), "model.onnx", gate,
                 inputs=Inputs(x=rows, targets=np.full(len(rows), -1), info={}), reference=reference,
                 bars=BARS["fp32"])
    assert [c.measure for c in gate.failures] == ["max abs diff"], [c.message() for c in gate.failures]

    found = where(run)
    assert found.stage == FP32 and found.file == "model.onnx", found.line
    assert found.node == f"{node.name} (Conv, output {node.output[0]})" and found.module == CONV, found.line
    assert found.rel_diff > 100 * FP32_NODE_RTOL
    assert f"at the {FP32}, node {node.name} (Conv" in found.line and "\n" not in found.line
    assert json.loads(json.dumps(found.to_dict()))["line"] == found.line  # what verify.json records


def test_a_fold_that_skipped_one_batchnorm_names_the_deploy_model_and_the_conv(run):
    model, _ = load_model(RunDir(run).checkpoint(manifest_of(run).run.checkpoint))
    conv = model.get_submodule(CONV)

    def unfolded(arrays):  # what the export would hold had the fold passed this BatchNorm by
        arrays[f"{CONV}.weight"] = conv.weight.detach().numpy()
        arrays[f"{CONV}.bias"] = np.zeros(conv.out_channels, np.float32)

    node = edit_initializers(run / "export" / "model.onnx", unfolded)
    found = where(run)
    assert found.stage == FOLD, found.line
    assert found.node.startswith(f"{node.name} (Conv") and found.module == CONV, found.line
    assert f"before BatchNorm {BN}" in found.detail and "not folded" in found.detail
    assert found.line.startswith(f"model.onnx departs at the {FOLD}, node {node.name} (Conv")


def test_a_fold_with_wrong_batchnorm_figures_is_the_fold_a_wrong_weight_is_not(run):
    def wrong_figures(arrays):  # one channel's scale and shift off, as a wrong running_var / beta would make them
        arrays[f"{CONV}.weight"][1] *= 1.7
        arrays[f"{CONV}.bias"][1] += 0.5

    edit_initializers(run / "export" / "model.onnx", wrong_figures)
    found = where(run)
    assert found.stage == FOLD and found.module == CONV and "wrong figures" in found.detail, found.line


def test_a_node_the_portable_rewrite_made_names_that_rewrite(run):
    path = run / "export" / "model.onnx"
    proto = onnx.load(str(path))
    gate = next(n for n in proto.graph.node if n.op_type == "HardSigmoid"
                and any(p.key == RULE and p.value == "IsolateHardSigmoidGate" for p in n.metadata_props))
    next(a for a in gate.attribute if a.name == "alpha").f = 0.3  # the squeeze-excitation gate's slope, not 1/6
    onnx.save(proto, str(path))

    found = where(run)
    assert found.stage == PORTABLE and "IsolateHardSigmoidGate" in found.detail, found.line
    assert found.module is not None and found.node is not None, found.line


def test_a_healthy_file_is_not_localized(run):
    assert where(run) is None


def test_a_lower_precision_file_is_compared_node_by_node_with_the_fp32_file(run):
    export = run / "export"
    to_fp16(export / "model.onnx", export / "model.fp16.onnx")
    proto = onnx.load(str(export / "model.fp16.onnx"))
    weight = next(i for i in proto.graph.initializer if i.name == f"{CONV}.weight")
    broken = numpy_helper.to_array(weight).copy()
    broken.flat[broken.size // 2] += 3 * np.abs(broken).max()
    weight.CopyFrom(numpy_helper.from_array(broken, weight.name))
    onnx.save(proto, str(export / "model.fp16.onnx"))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["artifacts"].append({**manifest["artifacts"][0], "file": "model.fp16.onnx", "precision": "fp16"})
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(run, "model.fp16.onnx")
    node = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] == f"{CONV}.weight")

    found = where(run, "model.fp16.onnx")
    assert found.stage == "lower-precision file (fp16)" and found.file == "model.fp16.onnx", found.line
    assert found.node == f"{node.name} (Conv, output {node.output[0]})" and found.module == CONV, found.line
    assert "the fp32 file model.onnx holds" in found.detail


def test_other_formats_are_localized_to_the_stage(run):
    path = run / "export" / "model.torchscript.pt"
    extra = {"edgetl.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    model, _ = load_model(RunDir(run).checkpoint(manifest_of(run).run.checkpoint))
    with torch.no_grad():
        model.get_submodule("features.0.0").weight[0] += 1.0
    crop = manifest_of(run).preprocessing.crop_size
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, crop, crop)), str(path), _extra_files=extra)

    # every row departs (the first conv's first filter): 4 noise rows, without ranking 16 first (TorchScript's
    # profiling executor takes a second or two on each new batch size)
    found = where(run, "model.torchscript.pt", rows=np.random.default_rng(0).standard_normal(
        (4, 3, crop, crop)).astype(np.float32))
    assert found.stage == FP32 and found.node is None and found.file == "model.torchscript.pt", found.line
    assert "stage only" in found.detail and found.rel_diff > FP32_NODE_RTOL


def test_the_portable_rules_it_knows_are_the_rewrites_edgetl_makes():
    from edgetl.formats.onnx_portable import _rules

    portable, lowering = _rules()
    assert {rule.name for _, rule in portable + lowering} == PORTABLE_RULES


def test_worst_rows_are_the_rows_that_departed_most_in_their_order():
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    reference = np.zeros((6, 2))
    out = np.array([[0, 0.1], [0, 5], [0, 0], [3, 0], [0, 0.2], [0, 0]])
    np.testing.assert_array_equal(worst_rows(x, reference, out, n=3), x[[1, 3, 4]])
