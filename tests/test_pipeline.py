"""`edgetl run` end to end through the CLI, `--resume`, `info`, and `predict` against PyTorch on real photos."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchvision.transforms import v2
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.preprocessing import preprocess_batch
from edgetl.train.checkpoint import load_model

runner = CliRunner()
FAST_VERIFY = ["--latency-seconds", "0.05", "--samples", "8"]


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    data, recipe = tiny
    run = tmp_path_factory.mktemp("pipeline") / "run"
    result = runner.invoke(app, ["run", "--recipe", str(recipe), "--data", str(data), "--out", str(run), *FAST_VERIFY])
    assert result.exit_code == 0, result.output
    return run, result.output


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


def test_predict_unknown_run_and_bad_image(finished_run, tmp_path):
    run, _ = finished_run
    result = runner.invoke(app, ["predict", str(tmp_path), "x.jpg"])
    assert result.exit_code == 2 and "edgetl export" in result.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(run), str(bad)])
    assert result.exit_code == 2 and "bad.jpg" in result.output


def test_predict_matches_pytorch_on_real_photos(tmp_path):
    """Fine-tune the lite0 quickstart a few steps, export, and classify photos shipped by scikit-image."""
    from edgetl.train.sample import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=64, seed=1)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--epochs-scale", "0.25"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    photos = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=95)
        photos.append(path)
    result = runner.invoke(app, ["predict", str(run), *map(str, photos), "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)

    model, ckpt = load_model(run / "checkpoints" / "best.pt")
    p = ckpt["preprocessing"]
    # PyTorch with torchvision's own eval transform: the same labels
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(p["resize_size"], interpolation=v2.InterpolationMode(p["interpolation"]), antialias=True),
                            v2.CenterCrop(p["crop_size"]), v2.ToDtype(torch.float32, scale=True), v2.Normalize(p["mean"], p["std"])])
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([transform(Image.open(f).convert("RGB")) for f in photos])), 1).numpy()
        same_input = torch.softmax(model(torch.from_numpy(preprocess_batch(photos, p))), 1).numpy()
    for row, prob, exact in zip(predicted, probs, same_input):
        assert row["label"] == ckpt["labels"][int(prob.argmax())], row["image"]
        # on the very same input tensor, the ONNX file and PyTorch agree to float rounding
        np.testing.assert_allclose(row["probability"], exact.max(), atol=1e-5, err_msg=row["image"])
