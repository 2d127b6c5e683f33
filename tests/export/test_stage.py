"""export.py + `edgetl export`: self-contained ONNX and TorchScript files, a manifest that matches them,
parity with the checkpoint, atomic replacement, one-line errors for bad run directories."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import external_data_helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from edgetl.backbones import BACKBONES
from edgetl.cli import app
from edgetl.data.inputs import gather_inputs
from edgetl.errors import ExportError
from edgetl.export.stage import export_run
from edgetl.files import sha256_file, write_json
from edgetl.formats import FORMATS
from edgetl.formats.base import Format
from edgetl.model.checkpoint import load_model
from edgetl.preprocessing import Preprocessing, preprocess_batch
from edgetl.rundir import read_json
from edgetl.testing import make_run

ATOL = 1e-4  # per unit of logit scale (export.FOLD_ATOL): fp32 rounding alone exceeds 1e-4 absolute on b0
MANIFEST_KEYS = ["schema_version", "edgetl_version", "created", "run", "labels", "preprocessing", "input", "output", "model",
                 "versions", "artifacts", "card", "snippets"]
ARTIFACT_KEYS = {"onnx": ["format", "file", "bytes", "sha256", "precision", "opset", "seconds", "runtime", "versions",
                          "portable"],
                 "torchscript": ["format", "file", "bytes", "sha256", "precision", "seconds", "runtime", "versions"]}

# Runs in a fresh interpreter: isolated (-I: no PYTHONPATH, no user site, no cwd on the path), and with edgetl,
# timm and torchvision made unimportable, so the files provably need nothing but torch.
# argv: x.pt, then model paths; writes y<i>.pt per model and prints each model's edgetl.json extra file.
LOADER = """
import json, sys
BLOCKED = ("edgetl", "timm", "torchvision")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be needed to load the file")
sys.meta_path.insert(0, Block())
import torch
x, described = torch.load(sys.argv[1]), []
for i, path in enumerate(sys.argv[2:]):
    extra = {"edgetl.json": ""}
    model = torch.jit.load(path, _extra_files=extra)
    torch.save(model(x), f"y{i}.pt")
    described.append(json.loads(extra["edgetl.json"]))
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "a blocked package was imported"
print(json.dumps(described))
"""


@dataclass
class Exported:
    run: Path
    manifest: dict
    warnings: list[str]  # every warning raised while exporting
    logs: list[str]  # edgetl's log lines while exporting, INFO and up


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Callable[[str], Exported]:
    """backbone -> its run, exported once for the whole module (exporting is most of this file's time)."""
    done: dict[str, Exported] = {}

    def get(backbone: str) -> Exported:
        if backbone not in done:
            run = make_run(tmp_path_factory.mktemp(backbone), backbone=backbone, image_size=32)
            logger, records = logging.getLogger("edgetl"), []
            handler = logging.Handler(logging.INFO)
            handler.emit = records.append
            saved = logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = export_run(run)
            finally:
                logger.removeHandler(handler)
                logger.setLevel(saved)
            done[backbone] = Exported(run, result.manifest.model_dump(mode="json"), [str(w.message) for w in caught],
                                      [r.getMessage() for r in records])
        return done[backbone]

    return get


def reference_logits(run: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = load_model(run / "checkpoints" / "best.pt")
    with torch.no_grad():
        return model(x).numpy()


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # not the traced batch of 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str | Path):
    return CliRunner().invoke(app, ["export", *map(str, args)])


def assert_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    atol = ATOL * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=what)


def check_onnx_file(path: Path, *, batch: int | str) -> onnx.ModelProto:
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 0
    assert proto.graph.initializer, "weights are initializers"
    for init in proto.graph.initializer:  # every weight inline: nothing to resolve next to the file
        assert not external_data_helper.uses_external_data(init), init.name
        assert numpy_helper.to_array(init).size == int(np.prod(init.dims)), init.name
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (dim.dim_param if isinstance(batch, str) else dim.dim_value) == batch
    return proto


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_export_writes_a_self_contained_onnx_file_and_its_manifest(exports, backbone):
    exported = exports(backbone)
    run, manifest, out = exported.run, exported.manifest, exported.run / "export"
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "device_predict.cpp", "device_predict.py",
                                                     "manifest.json", "model.onnx", "model.torchscript.pt"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == ["export"], "temp dirs left"
    # TorchScript's deprecation is one info line, not a warning that looks like our failure.
    assert not [w for w in exported.warnings if "torch.jit" in w], exported.warnings
    assert [m for m in exported.logs if m.startswith("torchscript: torch.jit is deprecated")]

    assert list(manifest) == MANIFEST_KEYS and read_json(out / "manifest.json") == manifest
    assert manifest["run"] == {"backbone": backbone, "checkpoint": "best", "epoch": 1, "val_acc": 0.9,
                               "recipe_sha256": manifest["run"]["recipe_sha256"],
                               "checkpoint_sha256": sha256_file(run / "checkpoints" / "best.pt")}
    assert len(manifest["run"]["recipe_sha256"]) == 64
    assert manifest["labels"] == ["class_0", "class_1", "class_2"]
    assert manifest["preprocessing"] == read_json(run / "preprocessing.json")
    assert manifest["input"] == {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert manifest["output"] == {"name": "logits", "shape": ["batch", 3], "dtype": "float32"}
    assert list(manifest["model"]) == ["params", "macs", "bn_folded", "lora_merged", "fold_max_abs_diff"]
    assert manifest["model"]["bn_folded"] > 0 and manifest["model"]["macs"] > 0
    assert list(manifest["versions"]) == ["torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "python"]
    # 20: the exporter's default; a graph with ReLU6 Clips is lowered to opset 10, the only form OpenCV < 4.7 parses
    opset = 10 if backbone == "efficientnet_lite0" else 20
    assert [(a["format"], a["file"], a.get("opset")) for a in manifest["artifacts"]] == [
        ("onnx", "model.onnx", opset), ("torchscript", "model.torchscript.pt", None)]
    portable = manifest["artifacts"][0]["portable"]
    assert portable["exporter_opset"] == 20 and portable["problems"] == [] and portable["rewrites"]
    for artifact in manifest["artifacts"]:
        assert list(artifact) == ARTIFACT_KEYS[artifact["format"]]
        path = out / artifact["file"]
        assert artifact["bytes"] == path.stat().st_size and artifact["sha256"] == sha256(path)

    proto = check_onnx_file(out / "model.onnx", batch="batch")
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["labels"]) == manifest["labels"]
    assert json.loads(props["preprocessing"]) == manifest["preprocessing"]
    assert props["backbone"] == backbone and props["recipe_sha256"] == manifest["run"]["recipe_sha256"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert_close(session.run(None, {"input": X.numpy()})[0], reference_logits(run, X),
                 f"{backbone}: onnxruntime vs checkpoint")


def test_torchscript_loads_with_torch_alone(exports, tmp_path):
    """One fresh interpreter loads every backbone's file (starting Python + torch is the slow part)."""
    runs = [exports(b).run for b in BACKBONES]
    torch.save(X, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", LOADER, "x.pt",
                           *(str(r / "export" / "model.torchscript.pt") for r in runs)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout.strip().splitlines()[-1])
    for i, (backbone, run) in enumerate(zip(BACKBONES, runs)):
        assert described[i]["backbone"] == backbone and described[i]["labels"] == ["class_0", "class_1", "class_2"]
        assert described[i]["preprocessing"] == read_json(run / "preprocessing.json")
        assert_close(torch.load(tmp_path / f"y{i}.pt").numpy(), reference_logits(run, X),
                     f"{backbone}: torchscript vs checkpoint")


def test_cli_fixed_batch_opset_and_a_single_format(fake_run):
    run = fake_run(backbone="resnet18")
    result = invoke(run, "--format", "onnx", "--batch", "4", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "BN folded" in result.output
    out = run / "export"
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "device_predict.cpp", "device_predict.py",
                                                     "manifest.json", "model.onnx"]
    proto = check_onnx_file(out / "model.onnx", batch=4)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    manifest = read_json(out / "manifest.json")
    assert manifest["input"]["shape"] == [4, 3, 32, 32] and manifest["output"]["shape"] == [4, 3]
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"] and manifest["artifacts"][0]["opset"] == 18


def test_a_failed_reexport_leaves_the_previous_one_intact(fake_run, monkeypatch):
    run = fake_run(backbone="resnet18")
    export_run(run, formats=["torchscript"])
    out = run / "export"
    before = {p.name: sha256(p) for p in out.iterdir()}

    def write_half_then_fail(model, example, path, *, meta):
        path.write_bytes(b"half a model")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(FORMATS, "broken", Format(name="broken", file="model.broken", write=write_half_then_fail,
                                                  load=lambda path, threads=None: None, runtime="none"))
    with pytest.raises(ExportError, match=r"failed at broken \(model.broken\): RuntimeError: disk on fire — .* left as it was"):
        export_run(run, formats=["torchscript", "broken"])
    assert {p.name: sha256(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == ["export"], "temp dir left"

    export_run(run, formats=["torchscript"], checkpoint="last")  # a good re-export replaces the old one whole
    assert read_json(out / "manifest.json")["run"]["checkpoint"] == "last"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == ["export"]


@pytest.mark.filterwarnings("ignore:.torch.jit.load. is deprecated:FutureWarning")
def test_a_lora_run_exports_with_its_adapters_merged(fake_run):
    from edgetl.model.lora import LoraConfig, inject_lora, lora_parameters

    run = fake_run()
    best = run / "checkpoints" / "best.pt"
    model, ckpt = load_model(best)
    config = LoraConfig(rank=2, alpha=4, targets=["pointwise"])
    names = inject_lora(model, config)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)  # as trained: B is no longer zero
    torch.save({**ckpt, "lora": config.to_dict(), "model": model.state_dict()}, best)

    manifest = export_run(run, formats=["torchscript"]).manifest
    assert manifest.model.lora_merged == len(names) > 0 and manifest.model.bn_folded > 0
    scripted = torch.jit.load(str(run / "export" / "model.torchscript.pt"))
    with torch.no_grad():
        assert_close(scripted(X).numpy(), model.eval()(X).numpy(), "lora run: torchscript vs checkpoint")


def _other_backbone(run: Path) -> None:
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**ckpt, "backbone": "resnet18"}, run / "checkpoints" / "best.pt")


def _other_class_count(run: Path) -> None:
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**ckpt, "num_classes": 5}, run / "checkpoints" / "best.pt")


