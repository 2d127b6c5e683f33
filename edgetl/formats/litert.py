"""LiteRT (TFLite): a `.tflite` flatbuffer converted by litert-torch, run with ai-edge-litert's interpreter.

    edgetl export RUN --format litert --precision int8      # pip install 'edgetl[litert]'

`litert_torch.convert` keeps the model's NCHW input (it transposes inside the graph), so the file takes the
tensor the manifest's preprocessing makes; the interpreter runs it with its default XNNPACK delegate. The file
is written at a fixed batch (`file_batch`: the export's, else 1), its signature names the tensors `input` and
`logits`, and its own description is a flatbuffer metadata entry, `edgetl`, holding JSON. Beside it, the standard
TFLite metadata MediaPipe and the Task Library read (`tflite_metadata`: image input, normalization, labels).

INT8 is full-integer PT2E with litert-torch's quantizer (`pt2e.py`), calibrated on train images (the
representative dataset). The converter then gives the file int8 input and output: its manifest entry records
them with their scale and zero point (real = scale * (q - zero_point)), and the runner quantizes the float input
and dequantizes the logits as a device's glue code does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.formats import tflite_metadata
from edgetl.formats.base import (
    INPUT_NAME,
    Derivation,
    ExportMeta,
    Format,
    Runner,
    Signature,
    Source,
    embedded_meta,
    file_batch,
    fixed_batch_runner,
    require,
)
from edgetl.formats.pt2e import annotated, exported, file_example, layer_names, quantize_pt2e
from edgetl.quiet import quiet, quiet_native

if TYPE_CHECKING:
    import torch
    from torch import nn

EXTRA = "litert"
META_NAME = "edgetl"  # the flatbuffer metadata entry holding the file's description
SIGNATURE = "serving_default"


def _named(model: nn.Module, output: str) -> nn.Module:
    """The model with the manifest's tensor names: litert-torch names signature inputs after keyword arguments
    and outputs after dict keys."""
    from torch import nn

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input):  # noqa: A002 — the keyword is the tensor's name in the file
            return {output: self.model(input)}

    return Named().eval()


@contextlib.contextmanager
def _converter() -> Iterator[Any]:
    """litert_torch, imported and run without its progress lines, absl's native logs or torch's internals'
    warnings."""
    require("litert", EXTRA, "litert_torch")
    with quiet_native(), quiet("torch.utils._pytree", "root", level=logging.ERROR):
        import litert_torch

        shown = litert_torch.config.show_progress
        litert_torch.config.show_progress = False
        try:
            yield litert_torch
        finally:
            litert_torch.config.show_progress = shown


def _convert(module: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta, precision: str,
             quant_config: Any = None) -> dict[str, Any]:
    """Convert, embed the description, write; the manifest fields (the file's io where not the manifest's)."""
    with _converter() as litert_torch:
        edge = litert_torch.convert(module, sample_kwargs={INPUT_NAME: example}, quant_config=quant_config)
        content = edge.model_content() if callable(edge.model_content) else edge.model_content
    path.write_bytes(content)
    io = _file_io(path, meta)
    described = {**meta.describe(precision), "labels": meta.labels, "preprocessing": meta.preprocessing, **io}
    path.write_bytes(_with_metadata(content, {META_NAME: json.dumps(described).encode(),
                                              tflite_metadata.NAME: tflite_metadata.model_metadata(meta,
                                                                                                    precision=precision)}))
    tflite_metadata.pack_labels(path, meta.labels)
    return meta.own_io(io)


def _file_io(path: Path, meta: ExportMeta) -> dict[str, dict[str, Any]]:
    """The manifest's io at the file's batch, with the dtype, scale and zero point the converter gave it."""
    io = meta.io(batch=file_batch(meta))
    runner = load_litert(path, threads=1)
    for key, signature in (("input", runner.inputs[0]), ("output", runner.outputs[0])):
        io[key] = {**io[key], "dtype": signature.dtype}
        if signature.scale is not None:
            io[key].update(scale=signature.scale, zero_point=signature.zero_point)
    return io


def _with_metadata(content: bytes, entries: dict[str, bytes]) -> bytes:
    """The flatbuffer with named metadata entries added (TFLite's own place for a model's description)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_litert(model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]:
    """A .tflite at the file's batch, NCHW float32 in, logits out, describing itself."""
    return _convert(_named(model, meta.output_name), example[:file_batch(meta)], path, meta=meta, precision="fp32")


