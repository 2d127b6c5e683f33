"""The typed run directory: files written before the schema still load; a newer schema is refused in one line.

`old_run` (tests/conftest.py) is a run directory written by edgetl 0.1.0 before the layout move.
"""

from __future__ import annotations

import json

import pytest
import torch

from edgetl import rundir
from edgetl.errors import RunDirError
from edgetl.model.checkpoint import checkpoint_meta, load_checkpoint
from edgetl.pipeline import describe, first_unfinished
from edgetl.preprocessing import Preprocessing
from edgetl.training.state import TrainState


def test_files_from_before_the_schema_load_as_version_1(old_run):
    train = rundir.read_train_summary(old_run.train_json)
    assert train.schema_version == 1 and train.backbone == "mobilenet_v3_small" and len(train.phases) == 2
    assert train.best_epoch == 1 and train.trainable["top"]["stage4"] == 729000

    manifest = rundir.read_manifest(old_run.manifest)
    assert manifest.schema_version == 1 and manifest.labels == ["circle", "cross", "ring"]
    assert isinstance(manifest.preprocessing, Preprocessing) and manifest.preprocessing.crop_size == 32
    assert manifest.input.shape == ["batch", 3, 32, 32] and manifest.output.shape == ["batch", 3]
    assert [(a.format, a.opset) for a in manifest.artifacts] == [("onnx", 20), ("torchscript", None)]

    report = rundir.read_verify_report(old_run.verify_json)
    assert report.passed is True and report.gate["file"] == "model.onnx"
    assert set(report.parity) == {"model.onnx", "model.torchscript.pt"}

    recipe = rundir.read_recipe(old_run)
    assert recipe.backbone == "mobilenet_v3_small" and [p.name for p in recipe.phases] == ["head", "top"]
    assert [m["epoch"] for m in rundir.read_metrics(old_run.metrics)] == [1, 2]


def test_old_checkpoints_give_their_metadata_and_resume_state(old_run):
    best = checkpoint_meta(load_checkpoint(old_run.checkpoint("best")), source="best.pt")
    assert best.schema_version == 1 and best.labels == ["circle", "cross", "ring"] and best.at_epoch == 1
    last_ckpt = load_checkpoint(old_run.checkpoint("last"))
    last = checkpoint_meta(last_ckpt, source="last.pt")
    assert last.epoch is None and last.at_epoch == 2
    state = TrainState.from_checkpoint(last_ckpt)
    assert (state.next_phase, state.next_epoch, state.global_epoch) == (2, 0, 2)
    assert state.best.epoch == 1 and state.early is None
    assert state.to_checkpoint()["best"] == last_ckpt["best"]


def test_a_written_file_reads_back_the_same(old_run, tmp_path):
    manifest = rundir.read_manifest(old_run.manifest)
    rundir.write(tmp_path / "m.json", manifest)
    again = json.loads((tmp_path / "m.json").read_text())
    assert again == {**json.loads(old_run.manifest.read_text()), "schema_version": 1}
    assert "opset" not in again["artifacts"][1]  # TorchScript has none, and says nothing


def test_a_newer_schema_is_refused_naming_both_versions(old_run):
    data = json.loads(old_run.manifest.read_text())
    old_run.manifest.write_text(json.dumps({**data, "schema_version": 7}))
    with pytest.raises(RunDirError, match=r"manifest.json: the export manifest has schema_version 7, newer than this "
                                          r"edgetl \(.*\) reads \(up to 1\) — upgrade edgetl"):
        rundir.read_manifest(old_run.manifest)


def test_a_damaged_field_is_one_line_naming_file_and_field(old_run):
    data = json.loads(old_run.train_json.read_text())
    data["phases"][0]["epochs"] = "many"
    old_run.train_json.write_text(json.dumps(data))
    with pytest.raises(RunDirError) as err:
        rundir.read_train_summary(old_run.train_json)
    assert "train.json (phases.0.epochs:" in str(err.value) and str(err.value).startswith("damaged: ")
    assert "\n" not in str(err.value)


def test_a_newer_checkpoint_is_refused(old_run, tmp_path):
    ckpt = load_checkpoint(old_run.checkpoint("best"))
    ckpt.pop("format_version", None)
    torch.save({**ckpt, "schema_version": 2}, tmp_path / "new.pt")
    with pytest.raises(RunDirError, match="schema_version 2, newer than this edgetl"):
        checkpoint_meta(load_checkpoint(tmp_path / "new.pt"), source=tmp_path / "new.pt")


def test_stage_detection_reads_the_typed_files(old_run):
    assert first_unfinished(old_run.root) is None
    info = describe(old_run.root)
    assert info.next_stage is None and info.epochs_done == 2 and info.train.best_epoch == 1
    old_run.manifest.write_text("{ not json")
    assert first_unfinished(old_run.root) == "export"
