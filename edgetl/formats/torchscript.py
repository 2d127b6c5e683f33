"""TorchScript: a traced, frozen `.pt` that loads with torch alone (LibTorch, `torch.jit.load`).

    edgetl export RUN --format torchscript

torch 2.14 deprecates TorchScript in favour of torch.export, but a frozen .pt is still what LibTorch loads.
That deprecation is not a problem with the model: it is said once, quietly; any other warning (a
TracerWarning about data-dependent control flow, say) still reaches the user.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.formats.base import ExportMeta, Format, Runner, embedded_meta, torch_runner

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

EXTRA_FILE = "edgetl.json"  # the file's own description, beside its weights
_JIT_DEPRECATION = r"`torch\.jit\.(trace|trace_method|freeze|save)` is deprecated"


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """A traced, frozen TorchScript file; its `edgetl.json` extra file describes it."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        with torch.no_grad():
            # check_trace re-traces to compare graphs and costs 3-5x the trace; output parity is verify's job.
            frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        described = {**meta.describe(), "labels": meta.labels, "preprocessing": meta.preprocessing, **meta.io()}
        torch.jit.save(frozen, str(path), _extra_files={EXTRA_FILE: json.dumps(described)})
    log.info("torchscript: torch.jit is deprecated in torch %s, but a frozen trace is still what LibTorch loads",
             torch.__version__)
    return {}


def load_torchscript(path: Path, *, threads: int | None = None) -> Runner:
    """`torch.jit.load` on the CPU, eval mode (threads: PyTorch's global count, set by the caller)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the format still ships
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return torch_runner(module)


def read_torchscript_meta(path: Path) -> dict[str, Any] | None:
    """The file's `edgetl.json` extra file (what `write_torchscript` put there); None when it has none."""
    import torch

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated", as in load_torchscript
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    text = extra[EXTRA_FILE]
    text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    if not text:
        return None
    try:
        described = json.loads(text)
    except ValueError:
        described = None
    # Not a JSON object: keep the text as both fields, so it differs from the manifest (a mismatch, not a crash).
    return embedded_meta(described if isinstance(described, dict) else {"labels": text, "preprocessing": text})


FORMAT = Format(name="torchscript", file="model.torchscript.pt", write=write_torchscript, load=load_torchscript,
                runtime="torch.jit", packages=("torch",), read_meta=read_torchscript_meta)
