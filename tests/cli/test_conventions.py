"""What users reach for first (issue 28): settings as flags, --version / -h, --json on every command, commands that
list and describe without importing torch, predict on folders and globs, export that keeps the files not asked for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.errors import RecipeError
from edgetl.recipe import load_recipe

runner = CliRunner()
FAST = ["--latency-seconds", "0.02", "--threads", "1", "--samples", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- settings as flags -------------------------------------------------------------------------------------

def test_set_takes_any_recipe_key_dotted_for_tables_with_toml_values():
    recipe = load_recipe("quickstart", settings=["label_smoothing=0.05", "head.dropout=0.2", "phases.1.bn=train",
                                                 'export.precisions=["fp32", "int8"]', "optimizer=sgd"])
    assert recipe.label_smoothing == 0.05 and recipe.head.dropout == 0.2 and recipe.phases[1].bn == "train"
    assert recipe.export.precisions == ["fp32", "int8"] and recipe.optimizer == "sgd"
    assert load_recipe("quickstart", settings={"phases.0.group_lr.head": 0.01}).phases[0].group_lr == {"head": 0.01}


@pytest.mark.parametrize("setting, message", [
    ("lable_smoothing=0.1", "unknown recipe key 'lable_smoothing' — did you mean 'label_smoothing'?"),
    ("head.dropot=0.1", "unknown recipe key 'dropot' — did you mean 'dropout'?"),
    ("phases.7.lr=1e-3", "phases needs an index 0..1"),
    ("label_smoothing.x=1", "label_smoothing is a value, not a table"),
    ("label_smoothing", "expected KEY=VALUE"),
])
def test_a_bad_set_names_the_key_and_the_closest_one(setting, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("quickstart", settings=[setting])


@pytest.mark.parametrize("total", [2, 5, 21, 40])
def test_epochs_is_the_total_spread_over_the_phases_in_the_recipes_proportions(total):
    base = load_recipe("quickstart")
    recipe = load_recipe("quickstart", epochs=total)
    counts = [p.epochs for p in recipe.phases]
    assert sum(counts) == total and min(counts) >= 1
    shares = [p.epochs / sum(q.epochs for q in base.phases) for p in base.phases]
    assert all(abs(c - s * total) < 1 + 1e-9 for c, s in zip(counts, shares))
    assert all(p.warmup_epochs < p.epochs or p.warmup_epochs == 0 for p in recipe.phases)
    with pytest.raises(RecipeError, match="each needs at least one epoch"):
        load_recipe("quickstart", epochs=1)


def test_lr_sets_the_first_heads_rate_and_keeps_the_recipes_ratios():
    base = load_recipe("quickstart")
    recipe = load_recipe("quickstart", lr=3e-4)
    factor = 3e-4 / base.phases[0].head_lr
    assert recipe.phases[0].head_lr == 3e-4
    for old, new in zip(base.phases, recipe.phases):
        assert new.lr == pytest.approx(old.lr * factor) and new.head_lr == pytest.approx(old.head_lr * factor)
    with pytest.raises(RecipeError, match="--lr must be > 0"):
        load_recipe("quickstart", lr=-1.0)


def test_train_flags_reach_the_resolved_recipe_and_json_is_alone_on_stdout(tiny, tmp_path):
    data, recipe = tiny
    out = tmp_path / "run"
    result = invoke("train", "--recipe", recipe, "--data", data, "--out", out, "--image-size", 48, "--epochs", 3,
                    "--lr", 3e-3, "--batch-size", 4, "--set", "label_smoothing=0.05", "--json", "-")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # one document, nothing else on stdout
    assert summary["run_dir"] == str(out) and summary["best_val_acc"] is not None
    resolved = tomllib.loads((out / "recipe.resolved.toml").read_text())
    assert (resolved["image_size"], resolved["batch_size"], resolved["label_smoothing"]) == (48, 4, 0.05)
    assert sum(p["epochs"] for p in resolved["phases"]) == 3 and resolved["phases"][0]["head_lr"] == 3e-3


def test_a_misspelt_set_fails_with_exit_2_before_any_work(tiny, tmp_path):
    data, _ = tiny
    result = invoke("train", "--data", data, "--out", tmp_path / "run", "--set", "lable_smoothing=0.1")
    assert result.exit_code == 2
    assert "did you mean 'label_smoothing'?" in result.output and not (tmp_path / "run").exists()


def test_resume_refuses_the_new_setting_flags(tmp_path):
    result = invoke("train", "--resume", tmp_path, "--lr", "1e-3", "--set", "seed=2")
    assert result.exit_code == 2 and "--set, --lr would change it" in result.output


# --- conventions -------------------------------------------------------------------------------------------

def test_version_and_short_help():
    from edgetl.version import __version__

    assert invoke("--version").stdout.strip() == f"edgetl {__version__}"
    assert invoke("-h").exit_code == 0 and "Usage" in invoke("-h").stdout
    assert "--image-size" in invoke("train", "-h").stdout


LISTING = """
import json, sys
from edgetl.cli import app
try:
    app({args!r})
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(m for m in ("torch", "torchvision", "timm", "onnx", "onnxruntime") if m in sys.modules)),
      file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["recipes", "--json", "-"], ["backbones", "--json", "-"], ["--help"]])
