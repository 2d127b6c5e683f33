"""Safe writes: atomic files (a temp file beside the target, then a rename) and a writer's lock on a folder.

    with atomic_path(run / "best.pt") as tmp: torch.save(state, tmp)
    with locked(run_dir): ...   # a second writer gets one line naming our pid

A crash, a full disk or a kill midway leaves the previous file intact. Files get the mode a plain `open()`
would give them (the umask applies), or keep the mode of the file they replace.
"""

from __future__ import annotations

import contextlib
import fcntl
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
    if target.is_symlink():  # write through the link, as `>` does: the link stays, its file is replaced
        target = Path(os.path.realpath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp_name, _mode_for(target))
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


def _mode_for(target: Path) -> int:
    """The replaced file's own mode, or what a plain `open()` creates: 0666 less the umask (mkstemp's is 0600)."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it; put it straight back
    os.umask(mask)
    return mask


def make_dir_like_mkdir(path: str | os.PathLike) -> None:
    """Give a `tempfile.mkdtemp` folder (0700) the mode `mkdir` would: 0777 less the umask."""
    os.chmod(path, 0o777 & ~current_umask())


def make_temp_dir(beside: Path, *, prefix: str) -> Path:
    """A new folder in `beside`'s parent, with the permissions `mkdir` would give it: where a stage builds what it
    then renames into place whole."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=beside.parent))
    make_dir_like_mkdir(tmp)
    return tmp


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


LOCK_NAME = ".edgetl.lock"


@contextlib.contextmanager
def locked(folder: str | os.PathLike, *, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold `folder` exclusively while a stage writes into it: a second writer gets one line with our pid.

    An advisory `flock` on FOLDER/.edgetl.lock (POSIX: released by the kernel when the process dies, so a
    killed run never leaves a stale lock). The folder is created when missing, and removed again if the
    stage fails before writing anything into it. Not reentrant: take it once per stage."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgetlError(f"cannot write into {folder}: {folder_problem(folder, e)} — choose another folder") from e
    path = folder / name
    fd = _lock(path, folder)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):  # before the unlock, and only our own file (see _lock)
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the stage failed before writing anything


def _lock(path: Path, folder: Path) -> int:
    while True:
        try:  # never through a link: a planted .edgetl.lock -> ~/.bashrc must not get our pid written into it
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if path.is_symlink() or path.is_dir():
                raise EdgetlError(f"{path} is a {'symlink' if path.is_symlink() else 'folder'}, not edgetl's lock "
                                  f"file — remove it") from None
            raise EdgetlError(f"cannot write into {folder}: {folder_problem(folder, e)} — choose another folder") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EdgetlError(f"{folder} is in use by another edgetl process (pid {holder}) — wait for it to "
                              f"finish, or write to another folder") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file between our open and lock: lock the new one
