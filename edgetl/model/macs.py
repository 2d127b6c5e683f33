"""What one forward pass costs: multiply-accumulates, counted by torch's own FLOP counter.

    macs = count_macs(model, torch.zeros(1, 3, 224, 224))   # the manifest's `macs`, `edgetl bench`'s MACs column
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def count_macs(model: nn.Module, x: torch.Tensor) -> int | None:
    """Multiply-accumulates of one forward pass on `x` (conv and matmul; FLOPs / 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except Exception as e:  # a counting failure must not block an export
        log.warning("could not count MACs (%s: %s)", type(e).__name__, e)
        return None
    return counter.get_total_flops() // 2
