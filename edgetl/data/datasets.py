"""Datasets for fine-tuning: folders or named sets, a seeded split, robust decoding, images held in memory.

    bundle = load_data("photos/", preprocessing=get_backbone("resnet18").preprocessing.scaled(128))

`spec` is "sample" (the generated shapes), "cifar10" / "cifar100" (torchvision, downloaded once), or a folder:
`DIR/train/<class>/` + `DIR/val/<class>/`, or `DIR/<class>/` split per class by `val_fraction` and `seed`; a
`DIR/test/<class>/` beside `train/` is the held-out test split (with no `val/`, val is split off `train/`).
Every image is decoded once: train images to a `resize_size` square (augmented per batch by `augment_batch`),
val and test images with exactly the eval transform a device runs — PIL resize of the shorter side, center
crop — so their accuracy is the deployed model's. Unusable files are skipped with one warning each and listed.
"""

from __future__ import annotations

import logging
import tempfile
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

from edgetl.data.arrays import NAMED, list_torchvision, torchvision_sets
from edgetl.data.folders import WORKERS, Entry, check_data_root, fingerprint, list_folder, same_content
from edgetl.data.sample import cache_dir, ensure_sample
from edgetl.errors import DataError
from edgetl.files import is_utf8, shown_name
from edgetl.images import UnusableImageError, check_resizable, load_image
from edgetl.preprocessing import Preprocessing

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.4  # of available RAM the decoded images may take before they spill to a disk-backed array
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
    test: ImageSet | None = None  # the held-out test split (a test/ folder), as val; None without one
    # (test entry, identical train or val entry): test accuracy would count images that trained or chose best.pt
    test_duplicates: list[tuple[str, str]] = field(default_factory=list)


