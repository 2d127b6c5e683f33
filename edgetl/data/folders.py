"""The one image-folder walker, and listing and splitting a folder of class folders: the rules every stage uses.

    files, skipped = list_classes(Path("photos/train"), root=Path("photos"))   # {class: [relative paths]}

What counts as an image candidate is decided here alone: a file whose name passes `image_name_problem` (valid
UTF-8, one of PIL's image extensions in any case, or none), not empty, not a dot-file or OS litter; folder links
stay inside the data and are entered once. Decoding decides the rest. Class folder names become the labels a
device shows, so one that is not valid UTF-8 is refused; a file name that is not is skipped, named with escapes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import stat
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from edgetl.errors import DataError
from edgetl.files import is_utf8, shown_name
from edgetl.images import stat_reason

log = logging.getLogger(__name__)

IGNORED = {"__MACOSX", "Thumbs.db", "desktop.ini"}  # with dot-files: OS and archiver litter, never data
WORKERS = 2  # hashing and decoding threads: I/O and PIL release the GIL

Entry = list  # [relpath or "train/<index>", class name]: the JSON-able unit of split.json


class Listing(NamedTuple):
    """What `list_folder` found: the class names and each split's [entry, class] lists."""

    classes: list[str]
    train: list[Entry]
    val: list[Entry]
    test: list[Entry]
    skipped: list[tuple[str, str]]
    split: dict[str, Any]  # the split.json record


