"""Where a file that failed its parity bar first departs from the checkpoint: the stage, then the node.

    rows = worst_rows(inputs.x, ref_logits, logits[name])           # the inputs the file got most wrong
    where = localize(run, manifest, artifact, rows, bars=bars, model=model)
    where.line  # model.onnx departs at the deploy model (fold), node node_conv2d_9 (Conv, output conv2d_9) of ...

Run only when a bar failed, on a few inputs. Two steps:

1. The stage. A file is made in stages: checkpoint → deploy model (BatchNorm folded, LoRA merged) → fp32 file
   (the exporter's graph, then edgetl's portable rewrite) → lower-precision file → each engine. The run's files
   are run on the same inputs; the fp32 file departs when its logits move more than verify's fp32 bar allows
   (`BARS["fp32"].atol` per unit of logit scale); a lower-precision file, or an engine, is named when the
   stages before it hold (a lossy file always departs a little: its bar failing is the evidence).
2. The node, for ONNX files (the other formats get the stage only). The file runs in onnxruntime with every
   intermediate tensor made a graph output and graph optimizations off, so no node is fused away or renamed.
   An fp32 file is compared with the checkpoint's own modules, caught with forward hooks: torch's exporter
   records each node's module path (`pkg.torch.onnx.name_scopes`), and the last node inside a module gives that
   module's output. A lower-precision file is compared with the fp32 file's tensor of the same name (the
   dequantized one, for INT8). The first node in graph order whose output departs beyond the bar is named.
   An fp32 file's node then says which stage it came from: a folded convolution that gives the checkpoint's
   convolution *before* its BatchNorm, or that is off by only a per-channel scale and shift, is a fold gone
   wrong; one that matches its weights without their LoRA update is a merge that did not happen; a node that
   edgetl's portable rewrite made is that rewrite; anything else is the fp32 file itself.

The deploy model is not rebuilt here: a rebuilt one shows what a right fold gives, not which fold the file got, so
the fold and the merge are judged from the file's own nodes, as above.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.compare.gate import BARS, Bars
from edgetl.formats import FORMATS
from edgetl.formats.base import Format, Runner, adapt
from edgetl.formats.device_io import from_device_input, softmax, to_device_input
from edgetl.formats.engines import load_engine
from edgetl.model.checkpoint import load_model
from edgetl.preprocessing import Preprocessing
from edgetl.rundir import ArtifactEntry, Manifest, RunDir

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

ROWS = 4  # inputs a localization runs on: enough to show a departure, few enough to hold every tensor
# A node departs when its max |Δ| exceeds this share of its reference tensor's largest |value|. fp32: verify's
# logit bar per unit of logit scale. Measured on healthy files of the five shipped backbones (32 px, noise
# inputs), no matched node came within 3x of it (largest: 3.4e-5, efficientnet_b0's logits; the others <= 2e-5);
# one wrong weight or one unfolded BatchNorm moves its node by 0.3 to 3 of its scale.
FP32_NODE_RTOL = BARS["fp32"].atol or 1e-4
LOSSY_NODE_RTOL = 0.5  # a lossy precision without an rtol bar of its own: half the tensor's scale
AFFINE_RESIDUAL = 0.01  # a departure this well explained by a per-channel scale and shift is a fold's
SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata torch's dynamo exporter writes: the module path
RULE = "pkg.onnxscript.rewriter.rule_name"  # node metadata onnxscript's rewriter writes on the nodes it made
# edgetl.formats.onnx_portable's rules, by the class names onnxscript records (a test keeps the two in step)
PORTABLE_RULES = frozenset({"ReduceMeanToGlobalAveragePool", "ReduceMeanAttrToGlobalAveragePool",
                            "IsolateHardSigmoidGate", "ClipToAttributes", "ReshapeWithoutAllowzero",
                            "GemmWithZeroBias", "HardSwishToHardSigmoid"})
DEQUANTIZED = "_DequantizeLinear_Output"  # onnxruntime's QDQ quantizer: the tensor the next node reads
# the stages in the order a file goes through them; then "lower-precision file (<precision>)", "<name> engine"
FOLD, MERGE, FP32, PORTABLE = "deploy model (fold)", "deploy model (LoRA merge)", "fp32 file", "portable rewrite"


@dataclass(frozen=True)
class Localization:
    """Where one verify row departs: the stage, the node in that file (ONNX only), the module it stands for."""

    artifact: str  # the verify row: "model.onnx", "model.onnx (openvino)"
    stage: str  # FOLD | MERGE | FP32 | PORTABLE | "lower-precision file (int8)" | "openvino engine"
    file: str  # the file the stage is seen in: the fp32 file for the first four
    node: str | None  # "node_conv2d_3 (Conv, output conv2d_3)"; None: no graph to look into
    module: str | None  # the checkpoint's module that node stands for: "features.1.block.0.0"
    max_abs_diff: float  # of that node's output from its reference (else of the file's outputs)
    rel_diff: float  # max_abs_diff per unit of the reference's largest |value| (at least 1, for logits)
    bar: float  # the rel_diff a node (or the logits) may reach
    detail: str  # why this stage: "... BatchNorm features.0.1 was not folded into it"

    @property
    def line(self) -> str:
        """All of it in one line, for the log, the failure message and verify.json."""
        where = f", node {self.node} of {self.file}" if self.node else f" ({self.file})"
        module = f" = module {self.module}" if self.module else ""
        return (f"{self.artifact} departs at the {self.stage}{where}{module}: max |Δ| {self.max_abs_diff:.3g}, "
                f"{self.rel_diff:.2g} of its scale (bar {self.bar:g}) — {self.detail}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line}


def worst_rows(x: np.ndarray, reference: np.ndarray, outputs: np.ndarray, *, n: int = ROWS) -> np.ndarray:
    """The `n` rows of `x` whose outputs departed most from the reference's (in their original order)."""
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64)).max(axis=1)
    return np.ascontiguousarray(x[np.sort(np.argsort(-diff, kind="stable")[:n])])


