"""ONNX: one self-contained `.onnx` file, run with onnxruntime's CPU provider.

    edgetl export RUN --format onnx --opset 20

Written through `torch.onnx.export(dynamo=True)` for all five backbones (checked on torch 2.14). The default
opset is the exporter's own (20 on torch 2.14): its op library is written for opset >= 18, and lower ones go
through a version converter that fails on these graphs, so a request the exporter cannot honour is an error
rather than a silently different file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.errors import EdgetlError, ExportError
from edgetl.formats.base import INPUT_NAME, ExportMeta, Format, Runner, Signature, embedded_meta
from edgetl.formats.onnx_portable import check_portable, make_portable
from edgetl.formats.onnx_precision import FP16, INT8
from edgetl.quiet import quiet

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

MIN_OPSET = 18  # the dynamo exporter's op library starts here; converting lower fails on these graphs
# onnxruntime's type strings -> the manifest's dtype names
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(int32)": "int32", "tensor(int64)": "int64"}


def check_request(meta: ExportMeta) -> None:
    import onnx

    if meta.opset is not None and not MIN_OPSET <= meta.opset <= onnx.defs.onnx_opset_version():
        raise EdgetlError(f"--opset {meta.opset} is not supported: torch's ONNX exporter writes opset {MIN_OPSET} "
                          f"to {onnx.defs.onnx_opset_version()} — leave it unset for its default")


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """One self-contained .onnx file, BatchNorm-free, checked, with labels and preprocessing in its metadata."""
    import onnx
    import torch

    dynamic = ({0: "batch"},) if meta.batch is None else None
    with quiet("onnxscript", "onnx_ir"):  # their optimizer logs every pass at INFO: hundreds of lines
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=meta.opset, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[meta.output_name], dynamic_shapes=dynamic)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, meta.describe())
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if meta.opset is not None and opset != meta.opset:  # it falls back to 18 when it cannot convert
        raise ExportError(f"the exporter cannot write opset {meta.opset} (it produced {opset}) — use an opset from "
                          f"{MIN_OPSET} to {onnx.defs.onnx_opset_version()}, or leave --opset unset")
    # The exporter's opset-18+ forms that OpenCV DNN 4.5-4.8 and older OpenVINO refuse or compute wrong,
    # rewritten into forms every engine measured runs right; an explicit --opset is kept as asked.
    proto, rewrites = make_portable(proto, lower_opset=meta.opset is None)
    problems = [str(p) for p in check_portable(proto) if p.breaks]
    for problem in problems:
        log.warning("model.onnx: %s", problem)
    onnx.checker.check_model(proto, full_check=True)
    bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert not bn, f"BatchNormalization left in the ONNX graph after folding: {bn[:3]}"
    # One self-contained file: weights inline, never a side `.onnx.data` (what `torch.onnx.export(f=...)`
    # writes unless external_data=False). Models here are far below protobuf's 2 GB limit.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    final = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": final, "portable": {"exporter_opset": opset, "rewrites": rewrites, "problems": problems}}


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


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                           "MatMulInteger", "DynamicQuantizeLinear"})


def audit_onnx(path: Path) -> tuple[str | None, list[str]]:
    """The precision the file's graph has (int8: quantize/dequantize or integer ops; fp16: float16 weights;
    else fp32), and what makes it untrustworthy: weights stored outside the file (the listed file would be a
    stub whose hash proves nothing) and metadata keys given twice (a first-match reader on a device would read
    another value than verify)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    graphs = [proto.graph, *(a.g for n in proto.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)]
    nodes = [n for g in graphs for n in g.node]
    tensors = [t for g in graphs for t in g.initializer]
    tensors += [a.t for n in nodes for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    problems = []
    outside = [t.name for t in tensors if uses_external_data(t)]
    if outside:
        problems.append(f"{len(outside)} weight tensor(s) stored outside the file (e.g. {outside[0]!r}): an export "
                        f"is one self-contained file")
    keys = [p.key for p in proto.metadata_props]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        problems.append(f"metadata key(s) given twice: {', '.join(twice)}")
    if any(n.op_type in QUANTIZED_OPS for n in nodes):
        precision = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in tensors):
        precision = "fp16"
    else:
        precision = "fp32"
    return precision, problems


def read_onnx_meta(path: Path) -> dict[str, Any] | None:
    """The file's metadata_props (what `write_onnx` put there), labels and preprocessing decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = embedded_meta({p.key: p.value for p in proto.metadata_props})
    if meta is not None:  # the opset the file really has, for the manifest's claim to be checked against
        meta["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return meta


FORMAT = Format(name="onnx", file="model.onnx", write=write_onnx, load=load_onnx, runtime="onnxruntime (CPU)",
                packages=("onnx", "onnxruntime"), gates_latency=True, runs_in_engines=True,
                check_request=check_request,
                read_meta=read_onnx_meta, derive={"int8": INT8, "fp16": FP16}, audit=audit_onnx)
