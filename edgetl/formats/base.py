"""What every export format shares: the Format record, the writer and runner types, the I/O names.

    fmt = FORMATS["onnx"]; fmt.write(model, example, path, meta=meta); runner = fmt.load(path, threads=1)

A format is one module (`formats/onnx.py`, `formats/torchscript.py`) that defines how to write its file from
the deploy model, how to load and run that file (a `Runner`: float32 NCHW numpy in, logits out), how to read
the labels and preprocessing the file embeds (`read_meta`), and which precisions and optional extra it has.
`export`, `verify`, `predict` and the CLI iterate over `FORMATS` and never branch on a format's name. Torch
imports stay inside functions: `edgetl --help` must not pay for them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgetl import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportMeta:
    """What every writer needs to make its file describe itself."""

    backbone: str
    labels: list[str]
    preprocessing: dict[str, Any]
    recipe_sha256: str | None
    batch: int | None  # None: dynamic batch axis
    opset: int | None  # None: the exporter's default

    def describe(self) -> dict[str, str]:
        """Flat string metadata (ONNX metadata_props, TorchScript extra file)."""
        return {"labels": json.dumps(self.labels), "preprocessing": json.dumps(self.preprocessing),
                "edgetl_version": __version__, "backbone": self.backbone, "recipe_sha256": self.recipe_sha256 or "",
                "precision": "fp32"}

    def io(self) -> dict[str, dict[str, Any]]:
        """The input and output tensors: name, shape ("batch" for a dynamic axis), dtype."""
        batch: int | str = "batch" if self.batch is None else self.batch
        size = self.preprocessing["crop_size"]
        return {"input": {"name": INPUT_NAME, "shape": [batch, 3, size, size], "dtype": "float32"},
                "output": {"name": OUTPUT_NAME, "shape": [batch, len(self.labels)], "dtype": "float32"}}


@dataclass(frozen=True)
class Signature:
    """One graph input or output as the file declares it; symbolic dims are strings (or None)."""

    name: str
    shape: list[int | str | None]
    dtype: str


@dataclass
class Runner:
    """A loaded model file: call it on float32 NCHW numpy, get logits back."""

    run: Callable[[np.ndarray], np.ndarray]
    inputs: list[Signature] | None = None  # None: the format declares no names and shapes (TorchScript)
    outputs: list[Signature] | None = None

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
class Format:
    name: str
    file: str  # the file name in RUN/export
    write: Writer
    load: Loader
    runtime: str  # what `load` runs it with, for reports
    precisions: tuple[str, ...] = ("fp32",)
    extra: str | None = None  # the `pip install edgetl[EXTRA]` its runtime needs; None: a core dependency
    gates_latency: bool = False  # its p50 is the figure `--max-latency-ms` and `--baseline` apply to
    check_request: Callable[[ExportMeta], None] = field(default=lambda meta: None)  # refuse bad flags up front
    # The file's own description (`embedded_meta`): labels and preprocessing at least; None when it has none
    read_meta: Callable[[Path], dict[str, Any] | None] = no_meta
    # Lower precisions made from the written fp32 file: precision -> its transform (edgetl.export.precision
    # runs them, with calibration and the accuracy guard). `precisions` lists fp32 and these.
    derive: dict[str, Callable[..., dict[str, Any]]] = field(default_factory=dict)

    @property
    def all_precisions(self) -> tuple[str, ...]:
        return (*self.precisions, *self.derive)

    def file_for(self, precision: str) -> str:
        """model.onnx for fp32, model.int8.onnx for int8: every precision its own file, side by side."""
        if precision == self.precisions[0]:
            return self.file
        stem, dot, suffix = self.file.partition(".")
        return f"{stem}.{precision}{dot}{suffix}"


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
