"""What every export format shares: the Format record, the writer and runner types, the I/O names.

    fmt = FORMATS["onnx"]; fmt.write(model, example, path, meta=meta); runner = fmt.load(path, threads=1)

A format is one module (`formats/onnx.py`, `formats/executorch.py`, ...) that defines how to write its file from
the deploy model, how to load and run that file (a `Runner`: float32 NCHW numpy in, logits out), how to read
the labels and preprocessing the file embeds (`read_meta`), its lower precisions (`derive`), and the optional
extra its converter and runtime need. `export`, `verify`, `predict` and the CLI iterate over `FORMATS` and never
branch on a format's name. Torch and runtime imports stay inside functions: `edgetl --help` must not pay for them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

INPUT_NAME, OUTPUT_NAME, PROBS_NAME = "input", "logits", "probs"


@dataclass(frozen=True)
class ExportMeta:
    """What every writer needs to make its file describe itself."""

    backbone: str
    labels: list[str]
    preprocessing: dict[str, Any]
    recipe_sha256: str | None
    batch: int | None  # None: dynamic batch axis
    opset: int | None  # None: the exporter's default
    input: str = "float"  # float32 NCHW normalized | uint8: the device's NHWC crop (edgetl.formats.device_io)
    output: str = "logits"  # logits | probs (a softmax in the graph)

    def describe(self, precision: str = "fp32") -> dict[str, str]:
        """Flat string metadata (ONNX metadata_props, TorchScript extra file)."""
        return {"labels": json.dumps(self.labels), "preprocessing": json.dumps(self.preprocessing),
                "edgetl_version": __version__, "backbone": self.backbone, "recipe_sha256": self.recipe_sha256 or "",
                "precision": precision, "input_type": self.input, "output_type": self.output}

    def io(self, *, batch: int | None = None) -> dict[str, dict[str, Any]]:
        """The input and output tensors: name, shape ("batch" for a dynamic axis), dtype; `batch`: a file's own
        fixed batch instead of the export's."""
        batch = self.batch if batch is None else batch
        dim: int | str = "batch" if batch is None else batch
        size = self.preprocessing["crop_size"]
        image = {"shape": [dim, size, size, 3], "dtype": "uint8"} if self.input == "uint8" else \
            {"shape": [dim, 3, size, size], "dtype": "float32"}
        return {"input": {"name": INPUT_NAME, **image},
                "output": {"name": self.output_name, "shape": [dim, len(self.labels)], "dtype": "float32"}}

    @property
    def output_name(self) -> str:
        return PROBS_NAME if self.output == "probs" else OUTPUT_NAME

    def own_io(self, io: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A file's io for its manifest entry: empty when it is the export's (the manifest's input/output)."""
        return {} if io == self.io() else io


@dataclass(frozen=True)
class Signature:
    """One graph input or output as the file declares it; symbolic dims are strings (or None)."""

    name: str | None  # None: the format has no tensor names (ExecuTorch), only shapes and dtypes
    shape: list[int | str | None]
    dtype: str
    scale: float | None = None  # an integer tensor's quantization: real = scale * (q - zero_point)
    zero_point: int | None = None


@dataclass
class Runner:
    """A loaded model file: call it on float32 NCHW numpy, get logits (or, where `gives` says, probabilities)
    back. A device-input file (`takes` uint8) also accepts its uint8 NHWC crops directly."""

    run: Callable[[np.ndarray], np.ndarray]
    inputs: list[Signature] | None = None  # None: the format declares no names and shapes (TorchScript)
    outputs: list[Signature] | None = None
    takes: str = "float"
    gives: str = "logits"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


class Writer(Protocol):
    """Write `model` (traced/exported on `example`) to `path`; return extra manifest fields (e.g. the opset)."""

    def __call__(self, model: nn.Module, example: torch.Tensor, path: Path, *, meta: ExportMeta) -> dict[str, Any]: ...


class Loader(Protocol):
    """Load a written file into its runtime; `threads` sets its intra-op threads (None: the runtime's default)."""

    def __call__(self, path: Path, *, threads: int | None = None) -> Runner: ...


def no_meta(path: Path) -> dict[str, Any] | None:
    """A format whose files carry no description of their own."""
    return None


@dataclass(frozen=True)
class Source:
    """What a lower precision is made from: the written fp32 file, and the deploy model it was written from
    with its traced example. ONNX's transforms rewrite the file; ExecuTorch's and LiteRT's quantize the model
    (PT2E) and convert it again."""

    fp32: Path
    model: nn.Module
    example: torch.Tensor
    meta: ExportMeta


@dataclass(frozen=True)
class Derivation:
    """One lower precision of a format (edgetl.export.precision runs it: calibration, the accuracy guard).

    `prepare` turns the Source into what every attempt starts from (ONNX: its pre-processed graph), once; `make`
    writes one attempt to `out` and returns how it was made, for the manifest. INT8's make also takes
    `calibration` (float32 NCHW train images), `method`, `activations` and `exclude` (layers kept float); the
    guard keeps `ends` float first (from the first attempt where `ends_float_from_start`: the format measured them
no slower float), then the `noisiest` layers of a failed attempt, at most a share of `size`.
    """

    make: Callable[..., dict[str, Any]]
    prepare: Callable[[Source, Path], Any] = field(default=lambda source, folder: source)
    ends: Callable[[Any], list[str]] = field(default=lambda prepared: [])
    # a device file's own float ops around the model (its image's cast and normalization, a softmax): float in
    # every attempt, and neither counted nor capped as layers kept float
    wrapper: Callable[[Any], list[str]] = field(default=lambda prepared: [])
    ends_float_from_start: bool = False
    size: Callable[[Any], int] = field(default=lambda prepared: 0)
    # (prepared, failed attempt, images) -> layer names, noisiest first; None: the format cannot rank them
    noisiest: Callable[[Any, Path, np.ndarray], list[str]] | None = None
    activations: tuple[str, ...] = ("int8",)  # INT8 activation types it can make; the guard times them if several


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # the file name in RUN/export
    write: Writer
    load: Loader
    runtime: str  # what `load` runs it with, for reports
    precisions: tuple[str, ...] = ("fp32",)
    extra: str | None = None  # the `pip install edgetl[EXTRA]` its runtime needs; None: a core dependency
    requires: tuple[str, ...] = ()  # the modules that extra provides (probed without importing them)
    packages: tuple[str, ...] = ()  # distributions whose versions the manifest records with each file
    gates_latency: bool = False  # its p50 is the figure `--max-latency-ms` and `--baseline` apply to
    runs_in_engines: bool = False  # the ONNX engines of edgetl.formats.engines (`--runtime`) run its files too
    check_request: Callable[[ExportMeta], None] = field(default=lambda meta: None)  # refuse bad flags up front
    # The file's own description (`embedded_meta`): labels and preprocessing at least; None when it has none
    read_meta: Callable[[Path], dict[str, Any] | None] = no_meta
    # Lower precisions made from the fp32 export: precision -> how (edgetl.export.precision runs them, with
    # calibration and the accuracy guard). `precisions` lists fp32 and these.
    derive: dict[str, Derivation] = field(default_factory=dict)
    # What verify cannot take on trust, read from the file itself: (the precision its ops say, or None where the
    # format cannot tell; one line per problem: weights outside the file, metadata keys given twice, ...)
    audit: Callable[[Path], tuple[str | None, list[str]]] = field(default=lambda path: (None, []))

    @property
    def all_precisions(self) -> tuple[str, ...]:
        return (*self.precisions, *self.derive)

    def open(self, path: Path, *, threads: int | None = None) -> Runner:
        """`load`, then callable on float NCHW normalized images whatever the file takes (its embedded metadata
        says: `edgetl.formats.device_io.adapt`); what every stage runs a file with."""
        runner = self.load(path, threads=threads)
        return adapt(runner, self.read_meta(path))

    def missing(self) -> str | None:
        """One line naming the pip command when the optional extra this format needs is not installed."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return (f"--format {self.name} needs {', '.join(absent)}, which is not installed — "
                f"pip install 'edgetl[{self.extra}]'")

    def versions(self) -> dict[str, str | None]:
        """The installed versions of the packages that write and run this format, for the manifest."""
        return {p: _version(p) for p in self.packages}

    def file_for(self, precision: str) -> str:
        """model.onnx for fp32, model.int8.onnx for int8: every precision its own file, side by side."""
        if precision == self.precisions[0]:
            return self.file
        stem, dot, suffix = self.file.partition(".")
        return f"{stem}.{precision}{dot}{suffix}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def require(fmt_name: str, extra: str, module: str) -> None:
    """Before importing an optional runtime: a missing one is a one-line usage error naming the pip command."""
    if importlib.util.find_spec(module) is None:
        raise EdgetlError(f"{fmt_name} needs {module}, which is not installed — pip install 'edgetl[{extra}]'")


def file_batch(meta: ExportMeta) -> int:
    """The batch an on-device file (ExecuTorch, LiteRT) is written at: the export's fixed batch, else 1. Their
    runtimes plan memory for fixed shapes (ExecuTorch's dynamic dims are bounded, LiteRT resizes by re-planning),
    a phone classifies one frame at a time, and a runner loops over bigger batches (`fixed_batch_runner`); the
    manifest entry records the file's own batch."""
    return meta.batch or 1


def fixed_batch_runner(run_fixed: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """Run a file whose batch is fixed on any number of rows: `batch` rows per call, the last call padded with
    copies of its last row — what a device's loop over its camera frames does."""

    def run(x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            n = len(part)
            if n < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - n, axis=0)])
            out.append(run_fixed(np.ascontiguousarray(part))[:n])
        return np.concatenate(out)

    return run


def embedded_meta(props: Mapping[str, Any]) -> dict[str, Any] | None:
    """A file's description with `labels` and `preprocessing` decoded from their JSON text; None when it has
    neither (exported before edgetl embedded them). Text that is not JSON stays text, so it differs from the
    manifest: a mismatch to report, never a crash."""
    if "labels" not in props and "preprocessing" not in props:
        return None
    meta = dict(props)
    for key in ("labels", "preprocessing"):
        if isinstance(meta.get(key), str):
            with contextlib.suppress(ValueError):
                meta[key] = json.loads(meta[key])
        meta.setdefault(key, None)
    return meta


def torch_runner(module: nn.Module) -> Runner:
    """An in-memory PyTorch module in eval mode, fp32 (torch runners use PyTorch's global thread count)."""
    import torch

    module = module.float().eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, not one logits tensor")
        return out.numpy()

    return Runner(run=run)


def adapt(runner: Runner, embedded: dict[str, Any] | None) -> Runner:
    """A loaded file as the rest of edgetl calls it (float NCHW normalized in), by what the file says of itself
    (`input_type`, `output_type`, `preprocessing` in its embedded metadata). A float-input logits file comes back
    as is."""
    embedded = embedded or {}
    takes, gives = embedded.get("input_type", "float"), embedded.get("output_type", "logits")
    if takes == "float" and gives == "logits":
        return runner
    if takes == "uint8":
        from edgetl.formats.device_io import to_device_input

        prep = embedded.get("preprocessing")
        mean, std = (prep.get("mean"), prep.get("std")) if isinstance(prep, dict) else (None, None)
        if mean is None or std is None:
            raise ValueError("the file takes uint8 images but carries no mean/std to make them from")
        run_uint8 = runner.run

        def run(x: np.ndarray) -> np.ndarray:
            return run_uint8(x if x.dtype == np.uint8 else to_device_input(x, mean=mean, std=std))

        runner = replace(runner, run=run)
    return replace(runner, takes=takes, gives=gives)
