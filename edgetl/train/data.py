"""Datasets for fine-tuning: folders or named sets, a seeded split, robust decoding, images held in memory.

    bundle = load_data("photos/", preprocessing=get_backbone("resnet18").preprocessing.scaled(128))

`spec` is "sample" (the generated shapes), "cifar10" / "cifar100" (torchvision, downloaded once), or a folder:
`DIR/train/<class>/` + `DIR/val/<class>/`, or `DIR/<class>/` split per class by `val_fraction` and `seed`.
Every image is decoded once: train images to a `resize_size` square (augmented per batch by `augment_batch`),
val images with exactly the eval transform a device runs — PIL resize of the shorter side, center crop — so
val accuracy is the deployed model's. Unusable files are skipped with one warning each and listed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import socket
import stat
import tempfile
import unicodedata
import urllib.error
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from edgetl.errors import DataError
from edgetl.images import UnusableImageError, check_resizable, load_image, stat_reason
from edgetl.preprocessing import Preprocessing
from edgetl.train.sample import cache_dir, ensure_sample

log = logging.getLogger(__name__)

NAMED = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # spec -> torchvision.datasets class
IGNORED = {"__MACOSX", "Thumbs.db", "desktop.ini"}  # with dot-files: OS and archiver litter, never data
MEMORY_FRACTION = 0.4  # of available RAM the decoded images may take before they spill to a disk-backed array
WORKERS = 2  # PIL releases the GIL while decoding and resizing, so threads overlap real work
DOWNLOAD_TIMEOUT_S = 30
Progress = Callable[[int, int], None]


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, S, S], decoded once
    targets: torch.Tensor  # int64 [N], indices into DataBundle.classes
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DataBundle:
    classes: list[str]
    train: ImageSet  # S = resize_size: a center square of the resized image, cropped further by augment_batch
    val: ImageSet  # S = crop_size: exactly the eval transform
    split: dict[str, Any]  # JSON-able, saved as split.json; pass it back as `split=` to replay it on resume
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of every unusable file
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (val entry, identical train entry)


def load_data(spec: str, *, preprocessing: Preprocessing, seed: int = 0, val_fraction: float = 0.2,
              subset: int | None = None, split: dict[str, Any] | None = None,
              progress: Progress | None = None) -> DataBundle:
    """Resolve `spec`, split it (or replay `split`), decode every image once; raise DataError before training."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, exclusive (got {val_fraction}) — e.g. 0.2")
    if subset is not None and subset < 1:
        raise DataError(f"subset must be a positive number of train images (got {subset}) — or leave it unset")
    if spec.lower() in NAMED:
        source: FileSource | ArraySource = ArraySource(spec.lower(), _torchvision_sets(spec.lower()))
        classes, train, val, split = list_torchvision(source, subset=subset, split=split)
        skipped: list[tuple[str, str]] = []
    else:
        root = ensure_sample() if spec == "sample" else Path(spec).expanduser()
        if split is not None and split.get("root") and spec != "sample":
            root = Path(split["root"])  # a resume reads the folder the run started on, whatever the cwd now
        source = FileSource(root)
        classes, train, val, skipped, split = _list_folder(root, seed=seed, val_fraction=val_fraction,
                                                           subset=subset, split=split, source=spec)
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its pixel limit; as an error the file is skipped like any bomb.
        # Set once here, not per image: warning filters are process-global, so threads must not touch them.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        train_set, val_set, failed = decode_sets(source, train, val, classes=classes,
                                                  preprocessing=preprocessing, progress=progress)
    for path, reason in failed:
        log.warning("skipped %s: %s", path, reason)
    if failed:  # the saved split lists usable files only, so a resume replays exactly what was trained on
        bad = {path for path, _ in failed}
        split["train"] = [e for e in train if source.path(e[0]) not in bad]
        split["val"] = [e for e in val if source.path(e[0]) not in bad]
    _check_usable(classes, train_set, val_set, where=str(split["source"]))
    duplicates = same_content(source.root, split["train"], split["val"]) if isinstance(source, FileSource) else []
    if duplicates:
        val_entry, train_entry = duplicates[0]
        log.warning("%s: %d val image(s) are byte-identical copies of train images (e.g. %s = %s): val accuracy "
                    "counts images the model trained on — remove the copies from one side", split["source"],
                    len(duplicates), val_entry, train_entry)
    return DataBundle(classes=classes, train=train_set, val=val_set, split=split, skipped=skipped + failed,
                      duplicates=duplicates)


