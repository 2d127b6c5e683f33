"""manifest.json: what a device needs to run the export (labels, preprocessing, tensors) and what was written.

    manifest = build_manifest(ckpt=meta, checkpoint="best", meta=export_meta, report=deploy_report, ...)

The schema is `edgetl.rundir.Manifest`; this module only fills it in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from edgetl.formats.base import ExportMeta
from edgetl.model.deploy import DeployReport
from edgetl.rundir import ArtifactEntry, CheckpointMeta, ExportedFrom, Manifest, ModelFacts, package_versions
from edgetl.version import __version__

VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript")


@dataclass(frozen=True)
class Written:
    """One file a format's writer left in the export folder."""

    format: str
    file: str
    bytes: int
    sha256: str
    precision: str
    seconds: float
    opset: int | None = None
    quantization: dict[str, Any] | None = None  # lower precisions: how the file was made and judged
    runtime: str | None = None  # what runs it (Format.runtime)
    versions: dict[str, str | None] | None = None  # the packages that wrote it and run it
    input: dict[str, Any] | None = None  # the file's own tensors, where they are not the manifest's (a fixed
    output: dict[str, Any] | None = None  # batch of 1, int8 io): what a device must feed this file
    delegation: dict[str, Any] | None = None  # the share of the graph a delegate (XNNPACK) runs
    portable: dict[str, Any] | None = None  # ONNX: the exporter's opset, the portable rewrites, what is left

    def entry(self) -> ArtifactEntry:
        return ArtifactEntry(format=self.format, file=self.file, bytes=self.bytes, sha256=self.sha256,
                             precision=self.precision, opset=self.opset, seconds=self.seconds,
                             quantization=self.quantization, runtime=self.runtime, versions=self.versions,
                             input=self.input, output=self.output, delegation=self.delegation,
                             portable=self.portable)


def build_manifest(*, ckpt: CheckpointMeta, checkpoint: str, meta: ExportMeta, report: DeployReport,
                   macs: int | None, artifacts: list[Written], checkpoint_sha256: str | None = None) -> Manifest:
    io = meta.io()
    return Manifest(
        edgetl_version=__version__,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        run=ExportedFrom(backbone=meta.backbone, checkpoint=checkpoint, epoch=ckpt.at_epoch, val_acc=ckpt.val_acc,
                         recipe_sha256=meta.recipe_sha256, checkpoint_sha256=checkpoint_sha256),
        labels=meta.labels, preprocessing=ckpt.preprocessing, input=io["input"], output=io["output"],
        model=ModelFacts(params=report.params, macs=macs, bn_folded=report.bn_folded, lora_merged=report.lora_merged,
                         fold_max_abs_diff=report.max_abs_diff, norms_kept=report.norms_kept),
        versions=package_versions(*VERSIONED),
        artifacts=[a.entry() for a in artifacts],
    )
