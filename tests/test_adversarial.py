"""Hostile inputs through the CLI: one line, the right exit code, nothing lost (issue 16, the part done so far).

Exit codes: 2 for bad input or a damaged file, 1 only for a failed bar (what CI gates on), never a traceback.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.errors import RecipeError
from edgetl.export import export_run
from edgetl.recipe import parse_recipe

runner = CliRunner()
FAST = ["--latency-seconds", "0.01", "--threads", "1", "--samples", "4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgetl.testing import make_run

    run = make_run(tmp_path_factory.mktemp("adversarial"), backbone="mobilenet_v3_small", image_size=32)
    export_run(run, formats=["onnx"])
    return run


@pytest.fixture
def run_copy(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "run")


def edit_manifest(run, change):
    path = run / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, measure", [
    (lambda m: m.update(labels=m["labels"][::-1]), "labels"),  # a device would show swapped labels
    (lambda m: m.update(labels=[]), "labels"),
    (lambda m: m.update(labels=[*m["labels"], "extra"]), "labels"),
    (lambda m: m["preprocessing"].update(mean=[0.5, 0.5, 0.5]), "preprocessing"),
    (lambda m: m["preprocessing"].update(interpolation="nearest"), "preprocessing"),
    (lambda m: m["preprocessing"].update(resize_size=64), "preprocessing"),
])
def test_verify_fails_a_manifest_whose_meaning_changed(run_copy, change, measure):
    edit_manifest(run_copy, change)
    result = invoke("verify", run_copy, *FAST)
    assert result.exit_code == 1, result.output
    assert f"manifest.json: {measure}" in result.output


def test_verify_fails_when_no_file_runs_parity(run_copy):
    edit_manifest(run_copy, lambda m: m["artifacts"][0].update(format="tflite"))
    result = invoke("verify", run_copy, *FAST)
    assert result.exit_code == 1 and "artifacts checked for parity 0" in result.output, result.output


def test_verify_never_opens_a_listed_path_outside_the_export(run_copy):
    edit_manifest(run_copy, lambda m: m["artifacts"][0].update(file="../../../etc/hostname"))
    result = invoke("verify", run_copy, *FAST)
    assert result.exit_code == 1 and "path 'outside export/'" in result.output, result.output
    report = json.loads((run_copy / "verify.json").read_text())
    assert not [c for c in report["checks"] if c["measure"] in ("sha256", "bytes")]


def test_export_out_keeps_a_folder_that_is_not_an_export(exported, tmp_path):
    app_folder = tmp_path / "webapp"
    (app_folder / "src").mkdir(parents=True)
    (app_folder / "index.html").write_text("<html>")
    (app_folder / "manifest.json").write_text('{"name": "my web app"}')
    result = invoke("export", exported, "--out", app_folder, "--format", "onnx")
    assert result.exit_code == 2, result.output
    assert "not a readable edgetl export" in one_line(result)
    assert (app_folder / "index.html").read_text() == "<html>" and (app_folder / "src").is_dir()


def test_export_out_keeps_an_export_with_foreign_files(exported, tmp_path):
    out = tmp_path / "out"
    export_run(exported, formats=["onnx"], out=out)
    (out / "notes.txt").write_text("mine")
    result = invoke("export", exported, "--out", out, "--format", "onnx")
    assert result.exit_code == 2 and "notes.txt" in one_line(result)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert invoke("export", exported, "--out", out, "--format", "onnx").exit_code == 0  # its own export: replaced


@pytest.mark.parametrize("flags, message", [
    (["--latency-seconds", "nan"], "--latency-seconds must be a number of seconds"),
    (["--latency-seconds", "inf"], "--latency-seconds must be a number of seconds"),
    (["--threads", "10000"], "--threads must be at most"),
    (["--batch", "100000"], "--batch must be at most"),
])
def test_unbounded_verify_flags_are_refused_before_any_work(exported, flags, message):
    result = invoke("verify", exported, *flags)
    assert result.exit_code == 2 and message in one_line(result)


def test_a_path_with_rich_markup_is_printed_as_text(tmp_path):
    weird = tmp_path / "[/b]run[bold]"
    result = invoke("export", weird)
    assert result.exit_code == 2
    assert "[/b]run[bold]" in one_line(result)


def test_predict_refuses_a_negative_top_k(exported, tmp_path):
    result = invoke("predict", exported, tmp_path / "x.png", "--top-k", "-3")
    assert result.exit_code == 2 and "--top-k" in result.output


def test_an_unexpected_error_is_one_line_with_exit_2(exported, monkeypatch):
    import edgetl.pipeline

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero deep inside")

    monkeypatch.setattr(edgetl.pipeline, "export_stage", boom)
    result = invoke("export", exported)
    assert result.exit_code == 2
    assert "unexpected ZeroDivisionError: division by zero deep inside" in one_line(result)


@pytest.mark.parametrize("change, message", [
    ({"seed": 2**70}, "seed"),
    ({"seed": -1}, "seed"),
    ({"phases": [{"name": "head", "epochs": 1, "lr": 1e308}]}, "phases.0.lr"),
    ({"phases": [{"name": "", "epochs": 1}]}, "phases.0.name"),
    ({"batch_size": 1, "phases": [{"name": "all", "epochs": 1, "train": "all", "bn": "train"}]},
     "batch_size 1 cannot train BatchNorm statistics"),
])
def test_out_of_range_recipe_values_are_one_line(change, message):
    data = {"backbone": "mobilenet_v3_small", "weights": "none", "phases": [{"name": "head", "epochs": 1}], **change}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_batch_size_one_trains_every_image(tmp_path):
    import torch

    from edgetl.preprocessing import Preprocessing
    from edgetl.train.epoch import Batcher, steps_per_epoch

    prep = Preprocessing(crop_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = Batcher(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.arange(5), prep, torch.device("cpu"))
    batches = list(data.batches(1, torch.Generator().manual_seed(0)))
    assert len(batches) == steps_per_epoch(5, 1) == 5
    assert sorted(int(y) for _, ys in batches for y in ys) == [0, 1, 2, 3, 4]


def test_train_out_never_overwrites_a_users_folder(tiny, tmp_path):
    data, recipe = tiny
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.json").write_text('["keep me"]')
    result = invoke("train", "--recipe", recipe, "--data", data, "--out", mine)
    assert result.exit_code == 2 and "not an edgetl run (labels.json)" in one_line(result)
    assert (mine / "labels.json").read_text() == '["keep me"]' and sorted(p.name for p in mine.iterdir()) == ["labels.json"]


def test_train_out_inside_the_data_folder_is_refused(tiny, tmp_path):
    data, recipe = tiny
    result = invoke("train", "--recipe", recipe, "--data", data, "--out", data / "train" / "runs")
    assert result.exit_code == 2 and "inside the data folder" in one_line(result)
    assert not (data / "train" / "runs").exists()


def test_a_recipe_with_a_utf8_bom_loads(tmp_path):
    from edgetl.recipe import load_recipe

    path = tmp_path / "bom.toml"
    path.write_bytes('\ufeffbackbone = "resnet18"\n[[phases]]\nname = "head"\nepochs = 1\n'.encode())
    assert load_recipe(str(path)).backbone == "resnet18"
