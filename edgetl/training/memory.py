"""Will training fit in memory? Counted on the model built on the meta device (no memory, under a second), so a
backbone that cannot fit is refused in seconds, before it is built or any image is decoded.

    check_fits(recipe, get_backbone("timm:vit_giant_patch14_dinov2"), device=torch.device("cpu"))

The figure is a floor, not a forecast: fp32 weights (4 bytes a parameter), the copy of the best epoch's weights
that early stopping keeps on the CPU (4 more), and for the parameters the largest phase trains, their gradients
and the optimizer's state (AdamW: 12 bytes in all, SGD with momentum: 8). Activations, decoded images and the
checkpoints' copies come on top, so a refusal is certain and a pass is no promise. On CUDA the weights, gradients
and optimizer state live on the GPU (its free memory), the model is built and the best copy kept in RAM.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from edgetl.backbones import Backbone, create_meta_model
from edgetl.errors import EdgetlError
from edgetl.recipe import Recipe
from edgetl.training.phases import trainable_groups

log = logging.getLogger(__name__)

WEIGHT_BYTES = 4  # fp32: weights and checkpoints stay fp32 (autocast only computes in bf16)
TRAINED_BYTES = {"adamw": 4 + 8, "sgd": 4 + 4}  # gradient + optimizer state, per trained parameter
GIB = 2**30


@dataclass(frozen=True)
class Estimate:
    params: int
    trained: int  # the most any one phase trains
    host: int  # bytes of RAM at least, for every process of this run on this machine
    device: int  # bytes of GPU memory at least (0 when training on the CPU or MPS)


def estimate(recipe: Recipe, backbone: Backbone, *, device: torch.device, num_classes: int = 2,
             image_size: int | None = None) -> Estimate | None:
    """The floor for training `backbone` with `recipe`; None when the meta device cannot build it (no guard)."""
    model = create_meta_model(backbone, num_classes=num_classes, image_size=image_size,
                              head=recipe.head.spec() if recipe.head else None)
    if model is None:
        log.info("%s: no memory estimate (its builder does not run on the meta device)", backbone.name)
        return None
    params = sum(p.numel() for p in model.parameters())
    groups = backbone.groups(model)
    if recipe.lora is not None:  # adapters, norms and the head: the head alone is the floor
        trained = sum(p.numel() for p in groups[-1].parameters())
    else:
        trained = max(sum(p.numel() for g in trainable_groups(groups, phase, backbone=backbone.name)
                          for p in g.parameters()) for phase in recipe.phases)
    state = TRAINED_BYTES.get(recipe.optimizer, TRAINED_BYTES["adamw"]) * trained
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: each rank holds its own copies
    if device.type == "cuda":
        return Estimate(params, trained, host=2 * WEIGHT_BYTES * params * local_processes,
                        device=WEIGHT_BYTES * params + state)
    return Estimate(params, trained, host=(2 * WEIGHT_BYTES * params + state) * local_processes, device=0)


def available_memory() -> int:
    """Bytes this process can still take: the machine's available memory, or less where a container's cgroup
    limit or `ulimit -v` says so (psutil sees the whole machine from inside a container)."""
    limits = [psutil.virtual_memory().available]
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - psutil.Process().memory_info().vms))
    return min(limits)


def _cgroup_headroom() -> int | None:
    """The cgroup's limit less what it uses, page cache it can drop not counted (v2, else v1); None if unlimited."""
    for limit, usage, stat, inactive in (("memory.max", "memory.current", "memory.stat", "inactive_file"),
                                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                          "memory/memory.stat", "total_inactive_file")):
        root = Path("/sys/fs/cgroup")
        try:
            text = (root / limit).read_text().strip()
            if text == "max" or int(text) >= 2**62:  # v1 writes "unlimited" as a huge number
                return None
            used = int((root / usage).read_text())
            cache = next((int(line.split()[1]) for line in (root / stat).read_text().splitlines()
                          if line.startswith(inactive + " ")), 0)
        except (OSError, ValueError):
            continue
        return max(0, int(text) - (used - cache))
    return None


def check_fits(recipe: Recipe, backbone: Backbone, *, device: torch.device, image_size: int | None = None) -> None:
    """One line naming the backbone, the floor and what is free, when training cannot fit here."""
    floor = estimate(recipe, backbone, device=device, image_size=image_size)
    if floor is None:
        return
    what = (f"{backbone.name} has {floor.params / 1e6:,.0f} M parameters; training {floor.trained / 1e6:,.0f} M "
            f"of them (fp32 weights, a copy of the best, gradients and {recipe.optimizer} state) needs at least")
    fix = "choose a smaller backbone (`edgetl backbones` lists them) or a machine with more memory"
    free = available_memory()
    if floor.host > free:
        raise EdgetlError(f"{what} {floor.host / GIB:.1f} GiB of memory and {free / GIB:.1f} GiB is available — {fix}")
    if floor.device:
        gpu_free, _ = torch.cuda.mem_get_info(device)
        if floor.device > gpu_free:
            raise EdgetlError(f"{what} {floor.device / GIB:.1f} GiB on {device} and {gpu_free / GIB:.1f} GiB is free "
                              f"there — {fix}")
    log.info("%s: training needs at least %.1f GiB (%.1f GiB available)", backbone.name, floor.host / GIB, free / GIB)
