"""Safe writes: atomic files (a temp file beside the target, then a rename) and a writer's lock on a folder.

    with atomic_path(run / "best.pt") as tmp: torch.save(state, tmp)
    with locked(run_dir): ...   # a second writer gets one line naming our pid

A crash, a full disk or a kill midway leaves the previous file intact. Files get the mode a plain `open()`
would give them (the umask applies), or keep the mode of the file they replace. Only a regular file is ever
replaced: `-` is stdout, and a stream (a device such as /dev/null, a FIFO, /dev/stdout) is written into as `>`
would, never swapped for a file; a folder is refused in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success fsync and rename it over the target. A stream target
    (`is_stream`) gets what was written to the temp path (made elsewhere) copied into it instead."""
    if is_stream(target):
        with _into_stream(target) as tmp:
            yield tmp
        return
    target = Path(target)
    if target.is_dir():
        raise EdgetlError(f"cannot write {target}: it is a folder — pass a file path")
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


# The process's own open files by name: written through the open descriptor, so the shell's `> file` or pipe
# gets the bytes where its other output goes (reopening /dev/stdout on a redirected file would start at byte 0).
_OWN_FD = re.compile(r"/(?:dev/fd|proc/self/fd|proc/thread-self/fd)/(\d+)")
_STD = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2}


def is_stream(target: str | os.PathLike) -> bool:
    """Whether a write to `target` goes into it rather than replacing it: `-` (stdout), one of the process's own
    descriptors by name (/dev/stdout, /dev/fd/N), or an existing file that is not a regular file or a folder (a
    device such as /dev/null, a FIFO, a socket; links followed). Replacing /dev/null with a file breaks the
    machine; a reader waiting on a FIFO would never see the file that took its place."""
    name = os.fspath(target)
    if _own_fd(name) is not None:
        return True
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return False  # absent (or unreachable: the normal path says why)
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _own_fd(name: str) -> int | None:
    if name in _STD:
        return _STD[name]
    match = _OWN_FD.fullmatch(os.path.abspath(name)) if name.startswith("/") else None
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def _into_stream(target: str | os.PathLike) -> Iterator[Path]:
    """A temp file in the system's temp folder (never beside the target: that is /dev for /dev/null), its bytes
    then written into the stream in one go; the temp file is removed either way."""
    fd, tmp_name = tempfile.mkstemp(prefix=".edgetl-", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _write_stream(os.fspath(target), tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _write_stream(name: str, data: bytes) -> None:
    own = _own_fd(name)
    python_stream = {1: sys.stdout, 2: sys.stderr}.get(own)  # through Python's, so its buffered text stays in order
    try:
        if python_stream is not None:
            python_stream.flush()
            buffer = getattr(python_stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                python_stream.write(data.decode("utf-8", "replace"))
                python_stream.flush()
            return
        # O_APPEND: a redirected file (/dev/fd/N of a `>> log`) keeps what is in it; a device or FIFO ignores it.
        fd = own if own is not None else os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            if own is None:
                os.close(fd)
    except OSError as e:
        raise EdgetlError(f"cannot write {name}: {e.strerror or e}") from None


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


def remove_stale_temp_dirs(beside: Path, *, prefix: str) -> list[Path]:
    """Remove the folders `make_temp_dir(beside, prefix=prefix)` made for a process that was killed before it
    could remove them (kill -9, a power cut); return them. Call it only while holding the folder's lock
    (`locked`): then no live process is writing into one. Names are matched exactly (the prefix and mkdtemp's
    eight characters), so no folder of the user's is ever taken for one."""
    stale = stale_temp_dirs(beside, prefix=prefix)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def remove_stale_temp_files(target: Path) -> list[Path]:
    """Remove the temp files `atomic_path(target)` made for a writer that was killed before its rename (a
    checkpoint's is as big as the checkpoint); return them. Only while holding the folder's lock, as
    `remove_stale_temp_dirs`; names are matched exactly (mkstemp's eight characters)."""
    stale = [Path(e.path) for e in _named(target.parent, re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp")
             if e.is_file(follow_symlinks=False)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def stale_temp_dirs(beside: Path, *, prefix: str) -> list[Path]:
    """The folders `make_temp_dir(beside, prefix=prefix)` made, oldest first (see `remove_stale_temp_dirs`)."""
    found = [e for e in _named(beside.parent, re.escape(prefix) + r"[a-z0-9_]{8}") if e.is_dir(follow_symlinks=False)]
    return [Path(e.path) for e in sorted(found, key=lambda e: e.stat(follow_symlinks=False).st_mtime)]


def _named(folder: Path, pattern: str) -> list[os.DirEntry]:
    """`folder`'s entries whose whole name matches `pattern` (mkstemp / mkdtemp names); none if it cannot be read
    (the caller's own mkdir or write says why)."""
    try:
        return [e for e in os.scandir(folder) if re.fullmatch(pattern, e.name)]
    except OSError:
        return []


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
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # a name read from a disk that is not valid UTF-8 (a lone surrogate)
        bad = shown_name(e.object[max(0, e.start - 20):e.end + 20])
        raise EdgetlError(f"cannot write {target}: it would hold a name that is not valid UTF-8 (…{bad}…) — rename "
                          f"that file or folder") from None
    write_bytes(target, data)


def is_utf8(name: str) -> bool:
    """Whether a name read from the disk is valid UTF-8 text (Python keeps the bytes of one that is not as lone
    surrogates, which no UTF-8 writer, terminal or device label accepts)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A name as text any writer accepts: the bytes that are not UTF-8 as `\\xff` escapes (what `ls -b` shows)."""
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (from JSON, not from the disk)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Indented UTF-8 JSON. A name that is not valid UTF-8 (a lone surrogate: how Python reads such a file name)
    is kept as its JSON escape (`\\udcff`), which reads back to the same name: valid JSON, nothing lost."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    write_bytes(target, text.encode("utf-8", "backslashreplace"))


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
