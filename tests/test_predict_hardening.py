"""`edgetl predict` on hostile inputs: an unusable image is named with its reason while the others are still
classified (exit 2), images run in bounded batches in order, and a model file whose meaning is not the
manifest's, or that its runtime refuses, is one line (exit 2), never a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.export import export_run
from edgetl.formats import FORMATS
from edgetl.predict import PREDICT_BATCH, Failure, Prediction, predict_images
from edgetl.preprocessing import preprocess_batch
from edgetl.testing import edit_manifest, rehash


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output, result.output
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(70):
        path = root / f"photo_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (int(rng.integers(33, 60)), 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    def timeout(signum, frame):
        raise TimeoutError("predict blocked on an image")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)




def test_unusable_images_are_named_and_the_others_still_classified(exported_both, photos, tmp_path, no_hang):
    fifo, missing, folder = tmp_path / "pipe.png", tmp_path / "missing.png", tmp_path / "folder.png"
    os.mkfifo(fifo)
    folder.mkdir()
    images = [photos[0], fifo, photos[1], missing, folder, photos[2]]
    reasons = {fifo: "not a regular file", missing: "file not found", folder: "not a regular file"}

    result = invoke("predict", exported_both, *images)
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"error: cannot read image {bad}: {reasons[bad]}" for bad in (fifo, missing, folder)]
    for good in photos[:3]:
        assert good.name in result.stdout

    result = invoke("predict", exported_both, *images, "--json")
    assert result.exit_code == 2 and len(error_lines(result)) == 3
    rows = json.loads(result.stdout)
    assert [row["image"] for row in rows] == [str(p) for p in images]
    for row, image in zip(rows, images):
        if image in reasons:
            assert row == {"image": str(image), "error": reasons[image]}
        else:
            assert set(row) == {"image", "label", "index", "probability", "top"}


def test_every_image_unusable_is_still_one_line_each_and_exit_2(exported_both, tmp_path):
    bad = [tmp_path / "a.png", tmp_path / "b.jpg"]
    bad[1].write_text("not an image")
    result = invoke("predict", exported_both, *bad)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 2 and "a.png: file not found" in lines[0] and "b.jpg: not an image" in lines[1], lines


def counting(monkeypatch, name: str) -> list[int]:
    """Record the batch size of every call to format `name`'s runner."""
    calls: list[int] = []
    fmt = FORMATS[name]

    def load(path, *, threads=None):
        runner = fmt.load(path, threads=threads)
        inner = runner.run

        def run(x):
            calls.append(len(x))
            return inner(x)

        return dataclasses.replace(runner, run=run)

    monkeypatch.setitem(FORMATS, name, dataclasses.replace(fmt, load=load))
    return calls


def test_images_run_in_bounded_batches_in_order(exported_both, photos, monkeypatch):
    calls = counting(monkeypatch, "onnx")
    result = predict_images(exported_both, photos, top_k=1)
    assert calls == [PREDICT_BATCH, PREDICT_BATCH, len(photos) - 2 * PREDICT_BATCH]
    assert [r.image for r in result.rows] == [str(p) for p in photos] and not result.failures
    runner = FORMATS["onnx"].load(exported_both / "export" / "model.onnx")
    manifest = json.loads((exported_both / "export" / "manifest.json").read_text())
    want = runner(preprocess_batch(photos, manifest["preprocessing"])).argmax(1)
    assert [r.index for r in result.rows] == want.tolist()


def test_a_fixed_batch_export_runs_its_own_batch_padded(exported_both, photos, tmp_path, monkeypatch):
    run = shutil.copytree(exported_both, tmp_path / "fixed")
    export_run(run, formats=["torchscript"], batch=4)
    images = [*photos[:5], tmp_path / "missing.png", *photos[5:9]]
    calls = counting(monkeypatch, "torchscript")
    fixed = predict_images(run, images, top_k=3)
    assert calls == [4, 4, 4]  # 9 good images in chunks of 4: 4, 3 + 1 padded, 2 padded
    assert fixed.failures == [Failure(str(images[5]), "file not found")]
    dynamic = predict_images(exported_both, images, top_k=3)
    for a, b in zip(fixed.rows, dynamic.rows):
        assert type(a) is type(b) and a.image == b.image
        if isinstance(a, Prediction):
            assert a.label == b.label
            np.testing.assert_allclose([q for _, q in a.top], [q for _, q in b.top], atol=1e-5, err_msg=a.image)


def test_a_manifest_with_more_labels_than_the_model_has_outputs_is_one_line(exported_both_copy, photos):
    edit_manifest(exported_both_copy, lambda m: m.update(labels=[*m["labels"], "extra"]))
    result = invoke("predict", exported_both_copy, photos[0])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert "model.onnx: the model has 3 outputs but the manifest lists 4 labels" in line and "re-export" in line


def test_torchscript_without_metadata_is_checked_on_its_logits(exported_both_copy, photos):
    """TorchScript declares no output shape, and a file from an older edgetl embeds no labels: the first
    batch's logits still catch a manifest that does not fit the model."""
    path = exported_both_copy / "export" / "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.load(str(path)), str(path))
    rehash(exported_both_copy, "model.torchscript.pt")
    edit_manifest(exported_both_copy, lambda m: m.update(labels=m["labels"][:2],
                                               artifacts=[a for a in m["artifacts"] if a["format"] == "torchscript"]))
    result = invoke("predict", exported_both_copy, photos[0])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert "model.torchscript.pt: the model has 3 outputs but the manifest lists 2 labels" in line


def test_labels_the_file_does_not_embed_are_one_line(exported_both_copy, photos):
    edit_manifest(exported_both_copy, lambda m: m.update(labels=m["labels"][::-1]))
    result = invoke("predict", exported_both_copy, photos[0])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert "model.onnx: the labels embedded in the file differ from the manifest's" in line and "re-export" in line


def test_a_corrupted_onnx_file_with_a_matching_sha256_is_one_line(exported_both_copy, photos):
    path = exported_both_copy / "export" / "model.onnx"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]) + b"\xff" * 64)
    rehash(exported_both_copy, "model.onnx")
    result = invoke("predict", exported_both_copy, photos[0])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert f"{path}: onnxruntime (CPU) cannot load it" in line and "re-export it" in line, line
