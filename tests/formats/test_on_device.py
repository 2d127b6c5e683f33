"""ExecuTorch `.pte` and LiteRT `.tflite` (issue 13): exported fp32 and int8, described in the manifest and in the
files, verified in their own runtimes, run by predict; a missing extra is one line naming the pip command.

One export is shared by the module (lowering costs ~5-20 s a file): a ResNet-18 run at 32 px with real-magnitude
logits and generated train/val images, ResNet-18 because its graph is the smallest of the backbones to lower.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.data.sample import make_image_folder
from edgetl.errors import EdgetlError
from edgetl.export import export_run
from edgetl.export.precision import QuantPlan
from edgetl.formats import FORMATS
from edgetl.rundir import read_manifest
from edgetl.testing import make_run

ON_DEVICE = ("executorch", "litert")
FAST = ["--latency-seconds", "0.02", "--threads", "1", "--samples", "8"]
PLAN = QuantPlan(calibration_images=8, guard_images=12, activations="uint8")


def installed(name: str) -> bool:
    return FORMATS[name].missing() is None


def needs(name: str) -> None:
    """Skip, saying why, only when the format's optional extra is not installed."""
    if not installed(name):
        pytest.skip(f"{FORMATS[name].missing()} (make test installs it)")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def on_device(tmp_path_factory, test_seed):
    """A run exported as ONNX, ExecuTorch and LiteRT (whichever extras are here), fp32 and int8."""
    root = tmp_path_factory.mktemp("on-device")
    data = make_image_folder(root / "data", classes=["class_0", "class_1", "class_2"], per_class=8, size=40,
                             seed=test_seed, val_per_class=4)
    run = make_run(root, backbone="resnet18", image_size=32, data=data, seed=test_seed)
    formats = ["onnx", *(name for name in ON_DEVICE if installed(name))]
    export_run(run, formats=formats, precisions=["fp32", "int8"], plan=PLAN)
    return run


@pytest.fixture
def on_device_copy(on_device, tmp_path):
    return shutil.copytree(on_device, tmp_path / "run")


@pytest.mark.parametrize("name", ON_DEVICE)
def test_each_file_is_listed_with_format_precision_runtime_version_hash_and_its_own_tensors(on_device, name):
    needs(name)
    fmt = FORMATS[name]
    manifest = read_manifest(on_device / "export" / "manifest.json")
    entries = {a.precision: a for a in manifest.artifacts if a.format == name}
    assert [entries[p].file for p in ("fp32", "int8")] == [fmt.file, fmt.file_for("int8")]
    for entry in entries.values():
        assert entry.runtime == fmt.runtime and entry.versions == fmt.versions() and None not in entry.versions.values()
        assert len(entry.sha256) == 64 and entry.bytes == (on_device / "export" / entry.file).stat().st_size
        # The export's batch axis is dynamic; these files take one image at a time, and say so.
        assert manifest.input.shape[0] == "batch"
        assert entry.input.shape == [1, 3, 32, 32] and entry.output.shape == [1, 3]
    fp32, int8 = entries["fp32"], entries["int8"]
    assert fp32.input.dtype == "float32" and int8.bytes < 0.35 * fp32.bytes
    onnx_int8 = next(a for a in manifest.artifacts if a.file == "model.int8.onnx")
    # The same train images calibrate every format's INT8 file.
    assert int8.quantization["calibration"] == {**onnx_int8.quantization["calibration"], "method": "histogram"}
    assert int8.quantization["calibration"]["part"] == "train" and int8.quantization["activations"] == "int8"
    assert int8.quantization["guard"]["passed"] is True


def test_the_pte_reports_how_much_of_the_graph_xnnpack_runs(on_device):
    needs("executorch")
    manifest = read_manifest(on_device / "export" / "manifest.json")
    for file in ("model.pte", "model.int8.pte"):
        delegation = manifest.artifact(file).delegation
        assert delegation["delegate"] == "XNNPACK" and delegation["subgraphs"] >= 1
        assert delegation["share"] == 1.0 and delegation["non_delegated_ops"] == {}  # ResNet-18: all of it


def test_the_full_integer_tflite_takes_int8_and_the_manifest_gives_its_scale(on_device):
    needs("litert")
    entry = read_manifest(on_device / "export" / "manifest.json").artifact("model.int8.tflite")
    assert entry.input.dtype == entry.output.dtype == "int8"
    assert entry.input.scale > 0 and -128 <= entry.input.zero_point <= 127
    runner = FORMATS["litert"].load(on_device / "export" / "model.int8.tflite", threads=1)
    assert (runner.inputs[0].scale, runner.inputs[0].zero_point) == (entry.input.scale, entry.input.zero_point)