def _augment_draws(b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every random number `augment_batch` takes for `b` images, drawn in one fixed order."""
    u = torch.rand((b, 10, 4), generator=generator, dtype=torch.float64)
    return u, torch.rand(b, generator=generator) < 0.5


def skip_augment(b: int, generator: torch.Generator) -> None:
    """Advance `generator` as `augment_batch` on `b` images would (a batch another rank augments)."""
    _augment_draws(b, generator)


def augment_batch(images: torch.Tensor, *, crop_size: int, generator: torch.Generator,
                  scale: tuple[float, float] = (0.35, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
                  ) -> torch.Tensor:
    """uint8 [B,3,S,S] -> uint8 [B,3,crop,crop]: RandomResizedCrop + horizontal flip per sample.

    The parameters follow torchvision's `RandomResizedCrop.get_params` (10 tries, then a center crop), but
    every random number comes from `generator` and a fixed count is drawn per batch, so a resumed run
    replays the same augmentations from the saved generator state.
    """
    b, _, h, w = images.shape
    u, flip = _augment_draws(b, generator)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    crop_w, crop_h = torch.round(torch.sqrt(area * aspect)).long(), torch.round(torch.sqrt(area / aspect)).long()
    fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    out = torch.empty((b, 3, crop_size, crop_size), dtype=torch.uint8, device=images.device)
    for k in range(b):
        tries = fits[k].nonzero()
        if len(tries):
            t = int(tries[0])
            ch, cw = int(crop_h[k, t]), int(crop_w[k, t])
            top, left = int(u[k, t, 2] * (h - ch + 1)), int(u[k, t, 3] * (w - cw + 1))
        else:  # torchvision's fallback: the whole image, clamped to the ratio range, centred
            cw = min(w, round(h * ratio[1])) if w / h > ratio[1] else w
            ch = min(h, round(w / ratio[0])) if w / h < ratio[0] else h
            top, left = (h - ch) // 2, (w - cw) // 2
        crop = F.resized_crop(images[k], top, left, ch, cw, [crop_size, crop_size], antialias=True)
        out[k] = F.horizontal_flip(crop) if flip[k] else crop
    return out


def center_crop_batch(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """uint8 [B,3,S,S] -> [B,3,crop,crop], torchvision's rounding (the eval crop, for train images)."""
    return F.center_crop(images, [crop_size, crop_size])


def normalize(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 images (any device) -> float32 (x / 255 - mean) / std, what the model sees."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(preprocessing.mean),
                       list(preprocessing.std))


# --- listing and splitting ---------------------------------------------------------------------------------

Entry = list  # [relpath or "train/<index>", class name]: the JSON-able unit of split.json


def _list_folder(root: Path, *, seed: int, val_fraction: float, subset: int | None,
                 split: dict[str, Any] | None, source: str) -> tuple[list[str], list[Entry], list[Entry],
                                                                       list[tuple[str, str]], dict[str, Any]]:
    if not root.is_dir():
        raise DataError(f"data folder {root} not found — pass a folder of class folders (or with train/ and "
                        f"val/ inside), 'sample', or one of: {', '.join(NAMED)}")
    skipped: list[tuple[str, str]] = []
    if split is not None:  # a resume: the saved lists, not a new listing
        classes = list(split.get("classes") or sorted({c for _, c in split["train"]}))
        if split.get("fingerprint") not in (None, fingerprint(root, split["train"] + split["val"])):
            log.warning("%s: images the run trains on changed since it started (modified, replaced or removed); "
                        "the resumed run uses them as they are now", root)
        return classes, split["train"], split["val"], skipped, dict(split)
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    if presplit:
        train_files, skipped = _list_classes(root / "train", root=root)
        val_files, val_skipped = _list_classes(root / "val", root=root)
        skipped += val_skipped
        extra = sorted(set(val_files) - set(train_files))
        if extra:
            raise DataError(f"{root / 'val'}: class folder(s) {', '.join(extra)} are not in {root / 'train'} — "
                            f"every val class needs train images: add them or remove those folders")
        classes = _check_classes(train_files, where=root / "train")
        train = [[(Path("train") / c / f).as_posix(), c] for c in classes for f in train_files[c]]
        val = [[(Path("val") / c / f).as_posix(), c] for c in sorted(val_files) for f in val_files[c]]
    else:
        files, skipped = _list_classes(root, root=root)
        classes = _check_classes(files, where=root)
        train, val = _split(files, seed=seed, val_fraction=val_fraction, where=root)
    if subset is not None:
        train = [train[i] for i in _stratified_first([c for _, c in train], subset)]
        val = [val[i] for i in _stratified_first([c for _, c in val], max(len(classes), subset // 5))]
    split = {"source": source, "root": str(root.resolve()), "layout": "train/val" if presplit else "split",
             "seed": seed, "val_fraction": None if presplit else val_fraction, "subset": subset,
             "classes": classes, "train": train, "val": val, "fingerprint": fingerprint(root, train + val)}
    return classes, train, val, skipped, split


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
    """(val entry, train entry) pairs whose files are byte-identical: val accuracy would count memorised images.

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


def _list_classes(folder: Path, *, root: Path) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """{class: [paths relative to the class folder]} for every non-hidden subfolder, and what was skipped."""
    files: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    loose = 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list the data folder {folder} ({e.strerror}) — check it exists and is readable") from None
    for entry in entries:
        if _ignored(entry.name):
            continue
        if entry.is_dir():
            files[entry.name] = [p.relative_to(entry.path).as_posix() for p in _walk(Path(entry.path), skipped, root=root)]
        else:
            loose += 1
    if loose:
        log.warning("%s: %d file(s) outside any class folder are ignored", folder, loose)
    for path, reason in skipped:  # now, so they come before any error about a class left empty
        log.warning("skipped %s: %s", path, reason)
    return files, skipped


def _walk(top: Path, skipped: list[tuple[str, str]], *, root: Path) -> list[Path]:
    """Image candidates under `top`, sorted. Each real folder is entered once, so a symlink loop can't hang;
    cheap rejections (broken links, empty or non-image files) are appended to `skipped`."""
    known = set(Image.registered_extensions())
    seen, stack, found = {os.path.realpath(top)}, [top], []
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append((str(folder), f"cannot list folder ({e.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if _ignored(entry.name):
                continue
            try:
                info = entry.stat()  # follows links: linked folders and files are fine, loops are not
            except OSError as e:
                skipped.append((str(path), stat_reason(str(path), e)))
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
            elif path.suffix and path.suffix.lower() not in known:
                skipped.append((str(path), f"not an image file (extension {path.suffix})"))
            elif info.st_size == 0:
                skipped.append((str(path), "empty file (0 bytes)"))
            else:
                found.append(path)
    return sorted(found)


def _split(files: dict[str, list[str]], *, seed: int, val_fraction: float, where: Path
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


def _stratified_first(labels: list[str], n: int) -> list[int]:
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


def _check_classes(files: dict[str, list[str]], *, where: Path) -> list[str]:
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


def _check_usable(classes: list[str], train: ImageSet, val: ImageSet, *, where: str) -> None:
    def without(images: ImageSet) -> list[str]:
        counts = torch.bincount(images.targets, minlength=len(classes)).tolist()
        return [c for c, n in zip(classes, counts) if n == 0]

    if without(train):
        raise DataError(f"{where}: class(es) {', '.join(without(train))} have no usable train image (see the "
                        f"skipped files above) — add images or remove the folder(s)")
    if len(val) == 0:
        raise DataError(f"{where}: no usable val image — add val images (or a val/ folder of class folders)")
    if without(val):
        log.warning("%s: no usable val image for class(es) %s: their accuracy is not measured", where,
                    ", ".join(without(val)))


# --- decoding ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileSource:
    """Split entries are paths relative to a folder."""

    root: Path

    def path(self, entry: str) -> str:
        return str(self.root / entry)

    def decode(self, entry: str, preprocessing: Preprocessing, *, train: bool) -> torch.Tensor:
        draft = preprocessing.resize_size if train else None
        return _transform(load_image(self.root / entry, draft_size=draft), preprocessing, train=train)


@dataclass(frozen=True)
class ArraySource:
    """Split entries are "train/<index>" / "test/<index>" into a torchvision dataset's uint8 HWC array."""

    name: str
    sets: dict[str, Any]

    def path(self, entry: str) -> str:
        return f"{self.name}/{entry}"

    def decode(self, entry: str, preprocessing: Preprocessing, *, train: bool) -> torch.Tensor:
        part, i = entry.split("/")
        return _transform(Image.fromarray(self.sets[part].data[int(i)]), preprocessing, train=train)


def _transform(img: Image.Image, preprocessing: Preprocessing, *, train: bool) -> torch.Tensor:
    """The eval transform on PIL (val), or its resize_size square (train, augmented later), as uint8 CHW."""
    size = preprocessing.resize_size
    check_resizable(img.size, size)
    img = F.resize(img, [size], interpolation=InterpolationMode(preprocessing.interpolation), antialias=True)
    crop = size if train else preprocessing.crop_size
    return F.pil_to_tensor(F.center_crop(img, [crop, crop]))


def decode_sets(source: FileSource | ArraySource, train: list[Entry], val: list[Entry], *, classes: list[str],
                 preprocessing: Preprocessing, progress: Progress | None
                 ) -> tuple[ImageSet, ImageSet, list[tuple[str, str]]]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for _, c in train + val} - set(index))
    if unknown:
        raise DataError(f"the saved split names class(es) {', '.join(unknown)} missing from its class list — "
                        f"split.json is damaged; start a new run")
    r, c = preprocessing.resize_size, preprocessing.crop_size
    on_disk = 3 * (len(train) * r * r + len(val) * c * c) > MEMORY_FRACTION * psutil.virtual_memory().available
    parts = [(train, True, allocate_images(len(train), r, on_disk=on_disk)),
             (val, False, allocate_images(len(val), c, on_disk=on_disk))]
    jobs = [(k, i) for k, (entries, _, _) in enumerate(parts) for i in range(len(entries))]
    kept: list[list[int]] = [[], []]
    failed: list[tuple[str, str]] = []

    def run(job: tuple[int, int]) -> torch.Tensor | str:
        entries, is_train, _ = parts[job[0]]
        try:
            return source.decode(entries[job[1]][0], preprocessing, train=is_train)
        except UnusableImageError as e:
            return str(e)

    with ThreadPoolExecutor(WORKERS) as pool:
        for done, ((k, i), result) in enumerate(zip(jobs, pool.map(run, jobs)), start=1):
            entries, _, images = parts[k]
            if isinstance(result, str):
                failed.append((source.path(entries[i][0]), result))
            else:
                # Packed in place as we go (row n <- image i, n <= i): a failure leaves no gap and costs no copy.
                # Through numpy: a single-threaded memcpy, where torch's copy would wake its thread pool per
                # image (10x slower on a busy 2-core machine).
                images.numpy()[len(kept[k])] = result.numpy()
                kept[k].append(i)
            if progress is not None:
                progress(done, len(jobs))
    train_set, val_set = (
        ImageSet(images=images[:len(rows)],
                 targets=torch.tensor([index[entries[i][1]] for i in rows], dtype=torch.int64),
                 paths=[source.path(entries[i][0]) for i in rows])
        for (entries, _, images), rows in zip(parts, kept))
    return train_set, val_set, failed


def allocate_images(n: int, size: int, *, on_disk: bool) -> torch.Tensor:
    """An uninitialised uint8 [n, 3, size, size] tensor, in RAM or, when too big, backed by a disk file."""
    if not on_disk or n == 0:
        return torch.empty((n, 3, size, size), dtype=torch.uint8)
    # Too big for the RAM budget: a memmap lets the OS page images in and out, same tensor interface. The
    # file lives in the cache dir (on disk, unlike a tmpfs /tmp) and is anonymous: it is freed with the array.
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log.info("decoded images exceed %d%% of available RAM: keeping them in a temporary file in %s",
             MEMORY_FRACTION * 100, folder)
    with tempfile.TemporaryFile(dir=folder, prefix="edgetl-images-") as f:
        return torch.from_numpy(np.memmap(f, dtype=np.uint8, mode="w+", shape=(n, 3, size, size)))


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED


# --- named torchvision datasets -----------------------------------------------------------------------------

def list_torchvision(source: ArraySource, *, subset: int | None, split: dict[str, Any] | None
                      ) -> tuple[list[str], list[Entry], list[Entry], dict[str, Any]]:
    classes = list(source.sets["train"].classes)
    if split is not None:
        return classes, split["train"], split["val"], dict(split)
    train = [[f"train/{i}", classes[t]] for i, t in enumerate(source.sets["train"].targets)]
    val = [[f"test/{i}", classes[t]] for i, t in enumerate(source.sets["test"].targets)]
    if subset is not None:  # the first images of each class: the same subset on every machine, no seed needed
        train = [train[i] for i in _stratified_first([c for _, c in train], subset)]
        val = [val[i] for i in _stratified_first([c for _, c in val], max(len(classes), subset // 5))]
    split = {"source": source.name, "layout": "train/test", "seed": None, "val_fraction": None,
             "subset": subset, "classes": classes, "train": train, "val": val}
    return classes, train, val, split


def _torchvision_sets(name: str) -> dict[str, Any]:
    """{"train": dataset, "test": dataset} from the cache, downloading once (unless EDGETL_OFFLINE is set)."""
    import torchvision.datasets

    root = cache_dir() / "torchvision"
    offline = os.environ.get("EDGETL_OFFLINE", "").lower() in ("1", "true", "yes")
    dataset = getattr(torchvision.datasets, NAMED[name])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib takes no timeout here; without one it can hang
    try:
        sets = {part: dataset(str(root), train=part == "train", download=not offline) for part in ("train", "test")}
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        why = "EDGETL_OFFLINE is set and it is not cached" if offline else getattr(e, "reason", None) or e
        raise DataError(f"cannot download {name} into {root} ({why}) — run once with network access, or use a "
                        f"folder of class folders") from None
    finally:
        socket.setdefaulttimeout(previous)
    # Targets index `classes` as they are, which matches the ImageFolder convention only if they are sorted.
    assert list(sets["train"].classes) == sorted(sets["train"].classes), f"{name}: classes not sorted"
    return sets