def localize(run_dir: Path | RunDir, manifest: Manifest, artifact: ArtifactEntry, x: np.ndarray, *,
             bars: Bars | None = None, model: nn.Module | None = None, engine: str | None = None
             ) -> Localization | None:
    """Where `artifact` (run in `engine`, when given) first departs from the checkpoint on `x` (float32 NCHW,
    normalized, a few rows: `worst_rows`); `bars`: the artifact's parity bars (a lossy file's node bar is its
    rtol); `model`: the checkpoint's model, when the caller has it loaded. None when an fp32 file (in onnxruntime
    and in `engine`) holds on `x`; a lossy file always departs a little, so it is named once the stages before
    it hold. `run_dir`: the run, or its RunDir when the export was written elsewhere (`--out`)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    fmt = FORMATS[artifact.format]
    if model is None:
        model, _ = load_model(run.checkpoint(manifest.run.checkpoint))
    model = model.float().eval()
    prep = manifest.preprocessing
    want_in = manifest.io_of(artifact.file)[0]
    if want_in.dtype == "uint8":  # a device-input file sees uint8 crops: the checkpoint must see the same pixels
        x = from_device_input(to_device_input(x, mean=prep.mean, std=prep.std), mean=prep.mean, std=prep.std)
    x = _fit_batch(x, want_in.shape[0])
    # an ONNX file's nodes are compared with every module's output: one forward gives those and the logits
    capture = _capture(model, x) if fmt.runs_in_engines else None
    reference = capture.outputs[""][0].numpy().astype(np.float64) if capture else _torch(model, x)
    fp32_path, path = run.export_dir / fmt.file, run.export_dir / artifact.file
    lossy = path != fp32_path
    row = artifact.file if engine is None else f"{artifact.file} ({engine})"
    has_fp32 = any(a.file == fmt.file for a in manifest.artifacts)

    if has_fp32:  # an exact stage: the fp32 file must meet verify's fp32 bar
        got, want = _outputs(fmt.open(fp32_path), x, reference)
        if _logit_rel(got, want) > FP32_NODE_RTOL:
            return _in_fp32_file(row, fmt, fp32_path, capture, x, prep, logits=(got, want))
    if engine is not None:  # the file in another engine: against the same file in onnxruntime
        ort = fmt.open(path)(x)
        eng = adapt(load_engine(engine, path), fmt.read_meta(path))(x)
        bar = _lossy_bar(bars) if lossy else FP32_NODE_RTOL
        if _logit_rel(eng, ort) > bar:
            return Localization(artifact=row, stage=f"{engine} engine", file=artifact.file, node=None, module=None,
                                max_abs_diff=_max_diff(eng, ort), rel_diff=_logit_rel(eng, ort), bar=bar,
                                detail=f"{engine} departs from onnxruntime on the same file and inputs; nodes are "
                                       f"compared in onnxruntime only")
    if not lossy:
        return None  # the file holds on these inputs
    got, want = _outputs(fmt.open(path), x, reference)
    return _in_lossy_file(row, artifact, fmt, fp32_path if has_fp32 else None, path, x, prep, bars=bars,
                          logits=(got, want))


# --- the stages ---------------------------------------------------------------------------------------------------

def _in_fp32_file(row: str, fmt: Format, path: Path, capture: _Capture | None, x: np.ndarray,
                  prep: Preprocessing, *, logits: tuple[np.ndarray, np.ndarray]) -> Localization:
    """The fp32 file departs from the checkpoint: at which node, and which stage that node says it came from."""
    whole = {"artifact": row, "stage": FP32, "file": path.name, "node": None, "module": None,
             "max_abs_diff": _max_diff(*logits), "rel_diff": _logit_rel(*logits), "bar": FP32_NODE_RTOL}
    if capture is None:  # only an ONNX file is a graph whose nodes can be run one by one here
        return Localization(**whole, detail=f"its logits depart; {fmt.name} files are localized to the stage only "
                                            f"(nodes are compared in ONNX files)")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    values = run_every_node(proto, _feed(proto, x, prep))
    found = _first_departing_module(proto, values, capture, wrapped=_wrapped(fmt, path))
    if found is None:  # no node records the module it came from (another exporter made the file)
        return Localization(**whole, detail="its logits depart; no node of it records a module of the checkpoint")
    node, tensor, module, got, want, suspects = found
    stage, detail = _stage_of(module, got, want, capture, suspects)
    return Localization(artifact=row, stage=stage, file=path.name, node=_describe(node, tensor), module=module,
                        max_abs_diff=_max_diff(got, want), rel_diff=_rel(got, want), bar=FP32_NODE_RTOL,
                        detail=detail)


def _in_lossy_file(row: str, artifact: ArtifactEntry, fmt: Format, fp32_path: Path | None, path: Path,
                   x: np.ndarray, prep: Preprocessing, *, bars: Bars | None,
                   logits: tuple[np.ndarray, np.ndarray]) -> Localization:
    """The fp32 file holds and the lower-precision one departs: its first node beyond the precision's rtol."""
    bar = _lossy_bar(bars)
    whole = {"artifact": row, "stage": f"lower-precision file ({artifact.precision})", "file": artifact.file,
             "node": None, "module": None, "max_abs_diff": _max_diff(*logits), "rel_diff": _logit_rel(*logits),
             "bar": bar}
    if fp32_path is None:
        return Localization(**whole, detail=f"its fp32 file {fmt.file} is not listed: nothing to compare it with")
    if not fmt.runs_in_engines:
        return Localization(**whole, detail=f"the fp32 file {fp32_path.name} holds; {fmt.name} files are localized "
                                            f"to the stage only (nodes are compared in ONNX files)")
    import onnx

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    low = onnx.load(str(path), load_external_data=False)
    expected = run_every_node(fp32, _feed(fp32, x, prep))
    given = run_every_node(low, _feed(low, x, prep))
    made_by = {t: n for n in low.graph.node for t in n.output}
    compared = []
    for node in fp32.graph.node:
        for tensor in node.output:
            got, want = given.get(tensor + DEQUANTIZED, given.get(tensor)), expected.get(tensor)
            if got is not None and want is not None and got.shape == want.shape and tensor in made_by:
                compared.append((node, tensor, got.astype(np.float32), want))
    first = next((c for c in compared if _rel(c[2], c[3]) > bar), None)
    if first is None:
        return Localization(**whole, detail=f"the fp32 file {fp32_path.name} holds; no node of the file departs "
                                            f"beyond {bar:g} of its scale from the fp32 file's")
    node, tensor, got, want = first
    return Localization(**{**whole, "node": _describe(made_by[tensor], tensor),
                           "module": _module_of(node, wrapped=_wrapped(fmt, fp32_path)),
                           "max_abs_diff": _max_diff(got, want), "rel_diff": _rel(got, want)},
                        detail=f"the fp32 file {fp32_path.name} holds; compared with its tensor {tensor}")