def list_folder(root: Path, *, seed: int, val_fraction: float, subset: int | None,
                split: dict[str, Any] | None, source: str) -> Listing:
    """Classes, train, val and test entries, skipped files and the split.json record of an existing folder
    `root`: `train/` + `val/` as they are (and `test/`, held out, when there is one); `train/` + `test/` with val
    split off train per class; else class folders split per class (or `split` replayed on a resume)."""
    skipped: list[tuple[str, str]] = []
    if split is not None:  # a resume: the saved lists, not a new listing
        classes = list(split.get("classes") or sorted({c for _, c in split["train"]}))
        test = list(split.get("test") or [])
        if split.get("fingerprint") not in (None, fingerprint(root, split["train"] + split["val"] + test)):
            log.warning("%s: images the run trains on changed since it started (modified, replaced or removed); "
                        "the resumed run uses them as they are now", root)
        return Listing(classes, split["train"], split["val"], test, skipped, dict(split))
    has = {part: (root / part).is_dir() for part in ("train", "val", "test")}
    # train/ + val/ (+ test/) as given; train/ + test/ with val split off train/; else class folders, all split
    layout = "train/val" if has["train"] and has["val"] else "train split/test" if has["train"] and has["test"] \
        else "split"
    test: list[Entry] = []
    if layout == "split":
        files, skipped = list_classes(root, root=root)
        classes = check_classes(files, where=root)
        train, val = split_classes(files, seed=seed, val_fraction=val_fraction, where=root)
    else:
        train_files, skipped = list_classes(root / "train", root=root)
        classes = check_classes(train_files, where=root / "train")
        if layout == "train/val":
            train = _entries("train", train_files)
            val = _listed_part(root, "val", train_files, skipped)
        else:  # no val/: val comes out of train/, so test/ stays held out from choosing best.pt
            train, val = split_classes(train_files, seed=seed, val_fraction=val_fraction, where=root / "train")
            train, val = ([[f"train/{entry}", c] for entry, c in part] for part in (train, val))
        if has["test"]:
            test = _listed_part(root, "test", train_files, skipped)
    if subset is not None:
        held_out = max(len(classes), subset // 5)  # val and test stay a fifth of the train images they judge
        train = [train[i] for i in stratified_first([c for _, c in train], subset)]
        val = [val[i] for i in stratified_first([c for _, c in val], held_out)]
        test = [test[i] for i in stratified_first([c for _, c in test], held_out)]
    split = {"source": source, "root": str(root.resolve()), "layout": layout, "seed": seed,
             "val_fraction": None if layout == "train/val" else val_fraction, "subset": subset,
             "classes": classes, "train": train, "val": val, "test": test,
             "fingerprint": fingerprint(root, train + val + test)}
    return Listing(classes, train, val, test, skipped, split)


def _listed_part(root: Path, part: str, train_files: dict[str, list[str]], skipped: list[tuple[str, str]]
                 ) -> list[Entry]:
    """The entries of `root/part/` (val/ or test/); a class folder that train/ lacks stops here."""
    files, part_skipped = list_classes(root / part, root=root)
    skipped += part_skipped
    extra = sorted(set(files) - set(train_files))
    if extra:
        raise DataError(f"{root / part}: class folder(s) {', '.join(extra)} are not in {root / 'train'} — "
                        f"every {part} class needs train images: add them or remove those folders")
    return _entries(part, files)


def _entries(part: str, files: dict[str, list[str]]) -> list[Entry]:
    return [[(Path(part) / c / f).as_posix(), c] for c in sorted(files) for f in files[c]]


def fingerprint(root: Path, entries: list[Entry]) -> str:
    """A digest of the listed files' sizes and modification times: a resume warns when it changed."""
    h = hashlib.sha256()
    for entry, _ in entries:
        try:
            info = os.stat(root / entry)
            h.update(f"{entry}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{entry}\tgone\n".encode())
    return h.hexdigest()


def same_content(root: Path, train: list[Entry], val: list[Entry]) -> list[tuple[str, str]]:
    """(val entry, train entry) pairs whose files are byte-identical: val accuracy would count memorised images
    (and the same for (test, train + val): test accuracy would count images that chose best.pt too).

    By content, not name: a photo copied into two class folders or both splits has different names."""
    def digest(entry: str) -> str | None:
        try:
            with open(root / entry, "rb") as f:
                return hashlib.file_digest(f, "blake2b").hexdigest()
        except OSError:
            return None  # decoding reports it

    with ThreadPoolExecutor(WORKERS) as pool:
        train_digests = dict(zip(pool.map(digest, [e for e, _ in train]), (e for e, _ in train)))
        val_digests = list(zip(pool.map(digest, [e for e, _ in val]), (e for e, _ in val)))
    train_digests.pop(None, None)
    return [(entry, train_digests[d]) for d, entry in val_digests if d in train_digests]


# Pseudo file systems: their "files" are the kernel's (/proc/kcore reads as 128 TiB), never a user's photos.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
HEIF = {".heic", ".heif", ".hif"}  # phones' photo format: PIL decodes it only with a plugin (pillow-heif) registered


def check_data_root(root: Path, *, flag: str = "data folder") -> None:
    """Refuse, in one line, a data folder whose walk could only end badly: the file system's root, or a pseudo
    file system (/proc, /sys, /dev)."""
    real = Path(os.path.realpath(root))
    if real == Path(real.anchor):
        raise DataError(f"{flag} {shown_name(str(root))} is the root of the file system — pass a folder of class "
                        f"folders")
    system = next((s for s in SYSTEM_FOLDERS if real.is_relative_to(s)), None)
    if system is not None:
        where = "is" if real == Path(system) else "is inside"
        raise DataError(f"{flag} {shown_name(str(root))} {where} {system}, the kernel's own files, not images — pass "
                        f"a folder of class folders")


def image_name_problem(name: str | os.PathLike) -> str | None:
    """Why a file's name rules it out as an image, or None when it may be one (decoding decides). The one rule,
    by name, of what edgetl takes as an image: training and verify's --data through `walk_images`, predict's
    folders. A name must be valid UTF-8 (it is written to split.json and shown), and carry one of PIL's image
    extensions, in any case, or none at all (decoding decides)."""
    name = os.path.basename(os.fspath(name))
    if not is_utf8(name):
        return "file name is not valid UTF-8 — rename it"
    suffix = Path(name).suffix.lower()
    if not suffix or suffix in _extensions():
        return None
    if suffix in HEIF:
        return f"{suffix} (HEIF) photo: PIL cannot decode it here — convert it to JPEG or PNG"
    return f"not an image file (extension {Path(name).suffix})"


def is_image_name(name: str | os.PathLike) -> bool:
    """`image_name_problem` finds nothing: the name may be an image's."""
    return image_name_problem(name) is None


@functools.cache
def _extensions() -> frozenset[str]:
    return frozenset(Image.registered_extensions())  # loads PIL's plugins


def list_classes(folder: Path, *, root: Path) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """{class: [paths relative to the class folder]} for every non-hidden subfolder, and what was skipped."""
    files: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    loose = 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list the data folder {folder} ({e.strerror}) — check it exists and is readable") from None
    for entry in entries:
        if ignored(entry.name):
            continue
        if entry.is_dir() and not is_utf8(entry.name):
            raise DataError(f"{shown_name(entry.path)}: class folder name is not valid UTF-8, and a class name is "
                            f"the label a device shows — rename the folder (e.g. to its UTF-8 spelling)")
        if entry.is_dir():
            files[entry.name] = [p.relative_to(entry.path).as_posix() for p in walk_images(Path(entry.path), skipped, root=root)]
        else:
            loose += 1
    if loose:
        log.warning("%s: %d file(s) outside any class folder are ignored", folder, loose)
    for path, reason in skipped:  # now, so they come before any error about a class left empty
        log.warning("skipped %s: %s", path, reason)
    return files, skipped


def walk_images(top: Path, skipped: list[tuple[str, str]], *, root: Path) -> list[Path]:
    """Image candidates under `top` (the one walker: training, calibration and verify all list images here), sorted. Each real folder is entered once, so a symlink loop can't hang;
    cheap rejections (broken links, empty or non-image files) are appended to `skipped`."""
    seen, stack, found = {os.path.realpath(top)}, [top], []
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append((shown_name(str(folder)), f"cannot list folder ({e.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if ignored(entry.name):
                continue
            if not is_utf8(entry.name):  # split.json, logs and tables could not hold it: named with escapes
                skipped.append((shown_name(str(path)), "file name is not valid UTF-8 — rename it"))
                continue
            try:
                info = entry.stat()  # follows links: linked folders and files are fine, loops are not
            except OSError as e:
                skipped.append((str(path), _stat_reason(path, e)))
                continue
            if stat.S_ISDIR(info.st_mode):
                real = os.path.realpath(path)
                # A link to / would walk the whole disk: folders stay within the data (or the class folder's own
                # target, when the class folder itself is a link).
                if not any(Path(real).is_relative_to(os.path.realpath(base)) for base in (root, top)):
                    skipped.append((str(path), f"folder link out of the data folder (to {real})"))
                elif real in seen:
                    skipped.append((str(path), f"symlink loop (folder {real} already visited)"))
                else:
                    seen.add(real)
                    stack.append(path)
            elif not stat.S_ISREG(info.st_mode):
                skipped.append((str(path), "not a regular file"))
            elif (problem := image_name_problem(entry.name)) is not None:
                skipped.append((str(path), problem))
            elif info.st_size == 0:
                skipped.append((str(path), "empty file (0 bytes)"))
            else:
                found.append(path)
    return sorted(found)


def _stat_reason(path: Path, e: OSError) -> str:
    """stat_reason, which reads a broken link's target: a link that vanishes meanwhile (/proc) is just unreadable."""
    try:
        return stat_reason(str(path), e)
    except OSError:
        return f"cannot read ({e.strerror})"


def split_classes(files: dict[str, list[str]], *, seed: int, val_fraction: float, where: Path
           ) -> tuple[list[Entry], list[Entry]]:
    """Per class: shuffle with a (seed, class) RNG, put round(n * val_fraction) (at least 1) in val."""
    train: list[Entry] = []
    val: list[Entry] = []
    for c in sorted(files):
        names = sorted(files[c])
        if len(names) < 2:
            raise DataError(f"{where / c}: class {c!r} has only 1 image — a split needs 2 or more (one goes to "
                            f"val): add images, or give train/ and val/ folders")
        # Seeding per class keeps a class's split unchanged when other classes are added or removed.
        random.Random(f"{seed}:{c}").shuffle(names)
        n_val = min(len(names) - 1, max(1, round(len(names) * val_fraction)))
        val += [[f"{c}/{n}", c] for n in sorted(names[:n_val])]
        train += [[f"{c}/{n}", c] for n in sorted(names[n_val:])]
    return train, val


def stratified_first(labels: list[str], n: int) -> list[int]:
    """Indices of n items: the k-th item of every class before any class's (k+1)-th, so classes stay even."""
    counts: dict[str, int] = {}
    rank = []  # each item's position within its class
    for c in labels:
        rank.append(counts.get(c, 0))
        counts[c] = rank[-1] + 1
    return sorted(sorted(range(len(labels)), key=lambda i: (rank[i], labels[i]))[:n])


def class_key(name: str) -> str:
    """What makes two class names the same to a person or another file system: compatibility forms (NFKC:
    full-width letters), case, invisible format characters (zero-width spaces) and outer spaces."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf").strip()


def check_classes(files: dict[str, list[str]], *, where: Path) -> list[str]:
    seen: dict[str, str] = {}
    for name in sorted(files):
        key = class_key(name)
        if key in seen:
            raise DataError(f"{where}: class folders {seen[key]!r} and {name!r} differ only by case, Unicode form "
                            f"or invisible characters — one class on macOS and Windows, two look-alike labels on a "
                            f"device: merge them or rename one")
        seen[key] = name
    if len(files) < 2:
        found = f" ({', '.join(files)})" if files else ""
        raise DataError(f"{where}: found {len(files)} class folder(s){found}, need at least 2 — put each class's "
                        f"images in its own subfolder, e.g. {where / 'cat' / '1.jpg'}")
    empty = sorted(c for c, names in files.items() if not names)
    if empty:
        raise DataError(f"{where}: class folder(s) {', '.join(empty)} have no usable image — add images or "
                        f"remove the folder(s)")
    return sorted(files)



def ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED
