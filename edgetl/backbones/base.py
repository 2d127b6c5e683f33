"""What a backbone is to edgetl: how to build it, its layer groups (input -> output), its head, its preprocessing.

    model = create_model(get_backbone("timm:convnext_atto"), num_classes=5, head=MLPHead(hidden=(512,)))

Layer groups drive freezing (`head`, `last:N`, `all`) and per-depth learning rates, so every parameter of a
model belongs to exactly one group, and the last group is always `head` (the classifier). For a `sequential`
backbone the body groups hold the model's modules in call order, so `pool(run_groups(body, x))` is
`features(x)`: a frozen prefix can run once and its output be cached, the trainable groups continuing from
it. Other backbones (a ViT adds its class token and position embeddings between modules) can still cache the
whole body's `features` for a head phase; their deeper phases run the whole model, the frozen part without
gradients.
"""

from __future__ import annotations

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
    params: list[nn.Parameter] = field(default_factory=list)  # owned by a module that spans groups (a ViT's cls token)

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules:
            yield from module.parameters()
        yield from self.params


def run_groups(groups: list[LayerGroup], x: torch.Tensor) -> torch.Tensor:
    """Body groups applied in order: each group's modules are the model's own, in call order (sequential only)."""
    for group in groups:
        for module in group.modules:
            x = module(x)
    return x


def _not_sequential(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("internal: only a sequential backbone's groups can be run one after another")


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[..., nn.Module]  # (num_classes, image_size=None) -> randomly initialised model
    groups: Callable[[nn.Module], list[LayerGroup]]  # input -> output; the last one is "head"
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # images -> pooled features (head input)
    head: Callable[[nn.Module], nn.Module]  # the module mapping features -> logits
    classifier_key: str  # qualified name of the final Linear (re-initialised when num_classes differs)
    preprocessing: Preprocessing  # of the pretrained weights, at their native size
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _not_sequential  # last body output -> features
    sequential: bool = True  # the body groups' modules, called in order, are the forward pass up to `pool`
    torchvision_weights: object | None = field(default=None, repr=False)  # the DEFAULT WeightsEnum member
    family: str = "torchvision"  # "torchvision" | "timm": where its ImageNet weights come from
    source_name: str = ""  # the library's own model name (timm / torchvision)
    # A state dict from another input size, made to fit the model (a ViT's position embeddings resampled)
    adapt_state: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class MLPHead:
    """The classifier replaced by Linear -> ReLU -> Dropout per hidden width, then Linear(num_classes)."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0


def mlp(in_features: int, num_classes: int, spec: MLPHead) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in spec.hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(spec.dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def create_model(backbone: Backbone, *, num_classes: int, image_size: int | None = None,
                 head: MLPHead | None = None) -> nn.Module:
    """The backbone's model with `num_classes` outputs (random weights), at `image_size` where the model's
    shape depends on it (ViTs), with an MLP head when `head` has hidden layers."""
    try:
        model = backbone.build(num_classes, image_size=image_size)
    except (AssertionError, ValueError, TypeError, RuntimeError) as e:
        raise BackboneError(f"cannot build {backbone.name} with {num_classes} classes at image_size {image_size}: "
                            f"{e}") from None
    if head is not None and head.hidden:
        final = model.get_submodule(backbone.classifier_key)
        if not isinstance(final, nn.Linear):
            raise BackboneError(f"{backbone.name}: its classifier {backbone.classifier_key!r} is a "
                                f"{type(final).__name__}, not a Linear; an MLP head needs a Linear to replace")
        replace_module(model, backbone.classifier_key, mlp(final.in_features, num_classes, head))
    return model


def create_meta_model(backbone: Backbone, *, num_classes: int, image_size: int | None = None,
                      head: MLPHead | None = None) -> nn.Module | None:
    """`create_model` on the meta device: every shape and parameter, no memory and no initialisation (0.3 s for
    a 1.1 B-parameter ViT), so a model's size is known before it is built. None where a builder computes with
    tensor values while building (torchvision's RegNets), which the meta device cannot do."""
    try:
        with torch.device("meta"):
            return create_model(backbone, num_classes=num_classes, image_size=image_size, head=head)
    except Exception:  # noqa: BLE001 — whatever the meta device cannot run, the real build reports or passes
        return None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def last_linear_name(module: nn.Module, prefix: str) -> str:
    """The qualified name of the last Linear inside `module` (named `prefix` in its model)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise BackboneError(f"no Linear classifier under {prefix!r}")
    return f"{prefix}.{names[-1]}" if names[-1] else prefix


def downsamples(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())


def stages_by_stride(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    """Group consecutive blocks into stages, a new stage at each block that halves the resolution."""
    stages: list[list[nn.Module]] = []
    for block in blocks:
        if not stages or downsamples(block):
            stages.append([])
        stages[-1].append(block)
    return stages


def named_groups(stem: list[nn.Module], stages: list[list[nn.Module]], head: list[nn.Module], *,
                 stem_params: list[nn.Parameter] | None = None) -> list[LayerGroup]:
    return [
        LayerGroup("stem", stem, list(stem_params or [])),
        *(LayerGroup(f"stage{i}", s) for i, s in enumerate(stages, 1)),
        LayerGroup("head", head),
    ]


def groups_from_names(model: nn.Module, names: list[list[str]]) -> list[tuple[list[nn.Module], list[nn.Parameter]]]:
    """Parameter-name groups -> per group, the largest submodules whose parameters all fall in it, and the
    parameters left over (owned directly by a module that spans groups)."""
    where = {n: i for i, group in enumerate(names) for n in group}
    out: list[tuple[list[nn.Module], list[nn.Parameter]]] = [([], []) for _ in names]

    def visit(prefix: str, module: nn.Module) -> None:
        owners = {where[f"{prefix}{n}"] for n, _ in module.named_parameters()}
        if len(owners) == 1 and prefix:  # the whole module lies in one group
            out[owners.pop()][0].append(module)
            return
        for n, p in module.named_parameters(recurse=False):
            out[where[f"{prefix}{n}"]][1].append(p)
        for n, child in module.named_children():
            visit(f"{prefix}{n}.", child)

    visit("", model)
    return out