def _lossy_bar(bars: Bars | None) -> float:
    return bars.rtol if bars is not None and bars.rtol is not None else LOSSY_NODE_RTOL


def _stage_of(module: str, got: np.ndarray, want: np.ndarray, capture: _Capture,
              suspects: Sequence[onnx.NodeProto]) -> tuple[str, str]:
    """The stage the departing node's output points to: the fold, the LoRA merge, the portable rewrite, the file."""
    bn = capture.bn_after.get(module)
    if bn is not None:
        unfolded = capture.recompute(module, fold=False)
        if unfolded is not None and unfolded.shape == got.shape and _rel(got, unfolded) <= FP32_NODE_RTOL:
            return FOLD, f"it gives the checkpoint's convolution before BatchNorm {bn}: that BatchNorm was not folded"
        if _per_channel_affine(got, want):
            return FOLD, (f"it is off by a per-channel scale and shift only: BatchNorm {bn} was folded with the "
                          f"wrong figures")
    if module in capture.lora:
        unmerged = capture.recompute(module, base=True)
        if unmerged is not None and unmerged.shape == got.shape and _rel(got, unmerged) <= FP32_NODE_RTOL:
            return MERGE, "it gives the layer without its LoRA update: the adapter was not merged"
    rules = sorted({r for n in suspects for r in _props(n).get(RULE, "").split(",") if r})
    portable = [r for r in rules if r in PORTABLE_RULES]
    if portable:
        return PORTABLE, f"the module departs at nodes edgetl's portable rewrite made ({', '.join(portable)})"
    made = f" (nodes rewritten by onnxscript's {', '.join(rules)})" if rules else ""
    return FP32, f"the checkpoint's module gives another output: the file's weights or ops differ{made}"