def test_listing_commands_import_no_torch_and_print_one_json_document(args):
    done = subprocess.run([sys.executable, "-c", LISTING.format(args=args)], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []  # none of the heavy libraries was imported
    if "--json" in args:
        rows = json.loads(done.stdout)
        assert {r["name"] for r in rows} >= ({"quickstart", "resnet18"} if args[0] == "recipes" else
                                             {"efficientnet_lite0", "resnet18"})


def test_the_catalog_is_what_the_shipped_backbones_build():
    from edgetl.backbones import BACKBONES, SHIPPED

    assert list(SHIPPED) == list(BACKBONES)
    for name, backbone in BACKBONES.items():
        facts = SHIPPED[name]
        assert (facts.family, facts.source_name) == (backbone.family, backbone.source_name)
        assert facts.crop_size == backbone.preprocessing.crop_size
        assert facts.groups == len(backbone.groups(backbone.build(2)))


def test_info_and_verify_json_on_stdout(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    info = invoke("info", run, "--json", "-")
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["recipe"]["backbone"] == "mobilenet_v3_small" and described["manifest"]["labels"]
    verified = invoke("verify", run, "--json", "-", *FAST)
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["passed"] is True and (run / "verify.json").is_file() and not (run / "-").exists()


# --- predict on folders and globs; export keeps what it was not asked for ------------------------------------

def test_a_kept_file_whose_runtime_is_not_installed_here_keeps_its_golden_output(finished_run, tmp_path,
                                                                                   monkeypatch):
    from edgetl.formats.base import Format

    run = shutil.copytree(finished_run[0], tmp_path / "run")
    before = json.loads((run / "export" / "manifest.json").read_text())["golden"]
    gone = "torchscript"  # as if its extra were not installed on this machine: it cannot be opened here

    def missing(self):
        return f"--format {self.name} needs its extra" if self.name == gone else None

    def refuse(self, path, **kw):
        raise AssertionError(f"{gone} opened without its runtime")

    monkeypatch.setattr(Format, "missing", missing)
    original = Format.open
    monkeypatch.setattr(Format, "open", lambda self, path, **kw: refuse(self, path) if self.name == gone
                        else original(self, path, **kw))
    result = invoke("export", run, "-f", "onnx", "--json", "-")
    assert result.exit_code == 0, result.output
    golden = json.loads(result.stdout)["golden"]
    kept = next(o for o in before["outputs"] if o["of"].endswith(".pt"))
    assert next(o for o in golden["outputs"] if o["of"] == kept["of"])["sha256"] == kept["sha256"]
    assert (run / "export" / kept["file"]).is_file()


def test_predict_takes_folders_and_quoted_globs(finished_run, tiny):
    run, _ = finished_run
    data, _ = tiny
    folder = sorted(p for p in (data / "val").iterdir() if p.is_dir())[0]
    images = sorted(folder.iterdir())
    by_folder = json.loads(invoke("predict", run, folder, "--json").stdout)
    assert [row["image"] for row in by_folder] == [str(p) for p in images]
    by_glob = json.loads(invoke("predict", run, f"{data}/val/*/*{images[0].suffix}", "--json").stdout)
    assert len(by_glob) == sum(1 for p in (data / "val").rglob(f"*{images[0].suffix}"))
    missing = invoke("predict", run, f"{data}/nowhere/*.png")
    assert missing.exit_code == 2 and "no file matches" in missing.output


def test_export_keeps_the_files_it_was_not_asked_for_and_replace_drops_them(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    before = json.loads((run / "export" / "manifest.json").read_text())
    torchscript = next(a for a in before["artifacts"] if a["format"] == "torchscript")
    # fp32 only: the keeping is the same for any precision, and a random-weight model's INT8 bars are a coin flip
    result = invoke("export", run, "-f", "onnx", "--json", "-")
    assert result.exit_code == 0, result.output
    listed = {a["file"]: a for a in json.loads(result.stdout)["artifacts"]}
    assert set(listed) == {"model.onnx", torchscript["file"]}
    assert listed[torchscript["file"]]["sha256"] == torchscript["sha256"]
    assert (run / "export" / torchscript["file"]).is_file()
    assert invoke("verify", run, *FAST).exit_code == 0
    replaced = invoke("export", run, "-f", "onnx", "--replace", "--json", "-")
    assert replaced.exit_code == 0, replaced.output
    assert [a["file"] for a in json.loads(replaced.stdout)["artifacts"]] == ["model.onnx"]
    assert not (run / "export" / torchscript["file"]).exists()


def test_info_says_what_to_do_after_a_failed_verify(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    assert invoke("verify", run, "--max-latency-ms", "0.0001", *FAST).exit_code == 1
    shown = invoke("info", run)
    assert shown.exit_code == 0, shown.output
    assert "verify failed (1 check(s))" in shown.stdout and "all stages done" not in shown.stdout


def test_info_never_shows_an_edited_or_outdated_verify_report_as_passed(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    report = json.loads((run / "verify.json").read_text())
    report.update(passed=True, failures=[])
    report["checks"][0]["passed"] = False  # a verdict its own checks contradict
    (run / "verify.json").write_text(json.dumps(report))
    shown = invoke("info", run)
    assert shown.exit_code == 2 and "its verdict contradicts its own checks" in shown.output

    run = shutil.copytree(finished_run[0], tmp_path / "run2")
    with (run / "export" / "MODEL_CARD.md").open("a") as card:
        card.write("edited after verify\n")
    shown = invoke("info", run)
    assert shown.exit_code == 2 and "export/MODEL_CARD.md changed after it was verified" in shown.output

    run = shutil.copytree(finished_run[0], tmp_path / "run3")
    shutil.rmtree(run / "export")  # the export verify vouched for is gone: its report vouches for nothing
    shown = invoke("info", run, "--json", "-")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["verify"] is None
    assert json.loads(shown.stdout)["next_stage"] == "export"


def test_under_torchrun_a_bad_flag_is_reported_once_by_rank_0():
    """Every torchrun worker parses the same command line; only rank 0 prints the usage error (exit 2 on each)."""
    import os

    def train_with_bad_flag(rank):
        env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2"}
        return subprocess.run([sys.executable, "-m", "edgetl", "train", "--epochs", "-3"], capture_output=True,
                              text=True, env=env, timeout=60)

    first, other = train_with_bad_flag("0"), train_with_bad_flag("1")
    assert first.returncode == other.returncode == 2
    assert "--epochs" in first.stderr and "Traceback" not in first.stderr
    assert other.stderr == "" and other.stdout == ""
