"""Classify images with the exported ONNX model and the manifest alone — what a device does.

    edgetl predict artifacts/my-run cat.jpg dog.png --top-k 3

No checkpoint and no training code: onnxruntime on `export/model.onnx`, preprocessing from
`export/manifest.json` (`device_preprocess`), the file's sha256 checked against the manifest first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.device_preprocess import preprocess_image
from edgetl.errors import DataError, RunDirError, VerifyFailed
from edgetl.files import read_json, sha256_file
from edgetl.parity import softmax
from edgetl.runtimes import load_onnx


@dataclass
class Prediction:
    image: str
    label: str
    index: int
    probability: float
    top: list[tuple[str, float]]  # (label, probability), best first


def find_export(path: Path) -> Path:
    """A run directory or its export folder -> the folder holding manifest.json."""
    for folder in (path, path / "export"):
        if (folder / "manifest.json").is_file():
            return folder
    raise RunDirError(f"no export/manifest.json under {path} — run `edgetl export {path}` first")


def _onnx_artifact(export_dir: Path, manifest: dict[str, Any]) -> Path:
    onnx = [a for a in manifest.get("artifacts", []) if a.get("format") == "onnx"]
    if not onnx:
        raise RunDirError(f"{export_dir / 'manifest.json'} lists no ONNX file — run `edgetl export --format onnx`")
    path = export_dir / onnx[0]["file"]
    if not path.is_file():
        raise RunDirError(f"{path} is listed in the manifest but missing — re-run `edgetl export`")
    digest = sha256_file(path)
    if digest != onnx[0]["sha256"]:
        raise VerifyFailed(f"{path}: sha256 {digest[:12]}… does not match the manifest ({onnx[0]['sha256'][:12]}…); "
                           "the file changed after export — re-export it")
    return path


def predict(path: Path, images: Sequence[str | os.PathLike], *, top_k: int = 5, threads: int | None = None) -> list[Prediction]:
    if not images:
        raise DataError("no image given — pass one or more image files")
    export_dir = find_export(Path(path))
    manifest = read_json(export_dir / "manifest.json", what="export manifest")
    runner = load_onnx(_onnx_artifact(export_dir, manifest), threads=threads)
    labels: list[str] = manifest["labels"]
    batch = []
    for image in images:
        try:
            batch.append(preprocess_image(image, manifest["preprocessing"]))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {image}: {e}") from None
    fixed = manifest["input"]["shape"][0]
    x = np.stack(batch)
    if isinstance(fixed, int):  # a fixed-batch export: one call per image, padded
        logits = np.concatenate([runner(np.concatenate([x[i:i + 1]] * fixed))[:1] for i in range(len(x))])
    else:
        logits = runner(x)
    probs = softmax(logits)
    k = max(1, min(top_k, len(labels)))
    out = []
    for image, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        out.append(Prediction(image=str(image), label=labels[order[0]], index=int(order[0]), probability=float(p[order[0]]),
                              top=[(labels[i], float(p[i])) for i in order]))
    return out
