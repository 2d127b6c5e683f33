"""A device-input INT8 file that turns the uint8 image into floats in one op.

    changed = image_in_one_op(Path("model.int8.onnx"))   # after quantize_static; False: nothing to do

A uint8-input file normalizes with `Transpose -> Cast -> Mul a -> Add b` before its float stem conv: three passes
over the image, about 0.15 ms a call for a quantized Lite0 here (6 % of it) over a float-input file. One
`DequantizeLinear` per channel (scale a_c, zero point z_c = the pixel value of the channel's mean, rounded) does the
same `(x - z_c) * a_c` in one pass; the rounding of z_c (at most half a grey level) goes into the stem conv's bias.
The one place that is not exact is the conv's zero padding, which now stands for pixel z_c instead of
255 * mean_c: under half a grey level on the image's border. The fp32 file keeps the exact float normalization;
the INT8 file's bars (agreement, accuracy, values) judge this one.

Written by hand: no library rewrites an input normalization into a DequantizeLinear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _const(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    found = next((i for i in graph.initializer if i.name == name), None)
    return None if found is None else numpy_helper.to_array(found)


def _only_consumer(nodes: list[Any], tensor: str, op: str) -> Any | None:
    users = [n for n in nodes if tensor in n.input]
    return users[0] if len(users) == 1 and users[0].op_type == op else None


def image_in_one_op(path: Path) -> bool:
    """Rewrite the file at `path` in place: its uint8 image `Cast -> Mul -> Add` before the float stem conv becomes
    one DequantizeLinear. False, unchanged: not a uint8-input file, or not that pattern."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    nodes = list(graph.node)
    if graph.input[0].type.tensor_type.elem_type != TensorProto.UINT8:
        return False
    transpose = next((n for n in nodes if n.op_type == "Transpose" and n.input[0] == graph.input[0].name), None)
    cast = transpose and _only_consumer(nodes, transpose.output[0], "Cast")
    mul = cast and _only_consumer(nodes, cast.output[0], "Mul")
    add = mul and _only_consumer(nodes, mul.output[0], "Add")
    conv = add and _only_consumer(nodes, add.output[0], "Conv")
    if conv is None:
        return False
    a, b, weight = _const(graph, mul.input[1]), _const(graph, add.input[1]), _const(graph, conv.input[1])
    if a is None or b is None or weight is None or a.size != weight.shape[1] or b.size != weight.shape[1]:
        return False
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    zero = np.clip(np.rint(-b / a), 0, 255)  # the pixel value each channel normalizes to 0
    left = a * zero + b  # what (x - zero) * a misses of x * a + b: a constant per channel, into the bias
    bias = _const(graph, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    new_bias = (0.0 if bias is None else bias.astype(np.float64)) + np.einsum("ochw,c->o", weight.astype(np.float64),
                                                                           left)
    name = f"{conv.name}_image"
    graph.initializer.extend([numpy_helper.from_array(a.astype(np.float32), f"{name}_scale"),
                              numpy_helper.from_array(zero.astype(np.uint8), f"{name}_zero_point"),
                              numpy_helper.from_array(new_bias.astype(np.float32), f"{name}_bias")])
    dequantize = helper.make_node("DequantizeLinear", [transpose.output[0], f"{name}_scale", f"{name}_zero_point"],
                                  [add.output[0]], name=f"{name}_dequantize", axis=1)
    graph.node.insert(nodes.index(cast), dequantize)
    for node in (cast, mul, add):
        graph.node.remove(node)
    if len(conv.input) > 2:
        conv.input[2] = f"{name}_bias"
    else:
        conv.input.append(f"{name}_bias")
    used = {i for n in graph.node for i in n.input}
    for unused in [i for i in graph.initializer if i.name not in used]:  # the old a, b and bias
        graph.initializer.remove(unused)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return True
