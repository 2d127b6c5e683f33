"""Run the frozen part of the model once: what a cached phase trains on, for K augmented views of each image.

    data = frozen_outputs(model, backbone, frozen_groups, train, views=4, batch_size=64, seed=7, pool=False)

A head phase caches pooled features; a `last:N` phase caches the activation at the input of its first
trainable group, so each epoch runs only the trainable groups. The frozen groups run in eval mode (as they do
uncached: frozen BatchNorm keeps its statistics), without autograd, in channels_last on the CPU (1.5x faster
for inference here, though slower for training), once per view. View 0 is the center crop a device sees; the
others are random-resized crops with flips from a generator seeded by the recipe, so a resumed run recomputes
exactly the same cache. `PrefixCache` keeps one such pass for the whole run: every cached phase continues
from the shallowest depth any of them needs, so `head` then `last:1` pay for the expensive early stages once.

A large pass on the CPU runs the frozen prefix in onnxruntime (`onnx_prefix`): on a 2-core CPU it is 3.4x
faster than eager channels_last for Lite0 at 224 px, and its one-time export (~7 s) pays for itself after
~300 images. Its outputs match eager within 1e-4 of their scale, the export parity bar (tests/training/test_cache.py).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator

import psutil
import torch
from torch import nn

from edgetl.backbones import Backbone, LayerGroup, run_groups
from edgetl.data.augment import augment_batch, center_crop_batch, normalize, skip_augment
from edgetl.quiet import quiet
from edgetl.training import distributed
from edgetl.training.epoch import Batcher, memory_format

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.3  # of available memory a cache may take; beyond it bf16 storage, then recomputing
ONNX_MIN_PIXELS = 20e6  # rows x crop²: below it (~400 images at 224 px) the export costs more than it saves
Prefix = Callable[[torch.Tensor], torch.Tensor]


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
                   batch_size: int, seed: int, pool: bool, prefix: Prefix | None = None) -> Batcher | None:
    """The frozen groups' outputs (pooled when `pool`) for `views` views of every image (the center crop, then
    augmented ones), or the center view alone when `views` is 0; None when they would not fit in memory.
    `prefix` computes them instead of eager PyTorch (`onnx_prefix`)."""
    was_training = model.training
    model.eval()
    device, n = data.device, len(data)
    copies = max(views, 1)
    generator = torch.Generator().manual_seed(seed)
    crop = data.preprocessing.crop_size
    out: torch.Tensor | None = None
    try:
        with inference_layout(model, device) as layout:
            batches = ((view, start) for view in range(copies) for start in range(0, n, batch_size))
            for k, (view, start) in enumerate(batches):
                images = data.x[start:start + batch_size]
                mine = distributed.owns(k)  # under torchrun, batches round-robin over the ranks
                if not mine and out is not None:
                    if view > 0:
                        skip_augment(len(images), generator)
                    continue
                if view > 0:
                    images = augment_batch(images, crop_size=crop, generator=generator)
                elif images.shape[-1] != crop:
                    images = center_crop_batch(images, crop)
                x = normalize(images.to(device), data.preprocessing)
                if prefix is not None:
                    y = prefix(x)
                else:
                    y = _prefix(model, backbone, frozen, x.contiguous(memory_format=layout), pool=pool)
                if out is None:  # the first batch, on every rank: its shape sizes the cache
                    out = _allocate((copies * n, *y.shape[1:]), device=device, what=f"{copies} view(s)")
                    if distributed.agree(out is None):
                        return None
                if mine:
                    out[view * n + start:view * n + start + len(y)] = y.contiguous()
    finally:
        model.train(was_training)
    distributed.all_sum(out)  # each rank's rows (zeros elsewhere) -> the whole cache on every rank
    out = out.contiguous(memory_format=memory_format(device)) if out.ndim == 4 else out
    return Batcher(out, data.y.repeat(copies).to(device), data.preprocessing, device, features=True)


def _prefix(model: nn.Module, backbone: Backbone, frozen: list[LayerGroup], x: torch.Tensor, *, pool: bool
            ) -> torch.Tensor:
    """The frozen groups' output; pooled features when they are the whole body (any backbone, sequential or not)."""
    return backbone.features(model, x) if pool else run_groups(frozen, x)


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
            # zeros: under torchrun each rank fills its rows and the ranks' caches are summed
            return (torch.zeros if distributed.active() else torch.empty)(shape, dtype=dtype, device=device)
    log.warning("the frozen part's outputs for %s need %.0f MB even in bf16, over the %.0f MB budget: "
                "recomputing them every epoch instead (lower views or image_size to cache them)", what,
                numel * 2 / 1e6, budget / 1e6)
    return None