@pytest.mark.parametrize("name", ON_DEVICE)
def test_each_file_describes_itself(on_device, name):
    needs(name)
    fmt = FORMATS[name]
    manifest = read_manifest(on_device / "export" / "manifest.json")
    for precision in ("fp32", "int8"):
        embedded = fmt.read_meta(on_device / "export" / fmt.file_for(precision))
        assert embedded["labels"] == manifest.labels and embedded["precision"] == precision
        assert embedded["preprocessing"] == manifest.preprocessing.to_dict()


def test_verify_runs_each_file_in_its_own_runtime_against_its_precisions_bars(on_device_copy):
    present = [name for name in ON_DEVICE if installed(name)]
    if not present:
        pytest.skip("neither edgetl[executorch] nor edgetl[litert] is installed (make test installs them)")
    # The stand-in's head is fitted to these images (make_run with data), so each file is held to its own
    # precision's bars, never to how another runtime happened to round a near-tie.
    result = invoke("verify", on_device_copy, *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((on_device_copy / "verify.json").read_text())
    for name in present:
        fp32, int8 = FORMATS[name].file, FORMATS[name].file_for("int8")
        assert report["parity"][fp32]["max_abs_diff"] <= report["parity"][fp32]["atol_bar"]
        assert report["parity"][fp32]["top1_agreement"] == 1.0
        assert report["parity"][int8]["top1_agreement"] >= report["bars"]["parity"][int8]["min_top1"]
        measures = {(c["artifact"], c["measure"]) for c in report["checks"]}
        assert (int8, "accuracy drop") in measures and (fp32, "max abs diff") in measures
        assert {r["file"] for r in report["latency"] if r["runtime"] == name} == {fp32, int8}
        assert int8 in {r["file"] for r in report["go_no_go"]}
        assert report["versions"][FORMATS[name].packages[0]]


@pytest.mark.parametrize("name", ON_DEVICE)
def test_predict_runs_the_format_asked_for_with_the_onnx_files_answer(on_device, name):
    needs(name)
    images = sorted((on_device.parent / "data" / "val").rglob("*.png"))[:3]
    answers = {}
    for fmt in ("onnx", name):
        result = invoke("predict", on_device, *images, "--format", fmt, "--json")
        assert result.exit_code == 0, result.output
        answers[fmt] = [(row["label"], round(row["probability"], 3)) for row in json.loads(result.output)]
    assert answers[name] == answers["onnx"]


def test_a_misstated_scale_in_the_manifest_fails_verify(on_device_copy):
    needs("litert")
    path = on_device_copy / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.tflite")
    entry["input"]["scale"] *= 2  # a device would feed it wrongly quantized pixels
    path.write_text(json.dumps(manifest))
    result = invoke("verify", on_device_copy, *FAST)
    assert result.exit_code == 1 and "model.int8.tflite: input scale, zero point" in result.output


@pytest.mark.parametrize("name", ON_DEVICE)
def test_without_its_extra_export_says_the_pip_command_in_one_line(fake_run, monkeypatch, name):
    absent = dataclasses.replace(FORMATS[name], requires=("edgetl_no_such_module",))
    monkeypatch.setitem(FORMATS, name, absent)
    result = invoke("export", fake_run(), "--format", name)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --format {name} needs edgetl_no_such_module, which is not installed — pip install "
        f"'edgetl[{FORMATS[name].extra}]'"]


def test_a_runtime_that_is_not_installed_is_named_with_its_pip_command():
    from edgetl.formats.base import require

    with pytest.raises(EdgetlError, match=r"^litert needs edgetl_no_such_module, which is not installed — "
                                          r"pip install 'edgetl\[litert\]'$"):
        require("litert", "litert", "edgetl_no_such_module")


def test_the_recipe_export_table_names_the_formats_and_a_bad_one_is_refused_before_any_work(fake_run):
    from edgetl.pipeline import ExportRequest, check_export_flags
    from edgetl.recipe import ExportSection

    section = ExportSection(formats=["onnx", "executorch"])
    assert ExportRequest().formats_for(section) == ("onnx", "executorch")
    assert ExportRequest(formats=("litert",)).formats_for(section) == ("litert",)  # flags win
    assert ExportRequest().formats_for(None) == ("onnx", "torchscript")  # the core formats: no extra needed
    with pytest.raises(EdgetlError, match="unknown export format 'tflite'.*did you mean 'litert'"):
        check_export_flags(ExportRequest(), ExportSection(formats=["onnx", "tflite"]))


