"""Classify images with an exported file and the manifest alone — what a device does.

    edgetl predict artifacts/my-run cat.jpg dog.png --top-k 3

No checkpoint and no training code: the first artifact of the manifest that has a runtime here (the ONNX
file, in onnxruntime, for a default export; `--format` / `--precision` pick another), its sha256 checked against
the manifest first, then its meaning: its output size and the labels and preprocessing it embeds must be the
manifest's. Images are decoded with the
manifest's preprocessing (`edgetl.preprocessing`) and run PREDICT_BATCH at a time, so thousands of images take
no more memory than one batch; an image that cannot be used is reported with its reason, the others still run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl import rundir
from edgetl.errors import DataError, EdgetlError, RunDirError, describe_error
from edgetl.files import sha256_file
from edgetl.formats import ENGINE_FORMAT, FORMATS
from edgetl.formats.base import Runner, adapt
from edgetl.formats.device_io import softmax
from edgetl.formats.engines import REFERENCE_ENGINE, load_engine, require_engine
from edgetl.images import UnusableImageError
from edgetl.preprocessing import preprocess_image
from edgetl.rundir import ArtifactEntry, Manifest

PREDICT_BATCH = 32  # images decoded and run at once (a fixed-batch export: its own batch)
MAX_FIXED_BATCH = 1024  # a fixed batch is padded to its size: a manifest cannot make predict allocate more


@dataclass
class Prediction:
    image: str
    label: str
    index: int
    probability: float
    top: list[tuple[str, float]]  # (label, probability), best first


@dataclass(frozen=True)
class Failure:
    image: str
    error: str  # why the image cannot be used


@dataclass
class PredictResult:
    rows: list[Prediction | Failure]  # one per image, in the order given

    @property
    def predictions(self) -> list[Prediction]:
        return [r for r in self.rows if isinstance(r, Prediction)]

    @property
    def failures(self) -> list[Failure]:
        return [r for r in self.rows if isinstance(r, Failure)]


def find_export(path: Path) -> Path:
    """A run directory or its export folder -> the folder holding manifest.json."""
    for folder in (path, path / "export"):
        if (folder / "manifest.json").is_file():
            return folder
    raise RunDirError(f"no export/manifest.json under {path} — run `edgetl export {path}` first")


def choose_artifact(export_dir: Path, manifest: Manifest, *, precision: str | None = None,
                    fmt: str | None = None) -> ArtifactEntry:
    """The first listed artifact with a runtime here, of `fmt` and `precision` when given."""
    runnable = [a for a in manifest.artifacts if a.format in FORMATS]
    if not runnable:
        raise RunDirError(f"{export_dir / 'manifest.json'} lists no file edgetl can run (known formats: "
                          f"{', '.join(FORMATS)}) — run `edgetl export`")
    for flag, wanted, key in (("--format", fmt, "format"), ("--precision", precision, "precision")):
        if wanted is not None:
            listed = sorted({getattr(a, key) for a in runnable})
            runnable = [a for a in runnable if getattr(a, key) == wanted]
            if not runnable:
                raise RunDirError(f"{export_dir / 'manifest.json'} lists no {wanted} file (it has: "
                                  f"{', '.join(listed)}) — export one with `edgetl export RUN {flag} {wanted}`")
    return runnable[0]


def load_artifact(export_dir: Path, manifest: Manifest, *, threads: int | None = None,
                  precision: str | None = None, fmt: str | None = None, engine: str | None = None) -> Runner:
    """The first listed artifact with a runtime here (of `fmt` and `precision`, when given), loaded once its
    sha256 matches the manifest; the runner refuses logits whose size is not the manifest's label count. `engine`
    (--runtime): run the ONNX file in OpenVINO or OpenCV instead of onnxruntime."""
    if engine not in (None, REFERENCE_ENGINE):
        require_engine(engine)
        if fmt not in (None, ENGINE_FORMAT):
            raise EdgetlError(f"--runtime {engine} runs {ENGINE_FORMAT.upper()} files, not {fmt} — drop --format or "
                              f"use --format {ENGINE_FORMAT}")
        fmt = ENGINE_FORMAT
    artifact = choose_artifact(export_dir, manifest, precision=precision, fmt=fmt)
    path = export_dir / artifact.file
    if path.is_symlink() or not path.resolve().is_relative_to(export_dir.resolve()):
        raise RunDirError(f"{export_dir / 'manifest.json'} lists {artifact.file!r}, which is not a file of the export "
                          f"folder; predict runs only files inside it — re-run `edgetl export`")
    if not path.is_file():
        raise RunDirError(f"{path} is listed in the manifest but missing — re-run `edgetl export`")
    digest = sha256_file(path)
    if digest != artifact.sha256:
        raise RunDirError(f"{path}: sha256 {digest[:12]}… does not match the manifest ({artifact.sha256[:12]}…); "
                           "the file changed after export — re-export it")
    runtime = FORMATS[artifact.format]
    try:
        if engine not in (None, REFERENCE_ENGINE):
            runner = load_engine(engine, path, threads=threads)
        else:
            runner = runtime.load(path, threads=threads)
        embedded = runtime.read_meta(path)
        runner = adapt(runner, embedded)  # a device-input file still takes the float images decoded here
    except EdgetlError:  # its runtime is an extra that is not installed: the message names the pip command
        raise
    except Exception as e:  # noqa: BLE001 — a file its runtime refuses is a damaged export, not a crash
        raise RunDirError(f"{path}: {runtime.runtime} cannot load it ({describe_error(e)}) — re-export it") from None
    declared = runner.outputs[0].shape[-1] if runner.outputs else None
    if isinstance(declared, int):
        _check_output_size(path, declared, manifest)
    listed_batch = manifest.io_of(artifact.file)[0].shape[0]
    file_batch = runner.inputs[0].shape[0] if runner.inputs else listed_batch
    if isinstance(listed_batch, int) and (listed_batch != file_batch or not 1 <= listed_batch <= MAX_FIXED_BATCH):
        raise RunDirError(f"{path}: the manifest's fixed batch {listed_batch} is not the file's ({file_batch}) — "
                          f"the manifest was edited after export; re-export it")
    if embedded is not None:  # None: exported before files described themselves
        for field, listed in (("labels", manifest.labels), ("preprocessing", manifest.preprocessing.to_dict())):
            if embedded[field] != listed:
                raise RunDirError(f"{path}: the {field} embedded in the file differ from the manifest's — one was "
                                  f"edited after export; re-export it")

    def run(x: np.ndarray) -> np.ndarray:
        logits = runner(x)
        _check_output_size(path, logits.shape[-1], manifest)
        return logits

    return Runner(run=run, inputs=runner.inputs, outputs=runner.outputs, takes=runner.takes, gives=runner.gives)


def _check_output_size(path: Path, size: int, manifest: Manifest) -> None:
    if size != len(manifest.labels):
        raise RunDirError(f"{path}: the model has {size} outputs but the manifest lists {len(manifest.labels)} "
                          f"labels — the manifest was edited or belongs to another export; re-export it")


GLOB_CHARACTERS = frozenset("*?[")


def expand_images(images: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given; a folder -> the image files under it (by extension, sorted; a folder without any stays, to
    be reported unusable); a pattern with * ? [ that names no file -> its matches, sorted (`**` goes into
    subfolders), so a quoted glob works in any shell."""
    import glob

    from edgetl.data.folders import walk_images

    found: list[str] = []
    for image in images:
        text = os.fspath(image)
        if os.path.isdir(text):  # the one rule of what is an image (training's walker), skipped files left out
            inside = [str(p) for p in walk_images(Path(text), [], root=Path(text))]
            found += inside or [text]  # no images in it: the folder itself, reported as not an image file
        elif GLOB_CHARACTERS & set(text) and not os.path.lexists(text):
            matches = sorted(m for m in glob.glob(text, recursive=True) if os.path.isfile(m))
            if not matches:
                raise DataError(f"no file matches {text!r}")
            found += matches
        else:
            found.append(text)
    return found


