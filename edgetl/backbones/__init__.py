"""Backbones: the five shipped short names, and any torchvision or timm classifier by `torchvision:NAME` /
`timm:NAME`.

    bb = get_backbone("timm:convnext_atto"); model = create_model(bb, num_classes=5); bb.groups(model)

Importing this package imports no torch: the model code (`base`, `shipped`) loads on first use of a name below,
so the commands that only list or describe (`edgetl recipes`, `info`) stay fast (`catalog`).
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any

from edgetl.backbones.catalog import SHIPPED
from edgetl.errors import BackboneError

if TYPE_CHECKING:
    from edgetl.backbones.base import Backbone, LayerGroup, MLPHead, create_meta_model, create_model, run_groups
    from edgetl.backbones.shipped import BACKBONES

PREFIXES = ("torchvision:", "timm:")

__all__ = ["BACKBONES", "PREFIXES", "SHIPPED", "Backbone", "LayerGroup", "MLPHead", "check_backbone_name",
           "create_meta_model", "create_model", "get_backbone", "run_groups"]

_LAZY = {"Backbone": "base", "LayerGroup": "base", "MLPHead": "base", "create_meta_model": "base",
         "create_model": "base", "run_groups": "base", "BACKBONES": "shipped"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"edgetl.backbones.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgetl.backbones' has no attribute {name!r}")


def _unknown(name: str) -> BackboneError:
    hint = difflib.get_close_matches(name, list(SHIPPED), n=1)
    maybe = f" — did you mean {hint[0]!r}?" if hint else ""
    return BackboneError(f"unknown backbone {name!r}; known: {', '.join(SHIPPED)}{maybe}, or any classifier as "
                         "'torchvision:<name>' / 'timm:<name>' (`edgetl backbones` explains)")


def check_backbone_name(name: str) -> None:
    """BackboneError unless `name` is shipped or prefixed; a shipped name is checked without importing torch."""
    if name in SHIPPED:
        return
    get_backbone(name)


def get_backbone(name: str) -> Backbone:
    """A shipped short name, `torchvision:<model>` or `timm:<model>`; BackboneError with a hint otherwise."""
    if name in SHIPPED:
        from edgetl.backbones.shipped import BACKBONES

        return BACKBONES[name]
    prefix, sep, model = name.partition(":")
    if sep and model and prefix == "torchvision":
        from edgetl.backbones.torchvision_named import torchvision_backbone

        return torchvision_backbone(model)
    if sep and model and prefix == "timm":
        from edgetl.backbones.timm_named import timm_backbone

        return timm_backbone(model)
    raise _unknown(name)
