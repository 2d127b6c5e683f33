"""End to end through `edgetl train` on a tiny generated dataset: the run directory, resume, errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.data.sample import SHAPES
from edgetl.model.checkpoint import load_checkpoint
from edgetl.testing import StopAfterEpoch
from edgetl.training import train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """`edgetl train` on the tiny recipe through the CLI: (run, result)."""
    data, recipe = tiny
    run = tmp_path_factory.mktemp("trained") / "run"
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(run), "--device", "cpu"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return run, result


def test_train_writes_the_run_directory(trained):
    run, result = trained
    for name in ("recipe.resolved.toml", "labels.json", "preprocessing.json", "split.json", "metrics.jsonl",
                 "curves.png", "train.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text()) == sorted(SHAPES[:3])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["head"] * 2 + ["top"] * 2 + ["all"] * 3
    assert [m["epoch"] for m in metrics] == list(range(1, 8))
    for m in metrics:
        assert 0 <= m["val_acc"] <= 1 and 0 <= m["train_acc"] <= 1 and m["val_loss"] > 0 and m["images_per_s"] > 0
    assert metrics[0]["cached_features"] and not metrics[2]["cached_features"]
    assert set(metrics[0]["lr"]) == {"head"} and set(metrics[2]["lr"]) == {"stage4", "head"}
    assert set(metrics[4]["lr"]) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    assert metrics[4]["lr"]["stage4"] == pytest.approx(1e-3 / 3)  # warmup: first of 3 steps
    assert metrics[4]["lr"]["stem"] == pytest.approx(1e-3 / 3 * 0.5 ** 4)
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 24 and len(split["val"]) == 6
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["labels"] == sorted(SHAPES[:3]) and best["backbone"] == "mobilenet_v3_small"
    assert "edgetl train" in result.output and "best.pt" in result.output


def test_train_reports_best_pt_per_class_on_the_val_split(trained, tiny):
    """train.json holds the confusion matrix of best.pt's val predictions: its rows are the val counts per class,
    its diagonal is best_val_acc; confusion.png shows it, the terminal a table, the wrong images by path."""
    (run, result), (data, _) = trained, tiny
    summary = json.loads((run / "train.json").read_text())
    split = json.loads((run / "split.json").read_text())
    figures = summary["per_class"]
    labels = json.loads((run / "labels.json").read_text())
    assert figures["labels"] == labels and figures["images"] == len(split["val"])
    matrix = figures["confusion"]
    assert [sum(row) for row in matrix] == [sum(c == label for _, c in split["val"]) for label in labels]
    assert sum(map(sum, matrix)) == len(split["val"])
    assert sum(matrix[i][i] for i in range(len(labels))) / len(split["val"]) == pytest.approx(summary["best_val_acc"])
    for i, c in enumerate(figures["classes"]):
        assert c["support"] == sum(matrix[i]) and c["predicted"] == sum(row[i] for row in matrix)
        assert c["recall"] == pytest.approx(matrix[i][i] / c["support"])
    wrong = summary["confidently_wrong"]
    assert len(wrong) == min(10, len(split["val"]) - sum(matrix[i][i] for i in range(len(labels))))
    val_paths = {str(data / rel) for rel, _ in split["val"]}
    assert all(w["path"] in val_paths and w["label"] != w["predicted"] for w in wrong)
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per class on the val split" in result.output and "precision" in result.output
    for label in labels:
        assert label in result.output
    if wrong:
        assert "most confidently wrong" in result.output and wrong[0]["path"] in result.output




@pytest.mark.parametrize("stop_after", [1, 3, 6])  # mid head phase (cached features), mid top phase, mid all phase
def test_resume_gives_the_same_final_weights(straight, tmp_path, stop_after):
    recipe, straight_run = straight
    with pytest.raises(KeyboardInterrupt):
        train_run(recipe, run_dir=tmp_path / "cut", device="cpu", callbacks=StopAfterEpoch(stop_after))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    a = load_checkpoint(straight_run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    metrics = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == list(range(1, 8))
    # best.pt's val predictions travel in last.pt: a resumed run reports the same per-class figures
    summaries = [json.loads((r / "train.json").read_text()) for r in (straight_run, tmp_path / "cut")]
    assert summaries[0]["per_class"] is not None
    assert summaries[1]["per_class"] == summaries[0]["per_class"]
    assert summaries[1]["confidently_wrong"] == summaries[0]["confidently_wrong"]


def test_training_on_an_existing_run_is_refused(tiny, tmp_path):
    data, recipe = tiny
    args = ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "r"), "--epochs-scale", "0.3"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--resume" in result.output


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--epochs-scale", "-1"], "--epochs-scale must be > 0"),
    (["--weights", "/no/such/weights.pth"], "weights.pth"),
])
def test_bad_input_gives_a_one_line_error_and_writes_nothing(tiny, tmp_path, args, message):
    data, recipe = tiny
    base = ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_phase_that_does_not_fit_the_backbone_is_refused_before_writing(tiny, tmp_path):
    data, recipe = tiny
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe.read_text().replace('train = "last:1"', 'train = "last:9"'))
    result = runner.invoke(app, ["train", "--recipe", str(bad), "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "last:9" in result.output
    assert not (tmp_path / "r").exists()


def test_a_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    data, recipe = tiny
    exploding = tmp_path / "exploding.toml"
    exploding.write_text(recipe.read_text().replace("lr = 1e-3\nlr_decay = 0.5", "lr = 1e6\nlr_decay = 0.5"))  # the largest rate a recipe may ask for
    run = tmp_path / "r"
    result = runner.invoke(app, ["train", "--recipe", str(exploding), "--data", str(data), "--out", str(run)])
    assert result.exit_code == 1, result.output
    assert "training loss became nan" in result.output or "training loss became inf" in result.output
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    # the rate explodes within the `all` phase (phase 2), after a good epoch or two of it
    good = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert last["next_phase"] == 2 and last["global_epoch"] == len(good) == 4 + last["next_epoch"], \
        "the checkpoint of the last good epoch is kept"
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("epoch, bad, beat, expected", [
    (1, 0, False, "no gain"),  # a deeper phase that has not beaten best.pt after its probe epoch ends
    (1, 0, True, None),  # one that has goes on
    (2, 2, True, "patience"),  # patience counts epochs without a better figure within the phase
    (4, 0, True, "planned"),
])
def test_a_phase_ends_when_it_stops_paying(epoch, bad, beat, expected):
    from edgetl.training.stage import phase_end
    from edgetl.training.state import EarlyStopping

    early = EarlyStopping(bad=bad, beat_best=beat)
    assert phase_end(epoch, planned=4, early=early, patience=2, probe=1) == expected
    assert phase_end(epoch, planned=4, early=early, patience=2, probe=0) != "no gain"  # the first phase: no probe


def test_a_deeper_phase_that_does_not_beat_best_pt_ends_after_its_probe_epochs(tiny, tmp_path):
    """Recomputed from metrics.jsonl with the rule for "best": every phase after the first either beat the run's
    best within its first epoch or ended there, and train.json and the table say why each phase ended."""
    from edgetl.recipe import load_recipe
    from edgetl.training.state import better

    data, recipe_path = tiny
    recipe = load_recipe(str(recipe_path), overrides={"data": str(data), "probe_epochs": 1})
    summary = train_run(recipe, run_dir=tmp_path / "run", device="cpu")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = (metrics[0]["val_acc"], metrics[0]["val_loss"])
    for phase in recipe.phases:
        rows = [m for m in metrics if m["phase"] == phase.name]
        beat_at_first = better(rows[0]["val_acc"], rows[0]["val_loss"], than_acc=best[0], than_loss=best[1])
        if phase is not recipe.phases[0] and not beat_at_first:
            assert len(rows) == 1 and rows[-1]["ended"] == "no gain", phase.name
        for m in rows:
            if better(m["val_acc"], m["val_loss"], than_acc=best[0], than_loss=best[1]):
                best = (m["val_acc"], m["val_loss"])
        assert rows[-1]["ended"] in ("planned", "no gain") and all("ended" not in m for m in rows[:-1])
    ended = {p.name: p.ended for p in summary.phases}
    assert ended["head"] == "all its epochs" and set(ended.values()) <= {"all its epochs",
                                                                         "not better than best.pt after 1 epoch(s)"}
