"""Any torchvision classifier by name (`torchvision:resnet50`, `torchvision:vit_b_16`, ...), its layer groups
read off the module structure that torchvision's families share.

    bb = torchvision_backbone("convnext_tiny"); [g.name for g in bb.groups(bb.build(5))]

Families: ResNet-style (`layer1..4` + `fc`: ResNet, ResNeXt, Wide-ResNet), `features` + `classifier`
(EfficientNet / -V2, MobileNet-V3, ConvNeXt, VGG: a new stage at each block that halves the resolution),
and VisionTransformer (one group per encoder block). Others raise, naming the model.
"""

from __future__ import annotations

import difflib
import functools

import torch
from torch import nn

from edgetl.backbones.base import Backbone, LayerGroup, last_linear_name, named_groups, stages_by_stride
from edgetl.backbones.shipped import avgpool, resnet_features, resnet_groups
from edgetl.errors import BackboneError
from edgetl.preprocessing import Preprocessing

FAMILIES = "ResNet / ResNeXt / Wide-ResNet, EfficientNet(-V2), MobileNet-V3, ConvNeXt, VGG, ViT"


@functools.cache
def classification_models() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _features_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """avgpool, then flatten unless the classifier flattens itself (ConvNeXt's starts with a LayerNorm2d)."""
    x = model.avgpool(x)
    return x if any(isinstance(m, nn.Flatten) for m in model.classifier.modules()) else torch.flatten(x, 1)


def _features_groups(model: nn.Module) -> list[LayerGroup]:
    stem, *blocks = list(model.features)
    return named_groups([stem], stages_by_stride(blocks), [model.classifier])


def _vit_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """VisionTransformer.forward up to its heads: patches, class token, encoder, the class token's output."""
    x = model._process_input(x)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return model.encoder(x)[:, 0]


def _vit_groups(model: nn.Module) -> list[LayerGroup]:
    stages = [[layer] for layer in model.encoder.layers]
    stages[-1].append(model.encoder.ln)
    return named_groups([model.conv_proj], stages, [model.heads],
                        stem_params=[model.class_token, model.encoder.pos_embedding])


def _vit_adapt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Position embeddings trained at another input size, interpolated to the model's (torchvision's own)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    key = "encoder.pos_embedding"
    if key in state and state[key].shape != model.state_dict()[key].shape:
        return interpolate_embeddings(model.image_size, model.patch_size, state)
    return state


@functools.cache  # building the descriptor instantiates the model once to read its structure
def torchvision_backbone(name: str) -> Backbone:
    import torchvision

    if name not in classification_models():
        hint = difflib.get_close_matches(name, classification_models(), n=1)
        maybe = f" — did you mean 'torchvision:{hint[0]}'?" if hint else ""
        raise BackboneError(f"torchvision has no classification model {name!r}{maybe} "
                            "(`python -c \"import torchvision; print(torchvision.models.list_models())\"` lists them)")
    builder = torchvision.models.get_model_builder(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    probe = builder(weights=None, num_classes=2)  # the structure decides the family (a few ms to ~1 s)
    kind = _family(probe)
    if kind is None:
        raise BackboneError(f"cannot derive layer groups for torchvision:{name} ({type(probe).__name__}): edgetl groups "
                            f"{FAMILIES} — try its timm version (timm:<name>)")

    def build(num_classes: int, image_size: int | None = None) -> nn.Module:
        kwargs = {"image_size": image_size} if kind == "vit" and image_size else {}
        return builder(weights=None, num_classes=num_classes, **kwargs)

    common = {"name": f"torchvision:{name}", "build": build, "torchvision_weights": weights, "source_name": name,
              "preprocessing": Preprocessing.from_transforms(weights.transforms()), "family": "torchvision"}
    if kind == "resnet":
        return Backbone(groups=resnet_groups, features=resnet_features, pool=avgpool, head=lambda m: m.fc,
                        classifier_key="fc", **common)
    if kind == "features":
        return Backbone(groups=_features_groups, features=lambda m, x: _features_pool(m, m.features(x)),
                        pool=_features_pool, head=lambda m: m.classifier,
                        classifier_key=last_linear_name(probe.classifier, "classifier"), **common)
    return Backbone(groups=_vit_groups, features=_vit_features, head=lambda m: m.heads, sequential=False,
                    classifier_key=last_linear_name(probe.heads, "heads"), adapt_state=_vit_adapt_state, **common)


def _family(model: nn.Module) -> str | None:
    import torchvision

    if all(hasattr(model, a) for a in ("layer1", "layer4", "fc")):
        return "resnet"
    if isinstance(model, torchvision.models.VisionTransformer):
        return "vit"
    if (isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "avgpool")
            and isinstance(getattr(model, "classifier", None), nn.Sequential)
            and any(isinstance(m, nn.Conv2d) for m in model.features[0].modules())):
        return "features"
    return None