@pytest.mark.parametrize("name", ON_DEVICE)
def test_a_fixed_batch_runner_takes_any_number_of_rows(on_device, name):
    needs(name)
    runner = FORMATS[name].load(on_device / "export" / FORMATS[name].file, threads=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    one_by_one = np.concatenate([runner(x[i:i + 1]) for i in range(3)])
    np.testing.assert_array_equal(runner(x), one_by_one, err_msg=f"{name}: looping over rows changed the logits")


def test_importing_the_registry_loads_no_runtime():
    import subprocess
    import sys

    code = ("import sys, edgetl.cli, edgetl.formats; "
            "print(sorted(m for m in ('torch', 'executorch', 'litert_torch', 'ai_edge_litert') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


READER = """
import json, sys
path = sys.argv[1]
try:  # TFLite Support's metadata reader; its native part needs libusb, so fall back to its generated schema
    from tensorflow_lite_support.metadata.python import metadata
    shown = metadata.MetadataDisplayer.with_model_file(path)
    print(json.dumps({"reader": "MetadataDisplayer", "metadata": json.loads(shown.get_metadata_json()),
                      "files": shown.get_packed_associated_file_list(),
                      "labels": shown.get_associated_file_buffer("labels.txt").decode()}))
except ImportError:
    import zipfile
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as md, schema_py_generated as fb
    data = open(path, "rb").read()
    model = fb.Model.GetRootAsModel(data, 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA")
    buffer = bytes(model.Buffers(entry.Buffer()).DataAsNumpy())
    assert md.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    sub = meta.subgraphMetadata[0]
    image, scores = sub.inputTensorMetadata[0], sub.outputTensorMetadata[0]
    norm = image.processUnits[0].options
    archive = zipfile.ZipFile(path)
    print(json.dumps({"reader": "schema", "metadata": {"subgraph_metadata": [{
        "input_tensor_metadata": [{"name": image.name.decode(),
            "content": {"content_properties_type": "ImageProperties" if image.content.contentPropertiesType == 2 else "?",
                        "content_properties": {"color_space": "RGB" if image.content.contentProperties.colorSpace == 1 else "?"}},
            "process_units": [{"options_type": "NormalizationOptions", "options": {"mean": [float(v) for v in norm.mean], "std": [float(v) for v in norm.std]}}]}],
        "output_tensor_metadata": [{"name": scores.name.decode(), "associated_files": [
            {"name": f.name.decode(), "type": "TENSOR_AXIS_LABELS" if f.type == 2 else "?"} for f in scores.associatedFiles]}]}]},
        "files": archive.namelist(), "labels": archive.read("labels.txt").decode()}))
"""


def test_the_tflite_carries_standard_metadata_the_tflite_support_reader_reads(on_device):
    """The normalization, the image input and the label file, read back by TFLite Support's own code (installed
    by `make test` into its own folder: it pins protobuf < 4)."""
    import subprocess
    import sys
    from pathlib import Path

    needs("litert")
    folder = Path(sys.prefix) / "tflite-support"
    if not folder.is_dir():
        pytest.skip(f"TFLite Support's metadata reader is not installed in {folder} (make test installs it)")
    manifest = read_manifest(on_device / "export" / "manifest.json")
    prep = manifest.preprocessing
    for file in ("model.tflite", "model.int8.tflite"):
        result = subprocess.run([sys.executable, "-c", READER, str(on_device / "export" / file)], capture_output=True,
                                text=True, env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"}, check=True)
        read = json.loads(result.stdout)
        subgraph = read["metadata"]["subgraph_metadata"][0]
        [image], [scores] = subgraph["input_tensor_metadata"], subgraph["output_tensor_metadata"]
        assert image["content"]["content_properties_type"] == "ImageProperties"
        assert image["content"]["content_properties"]["color_space"] == "RGB"
        [unit] = image["process_units"]
        assert unit["options_type"] == "NormalizationOptions"
        np.testing.assert_allclose(unit["options"]["mean"], [255 * m for m in prep.mean], rtol=1e-6)
        np.testing.assert_allclose(unit["options"]["std"], [255 * s for s in prep.std], rtol=1e-6)
        assert scores["associated_files"][0]["name"] == "labels.txt"
        assert scores["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
        assert read["files"] == ["labels.txt"] and read["labels"].splitlines() == manifest.labels
    # the appended label archive does not stop the interpreter from running the file
    runner = FORMATS["litert"].load(on_device / "export" / "model.tflite", threads=1)
    assert runner(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)
