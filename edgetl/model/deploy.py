"""Checkpoint model -> deploy model: merge LoRA adapters, fold every BatchNorm into its convolution.

    deployed, report = deploy_model(model, example=torch.randn(2, 3, 224, 224))

Pure, like timm's `reparameterize_model`: the input model is left untouched and a folded deep copy of the
same class comes back, so its state-dict names and structure stay recognisable. `torch.fx` finds which
convolution feeds which BatchNorm (the only reliable way: module order is not data flow), and
`torch.nn.utils.fusion.fuse_conv_bn_eval` does the algebra.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgetl.errors import ExportError
from edgetl.model.lora import count_lora, merge_lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployReport:
    bn_before: int
    bn_after: int
    lora_before: int
    lora_after: int
    max_abs_diff: float | None  # deployed vs original outputs on the example batch; None without one
    params: int
    max_abs_logit: float | None = None  # the original's largest |output| there: the scale max_abs_diff is read at
    norms_kept: str | None = None  # why nothing was folded: the model normalizes with LayerNorm / GroupNorm

    @property
    def bn_folded(self) -> int:
        return self.bn_before - self.bn_after

    @property
    def lora_merged(self) -> int:
        return self.lora_before - self.lora_after


class _LeafTracer(torch.fx.Tracer):
    """Keeps every Conv and BatchNorm (subclasses included) as one opaque call.

    timm's `Conv2dSame` computes its TF "same" padding from the input size with `math` calls that a symbolic
    trace cannot run, and `BatchNormAct2d` would otherwise be traced into its drop + activation; as leaves,
    both show up as the single `call_module` nodes we want to pair.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.modules.conv._ConvNd, _BatchNorm)) or super().is_leaf_module(m, module_qualified_name)


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy that can be changed without touching `model`, parametrized (LoRA) modules included.

    torch gives a parametrized module a generated class holding the parametrized properties, and deepcopy
    shares that class with the original; `remove_parametrizations` (the LoRA merge) then deletes the property
    from the shared class and breaks the original. So each parametrized module of the copy gets its own class.
    """
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(cls.__name__, cls.__bases__, own)
    return copied


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm whose input is a convolution's output and nothing else's."""
    try:
        graph = _LeafTracer().trace(model)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError) as e:  # Python control flow on tensor values
        raise ExportError(f"cannot trace {type(model).__name__} to find its BatchNorm layers ({e}) — "
                          "report it with the backbone name") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], nn.modules.conv._ConvNd)):
            continue
        # A conv whose output is also used elsewhere, or a module called twice, cannot absorb the BN.
        if len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((src.target, node.target))
    return pairs


def _after_bn(bn: _BatchNorm) -> nn.Module:
    """What is left of a BatchNorm once its normalization lives in the conv before it."""
    if type(bn).forward is _BatchNorm.forward:  # BatchNorm1d/2d/3d: nothing but the normalization
        return nn.Identity()
    # timm's norm+act layers (BatchNormAct2d) normalize, then apply `drop` and `act`: those must stay.
    if hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    raise ExportError(f"cannot fold {type(bn).__module__}.{type(bn).__qualname__}: its forward does more than "
                      "normalize and edgetl does not know what to keep — report it with the backbone name")


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def other_norms(model: nn.Module) -> str | None:
    """'LayerNorm ×25' for a model without BatchNorm: its norms depend on each input, so nothing folds."""
    if count_bn(model):
        return None
    kinds = Counter(type(m).__name__ for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm)))
    return ", ".join(f"{name} ×{n}" for name, n in kinds.items()) or None


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm that directly follows a convolution (the model must be in eval mode).
    A model without BatchNorm is left as it is, untraced (LayerNorm and GroupNorm normalize per input)."""
    if not count_bn(model):
        return model
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _set(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(model, bn_name, _after_bn(bn))
    return model


def _check_nothing_left(model: nn.Module) -> None:
    """Raise ExportError naming the first BatchNorm or LoRA adapter that survived deployment."""
    bn = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if bn:
        raise ExportError(f"{len(bn)} BatchNorm layer(s) could not be folded, e.g. {bn[0]}: not directly after a "
                          "convolution — report it with the backbone name")
    lora = count_lora(model)
    if lora:
        raise ExportError(f"{lora} LoRA adapter(s) are still there after merging — report it with the recipe")


def deploy_model(model: nn.Module, *, example: torch.Tensor | None = None) -> tuple[nn.Module, DeployReport]:
    """A deep copy of `model` ready for export: eval mode, LoRA merged, BatchNorm folded, nothing left over.

    With `example`, the deployed model's outputs are compared with the original's (`max_abs_diff`). `model`
    itself is not changed (its train/eval mode included).
    """
    was_training = model.training
    bn_before, lora_before = count_bn(model), count_lora(model)
    deployed = merge_lora(_copy(model).eval())
    fold_batchnorm(deployed)
    _check_nothing_left(deployed)
    diff = scale = None
    if example is not None:
        try:
            with torch.no_grad():
                expected = model.eval()(example)
                diff, scale = float((deployed(example) - expected).abs().max()), float(expected.abs().max())
        finally:
            model.train(was_training)
    report = DeployReport(bn_before=bn_before, bn_after=count_bn(deployed), lora_before=lora_before,
                          lora_after=count_lora(deployed), max_abs_diff=diff,
                          params=sum(p.numel() for p in deployed.parameters()), max_abs_logit=scale,
                          norms_kept=other_norms(deployed))
    log.info("deploy: %d BatchNorm folded%s, %d LoRA merged, max |Δ| %s", report.bn_folded,
             f" (none to fold: {report.norms_kept} normalize per input and stay)" if report.norms_kept else "",
             report.lora_merged, "n/a" if diff is None else f"{diff:.2e}")
    return deployed, report
