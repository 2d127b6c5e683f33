"""torchvision's array datasets (CIFAR-10/100) by name: read from the local cache, downloaded once for training.

    sets = torchvision_sets("cifar10", download=True)   # {"train": dataset, "test": dataset}

Training may download (unless EDGETL_OFFLINE is set); verify and export read the cache only. Split entries are
"train/<index>" / "test/<index>" into a set's uint8 HWC array.
"""

from __future__ import annotations

import os
import socket
import urllib.error
from typing import Any

from PIL import Image

from edgetl.data.folders import Entry, stratified_first
from edgetl.data.sample import cache_dir
from edgetl.errors import DataError

NAMED = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # spec -> torchvision.datasets class
DOWNLOAD_TIMEOUT_S = 30


def list_torchvision(name: str, sets: dict[str, Any], *, subset: int | None, split: dict[str, Any] | None
                     ) -> tuple[list[str], list[Entry], list[Entry], dict[str, Any]]:
    """Classes, train entries (its train part), val entries (its test part) and the split.json record."""
    classes = list(sets["train"].classes)
    if split is not None:
        return classes, split["train"], split["val"], dict(split)
    train = [[f"train/{i}", classes[t]] for i, t in enumerate(sets["train"].targets)]
    val = [[f"test/{i}", classes[t]] for i, t in enumerate(sets["test"].targets)]
    if subset is not None:  # the first images of each class: the same subset on every machine, no seed needed
        train = [train[i] for i in stratified_first([c for _, c in train], subset)]
        val = [val[i] for i in stratified_first([c for _, c in val], max(len(classes), subset // 5))]
    split = {"source": name, "layout": "train/test", "seed": None, "val_fraction": None,
             "subset": subset, "classes": classes, "train": train, "val": val}
    return classes, train, val, split


def torchvision_sets(name: str, *, download: bool) -> dict[str, Any]:
    """{"train": dataset, "test": dataset} from the cache; with `download`, fetched once when missing (unless
    EDGETL_OFFLINE is set). DataError when they can't be had."""
    import torchvision.datasets

    root = cache_dir() / "torchvision"
    offline = not download or os.environ.get("EDGETL_OFFLINE", "").lower() in ("1", "true", "yes")
    dataset = getattr(torchvision.datasets, NAMED[name])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib takes no timeout here; without one it can hang
    try:
        sets = {part: dataset(str(root), train=part == "train", download=not offline) for part in ("train", "test")}
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if not download:
            raise DataError(f"{name} is not in the local cache {root} ({e})") from None
        why = "EDGETL_OFFLINE is set and it is not cached" if offline else getattr(e, "reason", None) or e
        raise DataError(f"cannot download {name} into {root} ({why}) — run once with network access, or use a "
                        f"folder of class folders") from None
    finally:
        socket.setdefaulttimeout(previous)
    # Targets index `classes` as they are, which matches the ImageFolder convention only if they are sorted.
    assert list(sets["train"].classes) == sorted(sets["train"].classes), f"{name}: classes not sorted"
    return sets


def array_images(sets: dict[str, Any], listed: list[Entry]) -> list[tuple[Image.Image, str]]:
    """(image, class) for every listed "part/<index>" entry that indexes into `sets`."""
    images = []
    for ref, c in listed:
        part, _, index = str(ref).partition("/")
        if part in sets and index.isdigit() and int(index) < len(sets[part].data):
            images.append((Image.fromarray(sets[part].data[int(index)]), c))
    return images
