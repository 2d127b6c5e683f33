import pytest
import torch

from edgetl.backbones import BACKBONES, get_backbone
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
