"""`edgetl run` end to end through the CLI, `--resume`, `info`, and the stage hooks and resume order."""

import contextlib
import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.errors import RunDirError
from edgetl.pipeline import ExportRequest, Hooks, TrainRequest, first_unfinished, run_pipeline
from edgetl.verify import VerifySettings
from edgetl.verify.latency import TimingPlan

runner = CliRunner()
FAST_VERIFY = ["--latency-seconds", "0.05", "--samples", "8"]


def test_run_chains_train_export_verify(finished_run):
    run, output = finished_run
    for name in ("recipe.resolved.toml", "labels.json", "metrics.jsonl", "curves.png", "train.json", "checkpoints/best.pt",
                 "export/model.onnx", "export/model.torchscript.pt", "export/manifest.json", "verify.json"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        assert hashlib.sha256((run / "export" / artifact["file"]).read_bytes()).hexdigest() == artifact["sha256"]
    assert manifest["labels"] == json.loads((run / "labels.json").read_text())
    report = json.loads((run / "verify.json").read_text())
    assert report["passed"] is True and report["failures"] == []
    assert {"model.onnx", "model.torchscript.pt"} <= set(report["parity"])
    assert "edgetl run" in output and "model.onnx" in output


def test_info_shows_every_stage(finished_run):
    run, _ = finished_run
    result = runner.invoke(app, ["info", str(run)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "export/model.onnx" in result.output and "all stages done" in result.output


def test_resume_continues_at_the_first_unfinished_stage(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run[0], run)
    shutil.rmtree(run / "export")
    (run / "verify.json").unlink()
    trained = (run / "checkpoints" / "best.pt").read_bytes()
    result = runner.invoke(app, ["run", "--resume", str(run), *FAST_VERIFY])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "at export" in result.output
    assert (run / "checkpoints" / "best.pt").read_bytes() == trained, "training was not redone"
    assert json.loads((run / "verify.json").read_text())["passed"] is True


def test_a_failing_stage_stops_the_chain_with_its_exit_code(tiny, tmp_path):
    data, recipe = tiny
    result = runner.invoke(app, ["run", "--recipe", str(recipe), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "missing" in result.output
    assert not (tmp_path / "r" / "export").exists()


# --- the pipeline as a Python API: stage order and hooks -----------------------------------------------------



class Recording(Hooks):
    """Hooks that write down what the pipeline told them, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.contextmanager
    def training(self):
        self.events.append("training")
        yield None

    def trained(self, summary):
        self.events.append(f"trained {summary.backbone}")

    @contextlib.contextmanager
    def exporting(self):
        self.events.append("exporting")
        yield

    def exported(self, result):
        self.events.append(f"exported {','.join(a.format for a in result.artifacts)}")

    @contextlib.contextmanager
    def verifying(self):
        self.events.append("verifying")
        yield lambda step: self.events.append("step")

    def verified(self, result):
        self.events.append(f"verified {result.report.passed}")

    def note(self, message):
        self.events.append(f"note: {message}")


def test_run_pipeline_reports_trained_exported_verified_in_order(finished_run, tmp_path):
    """A run whose train.json is gone resumes at train: last.pt holds the finished state, so nothing retrains."""
    run = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    (run / "train.json").unlink()
    trained = (run / "checkpoints" / "best.pt").read_bytes()
    hooks = Recording()
    settings = VerifySettings(samples=4, threads=(1,), timing=TimingPlan(seconds=0.01, min_iterations=1, max_seconds=0.03))
    outcome = run_pipeline(TrainRequest(device="cpu"), resume=run, export=ExportRequest(formats=("torchscript",)),
                           verify=settings, hooks=hooks)
    assert [event for event, _ in itertools.groupby(hooks.events)] == [f"note: resuming {run} at train", "training", "trained mobilenet_v3_small", "exporting",
                            "exported torchscript", "verifying", "step", "verified True"]
    assert outcome.run_dir == run and outcome.verify.passed is True and outcome.scratch is None
    assert [a.format for a in outcome.manifest.artifacts] == ["torchscript"]
    assert first_unfinished(run) is None
    assert (run / "checkpoints" / "best.pt").read_bytes() == trained, "training was redone"


def test_the_first_unfinished_stage_is_the_first_whose_file_is_missing_or_older_than_the_one_before(old_run):
    assert first_unfinished(old_run.root) is None
    os.utime(old_run.verify_json, (1e9 - 1, 1e9 - 1))  # verify.json older than the export it checked
    assert first_unfinished(old_run.root) == "verify"
    os.utime(old_run.manifest, (1e9 - 2, 1e9 - 2))  # and the export older than train.json
    assert first_unfinished(old_run.root) == "export"
    old_run.train_json.unlink()
    assert first_unfinished(old_run.root) == "train"
    with pytest.raises(RunDirError, match="not found"):
        first_unfinished(old_run.root / "nowhere")


def test_run_json_prints_one_document_with_each_stage_time_and_what_ships(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    (run / "verify.json").unlink()  # verify is the stage left to run
    result = CliRunner().invoke(app, ["run", "--resume", str(run), "--json", "-", "--latency-seconds", "0.05",
                                      "--samples", "8"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # one document, nothing else on stdout
    assert set(doc["stage_seconds"]) == {"verify"} and doc["stage_seconds"]["verify"] > 0
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert doc["export_seconds"] == {a["file"]: a["seconds"] for a in manifest["artifacts"]}
    assert doc["verify_passed"] is True and doc["shipped"] == manifest["artifacts"][0]["file"]
