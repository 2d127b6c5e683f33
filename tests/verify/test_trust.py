"""verify's trust model (issue 29): it trusts the run's checkpoint, pinned by sha256, and checks everything else.
Every tamper here is made consistent (the file edited, the manifest's sha256 and size updated to match), as an
attacker or a careless script would; each must fail verify, naming the file and the fact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.compare.gate import BARS, Gate
from edgetl.compare.parity import check_parity
from edgetl.files import sha256_file
from edgetl.formats.base import Runner
from edgetl.testing import edit_manifest, rehash

FAST = ["--latency-seconds", "0.02", "--threads", "1", "--samples", "8"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def run(finished_run, tmp_path):
    return shutil.copytree(finished_run[0], tmp_path / "run")




def failed(result, *parts):
    assert result.exit_code == 1, result.output
    assert all(part in result.output for part in parts), result.output


def test_the_checkpoint_is_the_run_own_and_the_one_pinned(run):
    edit_manifest(run, lambda m: m["run"].update(checkpoint="../../elsewhere/best"))
    failed(invoke("verify", run, *FAST), "manifest.json: run.checkpoint '../../elsewhere/best'")
    edit_manifest(run, lambda m: m["run"].update(checkpoint="best"))
    shutil.copyfile(run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")  # another checkpoint
    failed(invoke("verify", run, *FAST), "checkpoints/best.pt: sha256", "not the checkpoint this export was made from")


def test_manifest_facts_are_checked_against_the_checkpoint(run):
    stated = json.loads((run / "export" / "manifest.json").read_text())["run"]
    edit_manifest(run, lambda m: m["run"].update(backbone="resnet18", val_acc=0.999))
    failed(invoke("verify", run, *FAST), "checkpoints/best.pt: backbone 'mobilenet_v3_small' fails the bar = "
                                         "'resnet18'", "val accuracy")
    edit_manifest(run, lambda m: m["run"].update(backbone=stated["backbone"], val_acc=stated["val_acc"]))
    edit_manifest(run, lambda m: m["model"].update(params=m["model"]["params"] * 10, macs=1, bn_folded=0))
    result = invoke("verify", run, *FAST)
    failed(result, "manifest.json: model.params", "manifest.json: model.macs 1", "manifest.json: model.bn_folded 0")
    assert "val accuracy" not in result.output and "backbone" not in result.output


def test_weights_moved_out_of_the_file_and_metadata_given_twice_fail(run):
    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    rehash(run, "model.onnx")
    failed(invoke("verify", run, *FAST), "model.onnx: self-contained", "stored outside the file",
           "files not in the manifest ['weights.bin']")

    (run / "export" / "weights.bin").unlink()
    onnx.save_model(model, str(path))
    model.metadata_props.add(key="labels", value=json.dumps(["forged", "labels", "here"]))
    onnx.save_model(model, str(path))
    rehash(run, "model.onnx")
    failed(invoke("verify", run, *FAST), "metadata key(s) given twice: labels")


def test_an_fp32_file_relabelled_int8_is_caught_by_its_ops(run):
    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "precision":
            prop.value = "int8"
    onnx.save_model(model, str(path))
    rehash(run, "model.onnx")
    edit_manifest(run, lambda m: next(a for a in m["artifacts"] if a["file"] == "model.onnx").update(precision="int8"))
    failed(invoke("verify", run, *FAST), "model.onnx: precision of its ops 'fp32' fails the bar = 'int8'",
           "fp32 onnx file listed beside it")


def test_a_card_entry_never_aliases_a_model_file(run):
    model = (run / "export" / "model.onnx").read_bytes()
    edit_manifest(run, lambda m: m.update(card={**m["card"], "file": "model.onnx", "bytes": len(model),
                                                "sha256": sha256_file(run / "export" / "model.onnx")}))
    failed(invoke("verify", run, *FAST), "model card file 'model.onnx'")
    assert (run / "export" / "model.onnx").read_bytes() == model  # never overwritten with the card's markdown


def test_a_report_written_elsewhere_leaves_the_run_as_it_was(run, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = invoke("verify", run, "--json", tmp_path / "elsewhere.json", *FAST)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert not (run / ".edgetl.lock").exists()


def _manifest_for(classes: int):
    from edgetl.rundir import Manifest

    return Manifest.model_validate({
        "run": {"backbone": "b", "checkpoint": "best"}, "labels": [str(i) for i in range(classes)],
        "preprocessing": {"resize_size": 8, "crop_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3,
                          "interpolation": "bilinear"},
        "input": {"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", classes], "dtype": "float32"},
        "model": {"params": 1, "bn_folded": 0, "lora_merged": 0}, "artifacts": []})


def _linear_case():
    from edgetl.data.inputs import Inputs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    weights = rng.normal(size=(3 * 8 * 8, 4)).astype(np.float32)
    reference = x.reshape(12, -1) @ weights
    inputs = Inputs(x=x, targets=reference.argmax(axis=1), info={"images": 12, "labelled": 12, "random": 0},
                    warnings=[])
    return inputs, weights, reference


def test_int8_logits_off_in_value_fail_even_where_the_class_holds():
    """A lossy file is held to its values too: logits scaled x1000 keep every top-1 class, and fail."""
    inputs, weights, reference = _linear_case()
    gate = Gate()
    scaled = Runner(run=lambda batch: 1000 * (batch.reshape(len(batch), -1) @ weights))
    check_parity(scaled, _manifest_for(4), "model.int8.onnx", gate, inputs=inputs, reference=reference,
                 bars=BARS["int8"])
    assert [c.measure for c in gate.failures] == ["max diff / logit scale"]


def test_a_graph_that_changes_only_at_batch_1_fails():
    """The batch a device runs: a file right in batches and wrong one image at a time must not pass."""
    inputs, weights, reference = _linear_case()

    def only_batched(batch):
        logits = batch.reshape(len(batch), -1) @ weights
        return logits[:, ::-1].copy() if len(batch) == 1 else logits

    gate = Gate()
    check_parity(Runner(run=only_batched), _manifest_for(4), "model.onnx", gate, inputs=inputs, reference=reference,
                 bars=BARS["fp32"])
    assert [c.measure for c in gate.failures] == ["batch 1 vs batched max diff"]


def _break_first_conv(path):
    from onnx import numpy_helper

    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    broken = numpy_helper.to_array(weight).copy()
    broken.flat[0] += 10.0
    weight.CopyFrom(numpy_helper.from_array(broken, weight.name))
    onnx.save_model(model, str(path))
    return conv


def test_a_broken_conv_weight_fails_verify_naming_the_stage_and_the_node(exported_both_copy):
    """When verify fails, it says where: the stage that first departs, then the node (a run with real-magnitude
    logits: make_run's)."""
    run = exported_both_copy
    conv = _break_first_conv(run / "export" / "model.onnx")
    rehash(run, "model.onnx")
    result = invoke("verify", run, *FAST)
    failed(result, "model.onnx departs at the fp32 file", f"node {conv.name} (Conv")
    where = json.loads((run / "verify.json").read_text())["localization"]["model.onnx"]
    assert where["stage"] == "fp32 file" and conv.name in where["node"]


def test_a_broken_export_written_elsewhere_is_localized_in_that_export(exported_both_copy, tmp_path):
    run, out = exported_both_copy, tmp_path / "ship"
    shutil.rmtree(run / "export")  # only the --out export exists: nothing to be confused with
    assert invoke("export", run, "--out", out, "-f", "onnx").exit_code == 0
    conv = _break_first_conv(out / "model.onnx")
    rehash(run, "model.onnx", export=out)
    failed(invoke("verify", run, "--export", out, *FAST), "model.onnx departs at the fp32 file", f"node {conv.name}")
    report = json.loads((out / "verify.json").read_text())
    assert report["localization"]["model.onnx"]["file"] == "model.onnx"
    assert not [w for w in report["warnings"] if "cannot localize" in w]


def test_an_export_written_elsewhere_is_verified_against_the_run_and_leaves_it_alone(run, tmp_path):
    out = tmp_path / "ship"
    assert invoke("export", run, "--out", out, "-f", "onnx").exit_code == 0
    before = {p.name: sha256_file(p) for p in run.rglob("*") if p.is_file()}
    result = invoke("verify", run, "--export", out, *FAST)
    assert result.exit_code == 0, result.output
    assert (out / "verify.json").is_file()
    assert {p.name: sha256_file(p) for p in run.rglob("*") if p.is_file()} == before  # the run is untouched
    assert invoke("export", run, "--out", out, "-f", "onnx").exit_code == 0  # its report is not a foreign file

    path = out / "model.onnx"
    model = onnx.load(str(path))
    model.metadata_props.add(key="labels", value=json.dumps(["forged"]))
    onnx.save_model(model, str(path))
    rehash(run, "model.onnx", export=out)
    failed(invoke("verify", run, "--export", out, *FAST), "model.onnx: self-contained")
    result = invoke("verify", run, "--export", tmp_path / "nowhere", *FAST)
    assert result.exit_code == 2 and "--export" in result.output
