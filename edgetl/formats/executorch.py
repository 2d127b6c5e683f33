"""ExecuTorch: a `.pte` program lowered to the XNNPACK delegate, run with `executorch.runtime`.

    edgetl export RUN --format executorch --precision int8      # pip install 'edgetl[executorch]'

`torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` -> `.pte`, PyTorch's
on-device runtime (TorchScript's mobile runtime is retired). The writer reports how much of the graph XNNPACK
runs (`delegation` in the manifest); what it leaves runs in ExecuTorch's portable kernels. The file is written
at a fixed batch (`file_batch`: the export's, else 1) and its manifest entry says so. Its own description
(labels, preprocessing, precision, tensors) is a constant method, `edgetl_meta`, returning JSON.
INT8 is PT2E with ExecuTorch's XNNPACKQuantizer (`pt2e.py`), lowered the same way.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.formats import base
from edgetl.formats.base import Derivation, ExportMeta, Format, Runner, Signature, Source, embedded_meta, require
from edgetl.formats.pt2e import annotated, exported, file_example, layer_names, quantize_pt2e
from edgetl.quiet import quiet, quiet_native

if TYPE_CHECKING:
    import torch
    from torch import nn

EXTRA = "executorch"
META_METHOD = "edgetl_meta"
# ExecuTorch's ScalarType codes -> the manifest's dtype names
DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 15: "bfloat16"}
NO_COMPUTE = ("getitem", "sym_size")  # bookkeeping nodes: not counted as graph that could be delegated
_default_threads: int | None = None  # the runtime's own thread count, before edgetl set one


def _lower(module: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta, precision: str) -> dict[str, Any]:
    """Export, lower to XNNPACK with the description as a constant method, write the .pte; the manifest fields."""
    import torch

    with quiet("torch.utils._pytree", level=logging.ERROR):  # torchao's import warns about torch internals
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    io = meta.io(batch=base.file_batch(meta))
    described = {**meta.describe(precision), "labels": meta.labels, "preprocessing": meta.preprocessing, **io}
    with torch.no_grad():
        program = torch.export.export(module, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                       constant_methods={META_METHOD: json.dumps(described)})
    delegation = _delegation(edge)
    path.write_bytes(edge.to_executorch().buffer)
    return {"delegation": delegation, **meta.own_io(io)}


def _delegation(edge: Any) -> dict[str, Any]:
    """How much of the lowered graph XNNPACK runs: compute nodes inside delegates vs outside, and the op types
    left to ExecuTorch's portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    ops = {name: b for name, b in info.delegation_by_operator.items() if name not in NO_COMPUTE}
    delegated = sum(b.delegated for b in ops.values())
    left = {name: b.non_delegated for name, b in ops.items() if b.non_delegated}
    total = delegated + sum(left.values())
    return {"delegate": "XNNPACK", "subgraphs": info.num_delegated_subgraphs, "delegated_nodes": delegated,
            "non_delegated_nodes": sum(left.values()), "share": round(delegated / total, 4) if total else None,
            "non_delegated_ops": dict(sorted(left.items()))}


def write_executorch(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """A .pte lowered to XNNPACK at the file's batch, describing itself."""
    return _lower(model, example[:base.file_batch(meta)], path, meta=meta, precision="fp32")


def _runtime() -> tuple[Any, Any, Any]:
    """executorch.runtime's Runtime and the thread-pool controls, imported once the extra is known to be there
    (their import warns about torch internals: not the user's concern)."""
    require("executorch", EXTRA, "executorch")
    with quiet("torch.utils._pytree", level=logging.ERROR):
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )
        from executorch.runtime import Runtime
    return Runtime, _threadpool_get_thread_count, _unsafe_reset_threadpool


def _program(path: Path) -> Any:
    runtime, _, _ = _runtime()
    with quiet_native():  # cpuinfo probes print to stderr on the first load
        return runtime.get().load_program(str(path))


def _set_threads(threads: int | None) -> None:
    """ExecuTorch's Python runtime has one thread pool per process, read by XNNPACK when it runs: the last loaded
    runner's count applies (verify loads, times, then loads the next). Set before loading, never during a call;
    None: the runtime's own default."""
    global _default_threads
    _, thread_count, reset_threadpool = _runtime()
    with quiet_native(), warnings.catch_warnings():  # "Resetting threadpool to N threads", cpuinfo probes
        warnings.simplefilter("ignore")  # ExperimentalWarning: the API is, and this is its one documented use
        if _default_threads is None:
            _default_threads = thread_count()
        reset_threadpool(threads or _default_threads)


def load_executorch(path: Path, *, threads: int | None = None) -> Runner:
    """The program's forward method in ExecuTorch's runtime (XNNPACK with `threads`); any batch runs, the
    file's own batch at a time."""
    import torch

    _set_threads(threads)
    method = _program(path).load_method("forward")
    info = method.metadata
    inputs = [_signature(info.input_tensor_meta(i)) for i in range(info.num_inputs())]
    outputs = [_signature(info.output_tensor_meta(i)) for i in range(info.num_outputs())]

    def run_fixed(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy().copy()  # the output buffer is reused per call

    return Runner(run=base.fixed_batch_runner(run_fixed, inputs[0].shape[0]), inputs=inputs, outputs=outputs)


def _signature(tensor: Any) -> Signature:
    """A .pte names no tensors: only shapes and dtypes to compare."""
    return Signature(name=None, shape=list(tensor.sizes()), dtype=DTYPES.get(tensor.dtype(), str(tensor.dtype())))


def read_executorch_meta(path: Path) -> dict[str, Any] | None:
    """The JSON the `edgetl_meta` constant method returns; None for a program without one."""
    program = _program(path)
    if META_METHOD not in program.method_names:
        return None
    [text] = program.load_method(META_METHOD).execute([])
    try:
        described = json.loads(text)
    except ValueError:
        described = None
    return embedded_meta(described if isinstance(described, dict) else {"labels": text, "preprocessing": text})


# --- INT8: PT2E with XNNPACKQuantizer, lowered like fp32 ------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    source: Source
    ends: list[str]
    nodes: int


def _prepare(source: Source, folder: Path) -> Prepared:
    graph = exported(source.model, file_example(source))
    nodes = sum(n.op == "call_function" for n in graph.graph.nodes)
    return Prepared(source=source, ends=layer_names(graph), nodes=nodes)


def _quantize(prepared: Prepared, out: Path, *, calibration: np.ndarray, exclude: list[str],
              **_: Any) -> dict[str, Any]:
    """Static INT8 (the `method` and `activations` the plan names for ONNX do not apply: XNNPACKQuantizer
    observes activations with histograms and makes int8); `exclude`d modules stay float."""
    with quiet("torch.utils._pytree", level=logging.ERROR):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

    source = prepared.source
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    example = file_example(source)
    graph = quantize_pt2e(source.model, example, quantizer=annotated(quantizer, keep_float=exclude),
                          calibration=calibration)
    fields = _lower(graph, example, out, meta=source.meta, precision="int8")
    return {"scheme": "PT2E static (XNNPACKQuantizer)", "weights": "int8 per-channel symmetric",
            "activations": "int8", "method": "histogram", "excluded_nodes": list(exclude), "fields": fields}


INT8 = Derivation(make=_quantize, prepare=_prepare, ends=lambda p: p.ends, size=lambda p: p.nodes)

FORMAT = Format(name="executorch", file="model.pte", write=write_executorch, load=load_executorch,
                runtime="ExecuTorch (XNNPACK)", extra=EXTRA, requires=("executorch",), packages=("executorch",),
                read_meta=read_executorch_meta, derive={"int8": INT8})
