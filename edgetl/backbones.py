"""Backbone registry: name -> how to build it, its layer groups (input -> output), its head, its preprocessing.

    bb = get_backbone("mobilenet_v3_small"); model = bb.build(num_classes=5); bb.groups(model)

Layer groups drive freezing (`head`, `last:N`, `all`) and per-depth learning rates, so every parameter of a
model belongs to exactly one group, and the last group is always `head` (the classifier). The body groups
hold the model's modules in call order, so `pool(run_groups(body, x))` is `features(x)`: a frozen prefix can
run once and its output be cached, the trainable groups continuing from it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from edgetl.errors import BackboneError
from edgetl.preprocessing import Preprocessing


@dataclass
class LayerGroup:
    name: str
    modules: list[nn.Module]

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules:
            yield from module.parameters()


def run_groups(groups: list[LayerGroup], x: torch.Tensor) -> torch.Tensor:
    """Body groups applied in order: each group's modules are the model's own, in call order."""
    for group in groups:
        for module in group.modules:
            x = module(x)
    return x


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> randomly initialised model
    groups: Callable[[nn.Module], list[LayerGroup]]  # input -> output; the last one is "head"
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # images -> pooled features (head input)
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # the last body group's output -> pooled features
    head: Callable[[nn.Module], nn.Module]  # the module mapping features -> logits
    classifier_key: str  # state-dict prefix of the final Linear (re-initialised when num_classes differs)
    preprocessing: Preprocessing  # of the pretrained weights, at their native size
    torchvision_weights: object | None = field(default=None, repr=False)  # the DEFAULT WeightsEnum member
    family: str = "torchvision"


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is registered twice")
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(BACKBONES), n=1)
        maybe = f" — did you mean {hint[0]!r}?" if hint else ""
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}{maybe}") from None


def _downsamples(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())


def _stages_by_stride(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    """Group consecutive blocks into stages, a new stage at each block that halves the resolution."""
    stages: list[list[nn.Module]] = []
    for block in blocks:
        if not stages or _downsamples(block):
            stages.append([])
        stages[-1].append(block)
    return stages


def _named(stem: list[nn.Module], stages: list[list[nn.Module]], head: list[nn.Module]) -> list[LayerGroup]:
    return [
        LayerGroup("stem", stem),
        *(LayerGroup(f"stage{i}", s) for i, s in enumerate(stages, 1)),
        LayerGroup("head", head),
    ]


# --- torchvision families -------------------------------------------------------------------------------


def _avgpool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(model.avgpool(x), 1)


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _avgpool(model, model.features(x))


def _mobilenet_groups(model: nn.Module) -> list[LayerGroup]:
    *blocks, last_conv = list(model.features)
    stages = _stages_by_stride(blocks[1:])
    stages[-1].append(last_conv)  # the final 1x1 conv works at the last stage's resolution
    return _named([blocks[0]], stages, [model.classifier])


def _efficientnet_groups(model: nn.Module) -> list[LayerGroup]:
    stem, *stages, last_conv = list(model.features)
    groups = [[s] for s in stages]
    groups[-1].append(last_conv)
    return _named([stem], groups, [model.classifier])


def _resnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def _resnet_groups(model: nn.Module) -> list[LayerGroup]:
    stages = [[model.layer1], [model.layer2], [model.layer3], [model.layer4]]
    # relu and maxpool hold no weights, but they are part of the stem's call order.
    return _named([model.conv1, model.bn1, model.relu, model.maxpool], stages, [model.fc])


def _torchvision(name: str, weights_enum: str, groups, features, head, classifier_key: str) -> Backbone:
    import torchvision

    weights = getattr(torchvision.models, weights_enum).DEFAULT
    builder = getattr(torchvision.models, name)
    return Backbone(
        name=name,
        build=lambda num_classes: builder(weights=None, num_classes=num_classes),
        groups=groups,
        features=features,
        pool=_avgpool,
        head=head,
        classifier_key=classifier_key,
        preprocessing=Preprocessing.from_transforms(weights.transforms()),
        torchvision_weights=weights,
    )


register(_torchvision("mobilenet_v3_small", "MobileNet_V3_Small_Weights", _mobilenet_groups, _pooled,
                      lambda m: m.classifier, "classifier.3"))
register(_torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights", _mobilenet_groups, _pooled,
                      lambda m: m.classifier, "classifier.3"))
register(_torchvision("efficientnet_b0", "EfficientNet_B0_Weights", _efficientnet_groups, _pooled,
                      lambda m: m.classifier, "classifier.1"))
register(_torchvision("resnet18", "ResNet18_Weights", _resnet_groups, _resnet_features, lambda m: m.fc, "fc"))


# --- timm: EfficientNet-Lite0 in the tf_efficientnet_lite0 layout (TF "same" padding) ---------------------

_LITE0 = "tf_efficientnet_lite0"


def _lite0_build(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(_LITE0, pretrained=False, num_classes=num_classes)


def _lite0_groups(model: nn.Module) -> list[LayerGroup]:
    stages = [[stage] for stage in model.blocks]
    stages[-1] += [model.conv_head, model.bn2]
    return _named([model.conv_stem, model.bn1], stages, [model.classifier])


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
))
