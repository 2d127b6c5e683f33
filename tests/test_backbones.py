import pytest
import torch
from torch import nn

from edgetl.backbones import BACKBONES, MLPHead, create_model, get_backbone, run_groups
from edgetl.errors import BackboneError


@pytest.mark.parametrize("name", list(BACKBONES))
def test_groups_partition_parameters_and_head_is_last(name):
    bb = get_backbone(name)
    model = bb.build(4)
    groups = bb.groups(model)
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)), "a parameter belongs to two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter belongs to no group"
    assert [g.name for g in groups][0] == "stem" and groups[-1].name == "head"
    assert {id(p) for p in bb.head(model).parameters()} == {id(p) for p in groups[-1].parameters()}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_features_then_head_equals_forward(name):
    bb = get_backbone(name)
    model = bb.build(3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.head(model)(bb.features(model, x)), model(x))


def test_preprocessing_comes_from_the_weights():
    assert get_backbone("efficientnet_lite0").preprocessing.mean == (0.5, 0.5, 0.5)
    assert get_backbone("efficientnet_b0").preprocessing.interpolation == "bicubic"
    assert get_backbone("mobilenet_v3_large").preprocessing.resize_size == 232
    scaled = get_backbone("resnet18").preprocessing.scaled(112)
    assert (scaled.crop_size, scaled.resize_size) == (112, 128)


def test_unknown_backbone_suggests_the_closest():
    with pytest.raises(BackboneError, match="did you mean 'resnet18'"):
        get_backbone("resnet19")


# --- any torchvision / timm classifier by name (small variants, random weights) ------------------------------

NAMED = ["timm:resnet18", "timm:vit_tiny_patch16_224", "timm:convnext_atto", "torchvision:resnet50",
         "torchvision:convnext_tiny", "torchvision:vit_b_16"]


def _size(name: str) -> int:
    return 32 if "vit" in name else 64


@pytest.mark.parametrize("name", NAMED)
def test_named_backbones_partition_their_parameters_and_features_then_head_is_forward(name):
    bb = get_backbone(name)
    model = create_model(bb, num_classes=3, image_size=_size(name)).eval()
    groups = bb.groups(model)
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)), "a parameter belongs to two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter belongs to no group"
    names = [g.name for g in groups]
    assert names[0] == "stem" and names[-1] == "head" and names[1:-1] == [f"stage{i}" for i in range(1, len(names) - 1)]
    assert {id(p) for p in bb.head(model).parameters()} == {id(p) for p in groups[-1].parameters()}
    assert isinstance(model.get_submodule(bb.classifier_key), nn.Linear)
    x = torch.randn(2, 3, _size(name), _size(name))
    with torch.no_grad():
        torch.testing.assert_close(bb.head(model)(bb.features(model, x)), model(x))
        if bb.sequential:
            torch.testing.assert_close(bb.pool(model, run_groups(groups[:-1], x)), bb.features(model, x))


def test_named_groups_follow_the_model_structure():
    vit = get_backbone("timm:vit_tiny_patch16_224")
    groups = vit.groups(create_model(vit, num_classes=3, image_size=32))
    assert len(groups) == 1 + 12 + 1  # stem (patch embedding, class token, position embeddings), 12 blocks, head
    assert len(groups[0].params) == 2 and not vit.sequential
    convnext = get_backbone("timm:convnext_atto")
    model = create_model(convnext, num_classes=3)
    groups = convnext.groups(model)
    assert [g.modules for g in groups[1:5]] == [[model.stages[0]], [model.stages[1]], [model.stages[2]],
                                                 [model.stages[3], model.head.norm]]  # the head norm: last stage
    resnet = get_backbone("torchvision:resnet50")
    assert [g.name for g in resnet.groups(create_model(resnet, num_classes=3))] == [
        "stem", "stage1", "stage2", "stage3", "stage4", "head"] and resnet.sequential


def test_an_mlp_head_replaces_the_classifier_and_stays_the_head_group():
    bb = get_backbone("torchvision:resnet50")
    model = create_model(bb, num_classes=4, head=MLPHead(hidden=(32,), dropout=0.2))
    assert [type(m).__name__ for m in model.fc] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert model.fc[0].in_features == 2048 and model.fc[-1].out_features == 4
    groups = bb.groups(model)
    assert {id(p) for p in groups[-1].parameters()} == {id(p) for p in model.fc.parameters()}


def test_preprocessing_of_named_backbones_comes_from_their_weights_config():
    assert get_backbone("timm:vit_tiny_patch16_224").preprocessing.mean == (0.5, 0.5, 0.5)
    assert get_backbone("timm:vit_tiny_patch16_224").preprocessing.interpolation == "bicubic"
    effnet = get_backbone("torchvision:efficientnet_b4").preprocessing
    assert (effnet.crop_size, effnet.resize_size, effnet.interpolation) == (380, 384, "bicubic")


@pytest.mark.parametrize("name, message", [
    ("timm:convnext_atom", "timm has no model 'convnext_atom' — did you mean 'timm:convnext_atto'"),
    ("torchvision:resnet51", "torchvision has no classification model 'resnet51' — did you mean"),
    ("torchvision:regnet_y_400mf", "cannot derive layer groups for torchvision:regnet_y_400mf"),
    ("keras:resnet50", "any classifier as 'torchvision:<name>' / 'timm:<name>'"),
])
def test_bad_backbone_names_are_one_clear_error(name, message):
    with pytest.raises(BackboneError, match=message):
        get_backbone(name)


@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224", "torchvision:vit_b_16"])
def test_vit_position_embeddings_from_another_size_are_resampled(name, tmp_path):
    from edgetl.model.weights import load_pretrained

    bb = get_backbone(name)
    native = create_model(bb, num_classes=3, image_size=64)
    small = create_model(bb, num_classes=3, image_size=32)
    path = tmp_path / "native.pt"
    torch.save(native.state_dict(), path)
    report = load_pretrained(small, bb, str(path))
    assert report.loaded == len(small.state_dict()) and not report.skipped
    with torch.no_grad():
        assert small(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_parity_stand_ins_get_real_magnitude_logits_even_from_a_zero_initialised_head():
    """torchvision's ViT starts its head at zero: a stand-in for parity checks must not keep logits at exactly 0."""
    from edgetl.testing import randomize_for_parity

    bb = get_backbone("torchvision:vit_b_16")
    model = randomize_for_parity(create_model(bb, num_classes=3, image_size=32), image_size=32)
    with torch.no_grad():
        assert model(torch.randn(4, 3, 32, 32)).abs().max() > 1.0