def load_data(spec: str, *, preprocessing: Preprocessing, seed: int = 0, val_fraction: float = 0.2,
              subset: int | None = None, split: dict[str, Any] | None = None,
              progress: Progress | None = None) -> DataBundle:
    """Resolve `spec`, split it (or replay `split`), decode every image once; raise DataError before training."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, exclusive (got {val_fraction}) — e.g. 0.2")
    if subset is not None and subset < 1:
        raise DataError(f"subset must be a positive number of train images (got {subset}) — or leave it unset")
    if spec.lower() in NAMED:
        source: FileSource | ArraySource = ArraySource(spec.lower(), torchvision_sets(spec.lower(), download=True))
        classes, train, val, split = list_torchvision(source.name, source.sets, subset=subset, split=split)
        test: list[Entry] = []
        skipped: list[tuple[str, str]] = []
    else:
        root = ensure_sample() if spec == "sample" else Path(spec).expanduser()
        if split is not None and split.get("root") and spec != "sample":
            root = Path(split["root"])  # a resume reads the folder the run started on, whatever the cwd now
        if not is_utf8(spec):  # recipe.resolved.toml records it, and TOML holds text only
            raise DataError(f"data folder {shown_name(spec)}: its path is not valid UTF-8 text, which the run's "
                            f"recipe cannot record — rename the folder")
        if not root.is_dir():
            raise DataError(f"data folder {root} not found — pass a folder of class folders (or with train/ and "
                            f"val/ inside), 'sample', or one of: {', '.join(NAMED)}")
        check_data_root(root)
        source = FileSource(root)
        classes, train, val, test, skipped, split = list_folder(root, seed=seed, val_fraction=val_fraction,
                                                                 subset=subset, split=split, source=spec)
    parts = {"train": train, "val": val, "test": test}
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its pixel limit; as an error the file is skipped like any bomb.
        # Set once here, not per image: warning filters are process-global, so threads must not touch them.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        sets, failed = decode_sets(source, parts, classes=classes, preprocessing=preprocessing, progress=progress)
    for path, reason in failed:
        log.warning("skipped %s: %s", path, reason)
    if failed:  # the saved split lists usable files only, so a resume replays exactly what was trained on
        bad = {path for path, _ in failed}
        for part, entries in parts.items():
            if part in split:
                split[part] = [e for e in entries if source.path(e[0]) not in bad]
        if split.get("fingerprint") and isinstance(source, FileSource):  # of what is listed now, or every resume
            # would warn that the images changed
            split["fingerprint"] = fingerprint(source.root, split["train"] + split["val"] + (split.get("test") or []))
    where = str(split["source"])
    _check_usable(classes, sets["train"], sets["val"], where=where)
    test_set = _held_out(classes, sets["test"], where=where) if test else None
    duplicates, test_duplicates = [], []
    if isinstance(source, FileSource):
        duplicates = same_content(source.root, split["train"], split["val"])
        test_duplicates = same_content(source.root, split["train"] + split["val"], split.get("test") or [])
    for copies, what, of, counted in ((duplicates, "val", "train", "the model trained on"),
                                      (test_duplicates, "test", "train or val", "that trained it or chose best.pt")):
        if copies:
            log.warning("%s: %d %s image(s) are byte-identical copies of %s images (e.g. %s = %s): %s accuracy "
                        "counts images %s — remove the copies from one side", where, len(copies), what, of,
                        *copies[0], what, counted)
    return DataBundle(classes=classes, train=sets["train"], val=sets["val"], split=split, skipped=skipped + failed,
                      duplicates=duplicates, test=test_set, test_duplicates=test_duplicates)



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


def _held_out(classes: list[str], test: ImageSet, *, where: str) -> ImageSet | None:
    """The test split as decoded; None (with a warning) when none of its images is usable."""
    if len(test) == 0:
        log.warning("%s: no usable test image: test accuracy is not measured", where)
        return None
    missing = [c for c, n in zip(classes, torch.bincount(test.targets, minlength=len(classes)).tolist()) if n == 0]
    if missing:
        log.warning("%s: no test image of class(es) %s: their test accuracy is not measured", where,
                    ", ".join(missing))
    return test


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


def decode_sets(source: FileSource | ArraySource, parts: dict[str, list[Entry]], *, classes: list[str],
                preprocessing: Preprocessing, progress: Progress | None
                ) -> tuple[dict[str, ImageSet], list[tuple[str, str]]]:
    """Each part's images decoded ("train": its resize_size square, any other: the eval transform), in order,
    unusable files left out and returned as (path, reason)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for entries in parts.values() for _, c in entries} - set(index))
    if unknown:
        raise DataError(f"the saved split names class(es) {', '.join(unknown)} missing from its class list — "
                        f"split.json is damaged; start a new run")
    r, c = preprocessing.resize_size, preprocessing.crop_size
    sizes = {name: r if name == "train" else c for name in parts}
    on_disk = 3 * sum(len(e) * sizes[n] ** 2 for n, e in parts.items()) > \
        MEMORY_FRACTION * psutil.virtual_memory().available
    names = list(parts)
    images = {name: allocate_images(len(parts[name]), sizes[name], on_disk=on_disk) for name in names}
    jobs = [(name, i) for name in names for i in range(len(parts[name]))]
    kept: dict[str, list[int]] = {name: [] for name in names}
    failed: list[tuple[str, str]] = []

    def run(job: tuple[str, int]) -> torch.Tensor | str:
        name, i = job
        try:
            return source.decode(parts[name][i][0], preprocessing, train=name == "train")
        except UnusableImageError as e:
            return str(e)

    with ThreadPoolExecutor(WORKERS) as pool:
        for done, ((name, i), result) in enumerate(zip(jobs, pool.map(run, jobs)), start=1):
            if isinstance(result, str):
                failed.append((source.path(parts[name][i][0]), result))
            else:
                # Packed in place as we go (row n <- image i, n <= i): a failure leaves no gap and costs no copy.
                # Through numpy: a single-threaded memcpy, where torch's copy would wake its thread pool per
                # image (10x slower on a busy 2-core machine).
                images[name].numpy()[len(kept[name])] = result.numpy()
                kept[name].append(i)
            if progress is not None:
                progress(done, len(jobs))
    sets = {name: ImageSet(images=images[name][:len(rows)],
                           targets=torch.tensor([index[parts[name][i][1]] for i in rows], dtype=torch.int64),
                           paths=[source.path(parts[name][i][0]) for i in rows])
            for name, rows in kept.items()}
    return sets, failed


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
