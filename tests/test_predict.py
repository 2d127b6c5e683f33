"""`edgetl predict`: an exported file and its manifest alone classify images, the file's sha256 checked first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchvision.transforms import v2
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.errors import DataError, RunDirError
from edgetl.export.stage import export_run
from edgetl.files import write_json
from edgetl.model.checkpoint import load_model
from edgetl.predict import find_export, predict
from edgetl.preprocessing import preprocess_batch
from edgetl.rundir import read_json
from edgetl.testing import make_run

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A fake run exported to TorchScript only (seconds faster than ONNX; predict takes any runnable format)."""
    run = make_run(tmp_path_factory.mktemp("predict"), backbone="mobilenet_v3_small", image_size=32)
    export_run(run, formats=("torchscript",))
    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 48), (64, 36), (33, 33)]):
        path = root / f"photo_{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def run(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / exported.name))


def test_predict_unknown_run_and_bad_image(exported, tmp_path):
    run = exported
    result = runner.invoke(app, ["predict", str(tmp_path), "x.jpg"])
    assert result.exit_code == 2 and "edgetl export" in result.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(run), str(bad)])
    assert result.exit_code == 2 and "bad.jpg" in result.output


def test_predictions_are_the_checkpoints_own_on_the_same_input(exported, photos):
    predictions = predict(exported, photos, top_k=2)
    model, ckpt = load_model(exported / "checkpoints" / "best.pt")
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(preprocess_batch(photos, ckpt["preprocessing"]))), 1).numpy()
    assert [p.image for p in predictions] == [str(p) for p in photos]
    for p, want in zip(predictions, probs):
        order = np.argsort(-want)
        assert p.index == order[0] and p.label == ckpt["labels"][order[0]]
        assert [label for label, _ in p.top] == [ckpt["labels"][i] for i in order[:2]]
        np.testing.assert_allclose([q for _, q in p.top], want[order[:2]], atol=1e-5, err_msg=p.image)
        assert p.probability == p.top[0][1]
    assert len(predict(exported / "export", photos[:1], top_k=99)[0].top) == 3  # top-k capped at the classes


def test_a_fixed_batch_export_classifies_images_one_at_a_time(tmp_path, exported, photos):
    run = Path(shutil.copytree(exported, tmp_path / "fixed"))
    export_run(run, formats=("torchscript",), batch=2)
    assert read_json(run / "export" / "manifest.json")["input"]["shape"][0] == 2
    fixed = predict(run, photos, top_k=3)
    dynamic = predict(exported, photos, top_k=3)
    for a, b in zip(fixed, dynamic):
        assert a.label == b.label
        np.testing.assert_allclose([q for _, q in a.top], [q for _, q in b.top], atol=1e-6, err_msg=a.image)


def test_a_file_changed_after_export_is_refused_naming_it(run, photos):
    path = run / "export" / "model.torchscript.pt"
    with path.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(RunDirError) as err:
        predict(run, photos[:1])
    message = str(err.value)
    assert message.startswith(f"{path}: sha256 ") and "does not match the manifest" in message
    assert "re-export it" in message and err.value.exit_code == 2  # a damaged export: bad input, not a bar
    result = runner.invoke(app, ["predict", str(run), str(photos[0])])
    assert result.exit_code == 2 and "model.torchscript.pt" in result.output


def test_an_image_that_is_not_an_image_is_a_one_line_data_error(exported, photos, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("these are my notes\nsecond line\n")
    with pytest.raises(DataError) as err:
        predict(exported, [photos[0], bad])
    assert str(err.value).startswith(f"cannot read image {bad}: ") and "\n" not in str(err.value)
    with pytest.raises(DataError, match="no image given"):
        predict(exported, [])


def test_a_missing_or_unrunnable_artifact_is_a_run_dir_error(run, photos):
    assert find_export(run) == run / "export" and find_export(run / "export") == run / "export"
    manifest = read_json(run / "export" / "manifest.json")
    write_json(run / "export" / "manifest.json", {**manifest, "artifacts": [
        {**a, "format": "tflite", "file": "model.tflite"} for a in manifest["artifacts"]]})
    with pytest.raises(RunDirError, match="lists no file edgetl can run"):
        predict(run, photos[:1])
    write_json(run / "export" / "manifest.json", manifest)
    (run / "export" / "model.torchscript.pt").unlink()
    with pytest.raises(RunDirError, match="model.torchscript.pt is listed in the manifest but missing"):
        predict(run, photos[:1])


def test_predict_matches_pytorch_on_real_photos(tmp_path):
    """Fine-tune the lite0 quickstart a few steps, export, and classify photos shipped by scikit-image."""
    from edgetl.data.sample import make_image_folder

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
