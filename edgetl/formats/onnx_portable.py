"""ONNX that runs right on every engine a device may have: the portable rewrite and the compatibility table.

    portable, changes = make_portable(onnx.load("model.onnx"))  # changes: ["ReduceMean over H, W → GlobalAveragePool ×10"]
    for problem in check_portable(portable): print(problem)      # nothing left for OpenCV ≥ 4.5, OpenVINO, ORT

torch's dynamo exporter writes opset-18+ forms that older engines refuse or, worse, compute wrong (measured with
the pip wheels of OpenCV 4.5–5.0 and OpenVINO 2023.3–2026.4, on the five shipped backbones and on one-pattern
probe graphs; `COMPAT` lists what was found). `make_portable` rewrites those patterns, with onnxscript's pattern
rewriter, into forms every one of them runs right. Each rewrite computes the same function: the ReLU6 Clip and
the gates exactly; GlobalAveragePool sums in another order than ReduceMean, which moves onnxruntime's logits by
float rounding (≤ 1e-6 with one pool at the head; a few 1e-6 of the logits' scale with squeeze-excitation,
as far as PyTorch is from onnxruntime already). onnxruntime fuses and drops the new forms as it did the old, so
its latency does not change. `check_portable` reads a graph against `COMPAT` and says, one line per pattern,
which engine would refuse it, compute it wrong, or run it one image at a time only.

Where the only portable form of an op is its opset-10 one (ReLU6's `Clip` takes min/max as attributes there,
and OpenCV < 4.7 parses nothing else), the graph is lowered to opset 10 when every op in it means the same
there; otherwise it stays as it is and `check_portable` names the node.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

log = logging.getLogger(__name__)

LOW_OPSET = 10  # the last opset whose Clip takes min/max as attributes (opset 11 made them inputs)
# Ops whose opset-10 definition computes the same as today's for float tensors, with the inputs and attributes
# torch's exporter writes (the later versions added types, or made an attribute an input that we rewrite).
# A graph is lowered only when every node is one of these.
SAME_AT_LOW_OPSET = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "HardSigmoid", "Tanh", "Conv", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Gemm", "Flatten", "Reshape", "Clip", "Identity", "Transpose", "MatMul",
    "LeakyRelu", "PRelu", "Exp",
})


# --- the compatibility table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """One engine's version range that cannot take one op pattern: what it does with it, and how to find it."""

    engine: str  # "opencv", "openvino", "onnxruntime": the `--runtime` names
    versions: str  # as people say it: "< 4.7", "≥ 4.9"; "" for every version measured
    min_version: tuple[int, ...] | None  # inclusive; None: from the oldest
    max_version: tuple[int, ...] | None  # exclusive; None: up to the newest measured, and presumably beyond
    kind: str  # "rejects" (will not load), "wrong" (loads, answers wrongly), "batch" (batch 1 only), "unmeasured"
    pattern: str  # what the graph holds, in words
    find: Callable[[ir.Graph], list[str]]  # the nodes that hold the pattern
    fixed_by: str | None = None  # what make_portable rewrites it into; None: nothing does

    def applies_to(self, version: tuple[int, ...]) -> bool:
        return ((self.min_version is None or version >= self.min_version)
                and (self.max_version is None or version < self.max_version))


@dataclass(frozen=True)
class Problem:
    """A pattern of one graph that one engine's version range refuses, computes wrong, or limits."""

    engine: str
    versions: str
    kind: str
    pattern: str
    nodes: tuple[str, ...]
    fixed_by: str | None

    @property
    def breaks(self) -> bool:
        """The file fails on that engine: it will not load, or it answers wrongly (not a batch-1-only limit)."""
        return self.kind in ("rejects", "wrong")

    def __str__(self) -> str:
        engine = " ".join(filter(None, (ENGINE_NAMES.get(self.engine, self.engine), self.versions)))
        shown = ", ".join(self.nodes[:2]) + (f" and {len(self.nodes) - 2} more" if len(self.nodes) > 2 else "")
        where = f"({'node' if len(self.nodes) == 1 else 'nodes'} {shown})"
        return {"rejects": f"{engine} rejects {self.pattern} {where}",
                "wrong": f"{engine} computes {self.pattern} wrong {where}",
                "batch": f"{engine} fails at batch > 1 on {self.pattern} {where}: feed it one image per call",
                }.get(self.kind, f"{engine} was not measured with {self.pattern} {where}")


