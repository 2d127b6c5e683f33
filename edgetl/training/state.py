"""Where training stands, as one typed object: the resume point, the best epoch, early stopping.

    state = TrainState.from_checkpoint(load_checkpoint(run.checkpoint("last")))

last.pt holds it next to the weights (`to_checkpoint`), after every epoch and when a stop is requested
mid-epoch, so `edgetl train --resume` continues bit for bit: same phase, epoch, step, optimizer and scheduler
state, random generators, and the same early-stopping count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, detached, on the CPU: safe to keep while training goes on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class EpochProgress:
    """Where an epoch stands: enough to continue it exactly after an interruption."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    generator_state: torch.Tensor | None = None  # the epoch generator after `step` steps
    rng_state: torch.Tensor | None = None  # torch's global generator (dropout) after `step` steps


def better(val_acc: float, val_loss: float, *, than_acc: float, than_loss: float) -> bool:
    """The rule for "best": higher val accuracy, and at equal accuracy lower val loss.

    Accuracy is what ships; loss alone (label smoothing, a few confident mistakes) picked a checkpoint 1.4 pts
    below the best one reached on real photos. Loss breaks the ties that a small val set makes common.
    """
    return val_acc > than_acc or (val_acc == than_acc and val_loss < than_loss)


@dataclass
class Best:
    """The epoch best.pt was taken at, and its figures."""

    val_loss: float = math.inf
    val_acc: float = 0.0
    epoch: int = 0
    # its predictions on the val split, row by row (edgetl.training.epoch.Evaluation): train.json's per-class
    # figures, kept here so that a resumed run still has them; checkpoints before 0.2 have none
    predicted: list[int] | None = None
    confidence: list[float] | None = None
    top5: list[bool] | None = None  # per row, the target among the 5 highest; None with 5 classes or fewer

    def improved_by(self, *, val_acc: float, val_loss: float) -> bool:
        return self.epoch == 0 or better(val_acc, val_loss, than_acc=self.val_acc, than_loss=self.val_loss)


@dataclass
class EarlyStopping:
    """Within one phase: the best epoch (by `better`), epochs without improvement, and the weights to restore."""

    best_loss: float = math.inf
    bad: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_acc: float = -1.0  # absent from checkpoints written before accuracy decided
    beat_best: bool = False  # an epoch of this phase improved on the run's best.pt

    def update(self, val_acc: float, val_loss: float, model: nn.Module) -> None:
        if better(val_acc, val_loss, than_acc=self.best_acc, than_loss=self.best_loss):
            self.best_acc, self.best_loss, self.bad, self.best_state = val_acc, val_loss, 0, state_copy(model)
        else:
            self.bad += 1

    def should_stop(self, patience: int) -> bool:
        return patience > 0 and self.bad >= patience

    def restore_best(self, model: nn.Module) -> None:
        """The phase ends on its best weights, before the next phase starts."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class TrainState:
    """The resume state last.pt carries besides the weights and the run's metadata."""

    next_phase: int = 0
    next_epoch: int = 0
    global_epoch: int = 0  # epochs done over all phases
    best: Best = field(default_factory=Best)
    early: EarlyStopping | None = None  # None between phases
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    epoch_progress: EpochProgress | None = None  # set when a stop cut an epoch
    epoch_lrs: dict[str, float] | None = None  # the group rates the cut epoch started with

    def to_checkpoint(self) -> dict[str, Any]:
        return {"next_phase": self.next_phase, "next_epoch": self.next_epoch, "global_epoch": self.global_epoch,
                "best": {k: v for k, v in asdict(self.best).items() if v is not None}, "early": None if self.early is None else asdict(self.early),
                "optimizer": self.optimizer, "scheduler": self.scheduler,
                "epoch_progress": None if self.epoch_progress is None else asdict(self.epoch_progress),
                "epoch_lrs": self.epoch_lrs}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        early, progress = ckpt.get("early"), ckpt.get("epoch_progress")
        return cls(next_phase=ckpt["next_phase"], next_epoch=ckpt["next_epoch"], global_epoch=ckpt["global_epoch"],
                   best=Best(**ckpt["best"]), early=EarlyStopping(**early) if early else None,
                   optimizer=ckpt.get("optimizer"), scheduler=ckpt.get("scheduler"),
                   epoch_progress=EpochProgress(**progress) if progress else None, epoch_lrs=ckpt.get("epoch_lrs"))
