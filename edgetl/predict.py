"""Classify images with an exported file and the manifest alone — what a device does.

    edgetl predict artifacts/my-run cat.jpg dog.png --top-k 3

No checkpoint and no training code: the first artifact of the manifest that has a runtime here (the ONNX
file, in onnxruntime, for a default export), its sha256 checked against the manifest first, and the
manifest's preprocessing (`edgetl.preprocessing`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl import rundir
from edgetl.errors import DataError, RunDirError, VerifyFailed
from edgetl.files import sha256_file
from edgetl.formats import FORMATS
from edgetl.formats.base import Runner
from edgetl.images import UnusableImageError
from edgetl.preprocessing import preprocess_image
from edgetl.rundir import Manifest
from edgetl.verify.parity import softmax


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


def load_artifact(export_dir: Path, manifest: Manifest, *, threads: int | None = None) -> Runner:
    """The first listed artifact with a runtime here, loaded once its sha256 matches the manifest."""
    runnable = [a for a in manifest.artifacts if a.format in FORMATS]
    if not runnable:
        raise RunDirError(f"{export_dir / 'manifest.json'} lists no file edgetl can run (known formats: "
                          f"{', '.join(FORMATS)}) — run `edgetl export`")
    artifact = runnable[0]
    path = export_dir / artifact.file
    if not path.is_file():
        raise RunDirError(f"{path} is listed in the manifest but missing — re-run `edgetl export`")
    digest = sha256_file(path)
    if digest != artifact.sha256:
        raise VerifyFailed(f"{path}: sha256 {digest[:12]}… does not match the manifest ({artifact.sha256[:12]}…); "
                           "the file changed after export — re-export it")
    return FORMATS[artifact.format].load(path, threads=threads)


def predict(path: Path, images: Sequence[str | os.PathLike], *, top_k: int = 5, threads: int | None = None) -> list[Prediction]:
    if not images:
        raise DataError("no image given — pass one or more image files")
    export_dir = find_export(Path(path))
    manifest = rundir.read_manifest(export_dir / "manifest.json")
    runner = load_artifact(export_dir, manifest, threads=threads)
    labels = manifest.labels
    batch = []
    for image in images:
        try:
            batch.append(preprocess_image(image, manifest.preprocessing))
        except (UnusableImageError, OSError, ValueError, SyntaxError) as e:  # SyntaxError: PIL on some damaged files
            raise DataError(f"cannot read image {image}: {e}") from None
    fixed = manifest.input.shape[0]
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
