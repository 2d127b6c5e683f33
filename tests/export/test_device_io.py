"""Files a device runs without guessing (issue 27): uint8 NHWC crops in, probabilities out, verified like the rest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.formats import FORMATS
from edgetl.formats.device_io import device_model, from_device_input, softmax, to_device_input
from edgetl.preprocessing import Preprocessing

runner = CliRunner()
FAST = ["--latency-seconds", "0.01", "--threads", "1"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_uint8_crops_round_trip_exactly_through_the_normalized_floats():
    images = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    x = from_device_input(images, mean=MEAN, std=STD)
    assert x.shape == (4, 3, 9, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(to_device_input(x, mean=MEAN, std=STD), images)


def test_the_device_model_normalizes_as_torchvision_does_and_ends_in_a_softmax():
    from torchvision.transforms import v2

    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    expected_x = v2.Normalize(MEAN, STD)(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        logits = inner(expected_x)
        wrapped = device_model(inner, mean=MEAN, std=STD, uint8_input=True, probs=True)
        probs = wrapped(torch.from_numpy(images))
    np.testing.assert_allclose(probs.numpy(), softmax(logits.numpy()), atol=1e-6)


@pytest.fixture(scope="module")
def device_run(straight, tmp_path_factory):
    """The tiny trained run exported for a device: ONNX fp32 + int8 and TorchScript, uint8 in, probabilities out."""
    _, run = straight
    run = shutil.copytree(run, tmp_path_factory.mktemp("device") / "run")
    result = runner.invoke(app, ["export", str(run), "--input", "uint8", "--output", "probs", "-f", "onnx",
                                 "-f", "torchscript", "-p", "fp32", "-p", "int8"])
    assert result.exit_code == 0, result.output
    return run


def test_every_file_takes_uint8_nhwc_crops_and_gives_probabilities(device_run):
    manifest = json.loads((device_run / "export" / "manifest.json").read_text())
    crop = manifest["preprocessing"]["crop_size"]
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["shape"][1:] == [crop, crop, 3]
    assert manifest["output"]["name"] == "probs"
    for name in ("model.onnx", "model.int8.onnx"):  # inspected as a device's runtime sees it
        graph = onnx.load(str(device_run / "export" / name)).graph
        dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 and dims[1:] == [crop, crop, 3]
        assert graph.output[0].name == "probs"
    crops = np.random.default_rng(2).integers(0, 256, (3, crop, crop, 3), dtype=np.uint8)
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt"), ("onnx", "model.int8.onnx")):
        loaded = FORMATS[fmt].open(device_run / "export" / name)
        assert (loaded.takes, loaded.gives) == ("uint8", "probs")
        probs = loaded(crops)  # the device's own crops, straight in
        assert probs.shape == (3, len(manifest["labels"]))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_the_int8_guard_counts_the_models_layers_not_the_device_files_own_float_ops(device_run):
    from edgetl.cli.tables import _guard

    manifest = json.loads((device_run / "export" / "manifest.json").read_text())
    quantization = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")["quantization"]
    guard = quantization["guard"]
    softmax = [n.name for n in onnx.load(str(device_run / "export" / "model.int8.onnx")).graph.node
               if n.op_type == "Softmax"]
    assert softmax and set(softmax) <= set(guard["wrapper_nodes"])  # the image's float ops and the softmax
    assert not set(guard["wrapper_nodes"]) & set(guard["excluded_nodes"])
    assert quantization["excluded_nodes"] == guard["wrapper_nodes"] + guard["excluded_nodes"]  # all the file keeps
    if guard["passed"] and guard["kept_round"] == 0:  # the first round keeps the stem and classifier float, only
        assert len(guard["excluded_nodes"]) <= 3
    assert _guard(quantization).endswith(f", {len(guard['excluded_nodes'])} node(s) float")


def test_the_fp32_device_file_matches_the_checkpoint_fed_the_same_crops(device_run):
    from edgetl.model.checkpoint import load_model

    model, _ = load_model(device_run / "checkpoints" / "best.pt")
    manifest = json.loads((device_run / "export" / "manifest.json").read_text())
    prep = Preprocessing.coerce(manifest["preprocessing"])
    crops = np.random.default_rng(3).integers(0, 256, (4, prep.crop_size, prep.crop_size, 3), dtype=np.uint8)
    with torch.no_grad():
        reference = softmax(model.eval()(torch.from_numpy(from_device_input(crops, mean=prep.mean, std=prep.std)))
                            .numpy())
    got = FORMATS["onnx"].load(device_run / "export" / "model.onnx")(crops)  # the raw file, no adapter
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_verify_passes_the_device_files_and_predict_reads_their_probabilities(device_run, tmp_path):
    run = shutil.copytree(device_run, tmp_path / "run")
    result = runner.invoke(app, ["verify", str(run), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "verify.json").read_text())
    assert {"model.onnx", "model.int8.onnx", "model.torchscript.pt"} <= set(report["parity"])
    assert report["parity"]["model.onnx"]["top1_agreement"] == 1.0
    from PIL import Image

    from edgetl.predict import predict

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    [row] = predict(run, [photo], top_k=10, precision="fp32", fmt="onnx")
    checked = predict(run, [photo], top_k=10, fmt="torchscript")[0]
    probabilities = [p for _, p in row.top]
    # probabilities as the file gave them (no second softmax, which would flatten them towards uniform)
    assert abs(sum(probabilities) - 1.0) < 1e-4 and row.probability == max(probabilities)
    assert checked.label == row.label and abs(checked.probability - row.probability) < 1e-4


def test_a_file_relabelled_float_fails_verify(device_run, tmp_path):
    run = shutil.copytree(device_run, tmp_path / "run")
    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "input_type": "float"})
    onnx.save_model(model, str(path))
    manifest_path = run / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    from edgetl.files import sha256_file

    for artifact in manifest["artifacts"]:
        if artifact["file"] == "model.onnx":
            artifact["sha256"], artifact["bytes"] = sha256_file(path), path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(run), *FAST])
    assert result.exit_code == 1 and "embedded input type" in result.output


def test_golden_vectors_reproduce_in_a_plain_onnxruntime_session(device_run):
    import onnxruntime as ort

    export = device_run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    golden = manifest["golden"]
    crops = np.load(export / golden["inputs"]["file"])
    assert crops.dtype == np.uint8 and crops.shape[1:] == (32, 32, 3) and len(crops) >= 1
    for entry in golden["outputs"]:
        if not entry["of"].endswith(".onnx"):
            continue
        session = ort.InferenceSession(str(export / entry["of"]), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: crops})[0]  # what a device-side test does
        expected = np.load(export / entry["file"])
        assert np.abs(got - expected).max() <= entry["atol"]
        assert (got.argmax(1) == expected.argmax(1)).all()
    # the tolerances the README states: fp32 1e-4, INT8 5 % of the output scale (probabilities: scale 1)
    atol = {e["of"]: e["atol"] for e in golden["outputs"]}
    assert atol["model.onnx"] == pytest.approx(1e-4) and atol["model.int8.onnx"] == pytest.approx(0.05)
    assert {e["of"] for e in golden["outputs"]} == {a["file"] for a in manifest["artifacts"]}


def test_a_golden_output_that_no_longer_matches_its_file_fails_verify(device_run, tmp_path):
    from edgetl.files import sha256_file

    run = shutil.copytree(device_run, tmp_path / "run")
    export = run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    entry = next(e for e in manifest["golden"]["outputs"] if e["of"] == "model.onnx")
    path = export / entry["file"]
    expected = np.load(path)
    np.save(path, expected[:, ::-1].copy())  # another class on top: consistent hashes, wrong vectors
    entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    (export / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(run), *FAST])
    assert result.exit_code == 1 and "golden" in result.output


def test_a_tampered_golden_file_fails_integrity(device_run, tmp_path):
    run = shutil.copytree(device_run, tmp_path / "run")
    with (run / "export" / "golden-inputs.npy").open("ab") as f:
        f.write(b"\0")
    result = runner.invoke(app, ["verify", str(run), *FAST])
    assert result.exit_code == 1 and "golden-inputs.npy" in result.output


def test_the_python_snippet_runs_and_reproduces_the_golden_vectors_and_predict(device_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from edgetl.predict import predict

    export = device_run / "export"
    assert (export / "device_predict.py").is_file()
    checked = subprocess.run([sys.executable, "device_predict.py", "--golden"], cwd=export, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0 and "top-1 same" in checked.stdout, checked.stdout + checked.stderr
    photo = tmp_path / "photo.jpg"  # a phone photo: stored sideways, EXIF says rotate 90° (orientation 6)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(photo, exif=exif)
    shown = subprocess.run([sys.executable, "device_predict.py", str(photo)], cwd=export, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    [row] = predict(device_run, [photo], top_k=1, fmt="onnx", precision="fp32")
    first = shown.stdout.split(": ", 1)[1].split(", ")[0]  # "label 0.412"
    label, probability = first.rsplit(" ", 1)
    assert label == row.label and abs(float(probability) - row.probability) < 1e-3
    # and the very pixels: the snippet's crop is the one edgetl's preprocessing makes (EXIF rotation applied)
    from edgetl.preprocessing import preprocess_image

    code = "import sys, numpy as np, device_predict as d; np.save(sys.argv[1], d.crop(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "crop.npy"), str(photo)], cwd=export, check=True,
                   timeout=120)
    prep = json.loads((export / "manifest.json").read_text())["preprocessing"]
    want = to_device_input(preprocess_image(photo, prep)[None], mean=prep["mean"], std=prep["std"])[0]
    np.testing.assert_array_equal(np.load(tmp_path / "crop.npy"), want)


def test_the_cpp_snippet_embeds_the_manifests_numbers(device_run):
    export = device_run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    prep = manifest["preprocessing"]
    text = (export / "device_predict.cpp").read_text()
    assert f"kCropSize = {prep['crop_size']};" in text and f"kResizeSize = {prep['resize_size']};" in text
    assert f"kClasses = {len(manifest['labels'])};" in text
    assert "kUint8Input = true;" in text and "kProbsOutput = true;" in text
    assert "{1, kCropSize, kCropSize, 3}" in text  # NHWC for the uint8 input
    mean = [float(v.rstrip("f")) for v in text.split("kMean = {")[1].split("}")[0].split(", ")]
    assert np.allclose(mean, prep["mean"], atol=1e-6)
    assert f'kInputName = "{manifest["input"]["name"]}"' in text and 'kOutputName = "probs"' in text
    listed = {s["file"] for s in manifest["snippets"]}
    assert listed == {"device_predict.py", "device_predict.cpp"}


def test_executorch_and_litert_files_take_uint8_nhwc_too_and_pass_verify(straight, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    _, run = straight
    run = shutil.copytree(run, tmp_path / "run")
    result = runner.invoke(app, ["export", str(run), "--input", "uint8", "--output", "probs", "-f", "executorch",
                                 "-f", "litert"])
    assert result.exit_code == 0, result.output
    crop = json.loads((run / "export" / "manifest.json").read_text())["preprocessing"]["crop_size"]
    interpreter = Interpreter(model_path=str(run / "export" / "model.tflite"))
    [image], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    assert image["dtype"] == np.uint8 and list(image["shape"][1:]) == [crop, crop, 3] and "probs" in out["name"]
    pte = FORMATS["executorch"].open(run / "export" / "model.pte")
    assert pte.inputs[0].dtype == "uint8" and pte.inputs[0].shape[1:] == [crop, crop, 3]
    verified = runner.invoke(app, ["verify", str(run), *FAST])
    assert verified.exit_code == 0, verified.output
    report = json.loads((run / "verify.json").read_text())
    assert set(report["golden"]) == {"model.pte", "model.tflite"}


def test_verify_feeds_a_uint8_file_and_the_checkpoint_the_same_pixels_noise_included():
    from edgetl.data.inputs import Inputs
    from edgetl.verify.stage import _on_uint8_grid

    prep = Preprocessing(crop_size=8, resize_size=9, mean=MEAN, std=STD)
    real = from_device_input(np.random.default_rng(6).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), mean=MEAN,
                             std=STD)
    noise = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3  # beyond the pixel range
    inputs = Inputs(x=np.concatenate([real, noise]), targets=np.array([0, 1, -1, -1]), info={"images": 2})
    snapped = _on_uint8_grid(inputs, prep).x
    np.testing.assert_array_equal(snapped[:2], real)  # photos are uint8 crops already: untouched
    assert np.abs(snapped[2:] - noise).max() > 0.1  # noise was not: now it is an image a device could hold
    crops = to_device_input(snapped, mean=MEAN, std=STD)
    np.testing.assert_allclose(from_device_input(crops, mean=MEAN, std=STD), snapped, atol=1e-6)