ENGINE_NAMES = {"opencv": "OpenCV", "openvino": "OpenVINO", "onnxruntime": "onnxruntime"}


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output; None when it is computed."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _spatial_axes(axes: np.ndarray | list[int] | None, rank: int | None) -> bool:
    """Whether `axes` are exactly the two spatial axes of an NCHW tensor."""
    if axes is None or rank != 4:
        return False
    return sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) == [2, 3]


def _nodes(graph: ir.Graph, op_type: str) -> list[ir.Node]:
    return [n for n in graph if n.op_type == op_type and n.domain in ("", "ai.onnx")]


def _name(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else None) or node.op_type


def _clip_with_inputs(graph: ir.Graph) -> list[str]:
    return [_name(n) for n in _nodes(graph, "Clip") if len(n.inputs) > 1 and any(v is not None for v in n.inputs[1:])]


def _reduce_mean_axes_input(graph: ir.Graph) -> list[str]:
    return [_name(n) for n in _nodes(graph, "ReduceMean") if len(n.inputs) > 1 and n.inputs[1] is not None]


def _min_max_constant(graph: ir.Graph) -> list[str]:
    return [_name(n) for n in graph if n.op_type in ("Min", "Max") and n.domain in ("", "ai.onnx")
            and any(_const(v) is not None for v in n.inputs)]


def _broadcast(a: ir.Value, b: ir.Value) -> bool:
    """Whether a binary op on `a` and `b` broadcasts: their shapes are known and differ (or are unknown)."""
    if a.shape is None or b.shape is None:
        return True
    return list(a.shape) != list(b.shape)


def _computed(value: ir.Value | None) -> bool:
    return value is not None and _const(value) is None and value.producer() is not None


def _broadcast_mul(graph: ir.Graph) -> list[str]:
    """Mul or Div of two computed tensors of different shapes (a squeeze-excitation gate times its input)."""
    return [_name(n) for n in graph if n.op_type in ("Mul", "Div") and n.domain in ("", "ai.onnx")
            and len(n.inputs) == 2 and all(_computed(v) for v in n.inputs) and _broadcast(*n.inputs)]


def _hard_sigmoid_gate(graph: ir.Graph) -> list[str]:
    """Mul whose one operand comes straight from a HardSigmoid (MobileNetV3's SE gate), whatever the shapes."""
    found = []
    for n in _nodes(graph, "Mul"):
        if len(n.inputs) == 2:
            for v in n.inputs:
                p = v.producer() if v is not None else None
                if p is not None and p.op_type == "HardSigmoid":
                    found.append(_name(n))
                    break
    return found


def _gate_second(graph: ir.Graph) -> list[str]:
    """Mul(x, HardSigmoid(...)) with the small gate second: OpenCV sizes the result like the first operand."""
    found = []
    for n in _nodes(graph, "Mul"):
        if len(n.inputs) == 2 and _broadcast(*n.inputs):
            p = n.inputs[1].producer() if n.inputs[1] is not None else None
            if p is not None and p.op_type == "HardSigmoid":
                found.append(_name(n))
    return found


def _unknown_ops(known: frozenset[str]) -> Callable[[ir.Graph], list[str]]:
    def find(graph: ir.Graph) -> list[str]:
        return [f"{_name(n)}: {n.domain + '::' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in graph
                if n.domain not in ("", "ai.onnx") or n.op_type not in known]
    return find


