"""Run the frozen part of the model once: what a cached phase trains on, for K augmented views of each image.

    data = frozen_outputs(model, backbone, frozen_groups, train, views=4, batch_size=64, seed=7, pool=False)

A head phase caches pooled features; a `last:N` phase caches the activation at the input of its first
trainable group, so each epoch runs only the trainable groups. The frozen groups run in eval mode (as they do
uncached: frozen BatchNorm keeps its statistics), without autograd, in channels_last on the CPU (1.5x faster
for inference here, though slower for training), once per view. Views come from a generator seeded by the
recipe, so a resumed run recomputes exactly the same cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psutil
import torch
from torch import nn

from edgetl.backbones import Backbone, LayerGroup, run_groups
from edgetl.train.data import augment_batch, center_crop_batch, normalize
from edgetl.train.epoch import Batcher, memory_format

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.3  # of available memory a cache may take; beyond it bf16 storage, then recomputing


@contextlib.contextmanager
def inference_layout(model: nn.Module, device: torch.device) -> Iterator[torch.memory_format]:
    """channels_last for the block on the CPU (training there stays NCHW, which is faster for its backward)."""
    if device.type != "cpu":
        yield memory_format(device)
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(MEMORY_FRACTION * torch.cuda.mem_get_info(device)[0])
    return int(MEMORY_FRACTION * psutil.virtual_memory().available)


@torch.no_grad()  # not inference_mode: the layout switch replaces parameters that must stay trainable
def frozen_outputs(model: nn.Module, backbone: Backbone, frozen: list[LayerGroup], data: Batcher, *, views: int,
                   batch_size: int, seed: int, pool: bool) -> Batcher | None:
    """The frozen groups' outputs (pooled when `pool`) for `views` augmented views of every image, or for the
    center view alone when `views` is 0; None when they would not fit in memory (the caller recomputes)."""
    was_training = model.training
    model.eval()
    device, n = data.device, len(data)
    copies = max(views, 1)
    generator = torch.Generator().manual_seed(seed)
    crop = data.preprocessing.crop_size
    out: torch.Tensor | None = None
    try:
        with inference_layout(model, device) as layout:
            for view in range(copies):
                for start in range(0, n, batch_size):
                    images = data.x[start:start + batch_size]
                    if views:
                        images = augment_batch(images, crop_size=crop, generator=generator)
                    elif images.shape[-1] != crop:
                        images = center_crop_batch(images, crop)
                    x = normalize(images.to(device), data.preprocessing).contiguous(memory_format=layout)
                    y = run_groups(frozen, x)
                    if pool:
                        y = backbone.pool(model, y)
                    if out is None:
                        out = _allocate((copies * n, *y.shape[1:]), device=device, what=f"{copies} view(s)")
                        if out is None:
                            return None
                    out[view * n + start:view * n + start + len(y)] = y.contiguous()
    finally:
        model.train(was_training)
    out = out.contiguous(memory_format=memory_format(device)) if out.ndim == 4 else out
    return Batcher(out, data.y.repeat(copies).to(device), data.preprocessing, device, features=True)


def _allocate(shape: tuple[int, ...], *, device: torch.device, what: str) -> torch.Tensor | None:
    """fp32 when it fits the budget, else bf16 (half the memory; the trainable part still computes in fp32)."""
    numel = 1
    for d in shape:
        numel *= d
    budget = _budget(device)
    for dtype in (torch.float32, torch.bfloat16):
        size = numel * torch.empty((), dtype=dtype).element_size()
        if size <= budget:
            if dtype != torch.float32:
                log.info("cached outputs of %s stored as bf16 (%.0f MB): fp32 would exceed %.0f MB", what,
                         size / 1e6, budget / 1e6)
            return torch.empty(shape, dtype=dtype, device=device)
    log.warning("the frozen part's outputs for %s need %.0f MB even in bf16, over the %.0f MB budget: "
                "recomputing them every epoch instead (lower views or image_size to cache them)", what,
                numel * 2 / 1e6, budget / 1e6)
    return None
