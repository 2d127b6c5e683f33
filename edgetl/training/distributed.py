"""Training across processes with torchrun: one model, each global batch split over the ranks.

    torchrun --nproc_per_node=2 -m edgetl train --recipe quickstart --data photos --out artifacts/ddp

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `session` starts the process group from them (nccl on GPUs,
gloo on the CPU) and everything else asks torch.distributed's own global state through the small functions
here, so a single process (no torchrun) runs exactly the code it always ran.

What a W-process run does, so it equals a 1-process run over the same global batch (tests/training/test_ddp.py):
every rank draws the same shuffled order and the same augmentations for the whole global batch, keeps its own
rows (`shard`), and DDP averages the gradients of the trainable parameters (`wrap`); the loss of a rank is
weighted by its share of the global batch, so uneven last batches average right. Cached frozen-prefix outputs
and evaluation are split by batch over the ranks and summed (`owns`, `all_sum`). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from edgetl.errors import EdgetlError, TrainingError

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=30)  # a rank waiting longer than this at a collective gives up


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes the run folder and talks to the user (torchrun's RANK
    decides before the process group exists)."""
    return rank() == 0 if active() else int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """Started by torchrun (or another launcher setting the same variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend() -> str | None:
    return dist.get_backend() if active() else None


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """The process group for one training call under torchrun (a no-op otherwise); yields this rank's device."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    if not dist.is_available():
        raise EdgetlError("this PyTorch build has no torch.distributed; run edgetl train without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo", timeout=TIMEOUT)
    else:
        raise EdgetlError(f"torchrun training runs on cuda (nccl) or the cpu (gloo), not on {device.type}")
    try:
        yield device
    except RuntimeError as e:
        if not _peer_failure(e):
            raise
        # another rank died (killed, out of memory, its own error): say so in one line
        raise TrainingError(f"rank {rank()}: another training process stopped ({str(e).splitlines()[0][:160]}); "
                            f"the last finished epoch is in last.pt — continue with: {resume_command('RUN')}") from None
    finally:
        dist.destroy_process_group()


def _peer_failure(error: RuntimeError) -> bool:
    """A collective that failed because a peer went away: torch's DistError, or gloo's plain RuntimeError."""
    return isinstance(error, dist.DistError) or bool(_PEER_GONE.search(str(error)))


_PEER_GONE = re.compile(r"gloo/transport|Connection closed by peer|Connection reset by peer|NCCL (error|communicator)")


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch: every W-th, starting at its rank (the whole batch alone)."""
    return rows[rank()::world_size()] if active() else rows


def owns(index: int) -> bool:
    """Whether this rank computes item `index` of work split round-robin (batches of a cache pass, say)."""
    return index % world_size() == rank()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place (gloo reduces float32 and integer tensors; others go through float32)."""
    if not active():
        return tensor
    if tensor.dtype in (torch.float32, torch.float64, torch.int64) or tensor.is_cuda:
        dist.all_reduce(tensor)
        return tensor
    wide = tensor.float()
    dist.all_reduce(wide)
    tensor.copy_(wide)
    return tensor


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request that reached one rank first)."""
    if not active():
        return flag
    return bool(all_sum(torch.tensor([float(flag)])).item())


class _Step(nn.Module):
    """A phase's forward (the trainable part after a cached prefix, say) as a module DDP can wrap: DDP hooks
    the gradients of the model's parameters that require grad, whatever path the forward takes to them."""

    def __init__(self, model: nn.Module, forward) -> None:
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def wrap(model: nn.Module, forward, device: torch.device):
    """DDP over the phase's trainable parameters (built per phase: freezing changes what it all-reduces);
    the forward unchanged when not distributed. Buffers are not broadcast: frozen BatchNorm keeps its
    statistics and training BatchNorm sees each rank's own rows, as per-GPU BatchNorm does."""
    if not active():
        return forward
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch 2.14 renamed the option (and warns on the old name); older versions know only the old one
    named = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    return DistributedDataParallel(_Step(model, forward), device_ids=[device.index] if device.type == "cuda" else None,
                                   **{named: False})


def resume_command(run_dir: object) -> str:
    """How to continue a run, as the user started it (under torchrun, or alone)."""
    launcher = "torchrun --nproc_per_node=N -m edgetl" if launched() else "edgetl"
    return f"{launcher} train --resume {run_dir}"
