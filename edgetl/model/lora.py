"""LoRA adapters for convolutional backbones, merged away before export.

    names = inject_lora(model, LoraConfig(rank=4, alpha=8, targets=["pointwise"]))

Written by hand on `torch.nn.utils.parametrize` rather than with PEFT: PEFT's Conv2d adapter runs a second
convolution with the base layer's static padding, which breaks on timm's `Conv2dSame` (TF "same" padding in
efficientnet_lite0), and it renames every state-dict key. A weight parametrization (W + alpha/r · B·A) works
for any conv or linear subclass, adds no activation memory, keeps base keys readable, and merging is torch's
own `remove_parametrizations(..., leave_parametrized=True)`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgetl.errors import RecipeError

log = logging.getLogger(__name__)

KINDS = ("pointwise", "conv", "linear")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0  # rank dropout: whole rank-1 components are dropped in training (a weight-space adapter
    #                       never sees activations, so the usual input dropout does not apply)
    targets: list[str] = field(default_factory=lambda: ["pointwise"])  # kinds and/or module-name patterns
    allow_depthwise: bool = False  # patterns may adapt depthwise convs only when this is set
    exclude: list[str] = field(default_factory=list)  # module-name patterns never adapted (e.g. the classifier)

    def __post_init__(self) -> None:
        """A checkpoint's [lora] read back must be what a recipe allows (edgetl.recipe.LoraSection)."""
        if not (isinstance(self.rank, int) and not isinstance(self.rank, bool) and 1 <= self.rank <= 1024):
            raise ValueError(f"rank must be a whole number in [1, 1024] (got {self.rank!r})")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0 (got {self.alpha!r})")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout!r})")

    def to_dict(self) -> dict:
        return asdict(self)


class LoraWeight(nn.Module):
    """A parametrization: weight -> weight + (alpha / rank) · B·A, with B initialised at zero."""

    def __init__(self, weight: torch.Tensor, *, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        out_features, fan_in = weight.shape[0], weight[0].numel()
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = dropout

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        a = self.lora_A
        if self.training and self.dropout > 0:
            keep = torch.rand(a.shape[0], 1, device=a.device) >= self.dropout
            a = a * keep / (1 - self.dropout)
        return weight + (self.scale * (self.lora_B @ a)).view_as(weight)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1


def _kind_matches(kind: str, m: nn.Module) -> bool:
    if kind == "linear":
        return isinstance(m, nn.Linear)
    if not isinstance(m, nn.Conv2d) or _is_depthwise(m):
        return False
    return kind == "conv" or m.kernel_size == (1, 1)


def select_layers(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the layers the config adapts; refuses patterns that match nothing or only unadaptable layers."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name}
    chosen: list[str] = []
    for target in config.targets:
        if target in KINDS:
            hits = [n for n, m in layers.items() if _kind_matches(target, m)]
        else:
            hits = [n for n in layers if fnmatch.fnmatchcase(n, target)]
            if not hits:
                example = next(iter(layers))
                raise RecipeError(f"lora target {target!r} matches no conv or linear layer (names look like {example!r}); "
                                  f"use one of {', '.join(KINDS)} or a pattern such as 'blocks.6.*'")
            depthwise = [n for n in hits if _is_depthwise(layers[n])]
            if depthwise and not config.allow_depthwise:
                raise RecipeError(f"lora target {target!r} matches depthwise convs (e.g. {depthwise[0]!r}), where an adapter has "
                                  "more parameters than the layer; set allow_depthwise = true to adapt them anyway")
            if depthwise:
                log.warning("LoRA adapts %d depthwise convs (allow_depthwise): the adapters outweigh those layers", len(depthwise))
        chosen += [n for n in hits if n not in chosen]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in config.exclude)]
    if not chosen:
        raise RecipeError(f"lora targets {config.targets} select no layer of this backbone")
    return chosen


def inject_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Add adapters in place (base weights untouched); return the adapted layer names (the config's values
    were checked when it was built)."""
    if not 0 <= config.dropout < 1:
        raise RecipeError(f"lora dropout must be in [0, 1) (got {config.dropout})")
    names = select_layers(model, config)
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        adapter = LoraWeight(layer.weight, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
        parametrize.register_parametrization(layer, "weight", adapter)
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight") and any(isinstance(p, LoraWeight) for p in m.parametrizations.weight):
            yield name, m


def count_lora(model: nn.Module) -> int:
    return sum(1 for _ in lora_modules(model))


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for m in model.modules():
        if isinstance(m, LoraWeight):
            yield m.lora_A
            yield m.lora_B


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place; the result has the structure of a model without LoRA."""
    for _, m in list(lora_modules(model)):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
