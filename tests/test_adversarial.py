"""Hostile inputs through the CLI: one line, the right exit code, nothing lost (issue 16).

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
    assert not [c for c in report["checks"] if c["measure"] in ("sha256", "bytes") and "hostname" in c["artifact"]]


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
    from edgetl.training.epoch import Batcher, steps_per_epoch

    prep = Preprocessing(crop_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = Batcher(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.arange(5), prep, torch.device("cpu"))
    batches = list(data.batches(1, torch.Generator().manual_seed(0)))
    assert len(batches) == steps_per_epoch(5, 1) == 5
    assert sorted(int(y) for _, ys, _ in batches for y in ys) == [0, 1, 2, 3, 4]


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



# --- damaged run files: one reader, one message ------------------------------------------------------------------

DAMAGE = {"not json": b"{not json", "a list": b"[1, 2]", "not utf-8": b"\xff\xfe\x00bad", "wrong fields": b'{"epoch": "x"}'}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny):
    """A trained, exported and verified tiny run."""
    data, recipe = tiny
    run = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("run", "--recipe", recipe, "--data", data, "--out", run, "--latency-seconds", "0.01", "--samples", "4")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def finished_copy(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


@pytest.mark.parametrize("file", ["metrics.jsonl", "labels.json", "train.json", "export/manifest.json", "verify.json"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_info_names_each_damaged_file_and_exits_2(finished_copy, file, damage):
    (finished_copy / file).write_bytes(DAMAGE[damage])
    result = invoke("info", finished_copy)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert one_line(result).startswith(f"error: damaged: {finished_copy / file} (")
    stage = {"export/manifest.json": "export", "verify.json": "verify"}.get(file, "train")
    assert one_line(result).endswith(f"re-run `edgetl {stage}`")
    assert "edgetl info" in result.output  # what could be read is still shown


def test_a_damaged_export_manifest_is_mended_by_re_exporting_as_verify_says(finished_copy):
    (finished_copy / "export" / "manifest.json").write_bytes(b"{")
    told = invoke("verify", finished_copy, *FAST)
    assert told.exit_code == 2 and one_line(told).endswith("re-run `edgetl export`"), told.output
    result = invoke("export", finished_copy)
    assert result.exit_code == 0, result.output
    assert invoke("verify", finished_copy, *FAST).exit_code == 0


def test_export_and_verify_of_an_out_folder_exclude_each_other_and_a_stale_lock_is_not_foreign(finished_copy,
                                                                                                tmp_path):
    from edgetl import files
    from edgetl.pipeline import _out_locked

    out = tmp_path / "ship"
    assert invoke("export", finished_copy, "--out", out, "-f", "onnx").exit_code == 0
    with _out_locked(finished_copy, out):  # an export into `out` under way
        result = invoke("verify", finished_copy, "--export", out, *FAST)
    assert result.exit_code == 2 and "pid" in one_line(result), result.output
    (out / files.LOCK_NAME).write_text("12345\n")  # what an older verify's lock left in the folder
    assert invoke("export", finished_copy, "--out", out, "-f", "onnx").exit_code == 0


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["export", "verify", "resume"])
def test_a_damaged_split_is_one_line_in_every_stage_that_reads_it(finished_copy, damage, command):
    (finished_copy / "split.json").write_bytes(DAMAGE[damage])
    (finished_copy / "train.json").unlink()  # a resume needs a cut run
    args = {"export": ["export", finished_copy], "verify": ["verify", finished_copy, *FAST],
            "resume": ["train", "--resume", finished_copy]}[command]
    result = invoke(*args)
    assert result.exit_code == 2
    assert one_line(result).startswith(f"error: damaged: {finished_copy / 'split.json'} (")


@pytest.mark.parametrize("damage", ["a list", "wrong fields"])
def test_a_resume_with_damaged_metrics_is_one_line(finished_copy, damage):
    (finished_copy / "train.json").unlink()
    (finished_copy / "metrics.jsonl").write_bytes(DAMAGE[damage] + b"\n")
    result = invoke("train", "--resume", finished_copy)
    assert result.exit_code == 2
    assert one_line(result).startswith(f"error: damaged: {finished_copy / 'metrics.jsonl'} (line 1: ")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("[1, 2]"), "(the verify report is not a JSON object); re-run `edgetl verify`"),
    (lambda p: p.mkdir(), "is a folder, not a verify report file"),
    (lambda p: p.write_text(json.dumps({"run_dir": ".", "gate": "fast"})), "gate: "),
])
def test_a_bad_baseline_is_one_line_naming_it(exported, tmp_path, make, message):
    baseline = tmp_path / "baseline.json"
    make(baseline)
    result = invoke("verify", exported, *FAST, "--baseline", baseline)
    assert result.exit_code == 2 and message in one_line(result) and str(baseline) in one_line(result)


def test_a_baseline_with_a_zero_p50_is_refused_not_divided_by(run_copy, tmp_path):
    assert invoke("verify", run_copy, *FAST, "--json", tmp_path / "v.json").exit_code == 0
    report = json.loads((tmp_path / "v.json").read_text())
    report["gate"]["p50_ms"] = 0
    (tmp_path / "v.json").write_text(json.dumps(report))
    result = invoke("verify", run_copy, *FAST, "--baseline", tmp_path / "v.json")
    line = one_line(result)
    assert result.exit_code == 2 and line.startswith("error: damaged: ") and "gate.p50_ms: Input should be greater than 0" in line
    assert line.endswith("re-run `edgetl verify`")


# --- never touch what edgetl didn't write ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "export", "verify", "resume"])
def test_a_second_writer_is_refused_naming_the_holders_pid(finished_copy, tiny, command):
    import os

    from edgetl import files

    data, recipe = tiny
    before = {p: p.read_bytes() for p in finished_copy.rglob("*") if p.is_file()}
    args = {"train": ["train", "--recipe", recipe, "--data", data, "--out", finished_copy],
            "export": ["export", finished_copy], "verify": ["verify", finished_copy, *FAST],
            "resume": ["train", "--resume", finished_copy]}[command]
    with files.locked(finished_copy):  # another process writing (flock conflicts across open files)
        result = invoke(*args)
    assert result.exit_code == 2
    assert f"is in use by another edgetl process (pid {os.getpid()})" in one_line(result)
    assert {p: p.read_bytes() for p in finished_copy.rglob("*") if p.is_file()} == before  # the lock file is gone


def test_files_respect_the_umask_and_json_writes_through_a_symlink(tiny, tmp_path):
    import os
    import stat

    data, recipe = tiny
    old = os.umask(0o027)
    try:
        assert invoke("train", "--recipe", recipe, "--data", data, "--out", tmp_path / "run").exit_code == 0
        assert invoke("export", tmp_path / "run", "--format", "onnx").exit_code == 0
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "run").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "run").rglob("*")}
    assert modes["labels.json"] == modes["checkpoints/best.pt"] == modes["export/manifest.json"] == 0o640, modes
    assert modes["export/model.onnx"] == 0o640 and modes["export"] == 0o750, modes
    target = tmp_path / "reports" / "verify.json"
    target.parent.mkdir()
    target.write_text("")  # an empty file: nothing of the user's to lose
    (tmp_path / "link.json").symlink_to(target)
    assert invoke("verify", tmp_path / "run", *FAST, "--json", tmp_path / "link.json").exit_code == 0
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text())["passed"] is True


# --- exact resume or refusal ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "run"])
def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, command):
    empty, mine = tmp_path / "empty", tmp_path / "mine"
    empty.mkdir()
    mine.mkdir()
    (mine / "index.html").write_text("<html>")
    for folder in (empty, mine):
        result = invoke(command, "--resume", folder)
        assert result.exit_code == 2 and "is not an edgetl run (no recipe.resolved.toml)" in one_line(result)
    assert list(empty.iterdir()) == [] and [p.name for p in mine.iterdir()] == ["index.html"]


@pytest.fixture
def cut_run(tiny, tmp_path):
    """A tiny run stopped after its first epoch, trained on a relative data path from tmp_path."""
    from edgetl.recipe import load_recipe
    from edgetl.testing import StopAfterEpoch
    from edgetl.training import train_run

    data, recipe = tiny
    shutil.copytree(data, tmp_path / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            train_run(load_recipe(str(recipe), overrides={"data": "data"}), run_dir=tmp_path / "cut", device="cpu",
                  callbacks=StopAfterEpoch(1))
    return tmp_path / "cut"


def test_a_resume_refuses_a_recipe_changed_since_the_run_started(cut_run):
    path = cut_run / "recipe.resolved.toml"
    path.write_text(path.read_text().replace("image_size = 32", "image_size = 64"))
    before = (cut_run / "checkpoints" / "last.pt").read_bytes()
    result = invoke("train", "--resume", cut_run)
    assert result.exit_code == 2 and "recipe.resolved.toml changed since the run started" in one_line(result)
    assert (cut_run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_resume_reads_the_data_the_run_started_on_from_any_folder(cut_run, tmp_path, monkeypatch, caplog):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)  # a different "data" relative to the new cwd: must not be used
    monkeypatch.chdir(elsewhere)
    image = next((tmp_path / "data" / "train").rglob("*.png"))
    image.write_bytes(image.read_bytes())  # a new mtime: the run's files changed
    result = invoke("train", "--resume", cut_run)
    assert result.exit_code == 0, result.output
    assert "changed since it started" in result.output
    assert (cut_run / "train.json").is_file()


# --- bounded resources and honest data ------------------------------------------------------------------------


def test_an_absurd_aspect_ratio_is_skipped_with_a_reason(exported, tmp_path):
    from PIL import Image

    strip, good = tmp_path / "strip.png", tmp_path / "good.png"
    Image.new("RGB", (1, 1_000_000)).save(strip)  # 4 KB on disk; 36 x 36,000,000 px once resized
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good)
    result = invoke("predict", exported, good, strip)
    assert result.exit_code == 2 and "aspect ratio 1000000:1 is beyond 50:1" in one_line(result)
    assert "class_" in result.output  # the good image is still answered


@pytest.mark.parametrize("names", [("Cat", "cat"), ("caf\u00e9", "cafe\u0301"), ("cat", "\uff43\uff41\uff54"),
                                   ("cat", "cat "), ("cat", "ca\u200bt")])
def test_class_names_that_look_the_same_are_refused(tmp_path, tiny, names):
    from PIL import Image

    _, recipe = tiny
    for name in (*names, "dog"):
        for i in range(3):
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(tmp_path / "data" / name / f"{i}.png")
    result = invoke("train", "--recipe", recipe, "--data", tmp_path / "data", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "differ only by case, Unicode form or invisible characters" in one_line(result)
    assert not (tmp_path / "run").exists()


def test_val_images_identical_to_train_images_are_reported(tiny, tmp_path):
    data, recipe = tiny
    copy = shutil.copytree(data, tmp_path / "data")
    train_image = sorted((copy / "train" / "circle").iterdir())[0]
    shutil.copy(train_image, copy / "val" / "circle" / "copy-of-train.png")
    result = invoke("train", "--recipe", recipe, "--data", copy, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "byte-identical copies of train images" in result.output
    duplicates = json.loads((tmp_path / "run" / "data.json").read_text())["duplicates"]
    assert duplicates == [["val/circle/copy-of-train.png", f"train/circle/{train_image.name}"]]


def test_control_characters_in_a_name_are_shown_not_run(tmp_path):
    result = invoke("export", tmp_path / "evil\x1b[2Jname")
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "evil\\x1b[2Jname" in one_line(result)


# --- the second hostile pass: other instances of the same classes ------------------------------------------------


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(finished_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (finished_copy / ".edgetl.lock").symlink_to(victim)
    result = invoke("export", finished_copy, "--format", "onnx")
    assert result.exit_code == 2 and ".edgetl.lock is a symlink, not edgetl's lock file" in one_line(result)
    assert victim.read_text() == "mine" and (finished_copy / ".edgetl.lock").is_symlink()


@pytest.mark.parametrize("target", ["export/manifest.json", "checkpoints/best.pt", "user"])
def test_verify_json_never_overwrites_the_runs_files_or_the_users(finished_copy, tmp_path, target):
    path = tmp_path / "notes.json" if target == "user" else finished_copy / target
    if target == "user":
        path.write_text('{"mine": true}')
    before = path.read_bytes()
    result = invoke("verify", finished_copy, *FAST, "--json", path)
    assert result.exit_code == 2 and "--json" in one_line(result)
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_predict_runs_only_files_inside_the_export(finished_copy, tmp_path, where):
    from PIL import Image

    outside = tmp_path / "outside.onnx"
    shutil.copy(finished_copy / "export" / "model.onnx", outside)
    if where == "symlink":
        (finished_copy / "export" / "model.onnx").unlink()
        (finished_copy / "export" / "model.onnx").symlink_to(outside)
    else:
        edit_manifest(finished_copy, lambda m: m["artifacts"][0].update(
            file=str(outside) if where == "absolute" else "../../outside.onnx"))
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    result = invoke("predict", finished_copy, tmp_path / "a.png")
    assert result.exit_code == 2 and "not a file of the export folder" in one_line(result)


def test_run_refuses_bad_export_and_verify_flags_before_training(tiny, tmp_path):
    data, recipe = tiny
    for flags in (["--atol", "-1"], ["--opset", "5"], ["--latency-seconds", "601"], ["--precision", "int4"]):
        result = invoke("run", "--recipe", recipe, "--data", data, "--out", tmp_path / "run", *flags)
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "run").exists(), flags


def test_train_out_refuses_a_folder_that_only_looks_like_a_run(tiny, tmp_path):
    data, recipe = tiny
    mine = tmp_path / "mine"
    (mine / "export").mkdir(parents=True)
    (mine / "recipe.resolved.toml").write_text(recipe.read_text())
    (mine / "labels.json").write_text('["my"]')
    (mine / "export" / "manifest.json").write_text("mine")
    result = invoke("train", "--recipe", recipe, "--data", data, "--out", mine)
    assert result.exit_code == 2 and "not an edgetl run" in one_line(result)
    assert (mine / "labels.json").read_text() == '["my"]'


def test_export_out_keeps_a_folder_named_like_a_listed_file(finished_copy, tmp_path):
    fake = tmp_path / "fake"
    (fake / "model.onnx").mkdir(parents=True)
    (fake / "model.onnx" / "keep.txt").write_text("mine")
    shutil.copy(finished_copy / "export" / "manifest.json", fake / "manifest.json")
    result = invoke("export", finished_copy, "--format", "onnx", "--out", fake)
    assert result.exit_code == 2 and "holds files edgetl did not export (model.onnx)" in one_line(result)
    assert (fake / "model.onnx" / "keep.txt").read_text() == "mine"


def test_export_out_into_a_run_another_process_holds_is_refused(finished_copy, exported, tmp_path):
    import os

    from edgetl import files

    with files.locked(finished_copy):
        result = invoke("export", exported, "--format", "onnx", "--out", finished_copy / "export")
    assert result.exit_code == 2 and f"(pid {os.getpid()})" in one_line(result)


def test_export_out_inside_the_runs_data_is_refused(finished_copy, tiny):
    data, _ = tiny
    result = invoke("export", finished_copy, "--format", "onnx", "--out", data / "train" / "zebra")
    assert result.exit_code == 2 and "inside the run's data folder" in one_line(result)
    assert not (data / "train" / "zebra").exists()


@pytest.mark.parametrize("flags", [["--atol", "nan"], ["--max-latency-ms", "nan"], ["--max-regression", "nan"],
                                   ["--atol", "inf"]])
def test_non_finite_bars_are_usage_errors(exported, flags):
    result = invoke("verify", exported, *FAST, *flags)
    assert result.exit_code == 2 and "must be a finite number" in one_line(result)


@pytest.mark.parametrize("change, field", [
    (lambda c: c["preprocessing"].update(crop_size=-5), "preprocessing"),
    (lambda c: c.update(num_classes="3"), "num_classes"),
    (lambda c: c.update(lora={"rank": "x"}), "lora"),
])
def test_damaged_checkpoint_fields_are_one_damaged_line(finished_copy, change, field):
    import torch

    path = finished_copy / "checkpoints" / "best.pt"
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    for args in (["export", finished_copy, "--format", "onnx"], ["verify", finished_copy, *FAST]):
        result = invoke(*args)
        assert result.exit_code == 2 and one_line(result).startswith(f"error: damaged: {path} ({field}"), result.output


def test_a_manifest_batch_that_would_allocate_petabytes_fails_its_meaning_check(finished_copy, tmp_path):
    from PIL import Image

    edit_manifest(finished_copy, lambda m: m["input"]["shape"].__setitem__(0, 10**12))
    result = invoke("verify", finished_copy, *FAST)
    assert result.exit_code == 1 and "fixed input batch" in result.output and "MemoryError" not in result.output
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    result = invoke("predict", finished_copy, tmp_path / "a.png")
    assert result.exit_code == 2 and "fixed batch" in one_line(result)


def test_a_folder_link_out_of_the_data_is_skipped_not_walked(tiny, tmp_path):
    data, recipe = tiny
    copy = shutil.copytree(data, tmp_path / "data")
    (copy / "train" / "circle" / "rootlink").symlink_to("/")
    result = invoke("train", "--recipe", recipe, "--data", copy, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    skipped = dict(json.loads((tmp_path / "run" / "data.json").read_text())["skipped"])
    assert skipped[str(copy / "train" / "circle" / "rootlink")] == "folder link out of the data folder (to /)"


@pytest.mark.parametrize("flags", [["--seed", "99"], ["--recipe", "quickstart"], ["--epochs-scale", "3"],
                                   ["--out", "elsewhere"]])
def test_a_resume_refuses_flags_that_would_change_the_run(cut_run, flags):
    result = invoke("train", "--resume", cut_run, *flags)
    assert result.exit_code == 2 and f"{flags[0]} would change it" in one_line(result)


def test_a_split_entry_leaving_the_data_folder_is_damage(cut_run):
    split = json.loads((cut_run / "split.json").read_text())
    split["train"][0][0] = "../../../etc/hostname"
    (cut_run / "split.json").write_text(json.dumps(split))
    result = invoke("train", "--resume", cut_run)
    assert result.exit_code == 2 and "leaves the data folder" in one_line(result)
    assert one_line(result).startswith(f"error: damaged: {cut_run / 'split.json'}")


@pytest.mark.parametrize("args, message", [
    (["export", "RUN", "--batch", "100000000"], "--batch must be dynamic or a size from 1 to 256"),
])
def test_other_unbounded_flags_are_refused(exported, args, message):
    result = invoke(*[exported if a == "RUN" else a for a in args])
    assert result.exit_code == 2 and message in one_line(result)


@pytest.mark.parametrize("change, message", [
    ({"lora": {"rank": 100_000_000}}, "lora.rank"),
    ({"phases": [{"name": "head", "epochs": 1, "group_lr": {"head": 1e300}}]}, "phases.0.group_lr"),
])
def test_recipe_values_that_would_exhaust_memory_or_overflow_are_refused(change, message):
    data = {"backbone": "mobilenet_v3_small", "weights": "none", "phases": [{"name": "head", "epochs": 1}], **change}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)
