"""Atomic file writes: write to a temp file beside the target, then rename over it.

    with atomic_path(run / "best.pt") as tmp: torch.save(state, tmp)

A crash, a full disk or a kill midway leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success fsync and rename it over the target."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise EdgetlError(f"cannot write into {target.parent}: {folder_problem(target.parent, e)} — check the folder "
                          f"exists and is writable") from e
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EdgetlError(f"cannot write {target}: {e.strerror} — the previous file is left intact") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def folder_problem(folder: Path, e: OSError) -> str:
    """Why `folder` cannot be created or written into, in words: an ancestor that is a file, or the OS's reason."""
    for parent in (folder, *folder.parents):
        if parent.exists():  # the nearest existing ancestor
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return e.strerror or str(e)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, read in 1 MiB blocks (exported models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or damaged file into a one-line RunDirError."""
    from edgetl.errors import RunDirError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: {what} is damaged ({e}) — re-run the stage that writes it") from None
