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

from edgetl.errors import EdgetlError, TrainingError
from edgetl.preprocessing import Preprocessing
from edgetl.train.data import augment_batch, center_crop_batch, normalize
from edgetl.train.state import EpochProgress


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
                generator_state: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches (in order without a generator); `skip` + `generator_state` continue a cut epoch."""
        n = len(self.y)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if generator_state is not None:
            generator.set_state(generator_state)
        for start in range(skip * batch_size, n, batch_size):
            idx = order[start:start + batch_size]
            if generator is not None and start > 0 and len(idx) < min(2, batch_size):
                break  # a last, partial batch of one breaks BatchNorm in train mode
            yield self.inputs(idx, generator), self.y[idx].to(self.device, non_blocking=True)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.features:  # cached outputs of the frozen part; bf16 when fp32 would not fit
            return self.x[idx.to(self.x.device)].float()
        images = self.x[idx]
        crop = self.preprocessing.crop_size
        if self.augment:
            images = augment_batch(images, crop_size=crop, generator=generator)
        elif images.shape[-1] != crop:
            images = center_crop_batch(images, crop)
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = normalize(images.to(self.device, non_blocking=True), self.preprocessing)
        return x.contiguous(memory_format=memory_format(self.device))


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 or (rest and not full) else 0)


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

    `should_stop` is polled after each step: the step finishes, then Interrupted carries the progress.
    """
    start = start or EpochProgress()
    if start.rng_state is not None:
        torch.set_rng_state(start.rng_state)
    autocast = torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=data.device.type == "cuda")
    loss_sum = torch.full((), start.loss_sum, device=data.device)
    correct = torch.full((), start.correct, device=data.device, dtype=torch.long)
    seen, step, t0 = start.seen, start.step, time.perf_counter() - start.seconds
    for x, y in data.batches(batch_size, generator, skip=start.step, generator_state=start.generator_state):
        with autocast:
            logits = forward(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        step += 1
        callbacks.step()
        if should_stop():
            raise Interrupted(EpochProgress(step, loss_sum.item(), int(correct.item()), seen, time.perf_counter() - t0,
                                            generator.get_state(), torch.get_rng_state()))
    loss_mean = loss_sum.item() / max(seen, 1)
    if not math.isfinite(loss_mean):
        raise TrainingError(f"training loss became {loss_mean}; lower the learning rate — the last good checkpoint is kept")
    return loss_mean, correct.item() / max(seen, 1)


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], data: Batcher, *, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy, in eval mode."""
    autocast = torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=data.device.type == "cuda")
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for x, y in data.batches(batch_size, None):
        with autocast:
            logits = forward(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(len(data), 1)
    return loss_sum.item() / n, correct.item() / n
