"""The held-out test split (issue 28): a test/ folder beside train/ and val/ never trains and never chooses best.pt;
train.json, the card, verify.json and the terminal report best.pt on it, top-1 and top-5, per class; verify judges
on it by default (and export's INT8 guard with it: both take `gather_inputs`' default, tests/data/test_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.data.sample import make_image_folder

CLASSES = 6  # more than 5: top-5 accuracy means something
# Lite0's ImageNet weights load offline and learn the shapes a little in 3 head epochs at 32 px: a model that
# predicts one class everywhere would make the figures of any two image sets look alike
RECIPE = """
backbone = "efficientnet_lite0"
weights = "imagenet"
image_size = 32
batch_size = 8
patience = 0
probe_epochs = 0

[export]
formats = ["onnx"]

[[phases]]
name = "head"
epochs = 3
train = "head"
head_lr = 5e-2
schedule = "constant"
augment = false
"""


@pytest.fixture(scope="module")
def tested(tmp_path_factory) -> tuple[Path, Path, str]:
    """`edgetl run` on 6 classes with train/, val/ and test/ folders: (data, run, output)."""
    root = tmp_path_factory.mktemp("test-split")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=4, val_per_class=2, test_per_class=3,
                             size=32, seed=0)
    (root / "recipe.toml").write_text(RECIPE)
    run = root / "run"
    result = CliRunner().invoke(app, ["run", "--recipe", str(root / "recipe.toml"), "--data", str(data), "--out",
                                      str(run), "--latency-seconds", "0.02"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return data, run, result.output


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def test_the_test_folder_is_its_own_split_and_best_pt_is_measured_on_it(tested):
    data, run, output = tested
    split = read(run, "split.json")
    test, val = {e for e, _ in split["test"]}, {e for e, _ in split["val"]}
    assert len(test) == CLASSES * 3 and all(e.startswith("test/") for e in test) and not test & val
    summary = read(run, "train.json")
    figures = summary["test_per_class"]
    assert figures["images"] == CLASSES * 3 and [c["support"] for c in figures["classes"]] == [3] * CLASSES
    matrix = figures["confusion"]
    assert sum(matrix[i][i] for i in range(CLASSES)) / (CLASSES * 3) == pytest.approx(summary["test_acc"])
    assert summary["test_top5"] == figures["top5_accuracy"] and summary["test_acc"] <= summary["test_top5"] <= 1
    # best.pt was chosen on val: its val figures are val's, with top-5 beside top-1
    assert summary["per_class"]["images"] == CLASSES * 2
    assert summary["best_val_top5"] == summary["per_class"]["top5_accuracy"] >= summary["best_val_acc"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top5" in m for m in metrics) and "test_acc" not in metrics[-1]  # test never seen per epoch
    flat = " ".join(output.split())
    assert f"test {100 * summary['test_acc']:.1f} % (top-5 {100 * summary['test_top5']:.1f} %) on {CLASSES * 3} images, held out" in flat
    assert f"· test acc {100 * summary['test_acc']:.1f} %" in flat  # edgetl run's title: each split named


def test_verify_judges_on_the_whole_test_split_by_default(tested):
    _, run, output = tested
    report, summary = read(run, "verify.json"), read(run, "train.json")
    inputs = report["inputs"]
    assert inputs["part"] == "test" and inputs["images"] == inputs["listed"] == inputs["labelled"] == CLASSES * 3
    # the checkpoint on the test images, as verify preprocesses them from the manifest: train.json's figures
    assert report["per_class"]["checkpoints/best.pt"]["confusion"] == summary["test_per_class"]["confusion"]
    assert report["reference"]["top5_accuracy"] == pytest.approx(summary["test_top5"])
    onnx = report["parity"]["model.onnx"]
    assert onnx["top5_overlap"] is not None and onnx["top5_accuracy"] == report["reference"]["top5_accuracy"]
    assert f"accuracy and parity on all {CLASSES * 3} images of the test split" in " ".join(output.split())


def test_the_card_reports_the_test_split_apart_from_val(tested):
    _, run, _ = tested
    text = (run / "export" / "MODEL_CARD.md").read_text()
    summary = read(run, "train.json")
    figures = summary["test_per_class"]
    [test] = [s for s in text.split("\n## ") if s.startswith("Accuracy on the test split")]
    assert (f"**{100 * figures['accuracy']:.1f} %** of {figures['images']} test images right, top-5 "
            f"{100 * figures['top5_accuracy']:.1f} %") in test
    assert "| class | test images | precision | recall | F1 |" in test
    assert "| class | train images | val images | test images |" in text
    assert "test accuracy of that checkpoint (held out)" in text
    assert f"on all {CLASSES * 3} images of the test split" in text  # the verification section says what it used
