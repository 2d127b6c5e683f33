"""Backbones: the five shipped short names, and any torchvision or timm classifier by `torchvision:NAME` /
`timm:NAME`.

    bb = get_backbone("timm:convnext_atto"); model = create_model(bb, num_classes=5); bb.groups(model)
"""

from __future__ import annotations

import difflib

from edgetl.backbones.base import Backbone, LayerGroup, MLPHead, create_model, run_groups
from edgetl.backbones.shipped import BACKBONES
from edgetl.errors import BackboneError

PREFIXES = ("torchvision:", "timm:")

__all__ = ["BACKBONES", "PREFIXES", "Backbone", "LayerGroup", "MLPHead", "create_model", "get_backbone", "run_groups"]


def get_backbone(name: str) -> Backbone:
    """A shipped short name, `torchvision:<model>` or `timm:<model>`; BackboneError with a hint otherwise."""
    if name in BACKBONES:
        return BACKBONES[name]
    prefix, sep, model = name.partition(":")
    if sep and model and prefix == "torchvision":
        from edgetl.backbones.torchvision_named import torchvision_backbone

        return torchvision_backbone(model)
    if sep and model and prefix == "timm":
        from edgetl.backbones.timm_named import timm_backbone

        return timm_backbone(model)
    hint = difflib.get_close_matches(name, list(BACKBONES), n=1)
    maybe = f" — did you mean {hint[0]!r}?" if hint else ""
    raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}{maybe}, or any classifier as "
                        "'torchvision:<name>' / 'timm:<name>' (`edgetl backbones` explains)")