@pytest.mark.parametrize("damage, message", [
    ("missing", "run directory .* not found"),
    ("no checkpoint", r"best\.pt not found — train first"),
    ("corrupt", r"damaged: .*best\.pt \(not an edgetl checkpoint"),
    ("other backbone", "weights do not fit resnet18 with 3 classes"),
    ("other class count", "weights do not fit mobilenet_v3_small with 5 classes"),
    ("user folder as --out", "is not an edgetl export"),
])
def test_bad_run_directories_are_one_line_usage_errors(fake_run, tmp_path, damage, message):
    run = fake_run() if damage != "missing" else tmp_path / "nowhere"
    args: list[str | Path] = [run]
    if damage == "no checkpoint":
        (run / "checkpoints" / "best.pt").unlink()
    elif damage == "corrupt":
        (run / "checkpoints" / "best.pt").write_bytes(b"\x00not a zip" * 10)
    elif damage == "other backbone":
        _other_backbone(run)
    elif damage == "other class count":
        _other_class_count(run)
    elif damage == "user folder as --out":
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "cat.jpg").write_bytes(b"mine")
        args += ["--out", tmp_path / "photos"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert re.search(message, lines[0]), lines[0]
    assert not (run / "export").exists()


@pytest.mark.parametrize("flags", [["--batch", "0"], ["--batch", "some"], ["--format", "tflite"], ["--opset", "17"],
                                   ["--checkpoint", "first"]])
def test_bad_flags_are_usage_errors_before_any_work(tmp_path, flags):
    result = invoke(tmp_path / "not-even-a-run", *flags)  # the flag is refused before the run is looked at
    assert result.exit_code == 2, result.output
    assert flags[0] in result.output or flags[0].lstrip("-") in result.output, result.output


def test_the_fold_is_checked_on_the_runs_val_images(fake_run, tmp_path):
    run = fake_run()
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        (root / "class_0").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50 + i, 3), dtype=np.uint8)).save(root / "class_0" / f"{i}.png")
        entries.append([f"class_0/{i}.png", "class_0"])
    entries.append(["class_0/gone.png", "class_0"])
    write_json(run / "split.json", {"source": str(root), "root": str(root), "train": [], "val": entries})
    prep = Preprocessing.from_dict(read_json(run / "preprocessing.json"))
    inputs = gather_inputs(run, labels=["class_0"], preprocessing=prep, data=None, samples=8, random=2)
    assert inputs.info["images"] == 3 and inputs.x.shape == (5, 3, 32, 32)
    expected = preprocess_batch([root / e[0] for e in entries[:3]], prep.to_dict())
    np.testing.assert_array_equal(inputs.x[:3], expected)
