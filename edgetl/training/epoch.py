"""One epoch: batches from decoded images (or cached features), a training pass, an evaluation pass.

    loss, acc = train_one_epoch(model, Batcher(x, y, prep, device), optimizer=..., scheduler=..., ...)

Plain functions with explicit arguments; the phase loop in `stage.py` decides what they run on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from edgetl.confusion import TOP_K
from edgetl.data.augment import augment_batch, center_crop_batch, normalize
from edgetl.errors import EdgetlError, TrainingError
from edgetl.preprocessing import Preprocessing
from edgetl.training import distributed
from edgetl.training.state import EpochProgress


class Callbacks:
    """Progress hooks; the CLI renders them. Every method is optional."""

    def data_progress(self, done: int, total: int) -> None: ...
    def phase_start(self, *, index: int, phase, steps: int, trainable: dict[str, int], cached: bool) -> None: ...
    def step(self) -> None: ...
    def epoch_end(self, record: dict) -> None: ...


def select_device(spec: str = "auto") -> torch.device:
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if spec == "auto":
        return torch.device("cuda" if available["cuda"] else "mps" if available["mps"] else "cpu")
    if spec not in available:
        raise EdgetlError(f"unknown --device {spec!r}; use auto, cpu, cuda or mps")
    if not available[spec]:
        raise EdgetlError(f"--device {spec}: no such device is visible here; use --device cpu or --device auto")
    return torch.device(spec)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on GPUs; on the CPU it halves the speed of training steps here (depthwise convolution
    backward), though inference is faster — measured with benchmarks/bench_train.py."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where the GPU has it (Ampere and later), else fp16 with a GradScaler;
    None (fp32) elsewhere — CPU autocast is slower than fp32 for these convnets."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device) -> torch.autocast:
    dtype = autocast_dtype(device)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@dataclass
class Batcher:
    """Turns stored uint8 images (or cached features) into model inputs on the device."""

    x: torch.Tensor
    y: torch.Tensor
    preprocessing: Preprocessing
    device: torch.device
    augment: bool = False
    features: bool = False  # x holds cached features already on the device

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None, *, skip: int = 0,
                generator_state: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Shuffled batches (in order without a generator): (inputs, targets, global batch size). Under torchrun
        each rank gets its rows of the same global batch. `skip` + `generator_state` continue a cut epoch."""
        n = len(self.y)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if generator_state is not None:
            generator.set_state(generator_state)
        for start in range(skip * batch_size, n, batch_size):
            idx = order[start:start + batch_size]
            if generator is not None and start > 0 and len(idx) < max(min(2, batch_size), distributed.world_size()):
                break  # a last batch of one breaks BatchNorm in train mode; under torchrun every rank needs a row
            mine = distributed.shard(torch.arange(len(idx)))
            yield self.inputs(idx, generator, rows=mine), self.y[idx[mine]].to(self.device, non_blocking=True), len(idx)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None, *, rows: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The model inputs for images `idx` (only their `rows`, when given: a rank's share of the batch)."""
        if self.features:  # cached outputs of the frozen part; bf16 when fp32 would not fit
            idx = idx if rows is None else idx[rows]
            return self.x[idx.to(self.x.device)].float()
        crop = self.preprocessing.crop_size
        if self.augment:  # the whole batch's draws on every rank, so W processes augment as one does
            images = augment_batch(self.x[idx], crop_size=crop, generator=generator)
            images = images if rows is None else images[rows]
        else:
            images = self.x[idx if rows is None else idx[rows]]
            if images.shape[-1] != crop:
                images = center_crop_batch(images, crop)
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = normalize(images.to(self.device, non_blocking=True), self.preprocessing)
        return x.contiguous(memory_format=memory_format(self.device))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """The batches `Batcher.batches` yields in training (its last-batch rule)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= max(min(2, batch_size), distributed.world_size()) or (rest and not full) else 0)


class Interrupted(Exception):
    """Raised between two steps when a stop was requested; carries the epoch's progress."""

    def __init__(self, progress: EpochProgress) -> None:
        super().__init__("interrupted")
        self.progress = progress


def train_one_epoch(forward: Callable[[torch.Tensor], torch.Tensor], data: Batcher, *, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, batch_size: int,
                    generator: torch.Generator, callbacks: Callbacks, start: EpochProgress | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> tuple[float, float]:
    """One pass over the data; losses stay on the device (no per-step host sync) until the end.

    `should_stop` is polled after each step: the step finishes, then Interrupted carries the progress. Under
    torchrun the ranks decide together (one tiny all-reduce per step), so they all stop after the same step.
    """
    start = start or EpochProgress()
    if start.rng_state is not None:
        torch.set_rng_state(start.rng_state)
    autocast = _autocast(data.device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(data.device.type, enabled=autocast_dtype(data.device) == torch.float16)
    sums = Sums(data.device)
    ranks = distributed.world_size()
    step, t0 = start.step, time.perf_counter() - start.seconds
    for x, y, total in data.batches(batch_size, generator, skip=start.step, generator_state=start.generator_state):
        with autocast:
            logits = forward(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients: weigh each rank's mean by its share of the global batch
        scaler.scale(loss * (len(y) * ranks / total) if ranks > 1 else loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums.add(loss.detach() * len(y), logits, y)
        step += 1
        callbacks.step()
        if distributed.agree(should_stop()):
            loss_sum, correct, seen = sums.total(start)
            raise Interrupted(EpochProgress(step, loss_sum, correct, seen, time.perf_counter() - t0,
                                            generator.get_state(), torch.get_rng_state()))
    loss_sum, correct, seen = sums.total(start)
    loss_mean = loss_sum / max(seen, 1)
    if not math.isfinite(loss_mean):
        raise TrainingError(f"training loss became {loss_mean}; lower the learning rate — the last good checkpoint is kept")
    return loss_mean, correct / max(seen, 1)


class Sums:
    """Loss sum, correct count and images seen, kept on the device (no per-step host sync); summed over the
    ranks when read."""

    def __init__(self, device: torch.device) -> None:
        # float64 where the device has it: exact counts and a loss sum that does not drift over long epochs
        self.values = torch.zeros(3, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.values[0] += loss_sum
        self.values[1] += (logits.argmax(1) == y).sum()
        self.values[2] += len(y)

    def total(self, start: EpochProgress | None = None) -> tuple[float, int, int]:
        start = start or EpochProgress()
        loss_sum, correct, seen = distributed.all_sum(self.values.clone()).tolist()
        return start.loss_sum + loss_sum, start.correct + round(correct), start.seen + round(seen)


@dataclass
class Evaluation:
    """An evaluation pass: mean loss and accuracy, and each row's predicted class, its probability and whether
    the true class is among the TOP_K highest (in the data's order: what per-class figures and the confidently
    wrong images are read from)."""

    loss: float
    accuracy: float
    predicted: list[int]
    confidence: list[float]
    top5: list[bool] | None = None  # None with TOP_K classes or fewer: top-5 would be 100 % by definition

    @property
    def top5_accuracy(self) -> float | None:
        return None if self.top5 is None else sum(self.top5) / max(len(self.top5), 1)


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], data: Batcher, *, batch_size: int) -> Evaluation:
    """Mean cross-entropy (no label smoothing), accuracy and per-row predictions, in eval mode (each rank its
    rows of each batch; the rows are summed over the ranks, each filled by one)."""
    autocast = _autocast(data.device)
    sums = Sums(data.device)
    # per row: predicted class, its probability, and whether the target is among the TOP_K highest logits
    rows = torch.zeros((len(data), 3), dtype=sums.values.dtype, device=data.device)
    ranked = False
    for k, (x, y, total) in enumerate(data.batches(batch_size, None)):  # in order: batch k starts at row k * size
        if not len(y):  # a last batch with fewer rows than ranks
            continue
        with autocast:
            logits = forward(x).float()
        sums.add(nn.functional.cross_entropy(logits, y, reduction="sum"), logits, y)
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        ranked = logits.shape[1] > TOP_K
        in_top = (logits.topk(TOP_K, dim=1).indices == y[:, None]).any(dim=1) if ranked else predicted == y
        mine = k * batch_size + distributed.shard(torch.arange(total, device=data.device))
        rows[mine] = torch.stack([predicted.to(rows.dtype), confidence.to(rows.dtype), in_top.to(rows.dtype)], dim=1)
    loss_sum, correct, seen = sums.total()
    predicted, confidence, in_top = distributed.all_sum(rows).cpu().T.tolist()
    n = max(seen, 1)
    return Evaluation(loss=loss_sum / n, accuracy=correct / n, predicted=[round(p) for p in predicted],
                      confidence=confidence, top5=[bool(round(h)) for h in in_top] if ranked else None)