@torch.no_grad()
def continue_outputs(model: nn.Module, backbone: Backbone, groups: list[LayerGroup], cached: Batcher, *,
                     batch_size: int, pool: bool) -> Batcher:
    """Cached activations carried through more (still frozen) groups, in eval mode: a deeper cache."""
    if not groups and not pool:
        return cached
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    try:
        for batch, start in enumerate(range(0, len(cached), batch_size)):
            if out is not None and not distributed.owns(batch):
                continue
            y = run_groups(groups, cached.x[start:start + batch_size].float())
            y = backbone.pool(model, y) if pool else y
            if out is None:  # the first batch, on every rank: its shape sizes the output
                out = torch.zeros((len(cached), *y.shape[1:]), dtype=cached.x.dtype, device=y.device)
            if distributed.owns(batch):
                out[start:start + len(y)] = y
    finally:
        model.train(was_training)
    distributed.all_sum(out)
    out = out.contiguous(memory_format=memory_format(out.device)) if out.ndim == 4 else out
    return Batcher(out, cached.y, cached.preprocessing, cached.device, features=True)


class _Prefix(nn.Module):
    """The frozen groups (and the pooling, for a head phase) as one module, to export."""

    def __init__(self, model: nn.Module, backbone: Backbone, frozen: list[LayerGroup], pool: bool) -> None:
        super().__init__()
        self.model, self.backbone, self.frozen, self.pool = model, backbone, frozen, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _prefix(self.model, self.backbone, self.frozen, x, pool=self.pool)


def onnx_prefix(model: nn.Module, backbone: Backbone, frozen: list[LayerGroup], *, pool: bool, crop: int,
                rows: int) -> Prefix | None:
    """The frozen prefix exported to onnxruntime (CPU, torch's thread count), when the pass is big enough for
    the export to pay; None otherwise, or when the export fails (eager PyTorch then does the work)."""
    if rows * crop * crop < ONNX_MIN_PIXELS or not frozen:
        return None
    import onnxruntime as ort

    was_training = model.training
    model.eval()
    try:
        with quiet("onnxscript", "onnx_ir"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.zeros(2, 3, crop, crop)
            program = torch.onnx.export(_Prefix(model, backbone, frozen, pool), (example,), dynamo=True,
                                        verbose=False, dynamic_shapes=({0: "batch"},))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(program.model_proto.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 — any exporter failure only costs speed
        log.info("the frozen prefix did not export to onnxruntime (%s); caching with PyTorch", e)
        return None
    finally:
        model.train(was_training)
    feed = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {feed: x.contiguous().numpy()})[0])

    return run


class PrefixCache:
    """One frozen-prefix pass per run, at the shallowest depth the cached phases with these views need.

    `depth` counts body groups. The cache is dropped when a phase trains a group inside the cached prefix
    (an `all` phase, say): its outputs would no longer be the model's.
    """

    def __init__(self, *, depth: int, views: int, seed: int) -> None:
        self.depth, self.views, self.seed = depth, views, seed
        self.train: Batcher | None = None
        self.val: Batcher | None = None

    def outputs(self, model: nn.Module, backbone: Backbone, body: list[LayerGroup], *, depth: int, train: Batcher,
                val: Batcher, batch_size: int) -> tuple[Batcher, Batcher] | None:
        """(train, val) outputs of body[:depth], pooled when depth is the whole body; None when over budget."""
        assert depth >= self.depth, "a phase asked for a shallower prefix than the run's cache holds"
        whole = self.depth == len(body)  # only head phases: keep pooled features, not the last feature maps
        if self.train is None:
            rows = len(train) * max(self.views, 1) + len(val)
            prefix = (onnx_prefix(model, backbone, body[:self.depth], pool=whole, crop=train.preprocessing.crop_size,
                                  rows=rows) if train.device.type == "cpu" else None)
            kw = {"batch_size": batch_size, "seed": self.seed, "pool": whole, "prefix": prefix}
            self.train = frozen_outputs(model, backbone, body[:self.depth], train, views=self.views, **kw)
            self.val = frozen_outputs(model, backbone, body[:self.depth], val, views=0, **kw) if self.train else None
            if self.val is None:
                self.train = None
                return None
        if whole:
            return self.train, self.val
        pool = depth == len(body)
        rest = body[self.depth:depth]
        return (continue_outputs(model, backbone, rest, self.train, batch_size=batch_size, pool=pool),
                continue_outputs(model, backbone, rest, self.val, batch_size=batch_size, pool=pool))

    def drop_if_trained(self, trained_from: int) -> None:
        """A phase trains body groups from index `trained_from` on: the cache stays valid only above it."""
        if trained_from < self.depth:
            self.train = self.val = None