# Every op the five shipped backbones export to, measured on every OpenCV version in COMPAT (in the forms
# make_portable leaves). A graph with another op gets a "not measured" line, not a verdict.
MEASURED_OPS = frozenset({
    "Conv", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add", "ReduceMean", "GlobalAveragePool",
    "MaxPool", "Reshape", "Flatten", "Gemm", "Identity", "Min", "Sub",
})

GATE_FIX = "an Identity between the HardSigmoid and the Mul, gate first"
POOL_FIX = "GlobalAveragePool"
# Measured on the pip wheels of OpenCV 4.5.5, 4.6.0, 4.7.0, 4.8.1, 4.9.0, 4.10.0, 4.14.0, 5.0.0 (at their default
# thread count and at 1), OpenVINO 2023.3, 2024.0 – 2024.3, 2024.6, 2026.4 (fp32) and onnxruntime 1.32, with the
# five shipped backbones at 224 px and one-pattern probe graphs. onnxruntime ran every graph right.
COMPAT: tuple[Limit, ...] = (
    Limit("opencv", "< 4.7", None, (4, 7), "rejects", "Clip with min/max inputs (ReLU6 at opset ≥ 11)",
          _clip_with_inputs, fixed_by=f"Clip with min/max attributes (the graph lowered to opset {LOW_OPSET})"),
    Limit("opencv", "< 4.7", None, (4, 7), "rejects", "Min or Max with a constant operand", _min_max_constant),
    Limit("opencv", "< 4.8", None, (4, 8), "rejects", "ReduceMean with axes as an input (opset ≥ 18)",
          _reduce_mean_axes_input, fixed_by=POOL_FIX),
    Limit("openvino", "< 2024.3", None, (2024, 3), "rejects", "ReduceMean with axes as an input (opset ≥ 18)",
          _reduce_mean_axes_input, fixed_by=POOL_FIX),
    Limit("opencv", "4.8 (on > 1 thread)", (4, 8), (4, 9), "wrong", "ReduceMean with axes as an input (opset ≥ 18)",
          _reduce_mean_axes_input, fixed_by=POOL_FIX),
    Limit("opencv", "≥ 4.9", (4, 9), None, "wrong", "a HardSigmoid gate broadcast by Mul (MobileNetV3's "
          "squeeze-excitation)", _hard_sigmoid_gate, fixed_by=GATE_FIX),
    Limit("opencv", "", None, None, "wrong", "Mul(x, HardSigmoid gate), the gate second", _gate_second,
          fixed_by=GATE_FIX),
    Limit("opencv", "< 4.7", None, (4, 7), "batch", "a Mul broadcasting one computed tensor over another "
          "(squeeze-excitation)", _broadcast_mul),
    Limit("opencv", "", None, None, "unmeasured", "these ops", _unknown_ops(MEASURED_OPS)),
)


def parse_version(text: str) -> tuple[int, ...]:
    """'4.8.1' -> (4, 8, 1); a suffix after the numbers ('2026.4.1-22982-…', '5.0.0-pre') is ignored."""
    match = re.match(r"\d+(\.\d+)*", text.strip())
    return tuple(int(p) for p in match.group().split(".")) if match else ()


def check_portable(model: onnx.ModelProto | ir.Model, *, engine: str | None = None,
                   version: str | tuple[int, ...] | None = None, fixable: bool = True) -> list[Problem]:
    """The graph's patterns that an engine version in `COMPAT` refuses or computes wrong, one Problem each.

    `engine` and `version` narrow it to one engine (and one installed version); `fixable=False` leaves out what
    `make_portable` would rewrite (what is left after it). Empty: the graph runs right everywhere measured."""
    graph = _ir(model).graph
    v = parse_version(version) if isinstance(version, str) else version
    problems = []
    for limit in COMPAT:
        if (engine is not None and limit.engine != engine) or (v is not None and not limit.applies_to(v)):
            continue
        if not fixable and limit.fixed_by is not None:
            continue
        nodes = limit.find(graph)
        if nodes:
            problems.append(Problem(limit.engine, limit.versions, limit.kind, limit.pattern, tuple(nodes),
                                    limit.fixed_by))
    return problems


