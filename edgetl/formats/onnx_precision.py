"""Lower-precision ONNX files derived from the fp32 one, with onnxruntime's own tooling.

    info = quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), calibration=x, method="minmax")
    to_fp16(Path("model.onnx"), Path("model.fp16.onnx"))

INT8 is static post-training quantization: `quant_pre_process` (shape inference and graph fusions), then
`quantize_static` in QDQ form, weights int8 per output channel, activations uint8 (or int8: on a 2-core AVX-512
VNNI CPU uint8 ran ResNet-18 3.2x and Lite0 1.6x faster than fp32, where int8 activations were slower than fp32),
the stem and classifier float (`boundary_nodes`; a device file's image and softmax ops too, `wrapper_nodes`);
then the int8 conv weights are re-rounded to keep each layer's output close to fp32 (`edgetl.formats.onnx_rounding`).
`reduce_range` is off (it exists for CPUs without VNNI and costs accuracy).
fp16 keeps fp32 inputs and outputs, so a device feeds the same tensor; it is for GPUs and NPUs, and a CPU
usually runs it slower (verify reports it). Both files keep the fp32 file's metadata (labels, preprocessing).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.formats.base import INPUT_NAME, Derivation, Source
from edgetl.quiet import quiet

CALIBRATION_BATCH = 8


def _copy_metadata(source: Path, target: Path, *, precision: str) -> None:
    """The tools drop metadata_props; a device must still find the labels and preprocessing in the file, and
    verify the precision the manifest claims for it."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    props["precision"] = precision
    model = onnx.load(str(target))
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(target), save_as_external_data=False)


def _reader(x: np.ndarray, batch: int | None):
    """onnxruntime's calibration reader over float32 NCHW rows (`batch`: the file's fixed batch, if any)."""
    from onnxruntime.quantization import CalibrationDataReader

    from edgetl.formats.onnx_rounding import feed_batches

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([])
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

        def rewind(self) -> None:
            self.batches = iter({INPUT_NAME: p} for p in feed_batches(x, batch, size=CALIBRATION_BATCH))

    return Reader()


def _fixed_batch(path: Path) -> int | None:
    import onnx

    from edgetl.formats.onnx_rounding import fixed_batch

    return fixed_batch(onnx.load(str(path), load_external_data=False))


def preprocessed(fp32: Path, folder: Path) -> Path:
    """The fp32 graph as quantization wants it: shapes inferred, fusions applied (`quant_pre_process`)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.formats.onnx_portable import raise_opset

    # the portable fp32 file may be at opset 10; the QDQ quantizer writes opset-13 ops into the file's opset
    model = onnx.load(str(fp32))
    source = fp32
    if _opset(model) < QDQ_MIN_OPSET:
        source = folder / "opset13.onnx"
        onnx.save_model(raise_opset(model, QDQ_MIN_OPSET), str(source))
    out = folder / "pre.onnx"
    with quiet("onnxruntime"):
        quant_pre_process(str(source), str(out))
    return out


QDQ_MIN_OPSET = 13  # per-channel DequantizeLinear


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def quantize_int8(fp32: Path, out: Path, *, calibration: np.ndarray, method: str = "minmax",
                  exclude: Sequence[str] = (), pre: Path | None = None, activations: str = "uint8") -> dict[str, Any]:
    """Static INT8 (QDQ; int8 weights per channel, `activations` uint8 or int8) calibrated on `calibration`
    rows; `exclude` names nodes of the pre-processed graph that stay float. Returns the settings, for the
    manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="edgetl-int8-") as tmp:
        source = pre or preprocessed(fp32, Path(tmp))
        with quiet("onnxruntime"):
            quantize_static(str(source), str(out), _reader(calibration, _fixed_batch(fp32)),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=list(exclude),
                            extra_options={"CalibTensorRangeSymmetric": False})
    _copy_metadata(fp32, out, precision="int8")
    return {"scheme": "static QDQ", "weights": "int8 per-channel", "activations": activations, "method": method,
            "excluded_nodes": list(exclude)}