# --- running every node -------------------------------------------------------------------------------------------

def run_every_node(proto: onnx.ModelProto, feed: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor a node of `proto` computes on `feed`, by name: onnxruntime's CPU provider with graph
    optimizations off, so that no node is fused away or renamed."""
    import onnx
    import onnxruntime as ort

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    model = onnx.shape_inference.infer_shapes(proto)  # a copy, with every intermediate tensor's type
    kinds = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    present = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in present and kinds.get(name) in floats:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, kinds[name], None))
                present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: feed})))


def _feed(proto: onnx.ModelProto, x: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """`x` as the graph's input takes it: float NCHW, or the device's uint8 NHWC crops."""
    import onnx

    if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8:
        return to_device_input(x, mean=prep.mean, std=prep.std)
    return x


# --- the checkpoint's modules -------------------------------------------------------------------------------------

class _Capture:
    """Every module's output on one batch, which BatchNorm follows which convolution (the BatchNorm's input *is*
    the conv's output tensor: no tracing needed), and each conv and linear layer's input, to run it again
    without its LoRA update."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.bn_after: dict[str, str] = {}  # conv -> the BatchNorm that normalizes its output
        self.lora: set[str] = set()  # layers with a LoRA adapter

    def reference(self, name: str) -> np.ndarray | None:
        """What module `name` of the deploy model gives: the checkpoint's output, normalized by the BatchNorm
        after it for a conv (the fold moves it into the conv); None for a module called more than once or never."""
        if len(self.outputs.get(name, [])) != 1:
            return None
        return self.recompute(name) if name in self.bn_after else self.outputs[name][0].numpy()

    def recompute(self, name: str, *, fold: bool = True, base: bool = False) -> np.ndarray | None:
        """Layer `name`'s output with the BatchNorm after it applied (`fold`) or not, from its merged weight or
        from its `base` one (LoRA's B zeroed, the layer run again on its input: its own forward, so timm's
        Conv2dSame pads as it does)."""
        import torch
        import torch.nn.functional as F

        from edgetl.model.lora import LoraWeight

        m = self.modules[name]
        out = self.outputs[name][0]
        if base:
            if name not in self.inputs:
                return None
            zeroed = {f"parametrizations.weight.{i}.lora_B": torch.zeros_like(p.lora_B)
                      for i, p in enumerate(m.parametrizations.weight) if isinstance(p, LoraWeight)}
            with torch.no_grad():
                out = torch.func.functional_call(m, zeroed, (self.inputs[name],))
        bn_name = self.bn_after.get(name)
        if fold and bn_name is not None:
            bn = self.modules[bn_name]
            with torch.no_grad():
                out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return out.numpy()


def _capture(model: nn.Module, x: np.ndarray) -> _Capture:
    """Run `model` on `x` once with a forward hook on every module."""
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from edgetl.model.lora import LoraWeight

    capture = _Capture(model)
    conv_out: dict[int, str] = {}  # id of a conv's output tensor -> the conv
    copies: dict[tuple[int, int], torch.Tensor] = {}  # (id, version) of a tensor -> its copy
    alive: list[torch.Tensor] = []  # the tensors copied, so that no id is reused during the forward

    def copy(t: torch.Tensor) -> torch.Tensor:
        """A copy, as activations run in place (ReLU(inplace=True), `out += identity`) and would change the
        tensor later; one per tensor and version (a Sequential's output is its last layer's, the same tensor)."""
        key = (id(t), t._version)
        if key not in copies:
            copies[key] = t.detach().clone()
            alive.append(t)
        return copies[key]

    def hook(name: str):
        def record(m: nn.Module, args: tuple, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                return
            capture.outputs.setdefault(name, []).append(copy(out))
            if not args or not isinstance(args[0], torch.Tensor):
                return
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                capture.inputs[name] = copy(args[0])
                adapters = getattr(getattr(m, "parametrizations", None), "weight", [])
                if any(isinstance(p, LoraWeight) for p in adapters):
                    capture.lora.add(name)
            if isinstance(m, nn.modules.conv._ConvNd):
                conv_out[id(out)] = name
                alive.append(out)
            if isinstance(m, _BatchNorm) and id(args[0]) in conv_out:
                capture.bn_after[conv_out[id(args[0])]] = name
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if "parametrizations" not in name.split(".")]  # LoRA's adapters are not layers of the model
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return capture


def _first_departing_module(proto: onnx.ModelProto, values: dict[str, np.ndarray], capture: _Capture, *,
                            wrapped: bool):
    """(node, tensor, module, the node's output, the module's, the module's nodes since the last one that held)
    for the first node, in graph order, that gives a checkpoint module's output and departs from it beyond the
    bar; the one departing most when none does (rounding that adds up); None when no node maps to a module."""
    nodes = list(proto.graph.node)
    inside: dict[str, list[int]] = {}  # module -> its nodes; the last one gives the module's output
    for i, node in enumerate(nodes):
        for module in _modules_of(node, wrapped=wrapped):
            if module in capture.modules:
                inside.setdefault(module, []).append(i)
    ending: dict[int, list[str]] = {}
    for module, indices in inside.items():
        ending.setdefault(indices[-1], []).append(module)
    held, compared = -1, []
    for i in sorted(ending):
        node, tensor = nodes[i], nodes[i].output[0]
        got = values.get(tensor)
        if got is None:
            continue
        # several modules can end at one node (a Sequential and its last layer): the innermost called once names it
        for module in sorted(ending[i], key=_depth, reverse=True):
            want = capture.reference(module)
            if want is not None and want.shape == got.shape:
                break
        else:
            continue
        got = got.astype(np.float32)
        entry = (node, tensor, module, got, want, [nodes[j] for j in inside[module] if j > held])
        if _rel(got, want) > FP32_NODE_RTOL:
            return entry
        held = i
        compared.append(entry)
    return max(compared, key=lambda e: _rel(e[3], e[4]), default=None)


def _depth(module: str) -> int:
    return 0 if module == "" else module.count(".") + 1


def _modules_of(node: onnx.NodeProto, *, wrapped: bool) -> list[str]:
    """The checkpoint's module paths a node sits in, outermost first (the exporter's `name_scopes`). A
    device-input or probabilities file wraps the deploy model as `model` (edgetl.formats.device_io.device_model):
    that level is taken off, and the wrapper's own nodes belong to no module of the checkpoint."""
    try:
        scopes = ast.literal_eval(_props(node).get(SCOPES, "[]"))
    except (ValueError, SyntaxError):
        return []
    paths = [s for s in scopes[:-1] if isinstance(s, str)]  # the last entry is the node's own name
    if not wrapped:
        return paths
    return ["" if p == "model" else p.removeprefix("model.") for p in paths if p == "model" or p.startswith("model.")]


def _module_of(node: onnx.NodeProto, *, wrapped: bool) -> str | None:
    paths = _modules_of(node, wrapped=wrapped)
    return paths[-1] if paths and paths[-1] else None


def _wrapped(fmt: Format, path: Path) -> bool:
    """Whether the file is the deploy model behind the device's tensors (uint8 in, or probabilities out)."""
    embedded = fmt.read_meta(path) or {}
    return (embedded.get("input_type", "float"), embedded.get("output_type", "logits")) != ("float", "logits")


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


# --- figures ------------------------------------------------------------------------------------------------------

def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max())  # float32 tensors in float32: 1e-7 of the scale, far below any bar


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| per unit of the reference's largest |value|: how far a tensor moved, at its own scale."""
    return _max_diff(got, want) / max(float(np.abs(want).max()), float(np.finfo(np.float32).tiny))