def load_litert(path: Path, *, threads: int | None = None) -> Runner:
    """The file's signature in ai-edge-litert's interpreter (XNNPACK, `threads`); any batch runs, the file's
    own batch at a time; integer io is quantized and dequantized here."""
    require("litert", EXTRA, "ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()  # applies the XNNPACK delegate: part of loading, not of the first call
        signature = interpreter.get_signature_runner(SIGNATURE)
    [(in_name, in_detail)] = signature.get_input_details().items()
    [(out_name, out_detail)] = signature.get_output_details().items()
    inputs, outputs = [_signature(in_name, in_detail)], [_signature(out_name, out_detail)]
    quantize, dequantize = _quantizer(inputs[0], in_detail["dtype"]), _dequantizer(outputs[0])

    def run_fixed(x: np.ndarray) -> np.ndarray:
        return dequantize(signature(**{in_name: quantize(x)})[out_name])

    return Runner(run=fixed_batch_runner(run_fixed, int(inputs[0].shape[0])), inputs=inputs, outputs=outputs)


def _signature(name: str, detail: dict[str, Any]) -> Signature:
    scale, zero_point = detail["quantization"]
    quantized = np.issubdtype(detail["dtype"], np.integer) and scale != 0
    return Signature(name=name, shape=[int(d) for d in detail["shape"]], dtype=np.dtype(detail["dtype"]).name,
                     scale=float(scale) if quantized else None, zero_point=int(zero_point) if quantized else None)


def _quantizer(signature: Signature, dtype: Any):
    if signature.scale is None:
        return lambda x: x
    info = np.iinfo(dtype)
    return lambda x: np.clip(np.round(x / signature.scale) + signature.zero_point, info.min, info.max).astype(dtype)


def _dequantizer(signature: Signature):
    if signature.scale is None:
        return lambda q: np.array(q, copy=True)  # the interpreter reuses its output buffer
    return lambda q: ((q.astype(np.float32) - signature.zero_point) * signature.scale).astype(np.float32)


def audit_litert(path: Path) -> tuple[str | None, list[str]]:
    """The precision the file's tensors have: int8 where quantized integer tensors carry the weights, fp16 where
    float16 ones do, else fp32; and the metadata entries named twice."""
    require("litert", EXTRA, "ai_edge_litert")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    types = set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            quantized = tensor.Quantization() is not None and tensor.Quantization().ScaleLength() > 0
            types.add((tensor.Type(), quantized))
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8}
    if any(kind in integer and quantized for kind, quantized in types):
        precision = "int8"
    elif any(kind == schema.TensorType.FLOAT16 for kind, _ in types):
        precision = "fp16"
    else:
        precision = "fp32"
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    twice = sorted({n for n in names if names.count(n) > 1})
    return precision, [f"metadata entries given twice: {', '.join(twice)}"] if twice else []


def read_litert_meta(path: Path) -> dict[str, Any] | None:
    """The `edgetl` metadata entry's JSON; None for a file without one."""
    require("litert", EXTRA, "ai_edge_litert")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == META_NAME:
            text = bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8", errors="replace")
            try:
                described = json.loads(text)
            except ValueError:
                described = None
            return embedded_meta(described if isinstance(described, dict) else {"labels": text, "preprocessing": text})
    return None


# --- INT8: full-integer PT2E with litert-torch's quantizer ----------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    source: Source
    module: Any  # the deploy model with the manifest's tensor names
    ends: list[str]
    nodes: int


def _prepare(source: Source, folder: Path) -> Prepared:
    module = _named(source.model, source.meta.output_name)
    graph = exported(module, file_example(source), kwarg=INPUT_NAME)
    return Prepared(source=source, module=module, ends=layer_names(graph),
                    nodes=sum(n.op == "call_function" for n in graph.graph.nodes))


def _quantize(prepared: Prepared, out: Path, *, calibration: np.ndarray, exclude: list[str],
              **_: Any) -> dict[str, Any]:
    """Static full-integer INT8 (weights int8 per channel, activations int8, observed with histograms; the
    plan's ONNX `method` and `activations` do not apply); `exclude`d modules stay float."""
    with _converter():
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                 is_dynamic=False))
        example = file_example(prepared.source)
        graph = quantize_pt2e(prepared.module, example, quantizer=annotated(quantizer, keep_float=exclude),
                              calibration=calibration, kwarg=INPUT_NAME, fold_quantize=False)
    fields = _convert(graph, example, out, meta=prepared.source.meta, precision="int8",
                      quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return {"scheme": "PT2E static full-integer (litert-torch PT2EQuantizer)", "weights": "int8 per-channel symmetric",
            "activations": "int8", "method": "histogram", "excluded_nodes": list(exclude), "fields": fields}


INT8 = Derivation(make=_quantize, prepare=_prepare, ends=lambda p: p.ends, size=lambda p: p.nodes)

FORMAT = Format(name="litert", file="model.tflite", write=write_litert, load=load_litert,
                runtime="LiteRT interpreter (XNNPACK)", extra=EXTRA, requires=("litert_torch", "ai_edge_litert"),
                packages=("litert-torch", "ai-edge-litert"), read_meta=read_litert_meta, derive={"int8": INT8},
                audit=audit_litert)
