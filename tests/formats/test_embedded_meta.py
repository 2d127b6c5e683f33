"""Every exported file describes itself (labels, preprocessing); `verify` fails a file whose description is not
the manifest's, and only warns about a file that has none (exported by an older edgetl)."""

from __future__ import annotations

import json
import warnings

import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.files import sha256_file
from edgetl.formats import FORMATS
from edgetl.testing import edit_manifest

FAST = ["--latency-seconds", "0.01", "--threads", "1", "--samples", "4"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def manifest_of(run) -> dict:
    return json.loads((run / "export" / "manifest.json").read_text())


def rehash(run, file):
    """The manifest's bytes and sha256 for `file` as it is now: only its meaning differs from the export."""
    manifest, path = manifest_of(run), run / "export" / file
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (run / "export" / "manifest.json").write_text(json.dumps(manifest))


def rewrite_onnx(run, change):
    """Re-save model.onnx with `change` applied to its metadata_props (a dict of strings)."""
    path = run / "export" / "model.onnx"
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    change(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(path))
    rehash(run, "model.onnx")


def rewrite_torchscript(run, text):
    """Re-save model.torchscript.pt with `text(described)` as its edgetl.json (None: no extra file at all)."""
    path = run / "export" / "model.torchscript.pt"
    extra = {"edgetl.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), _extra_files=extra)
        new = text(json.loads(extra["edgetl.json"]))
        torch.jit.save(module, str(path), _extra_files={} if new is None else {"edgetl.json": new})
    rehash(run, "model.torchscript.pt")


def embedded_checks(run) -> dict[tuple[str, str], bool]:
    report = json.loads((run / "verify.json").read_text())
    return {(c["artifact"], c["measure"]): c["passed"] for c in report["checks"] if c["measure"].startswith("embedded")}


def test_every_format_reads_back_the_manifests_labels_and_preprocessing(exported_both):
    manifest = manifest_of(exported_both)
    for artifact in manifest["artifacts"]:
        meta = FORMATS[artifact["format"]].read_meta(exported_both / "export" / artifact["file"])
        assert meta["labels"] == manifest["labels"], artifact["file"]
        assert meta["preprocessing"] == manifest["preprocessing"], artifact["file"]
        assert meta["backbone"] == "mobilenet_v3_small"


def test_a_correct_export_passes_the_embedded_checks(exported_both_copy):
    result = invoke("verify", exported_both_copy, *FAST)
    assert result.exit_code == 0, result.output
    assert embedded_checks(exported_both_copy) == {(f, m): True for f in ("model.onnx", "model.torchscript.pt")
                                         for m in ("embedded labels", "embedded preprocessing", "embedded precision",
                                                   "embedded input type", "embedded output type")}


def swap_first_two(labels: list[str]) -> list[str]:
    return [labels[1], labels[0], *labels[2:]]


@pytest.mark.parametrize("change, measure", [
    (lambda p: p.update(labels=json.dumps(swap_first_two(json.loads(p["labels"])))), "embedded labels"),
    (lambda p: p.update(preprocessing=json.dumps({**json.loads(p["preprocessing"]), "mean": [0.5] * 3})),
     "embedded preprocessing"),
    (lambda p: p.update(labels="[not json"), "embedded labels"),  # unparseable: a mismatch, not a crash
])
def test_verify_fails_an_onnx_file_whose_metadata_is_not_the_manifests(exported_both_copy, change, measure):
    rewrite_onnx(exported_both_copy, change)
    result = invoke("verify", exported_both_copy, *FAST)
    assert result.exit_code == 1, result.output
    assert f"model.onnx: {measure}" in result.output and "Traceback" not in result.output
    assert embedded_checks(exported_both_copy)[("model.onnx", measure)] is False


@pytest.mark.parametrize("text, measure", [
    (lambda d: json.dumps({**d, "labels": swap_first_two(d["labels"])}), "embedded labels"),
    (lambda d: json.dumps({**d, "preprocessing": {**d["preprocessing"], "crop_size": 64}}), "embedded preprocessing"),
    (lambda d: "{not json", "embedded labels"),
])
def test_verify_fails_a_torchscript_file_whose_metadata_is_not_the_manifests(exported_both_copy, text, measure):
    rewrite_torchscript(exported_both_copy, text)
    result = invoke("verify", exported_both_copy, *FAST)
    assert result.exit_code == 1, result.output
    assert f"model.torchscript.pt: {measure}" in result.output and "Traceback" not in result.output
    assert embedded_checks(exported_both_copy)[("model.torchscript.pt", measure)] is False


def test_a_file_stripped_of_its_metadata_fails(exported_both_copy):
    rewrite_onnx(exported_both_copy, lambda p: p.clear())
    assert FORMATS["onnx"].read_meta(exported_both_copy / "export" / "model.onnx") is None
    result = invoke("verify", exported_both_copy, *FAST)
    assert result.exit_code == 1, result.output
    assert "model.onnx: embedded labels and preprocessing 'missing'" in result.output, result.output


def test_a_file_without_metadata_from_an_older_export_is_a_warning_not_a_failure(exported_both_copy):
    rewrite_onnx(exported_both_copy, lambda p: p.clear())
    rewrite_torchscript(exported_both_copy, lambda d: None)
    edit_manifest(exported_both_copy, lambda m: m["run"].pop("checkpoint_sha256"))  # as an older edgetl wrote it
    assert FORMATS["onnx"].read_meta(exported_both_copy / "export" / "model.onnx") is None
    assert FORMATS["torchscript"].read_meta(exported_both_copy / "export" / "model.torchscript.pt") is None
    result = invoke("verify", exported_both_copy, *FAST)
    assert result.exit_code == 0, result.output
    warned = json.loads((exported_both_copy / "verify.json").read_text())["warnings"]
    for file in ("model.onnx", "model.torchscript.pt"):
        assert any(w.startswith(f"{file} carries no labels or preprocessing") for w in warned), warned
    assert embedded_checks(exported_both_copy) == {}
