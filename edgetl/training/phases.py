"""The policy of one phase, applied: which groups train, at which rates, in which mode, on which inputs.

    param_groups = configure_phase(model, groups, phase, backbone="resnet18", weight_decay=0.01)

A phase of the recipe is data (`head` / `last:N` / `all`, rates, BatchNorm policy, augmentation); these
functions are the short code that applies it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgetl.backbones import Backbone, LayerGroup, run_groups
from edgetl.errors import RecipeError
from edgetl.model.lora import LoraConfig
from edgetl.recipe import LoraSection, Phase, Recipe
from edgetl.training.cache import PrefixCache
from edgetl.training.epoch import Batcher

log = logging.getLogger(__name__)


def trainable_groups(groups: list[LayerGroup], phase: Phase, *, backbone: str) -> list[LayerGroup]:
    """The groups a phase trains: always the head, plus the last N backbone groups (or all)."""
    body, head = groups[:-1], groups[-1]
    n = phase.last_n
    if n is not None and n > len(body):
        names = ", ".join(g.name for g in body)
        raise RecipeError(f"phase {phase.name!r}: train = 'last:{n}' but {backbone} has {len(body)} groups ({names}); use 'all'")
    unknown = set(phase.group_lr) - {g.name for g in groups}
    if unknown:
        raise RecipeError(f"phase {phase.name!r}: group_lr names unknown groups {sorted(unknown)}; {backbone} has {[g.name for g in groups]}")
    return [*(body if n is None else body[len(body) - n:]), head] if n != 0 else [head]


def group_learning_rates(groups: list[LayerGroup], phase: Phase) -> dict[str, float]:
    """Discriminative rates: `lr` at the deepest backbone group, times `lr_decay` per group towards the input."""
    body = groups[:-1]
    rates = {g.name: phase.lr * phase.lr_decay ** (len(body) - 1 - i) for i, g in enumerate(body)}
    rates["head"] = phase.head_lr
    rates.update(phase.group_lr)
    return rates


def configure_phase(model: nn.Module, groups: list[LayerGroup], phase: Phase, *, backbone: str,
                    weight_decay: float, lora: LoraSection | None = None) -> list[dict[str, Any]]:
    """Set requires_grad for the phase and return optimizer param groups (no weight decay on norms and biases).

    With LoRA, trainable backbone groups train only their adapters (and norms if `lora.train_norms`).
    """
    train = trainable_groups(groups, phase, backbone=backbone)
    model.requires_grad_(False)
    for group in train:
        for module in group.modules:
            module.requires_grad_(True)
            if lora is not None and group.name != "head":
                for name, param in module.named_parameters():
                    param.requires_grad_("lora_" in name)
                for sub in module.modules():
                    if isinstance(sub, _NORMS):
                        sub.requires_grad_(lora.train_norms)
        for param in group.params:  # a ViT's class token and position embeddings: not adapters
            param.requires_grad_(lora is None or group.name == "head")
    if phase.bn == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.requires_grad_(False)
    rates = group_learning_rates(groups, phase)
    param_groups = []
    for group in train:
        params = [p for p in group.parameters() if p.requires_grad]
        no_decay = {id(p) for p in group.params}  # tokens and position embeddings, as timm's no_weight_decay()
        decayed = [p for p in params if p.ndim > 1 and id(p) not in no_decay]
        rest = [p for p in params if p.ndim <= 1 or id(p) in no_decay]
        for decay, subset in ((weight_decay, decayed), (0.0, rest)):
            if subset:
                param_groups.append({"params": subset, "lr": rates[group.name], "weight_decay": decay, "name": group.name})
    if not param_groups:
        raise RecipeError(f"phase {phase.name!r} trains no parameter; check its `train` and `bn` settings")
    return param_groups


_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def set_train_mode(model: nn.Module, groups: list[LayerGroup], phase: Phase, *, backbone: str) -> None:
    """Train mode only where weights train; frozen groups (and frozen BN) keep their running statistics."""
    model.eval()
    for group in trainable_groups(groups, phase, backbone=backbone):
        for module in group.modules:
            module.train()
    if phase.bn == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def count_trainable(groups: list[LayerGroup]) -> dict[str, int]:
    return {g.name: sum(p.numel() for p in g.parameters() if p.requires_grad) for g in groups}


def lr_factor(phase: Phase, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup, then cosine to zero (or constant): the multiplier of each group's rate at a step."""
    total = phase.epochs * steps_per_epoch
    warmup = round(phase.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if phase.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def make_optimizer(param_groups: list[dict[str, Any]], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(param_groups)


def frozen_depth(phase: Phase, body: int) -> int:
    """How many body groups (from the input) a phase leaves frozen."""
    n = phase.last_n
    return body if n == 0 else 0 if n is None else body - n


def cacheable(phase: Phase, *, body: int, sequential: bool) -> bool:
    """A cached phase's frozen part runs once: any frozen prefix of a sequential backbone, the whole body of
    others (their groups cannot run one by one; deeper phases recompute the frozen part, without gradients)."""
    return phase.cached and (sequential or frozen_depth(phase, body) == body)


def prefix_caches(phases: list[Phase], *, body: int, seed: int, sequential: bool = True) -> dict[int, PrefixCache]:
    """One cache per `views` value of the cached phases, at the shallowest depth any of them needs."""
    depths: dict[int, int] = {}
    for phase in phases:
        if cacheable(phase, body=body, sequential=sequential):
            depths[phase.views] = min(depths.get(phase.views, body), frozen_depth(phase, body))
    return {views: PrefixCache(depth=depth, views=views, seed=seed) for views, depth in depths.items()}


def phase_inputs(model: nn.Module, backbone: Backbone, groups: list[LayerGroup], phase: Phase, *, train: Batcher,
                 val: Batcher, batch_size: int, caches: dict[int, PrefixCache]
                 ) -> tuple[Batcher, Batcher, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """What a phase iterates over and how it runs the model: (train data, val data, train forward, eval forward).

    A cached phase (`Phase.cached`) trains on the frozen groups' outputs computed once (`PrefixCache`): a head
    phase on pooled features, a `last:N` phase on the activations its first trainable group takes, for
    `views` views of each image. Uncached, frozen groups still build no autograd graph.
    """
    head = backbone.head(model)
    body = groups[:-1]
    depth = frozen_depth(phase, len(body))
    for cache in caches.values():  # this phase trains body[depth:]: a cache holding any of it is stale
        cache.drop_if_trained(depth)
    frozen, trainable_body = body[:depth], body[depth:]

    def from_cache(a: torch.Tensor) -> torch.Tensor:
        return head(a) if not trainable_body else head(backbone.pool(model, run_groups(trainable_body, a)))

    if cacheable(phase, body=len(body), sequential=backbone.sequential):
        outputs = caches[phase.views].outputs(model, backbone, body, depth=depth, train=train, val=val,
                                              batch_size=batch_size)
        if outputs is not None:
            return *outputs, from_cache, from_cache
    elif phase.cached:
        log.info("phase %r: %s cannot run its groups one by one (`edgetl backbones --groups` says which can): its "
                 "frozen part is recomputed each step, without gradients, and views = %d become fresh augmentations",
                 phase.name, backbone.name, phase.views)
    train = Batcher(train.x, train.y, train.preprocessing, train.device, augment=phase.augment)
    if not frozen or (trainable_body and not backbone.sequential):
        return train, val, model, model  # frozen parameters take no gradient: autograd skips their backward

    def frozen_prefix(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # whole body frozen: its features, from any backbone; else the frozen groups
            a = run_groups(frozen, x) if trainable_body else backbone.features(model, x)
        return from_cache(a) if trainable_body else head(a)

    return train, val, frozen_prefix, model


def lora_config(section: LoraSection, model: nn.Module, groups: list[LayerGroup]) -> LoraConfig:
    """The adapter config for a model: the head trains in full, so its layers get no adapter."""
    head_weights = {id(p) for p in groups[-1].parameters()}
    exclude = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m.weight) in head_weights]
    return LoraConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout, targets=list(section.targets),
                      allow_depthwise=section.allow_depthwise, exclude=exclude)


