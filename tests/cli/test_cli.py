"""The command line's shape: commands in pipeline order, choices from the registries, usage errors as exit 2."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.formats import FORMATS
from edgetl.recipe import known_recipes

runner = CliRunner()
PIPELINE_ORDER = ["run", "train", "export", "verify", "predict", "info", "bench", "recipes", "backbones"]


def invoke(*args: str):
    return runner.invoke(app, list(args), prog_name="edgetl", env={"COLUMNS": "200"})


def test_help_lists_the_commands_in_pipeline_order():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^│ (\w+) {2,}\S", result.output.split("Commands")[1], flags=re.MULTILINE)
    assert listed == PIPELINE_ORDER


def test_export_format_choices_come_from_the_formats_registry():
    result = invoke("export", "--help")
    assert result.exit_code == 0, result.output
    [choices] = re.findall(r"--format +-f +<list\[([\w|]+)\]>", result.output)  # repeatable
    assert choices.split("|") == [*FORMATS, "all"]
    assert {"onnx", "torchscript", "executorch", "litert"} <= set(FORMATS)
    help_text = result.output.split("--format")[1].split("--opset")[0]
    assert "else onnx and torchscript" in help_text and "[default:" not in help_text  # the recipe decides first


def test_a_bad_format_is_a_usage_error_before_any_work(tmp_path):
    result = invoke("export", str(tmp_path / "no-such-run"), "--format", "tflite")
    assert result.exit_code == 2, result.output
    assert "'tflite' is not one of" in result.output
    assert "no-such-run" not in result.output  # refused while parsing, before the run directory is looked at


def test_backbones_lists_the_short_names_and_explains_the_by_name_forms():
    from edgetl.backbones import BACKBONES

    result = invoke("backbones")
    assert result.exit_code == 0, result.output
    assert re.findall(r"^│ (\w+) +│", result.output, flags=re.MULTILINE) == list(BACKBONES)
    assert "torchvision:NAME" in result.output and "timm:NAME" in result.output


def test_backbones_groups_shows_each_group_of_a_named_model():
    result = invoke("backbones", "--groups", "timm:convnext_atto")
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^│ (\w+) +│ +([\d,]+) │", result.output, flags=re.MULTILINE)
    assert [name for name, _ in rows] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    import timm

    total = sum(p.numel() for p in timm.create_model("convnext_atto", num_classes=2).parameters())
    assert sum(int(n.replace(",", "")) for _, n in rows) == total
    bad = invoke("backbones", "--groups", "timm:convnext_atom")
    assert bad.exit_code == 2 and "did you mean 'timm:convnext_atto'" in bad.output


def test_recipes_lists_every_shipped_recipe():
    result = invoke("recipes")
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^│ (\w+) +│", result.output, flags=re.MULTILINE)
    assert rows == list(known_recipes()) and len(rows) >= 1


def test_a_usage_error_in_a_stage_is_one_line_with_its_exit_code(tmp_path):
    result = invoke("info", str(tmp_path / "nowhere"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "nowhere" in result.output


def test_shell_completion_is_on_and_completes_commands_and_choices():
    # `--show-completion` detects the calling shell (CI may run under sh, which Typer does not complete): the
    # options are listed, and the completion protocol itself is exercised below, whatever the shell.
    shown = invoke("--help").output
    assert "--install-completion" in shown and "--show-completion" in shown

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {"_EDGETL_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
        return runner.invoke(app, [], prog_name="edgetl", env=env).output.split()

    assert complete("edgetl ex") == ["export"]
    assert complete("edgetl export run --format t") == ["torchscript"]