# --- the rewrite --------------------------------------------------------------------------------------------------

def _ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model in onnx_ir's form, with shapes inferred where the file does not record them."""
    import onnx
    import onnx_ir as ir

    return model if isinstance(model, ir.Model) else ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))


def _rules():
    """The rewrite rules, built on first use (onnxscript is imported only when a graph is rewritten)."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    def pooled(op, x, mean):
        """GlobalAveragePool keeps H, W as 1 × 1; without keepdims, ReduceMean dropped them: flatten to [N, C]."""
        y = op.GlobalAveragePool(x)
        return y if mean.producer().attributes.get_int("keepdims", 1) else op.Flatten(y, axis=1)

    class ReduceMeanToGlobalAveragePool(pattern.RewriteRuleClassBase):
        """ReduceMean over H, W of an NCHW tensor → GlobalAveragePool (opset 1: every engine knows it).

        The opset-18 form takes its axes as an input, which OpenCV < 4.8 rejects and 4.8 computes wrong."""

        def pattern(self, op, x, axes):
            return op.ReduceMean(x, axes, _allow_other_attributes=True, _outputs=["mean"])

        def check(self, context, x, axes, mean, **_):
            return _spatial_axes(_const(axes), _rank(x))

        def rewrite(self, op, x, axes, mean, **_):
            return pooled(op, x, mean)

    class ReduceMeanAttrToGlobalAveragePool(pattern.RewriteRuleClassBase):
        """The same for the opset-13 form (axes an attribute), so a lowered graph is the same either way."""

        def pattern(self, op, x):
            return op.ReduceMean(x, _allow_other_attributes=True, _outputs=["mean"])

        def check(self, context, x, mean, **_):
            node = mean.producer()
            return len(node.inputs) == 1 and _spatial_axes(node.attributes.get_ints("axes"), _rank(x))

        def rewrite(self, op, x, mean, **_):
            return pooled(op, x, mean)

    class IsolateHardSigmoidGate(pattern.RewriteRuleClassBase):
        """Mul(HardSigmoid(s), x) broadcasting [N, C, 1, 1] over [N, C, H, W] → Mul(Identity(HardSigmoid(s)), x).

        OpenCV ≥ 4.9 sizes that Mul's output like the gate when the gate comes straight from a HardSigmoid (it
        does not when anything, even an Identity, stands between them), and every version does so when the gate
        is the second operand. The Identity costs nothing: onnxruntime and OpenVINO remove it at load."""

        def pattern(self, op, s, x):
            return op.Mul(op.HardSigmoid(s, _allow_other_attributes=True, _outputs=["gate"]), x)

        def check(self, context, s, x, gate, **_):
            # Not only where the gate broadcasts: OpenCV 5.0 got a 1x1-spatial gate wrong too (MobileNetV3-Small's
            # last stage at 32 px, tests/verify/test_engines_stage.py); the Identity is free wherever it goes.
            return True

        def rewrite(self, op, s, x, gate, **_):
            node = gate.producer()
            alpha = node.attributes.get_float("alpha", 0.2)
            beta = node.attributes.get_float("beta", 0.5)
            return op.Mul(op.Identity(op.HardSigmoid(s, alpha=alpha, beta=beta)), x)

    class ClipToAttributes(pattern.RewriteRuleClassBase):
        """Clip(x, min, max) with constant scalars → Clip(x) with min/max attributes: the opset ≤ 10 form, the only
        one OpenCV < 4.7 parses (ReLU6). Only valid in a graph lowered to opset 10."""

        def pattern(self, op, x, lo, hi):
            return op.Clip(x, lo, hi)

        def check(self, context, x, lo, hi, **_):
            return all(v is not None and v.size == 1 for v in (_const(lo), _const(hi)))

        def rewrite(self, op, x, lo, hi, **_):
            return op.Clip(x, min=float(_const(lo).reshape(())), max=float(_const(hi).reshape(())))

    class ReshapeWithoutAllowzero(pattern.RewriteRuleClassBase):
        """Reshape(allowzero=…) with a constant shape holding no 0 → Reshape without the attribute (identical
        then; opset 14 added it)."""

        def pattern(self, op, x, shape):
            return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

        def check(self, context, x, shape, out, **_):
            value = _const(shape)
            return "allowzero" in out.producer().attributes and value is not None and not (value == 0).any()

        def rewrite(self, op, x, shape, out, **_):
            return op.Reshape(x, shape)

    class GemmWithZeroBias(pattern.RewriteRuleClassBase):
        """Gemm(a, b) → Gemm(a, b, zeros): C became optional in opset 11 (the exporter drops an all-zero bias)."""

        def pattern(self, op, a, b):
            return op.Gemm(a, b, _allow_other_attributes=True, _outputs=["out"])

        def check(self, context, a, b, out, **_):
            node = out.producer()
            return len(node.inputs) == 2 and out.shape is not None and isinstance(out.shape[-1], int)

        def rewrite(self, op, a, b, out, **_):
            node = out.producer()
            zeros = ir.tensor(np.zeros(out.shape[-1], dtype=np.float32), name=f"{_name(node)}.zero_bias")
            attrs = {k: v for k, v in node.attributes.items()}
            return op.Gemm(a, b, op.initializer(zeros), **attrs)

    class HardSwishToHardSigmoid(pattern.RewriteRuleClassBase):
        """HardSwish(x) → Mul(HardSigmoid(x, 1/6, 1/2), x): its definition, in ops opset 10 has (HardSwish is 14)."""

        def pattern(self, op, x):
            return op.HardSwish(x)

        def rewrite(self, op, x, **_):
            return op.Mul(op.HardSigmoid(x, alpha=1 / 6, beta=0.5), x)

    portable = [("ReduceMean over H, W → GlobalAveragePool", ReduceMeanToGlobalAveragePool.rule()),
                ("ReduceMean over H, W → GlobalAveragePool", ReduceMeanAttrToGlobalAveragePool.rule()),
                (f"HardSigmoid gate → {GATE_FIX}", IsolateHardSigmoidGate.rule())]
    lowering = [("Clip(min, max inputs) → Clip(min, max attributes)", ClipToAttributes.rule()),
                ("Reshape(allowzero) → Reshape", ReshapeWithoutAllowzero.rule()),
                ("Gemm without C → Gemm with a zero C", GemmWithZeroBias.rule()),
                ("HardSwish → HardSigmoid × x", HardSwishToHardSigmoid.rule())]
    return portable, lowering


def _apply(model: ir.Model, rules, changes: Counter) -> None:
    from onnxscript.rewriter import pattern

    for what, rule in rules:
        # commute=True: Mul(x, gate) is the same pattern as Mul(gate, x)
        n = pattern.RewriteRuleSet([rule], commute=True).apply_to_model(model)
        if n:
            changes[what] += n


def _opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def _lowerable(model: ir.Model) -> list[str]:
    """Why the graph cannot be lowered to opset 10 (empty: it can): ops without a same-meaning opset-10 form."""
    why = []
    for n in model.graph:
        if n.domain not in ("", "ai.onnx"):
            why.append(f"{_name(n)}: {n.domain}::{n.op_type}")
        elif n.op_type not in SAME_AT_LOW_OPSET | {"HardSwish"}:
            why.append(f"{_name(n)}: {n.op_type}")
        elif n.op_type == "Gemm" and len(n.inputs) < 3 and (n.outputs[0].shape is None
                                                          or not isinstance(n.outputs[0].shape[-1], int)):
            why.append(f"{_name(n)}: Gemm without C, of unknown width")
        elif n.op_type == "Reshape" and ((s := _const(n.inputs[1])) is None or (s == 0).any()):
            why.append(f"{_name(n)}: Reshape to a computed shape or with a 0")
        elif n.op_type == "Clip" and len(n.inputs) > 1 and not all(
                v is None or ((c := _const(v)) is not None and c.size == 1) for v in n.inputs[1:]):
            why.append(f"{_name(n)}: Clip with computed bounds")
        elif n.op_type in ("MaxPool", "AveragePool") and len(n.outputs) > 1 and n.outputs[1].uses():
            why.append(f"{_name(n)}: {n.op_type} indices")
        elif n.op_type == "Flatten" and n.attributes.get_int("axis", 1) < 0:
            why.append(f"{_name(n)}: Flatten with a negative axis (opset 11)")
    if model.functions:
        why.append("local functions")
    return why


def make_portable(model: onnx.ModelProto, *, lower_opset: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """`model` rewritten into the forms every engine in `COMPAT` runs right, and what was rewritten (one line per
    rewrite, with its count; empty: nothing needed it). The input is not changed; metadata_props, the graph's
    input and output names and the weights are kept. Lowering to opset 10 happens only when the graph holds a
    Clip with min/max inputs and every op means the same at opset 10; otherwise (or with `lower_opset=False`, for
    a file that must keep the opset it was asked for) such a Clip is left, and `check_portable` reports it."""
    import onnx
    import onnx_ir as ir

    # The rules read shapes (an NCHW rank, a broadcast): infer them where the file does not record them.
    ir_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    portable, lowering = _rules()
    changes: Counter = Counter()
    _apply(ir_model, portable, changes)
    if changes:  # the replaced nodes' constants (ReduceMean's axes) are left unused
        ir.passes.common.RemoveUnusedNodesPass()(ir_model)
    out = ir.serde.serialize_model(ir_model)
    opset = _opset(ir_model)
    if lower_opset and opset is not None and opset > LOW_OPSET and _clip_with_inputs(ir_model.graph):
        blockers = _lowerable(ir_model)
        if blockers:
            log.info("not lowered to opset %d, Clip keeps its min/max inputs: %s", LOW_OPSET, "; ".join(blockers[:3]))
        else:
            lowered, lowered_changes = _lower(ir_model, lowering)
            try:
                onnx.checker.check_model(lowered, full_check=True)  # each node against its opset-10 schema
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
                log.info("not lowered to opset %d, the opset-%d graph fails the checker: %s", LOW_OPSET, LOW_OPSET,
                         str(e).strip().splitlines()[0])
            else:
                out = lowered
                changes.update(lowered_changes)
                changes[f"opset {opset} → {LOW_OPSET} (every op means the same there)"] += 1
    onnx.checker.check_model(out, full_check=True)
    lines = [what if what.startswith("opset") else f"{what} ×{n}" for what, n in changes.items()]
    return out, lines


def _lower(ir_model: ir.Model, lowering) -> tuple[onnx.ModelProto, Counter]:
    """The graph in its opset-10 forms (the lowering rules) with the opset import set to 10, as a new model."""
    import onnx_ir as ir

    changes: Counter = Counter()
    _apply(ir_model, lowering, changes)
    ir.passes.common.RemoveUnusedNodesPass()(ir_model)
    ir_model.opset_imports.pop("ai.onnx", None)
    ir_model.opset_imports[""] = LOW_OPSET
    return ir.serde.serialize_model(ir_model), changes


def raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A lowered graph back at `opset` (≥ 11), for tools that need a newer one: onnxruntime's QDQ quantizer writes
    per-channel DequantizeLinear (opset 13) into the file's own opset and produces an invalid graph at opset 10.
    onnx's version converter does it (upward it has every adapter these ops need); a graph already at `opset` or
    above comes back as it is."""
    import onnx
    import onnx.version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    return model if current >= opset else onnx.version_converter.convert_version(model, opset)
