"""Runners: load a model file into its runtime and call it on float32 NCHW numpy arrays, getting logits back.

    runner = RUNNERS["onnx"](Path("RUN/export/model.onnx"), threads=1); logits = runner(x)

`RUNNERS` maps an export format to its loader (onnxruntime's CPUExecutionProvider for ONNX, `torch.jit.load`
for TorchScript); `load_eager` is the trained checkpoint as PyTorch runs it, the reference for parity and
the baseline for speed-ups. Torch runners use PyTorch's global thread count: set it around the calls
(`latency.torch_threads`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# onnxruntime's type strings -> the manifest's dtype names
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(int32)": "int32", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class Signature:
    """One graph input or output as the file declares it; symbolic dims are strings (or None)."""

    name: str
    shape: list[int | str | None]
    dtype: str


@dataclass
class Runner:
    run: Callable[[np.ndarray], np.ndarray]
    inputs: list[Signature] | None = None  # None: the format declares no names and shapes (TorchScript)
    outputs: list[Signature] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def load_onnx(path: Path, *, threads: int | None = None) -> Runner:
    """An onnxruntime CPU session; `threads` sets intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session optimizer chatter in the report
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # a sequential classifier graph: no parallel branches to use
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inputs = [Signature(i.name, list(i.shape), ORT_DTYPES.get(i.type, i.type)) for i in session.get_inputs()]
    outputs = [Signature(o.name, list(o.shape), ORT_DTYPES.get(o.type, o.type)) for o in session.get_outputs()]
    feed = inputs[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {feed: x})[0]

    return Runner(run=run, inputs=inputs, outputs=outputs)


def load_torchscript(path: Path, *, threads: int | None = None) -> Runner:
    """`torch.jit.load` on the CPU, eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the format still ships
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return Runner(run=_torch_call(module))


def load_eager(path: Path, *, threads: int | None = None) -> Runner:
    """The trained checkpoint as PyTorch runs it: unfolded (LoRA unmerged, BN separate), eval, fp32."""
    from edgetl.checkpoint import load_model

    model, _ = load_model(path)
    return torch_runner(model)


def torch_runner(module: nn.Module) -> Runner:
    """An in-memory PyTorch module in eval mode, fp32."""
    return Runner(run=_torch_call(module.float().eval()))


def _torch_call(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, not one logits tensor")
        return out.numpy()

    return run


RUNNERS: dict[str, Callable[..., Runner]] = {"onnx": load_onnx, "torchscript": load_torchscript}