def _logit_rel(got: np.ndarray, want: np.ndarray) -> float:
    """As verify reads its fp32 bar: max |Δ| per unit of the largest |logit|, at least 1."""
    return _max_diff(got, want) / max(1.0, float(np.abs(want).max()))


def _per_channel_affine(got: np.ndarray, want: np.ndarray) -> bool:
    """Whether `got` is `want` times a scale plus a shift per channel (axis 1), within AFFINE_RESIDUAL of the
    departure: what BatchNorm figures folded wrong look like."""
    if got.ndim < 3 or got[:, 0].size < 8:  # a few values per channel fit any scale and shift
        return False
    g = np.moveaxis(got.astype(np.float64), 1, 0).reshape(got.shape[1], -1)
    w = np.moveaxis(want.astype(np.float64), 1, 0).reshape(want.shape[1], -1)
    residual = 0.0
    for gc, wc in zip(g, w):
        a = np.stack([wc, np.ones_like(wc)], axis=1)
        coef, *_ = np.linalg.lstsq(a, gc, rcond=None)
        residual = max(residual, float(np.abs(a @ coef - gc).max()))
    departure = float(np.abs(g - w).max())
    return departure > 0 and residual <= AFFINE_RESIDUAL * departure


# --- small helpers ------------------------------------------------------------------------------------------------

def _outputs(runner: Runner, x: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the file's output, the checkpoint's in the same form): probabilities for a file that gives them."""
    return np.asarray(runner(x), dtype=np.float64), softmax(reference) if runner.gives == "probs" else reference


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().astype(np.float64)


def _fit_batch(x: np.ndarray, batch: Any) -> np.ndarray:
    """`x` at a file's fixed batch (its first rows, or its last row repeated); as it is for a dynamic batch."""
    if not isinstance(batch, int) or batch == len(x):
        return np.ascontiguousarray(x)
    if batch < len(x):
        return np.ascontiguousarray(x[:batch])
    return np.ascontiguousarray(np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)]))


def _describe(node: onnx.NodeProto, tensor: str) -> str:
    return f"{node.name or '(unnamed)'} ({node.op_type}, output {tensor})"
