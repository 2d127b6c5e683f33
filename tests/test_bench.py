"""`edgetl bench` (issue 28): candidates timed on this machine, marked against the budget by their measured p50, a
head-only accuracy where ImageNet weights load offline (Lite0), one JSON document, a recipe that loads."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from edgetl.bench import BenchRequest, NothingWithinBudget, choose, mark_budget, recipe_for
from edgetl.cli import command
from edgetl.cli.bench import bench
from edgetl.errors import BackboneError, EdgetlError
from edgetl.recipe import load_recipe

# The command as edgetl.cli registers it: behind the CLI's one error boundary.
app = typer.Typer()
app.callback()(lambda: None)  # a group, so the command line names `bench` as users type it
app.command()(command(bench))
runner = CliRunner()

BACKBONES = ["efficientnet_lite0", "mobilenet_v3_small"]  # Lite0's ImageNet weights load offline; the other's need a download
SIZES = [32, 48]
ROW_KEYS = {"backbone", "image_size", "precision", "params", "macs", "file_bytes", "p50_ms", "p99_ms", "iterations",
            "within_budget", "head_only_top1", "head_only_top1_ci", "head_only_note", "error"}


@pytest.fixture(scope="module")
def benched(tiny, tmp_path_factory):
    """One bench through the CLI: two backbones x two sizes x fp32 + int8, on the tiny photos, JSON on stdout."""
    data, _ = tiny
    recipe = tmp_path_factory.mktemp("bench") / "picked.toml"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_OFFLINE", "1")  # no download in the tests: only weights that ship (Lite0's) score
        args = [a for b in BACKBONES for a in ("-b", b)] + [a for s in SIZES for a in ("-s", str(s))]
        result = runner.invoke(app, ["bench", *args, "-p", "fp32", "-p", "int8", "--threads", "1", "--seconds", "0.02",
                                     "--max-latency-ms", "1000", "--data", str(data), "--json", "-",
                                     "--write-recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), recipe, result, data  # stdout holds the one document and nothing else


def test_json_lists_every_candidate_with_its_cost_and_timing(benched):
    doc, _, result, data = benched
    rows = doc["candidates"]
    assert [(r["backbone"], r["image_size"], r["precision"]) for r in rows] == [
        (b, s, p) for b in BACKBONES for s in SIZES for p in ("fp32", "int8")]
    assert all(set(r) == ROW_KEYS and r["error"] is None for r in rows)
    for r in rows:
        assert r["params"] > 0 and r["macs"] > 0 and r["file_bytes"] > 0 and r["iterations"] >= 1
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    by = {(r["backbone"], r["image_size"], r["precision"]): r for r in rows}
    for b in BACKBONES:  # MACs grow with the input, params do not; INT8 files are smaller
        assert by[b, 48, "fp32"]["macs"] > by[b, 32, "fp32"]["macs"]
        assert by[b, 48, "fp32"]["params"] == by[b, 32, "fp32"]["params"]
        assert by[b, 32, "int8"]["file_bytes"] < by[b, 32, "fp32"]["file_bytes"] / 2
    assert doc["threads"] == 1 and doc["runtime"] == "onnxruntime" and doc["batch"] == 1
    assert doc["num_classes"] == 3 and doc["data"]["classes"] == ["circle", "cross", "ring"]
    assert doc["machine"]["id"] and doc["max_latency_ms"] == 1000
    assert "efficientnet_lite0" in result.stderr and "p50 ms" in result.stderr  # the table went to stderr


def test_head_only_accuracy_where_weights_load_offline_and_a_note_elsewhere(benched):
    doc, *_ = benched
    for r in doc["candidates"]:
        if r["backbone"] == "efficientnet_lite0":
            low, high = r["head_only_top1_ci"]
            assert 0 <= low <= r["head_only_top1"] <= high <= 1 and r["head_only_note"] is None
        elif r["head_only_top1"] is None:  # unless torch hub's cache holds its weights
            assert r["head_only_note"] == "no ImageNet weights here (offline)"


def test_budget_marks_follow_the_measured_p50_and_the_choice_follows_the_marks(benched):
    doc, *_ = benched
    rows = [_row(r) for r in doc["candidates"]]
    assert all(r.within_budget for r in rows)  # 1000 ms
    chosen = doc["chosen"]  # with accuracies: the most accurate, the faster on a tie
    scored = [r for r in rows if r.head_only_top1 is not None]
    assert chosen["head_only_top1"] == max(r.head_only_top1 for r in scored)
    assert chosen["p50_ms"] == min(r.p50_ms for r in scored if r.head_only_top1 == chosen["head_only_top1"])

    p50s = sorted(r.p50_ms for r in rows)
    budget = (p50s[0] + p50s[1]) / 2  # between the two fastest: exactly one row is within it
    mark_budget(rows, budget)
    assert [r.within_budget for r in rows] == [r.p50_ms <= budget for r in rows]
    assert sum(r.within_budget for r in rows) == 1
    index, reason = choose(rows, max_latency_ms=budget, accuracy=False)
    assert rows[index].p50_ms == p50s[0] and "the most MACs within" in reason

    mark_budget(rows, p50s[0] / 2)
    index, reason = choose(rows, max_latency_ms=p50s[0] / 2, accuracy=True)
    assert index is None and reason.startswith("none within") and f"{p50s[0]:.2f} ms" in reason


def test_the_written_recipe_loads_with_the_chosen_backbone_size_data_and_precision(benched):
    doc, recipe_path, _, data = benched
    recipe = load_recipe(str(recipe_path))
    chosen = doc["chosen"]
    assert (recipe.backbone, recipe.image_size) == (chosen["backbone"], chosen["image_size"])
    assert recipe.data == str(data.resolve()) and len(recipe.phases) == 2  # the shipped recipe's phases
    precisions = recipe.export.precisions if recipe.export else ["fp32"]
    assert chosen["precision"] in precisions
    assert recipe_path.read_text().startswith("# Written by `edgetl bench`")


def test_no_recipe_when_nothing_is_within_the_budget(benched, tmp_path):
    doc, *_ = benched
    from edgetl.bench import BenchReport

    rows = [_row(r) for r in doc["candidates"]]
    mark_budget(rows, 1e-6)
    report = BenchReport(rows=rows, runtime="onnxruntime", threads=1, num_classes=3, max_latency_ms=1e-6, timing={},
                         machine={}, chosen_index=None,
                         chosen_reason=choose(rows, max_latency_ms=1e-6, accuracy=False)[1])
    with pytest.raises(NothingWithinBudget, match="no recipe written: none within 1e-06 ms") as e:
        recipe_for(report)
    assert e.value.exit_code == 1


@pytest.mark.parametrize("args, message", [
    (["-b", "resnet19"], "unknown backbone 'resnet19'.*did you mean 'resnet18'"),
    (["-s", "16"], "--image-size 16: an input size must be 32 to 1024 px"),
    (["--max-latency-ms", "0"], "--max-latency-ms must be > 0"),
    (["--seconds", "inf"], "--seconds must be > 0 and <= 600"),  # it timed forever
    (["--data", "no/such/folder"], "--data no/such/folder: folder not found"),
    (["--num-classes", "3", "--data", "sample"], "--num-classes with --data: the data's classes set the outputs"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(args, message):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and re.search(message, error[0]), result.stderr


def test_a_bad_precision_is_refused_by_the_flag_and_by_the_library():
    result = runner.invoke(app, ["bench", "-p", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
    with pytest.raises(EdgetlError, match="unknown precision 'int4'; known: fp32, int8, fp16"):
        BenchRequest.checked(precisions=["int4"])
    with pytest.raises(BackboneError):
        BenchRequest.checked(["timm:"])


def test_the_command_imports_no_torch_until_it_runs_and_its_help_shows_the_librarys_defaults():
    import subprocess
    import sys

    import edgetl.bench
    import edgetl.cli.bench

    code = "import sys, edgetl.cli.bench; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    assert edgetl.cli.bench.DEFAULT_IMAGE_SIZES == edgetl.bench.DEFAULT_IMAGE_SIZES
    assert edgetl.cli.bench.DEFAULT_SECONDS == edgetl.bench.DEFAULT_SECONDS


def _row(d: dict):
    from edgetl.bench import BenchRow

    return BenchRow(**{f.name: d[f.name] for f in dataclasses.fields(BenchRow)})