def node_errors(pre: Path, int8: Path, x: np.ndarray) -> list[tuple[str, float]]:
    """(node, SQNR dB of its output's quantization) for every quantized activation, worst first: the nodes
    whose own INT8 rounding hurts most (onnxruntime's QDQ debugging helpers on `x`)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    producer = {o: n.name for n in onnx.load(str(pre)).graph.node for o in n.output}
    with tempfile.TemporaryDirectory(prefix="edgetl-qdq-debug-") as tmp, quiet("onnxruntime"):
        augmented = {name: Path(tmp) / f"{name}.onnx" for name in ("float", "qdq")}
        modify_model_output_intermediate_tensors(str(pre), str(augmented["float"]))
        modify_model_output_intermediate_tensors(str(int8), str(augmented["qdq"]))
        batch = _fixed_batch(pre)
        acts = {name: collect_activations(str(path), _reader(x, batch)) for name, path in augmented.items()}
    errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
    ranked = [(producer[t], float(e["qdq_err"])) for t, e in errors.items() if t in producer and "qdq_err" in e]
    return sorted(ranked, key=lambda pair: pair[1])


def boundary_nodes(pre: Path) -> list[str]:
    """The layers that stay float from the first INT8 attempt: the stem conv (and the depthwise conv right after
    it, where there is one) and the last matmul / classifier. Post-training quantization hurts CNNs most there
    (the raw-pixel input range, the logits), and on this CPU they run no slower float: on a Lite0 fine-tuned on
    ants/bees, stem + first depthwise float ran 1.66x fp32 where all-int8 ran 1.56x; on flowers, top-1 agreement
    with fp32 rose 93.8 % -> 96.5 % at the same accuracy."""
    nodes, convs, depthwise = _graph_layers(pre)
    stem = [c.name for c in convs[:2] if c is convs[0] or depthwise(c)]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return stem + heads[-1:]


def wrapper_nodes(pre: Path) -> list[str]:
    """A device file's own float ops around the model, float in every attempt and not layers of it: the image's
    cast, normalization and layout before the first conv (cheaper float than quantizing the image and
    requantizing it) and a probabilities file's softmax (uint8 steps of 1/255 are too coarse for probabilities
    that sum to 1)."""
    nodes, convs, _ = _graph_layers(pre)
    before = [n.name for n in nodes[:nodes.index(convs[0])]] if convs else []
    return before + [n.name for n in nodes if n.op_type == "Softmax"]


def _graph_layers(pre: Path):
    import onnx

    graph = onnx.load(str(pre), load_external_data=False).graph
    weights = {i.name: i for i in graph.initializer}

    def depthwise(node) -> bool:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return group > 1 and node.input[1] in weights and weights[node.input[1]].dims[1] == 1

    nodes = list(graph.node)
    return nodes, [n for n in nodes if n.op_type == "Conv"], depthwise


def node_count(pre: Path) -> int:
    import onnx

    return len(onnx.load(str(pre), load_external_data=False).graph.node)


def to_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs and outputs (onnxruntime's converter, `keep_io_types`)."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True))
    converted.graph.sort()  # the converter appends its input casts last; ONNX wants topological order
    onnx.save_model(onnx_ir.to_proto(converted), str(out), save_as_external_data=False)
    _copy_metadata(fp32, out, precision="fp16")  # the converter keeps them; this records the precision
    return {"weights": "fp16", "compute": "fp16", "io": "fp32"}


# --- the Derivation records onnx.py registers (edgetl.export.precision drives them) ---------------------------

ROUNDING_IMAGES = 128  # calibration images the weight rounding's layer statistics are taken on (about 5 s)


@dataclass(frozen=True)
class Prepared:
    """What every INT8 attempt starts from: the fp32 file and its pre-processed graph, made once; the layer
    statistics of the weight rounding, taken on the first attempt and reused by the guard's later ones."""

    fp32: Path
    pre: Path
    statistics: dict[str, np.ndarray] = field(default_factory=dict)


def _prepare(source: Source, folder: Path) -> Prepared:
    return Prepared(fp32=source.fp32, pre=preprocessed(source.fp32, folder))


def _quantize(prepared: Prepared, out: Path, *, calibration: np.ndarray, **options: Any) -> dict[str, Any]:
    """quantize_static, then its int8 conv weights re-rounded to keep each layer's output (onnx_rounding)."""
    from edgetl.formats.onnx_pixels import image_in_one_op
    from edgetl.formats.onnx_rounding import METHOD, layer_statistics, round_weights

    settings = quantize_int8(prepared.fp32, out, calibration=calibration, pre=prepared.pre, **options)
    images = calibration[:ROUNDING_IMAGES]
    if not prepared.statistics:
        prepared.statistics.update(layer_statistics(prepared.pre, images))
    changed = round_weights(prepared.pre, out, prepared.statistics)
    settings["weight_rounding"] = {"method": METHOD, "images": int(len(images)), "weights_changed": changed}
    if image_in_one_op(out):
        settings["image"] = "uint8 -> float in one DequantizeLinear"
    return settings


def _noisiest(prepared: Prepared, attempt: Path, x: np.ndarray) -> list[str]:
    return [name for name, _ in node_errors(prepared.pre, attempt, x)]


def _fp16(source: Source, out: Path) -> dict[str, Any]:
    return to_fp16(source.fp32, out)


INT8 = Derivation(make=_quantize, prepare=_prepare, ends=lambda p: boundary_nodes(p.pre), ends_float_from_start=True,
                  wrapper=lambda p: wrapper_nodes(p.pre),
                  size=lambda p: node_count(p.pre), noisiest=_noisiest, activations=("uint8", "int8"))
FP16 = Derivation(make=_fp16)
