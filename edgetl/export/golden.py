"""Golden vectors written with an export: a few real held-out crops (the test split's, else val's) as uint8 arrays
and each file's output on them.

    golden = write_golden(folder, artifacts, crops, meta=meta)   # -> the manifest's `golden`, files in `folder`

`golden-inputs.npy` holds uint8 [n, crop, crop, 3] RGB crops (what a device has after its resize and crop);
`golden-<file>.npy` the float32 output that file gave on them here, with the tolerance (`edgetl.compare.golden`)
a runtime on a device must meet. `edgetl verify` re-runs them; a device-side test does the same.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np

from edgetl import files
from edgetl.compare.golden import run_on_crops, tolerance
from edgetl.export.manifest import Written
from edgetl.formats import FORMATS
from edgetl.formats.base import ExportMeta
from edgetl.preprocessing import Preprocessing
from edgetl.rundir import FileEntry, Golden, GoldenOutput

GOLDEN_IMAGES = 4
INPUTS_FILE = "golden-inputs.npy"

log = logging.getLogger(__name__)


def _save(path: Path, array: np.ndarray) -> FileEntry:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path.write_bytes(buffer.getvalue())
    return FileEntry(file=path.name, bytes=path.stat().st_size, sha256=files.sha256_file(path))


def write_golden(folder: Path, artifacts: list[Written], crops: np.ndarray, *, meta: ExportMeta,
                 previous: Golden | None = None, previous_dir: Path | None = None) -> Golden | None:
    """The golden inputs and every written file's output on them, into `folder`; None without real images. A file
    kept from the previous export whose runtime is not installed here (an optional extra) keeps its golden
    output from `previous` (in `previous_dir`) when the inputs are the same; else it goes without one."""
    if len(crops) == 0:
        return None
    prep = Preprocessing.coerce(meta.preprocessing)
    inputs = _save(folder / INPUTS_FILE, np.ascontiguousarray(crops, dtype=np.uint8))
    outputs = []
    for artifact in artifacts:
        missing = FORMATS[artifact.format].missing()
        if missing:
            kept = _previous_output(artifact, inputs, previous, previous_dir, folder)
            if kept is None:
                log.warning("no golden output for %s: %s", artifact.file, missing)
            else:
                outputs.append(kept)
            continue
        own = artifact.input or meta.io()["input"]
        out = run_on_crops(FORMATS[artifact.format].open(folder / artifact.file), crops, preprocessing=prep,
                           batch=own["shape"][0]).astype(np.float32)
        entry = _save(folder / f"golden-{artifact.file}.npy", out)
        outputs.append(GoldenOutput(**entry.model_dump(), of=artifact.file,
                                    atol=float(f"{tolerance(artifact.precision, out):.3g}")))
    return Golden(inputs=inputs, outputs=outputs)


def _previous_output(artifact: Written, inputs: FileEntry, previous: Golden | None, previous_dir: Path | None,
                     folder: Path) -> GoldenOutput | None:
    """The previous export's golden output of `artifact`, copied into `folder`, if it was taken on the same inputs
    from the same file and still matches its hash."""
    if previous is None or previous_dir is None or previous.inputs.sha256 != inputs.sha256:
        return None
    entry = next((o for o in previous.outputs if o.of == artifact.file), None)
    if entry is None or not (previous_dir / entry.file).is_file() \
            or files.sha256_file(previous_dir / entry.file) != entry.sha256:
        return None
    shutil.copy2(previous_dir / entry.file, folder / entry.file)
    return entry
