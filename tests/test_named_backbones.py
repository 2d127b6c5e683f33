"""Backbones by name through every stage: `edgetl run` trains (freezing, per-group rates), folds, exports and
verifies small torchvision / timm models at 32 px — an MLP head on ResNet-50, LoRA on a ViT's Linear layers."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.data.sample import make_image_folder
from edgetl.model.checkpoint import load_model

runner = CliRunner()

RECIPE = """
backbone = "{backbone}"
weights = "none"
image_size = 32
batch_size = 8
patience = 0
probe_epochs = 0
seed = 1
{extra}

[[phases]]
name = "head"
epochs = 1
train = "head"
head_lr = 1e-2
augment = false

[[phases]]
name = "top"
epochs = 1
train = "last:2"
lr = 1e-3
lr_decay = 0.5
"""

CASES = {
    "timm:resnet18": "",
    "timm:convnext_atto": "",
    "timm:vit_tiny_patch16_224": "[lora]\nrank = 2\ntargets = [\"linear\"]",
    "torchvision:resnet50": "[head]\nhidden = [16]\ndropout = 0.2",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("named") / "data", classes=2, per_class=6, size=36, seed=0)


# torchvision:resnet50 (13 s) runs in `make test-all`; the other torchvision-by-name paths are the same code
@pytest.mark.parametrize("backbone", [pytest.param(b, marks=pytest.mark.slow) if b == "torchvision:resnet50" else b
                                      for b in CASES])
def test_a_named_backbone_runs_train_export_verify(backbone, data, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(backbone=backbone, extra=CASES[backbone]))
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", "--recipe", str(recipe), "--data", str(data), "--out", str(run),
                                 "--latency-seconds", "0.05", "--samples", "6"])
    assert result.exit_code == 0, result.output
    trained = json.loads((run / "train.json").read_text())
    assert trained["backbone"] == backbone
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in lines] == ["head", "top"]
    report = json.loads((run / "verify.json").read_text())
    assert report["passed"] is True and {"model.onnx", "model.torchscript.pt"} <= set(report["parity"])
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["run"]["backbone"] == backbone
    if "vit" in backbone or "convnext" in backbone:  # LayerNorm models: nothing to fold, and the manifest says so
        assert manifest["model"]["bn_folded"] == 0 and "LayerNorm" in manifest["model"]["norms_kept"]
    else:
        assert manifest["model"]["bn_folded"] > 0
    if "lora" in CASES[backbone]:
        assert manifest["model"]["lora_merged"] > 0
    # The exported file computes the trained checkpoint's function.
    model, _ = load_model(run / "checkpoints" / "best.pt")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())), rtol=0,
                               err_msg=f"{backbone}: ONNX vs checkpoint")


@pytest.mark.parametrize("backbone, lora", [("timm:convnext_atto", None),
                                            ("timm:vit_tiny_patch16_224", {"rank": 4, "targets": ["linear"]})])
def test_named_exports_match_checkpoints_with_real_magnitude_logits(fake_run, backbone, lora):
    from edgetl.export.stage import export_run

    run = fake_run(backbone=backbone, lora=lora)
    export_run(run, formats=("onnx",))
    model, _ = load_model(run / "checkpoints" / "best.pt")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 1.0, "logits too small for the check to mean anything"
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4 * float(np.abs(expected).max()), rtol=0,
                               err_msg=f"{backbone}: ONNX vs checkpoint")
    assert (got.argmax(1) == expected.argmax(1)).all()