def predict_images(path: Path, images: Sequence[str | os.PathLike], *, top_k: int = 5,
                   threads: int | None = None, precision: str | None = None, fmt: str | None = None,
                   engine: str | None = None) -> PredictResult:
    """Every image's prediction, or the reason it cannot be used, in the order given (folders and glob
    patterns expanded in place: `expand_images`)."""
    if not images:
        raise DataError("no image given — pass one or more image files, folders or quoted glob patterns")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise EdgetlError(f"top_k must be a whole number >= 1 (got {top_k!r})")
    if isinstance(images, (str, os.PathLike)):  # one path, not a sequence of characters
        images = [images]
    images = expand_images(images)
    export_dir = find_export(Path(path))
    manifest = rundir.read_manifest(export_dir / "manifest.json")
    runner = load_artifact(export_dir, manifest, threads=threads, precision=precision, fmt=fmt, engine=engine)
    fmt = ENGINE_FORMAT if engine not in (None, REFERENCE_ENGINE) else fmt
    batch = manifest.io_of(choose_artifact(export_dir, manifest, precision=precision, fmt=fmt).file)[0].shape[0]
    fixed = batch if isinstance(batch, int) else None
    size = fixed or PREDICT_BATCH
    k = max(1, min(top_k, len(manifest.labels)))
    rows: list[Prediction | Failure] = []
    for start in range(0, len(images), size):
        rows += _predict_batch(runner, images[start:start + size], manifest, k=k, fixed=fixed)
    return PredictResult(rows)


def predict(path: Path, images: Sequence[str | os.PathLike], *, top_k: int = 5, threads: int | None = None,
            precision: str | None = None, fmt: str | None = None, engine: str | None = None) -> list[Prediction]:
    """Every image's prediction, in order; an image that cannot be used is a DataError naming it."""
    result = predict_images(path, images, top_k=top_k, threads=threads, precision=precision, fmt=fmt, engine=engine)
    if result.failures:
        bad = result.failures[0]
        raise DataError(f"cannot read image {bad.image}: {bad.error}")
    return result.predictions


def _predict_batch(runner: Runner, images: Sequence[str | os.PathLike], manifest: Manifest, *, k: int,
                   fixed: int | None) -> list[Prediction | Failure]:
    rows: dict[int, Prediction | Failure] = {}
    decoded: dict[int, np.ndarray] = {}
    for i, image in enumerate(images):
        try:
            decoded[i] = preprocess_image(image, manifest.preprocessing)
        except (UnusableImageError, OSError, ValueError, SyntaxError) as e:  # SyntaxError: PIL on some damaged files
            rows[i] = Failure(image=str(image), error=describe_error(e))
    if decoded:
        x = np.stack(list(decoded.values()))
        if fixed:  # a fixed-batch export takes exactly its batch: pad the last one
            x = np.concatenate([x, np.repeat(x[-1:], fixed - len(x), axis=0)])
        out = runner(x)
        probs = (out if runner.gives == "probs" else softmax(out))[:len(decoded)]
        labels = manifest.labels
        for i, p in zip(decoded, probs):
            order = np.argsort(-p)[:k]
            rows[i] = Prediction(image=str(images[i]), label=labels[order[0]], index=int(order[0]),
                                 probability=float(p[order[0]]), top=[(labels[j], float(p[j])) for j in order])
    return [rows[i] for i in range(len(images))]
