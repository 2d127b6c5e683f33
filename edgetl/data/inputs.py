"""The inputs models are checked on: real photos preprocessed from the manifest alone, plus noise.

    inputs = gather_inputs(run_dir, labels=labels, preprocessing=prep, data=None, samples=32)  # x: [N, 3, H, W]

`edgetl verify` feeds them to every runtime, export's INT8 guard judges on them, and `edgetl export` checks its
BatchNorm fold on them. Real images come from `--data DIR` when given, else the run's held-out images
(split.json): its test split when it has one, else its val split (`held_out_part`); they are preprocessed by
`edgetl.preprocessing`, the manifest alone, exactly as a device would. A few N(0, 1) tensors follow, so parity
is also checked away from the training distribution. Missing files are skipped with a warning; with no real
image left, parity runs on the random tensors alone and says so.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgetl.data.arrays import array_images, torchvision_sets
from edgetl.data.folders import check_data_root, walk_images
from edgetl.data.sample import ensure_sample
from edgetl.errors import DataError
from edgetl.images import UnusableImageError
from edgetl.preprocessing import Preprocessing, preprocess_image
from edgetl.rundir import RunDir, read_split

log = logging.getLogger(__name__)

RANDOM_INPUTS = 4
# Export's INT8 guard and verify judge a file on the whole held-out split (test, else val) up to this many images:
# all of it for the few-hundred-photo sets this tool is for, and enough for a 1-point accuracy bar to mean
# something on bigger ones
JUDGED_IMAGES = 5000
Source = Path | Image.Image  # a file, or an already decoded image (torchvision's array datasets)


@dataclass
class Inputs:
    x: np.ndarray  # float32 [N, 3, H, W]: the real images first, then the random tensors
    targets: np.ndarray  # int64 [N]: index into the manifest's labels; -1 when unlabelled or random
    # JSON-able: where they came from ("part": the split or subfolder), how many there were ("listed") and were
    # used ("images", "labelled")
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def gather_inputs(run_dir: Path, *, labels: Sequence[str], preprocessing: Preprocessing, data: str | None,
                  samples: int, random: int = RANDOM_INPUTS, seed: int = 0) -> Inputs:
    """`samples` real images (round-robin over classes) then `random` N(0, 1) tensors, labelled where known:
    from `data`, else the run's test split, else its val split."""
    warnings: list[str] = []
    if data is not None:
        entries, info = _folder_entries(data)
        if not entries:
            raise DataError(f"--data {data}: no images found — pass a folder of images or of class folders")
    else:
        entries, info = _split_entries(run_dir, warnings)
    info["listed"] = len(entries)
    x_real, targets, skipped = _decode(_pick(entries, samples), preprocessing, list(labels), warnings)
    if x_real.shape[0] == 0:
        _warn(warnings, "no real images to check with; parity uses random inputs only — pass --data DIR to "
                        "check real photos")
        info["source"] = "random"
    crop = preprocessing.crop_size
    noise = np.random.default_rng(seed).standard_normal((random, 3, crop, crop)).astype(np.float32)
    x = np.concatenate([x_real.reshape(-1, 3, crop, crop), noise])
    targets = np.concatenate([targets, np.full(random, -1, dtype=np.int64)])
    info.update(images=int(x_real.shape[0]), labelled=int((targets >= 0).sum()), random=random, skipped=skipped)
    return Inputs(x=x, targets=targets, info=info, warnings=warnings)


def _warn(warnings: list[str], message: str) -> None:
    log.warning(message)
    warnings.append(message)


def _folder_entries(data: str) -> tuple[list[tuple[Source, str | None]], dict[str, Any]]:
    """(image, class folder name or None) for a folder of class folders, its test/ part (else its val/ part), or
    `sample`: the images the shared walker lists (edgetl.data.folders), so verify takes exactly what training
    would."""
    root = ensure_sample() if data == "sample" else Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {data}: folder not found — pass a folder of images or of class folders, or `sample`")
    check_data_root(root, flag="--data")
    info: dict[str, Any] = {"source": "data", "root": data}
    part = next((p for p in HELD_OUT if (root / p).is_dir()), None)
    if part is not None:
        root = root / part
        info["part"] = part
    skipped: list[tuple[str, str]] = []
    entries: list[tuple[Source, str | None]] = []
    for path in walk_images(root, skipped, root=root):
        rel = path.relative_to(root)
        entries.append((path, rel.parts[0] if len(rel.parts) > 1 else None))
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return entries, info


HELD_OUT = ("test", "val")  # the split that judges a trained model: the first one a run (or a folder) has


def held_out_part(split: dict[str, Any]) -> str:
    """The split a run's model is judged on: "test" when split.json lists test images, else "val"."""
    return next(part for part in HELD_OUT if split.get(part) or part == "val")


def _split_entries(run_dir: Path, warnings: list[str], *, part: str | None = None
                   ) -> tuple[list[tuple[Source, str | None]], dict[str, Any]]:
    """The images split.json lists in `part` (None: `held_out_part`; train for calibration), those still there; a
    warning for any that are gone."""
    path = RunDir(run_dir).split
    if not path.is_file():
        what = "validation" if part in (None, "val") else part
        _warn(warnings, f"{path} not found: no {what} images to check with")
        return [], {"source": "split"}
    split = read_split(path)
    part = part or held_out_part(split)
    what = "validation" if part == "val" else part
    source, listed = str(split.get("source")), split.get(part) or []
    info: dict[str, Any] = {"source": "split", "dataset": source, "part": part}
    if source.lower() in ("cifar10", "cifar100"):
        return _array_entries(source.lower(), listed, warnings), info
    root = ensure_sample() if source == "sample" else Path(split.get("root") or source)
    info["root"] = str(root)
    present = [(root / rel, c) for rel, c in listed if (root / rel).is_file()]
    if len(present) < len(listed):
        _warn(warnings, f"{len(listed) - len(present)} of {len(listed)} {what} images listed in {path} are gone "
                        f"from {root}")
    return present, info


def calibration_images(run_dir: Path, *, labels: Sequence[str], preprocessing: Preprocessing, samples: int,
                       seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to `samples` train-split images, a seeded draw spread over classes, preprocessed exactly as a device
    does: what INT8 calibrates on (never val images, which judge the result)."""
    warnings: list[str] = []
    entries, info = _split_entries(run_dir, warnings, part="train")
    random.Random(seed).shuffle(entries)
    x, _, skipped = _decode(_pick(entries, samples), preprocessing, list(labels), warnings)
    info.update(images=int(x.shape[0]), seed=seed, skipped=skipped)
    return x, info


def _array_entries(name: str, listed: list, warnings: list[str]) -> list[tuple[Source, str | None]]:
    """The images of a torchvision array dataset a split lists, from the local cache only (verify never
    downloads)."""
    try:
        sets = torchvision_sets(name, download=False)
    except DataError as e:
        _warn(warnings, f"{e}; no images to check with")
        return []
    return array_images(sets, listed)


def _pick(entries: list[tuple[Source, str | None]], n: int) -> list[tuple[Source, str | None]]:
    """The first `n`, taken round-robin over classes, so a few samples still cover every class."""
    by_class: dict[str | None, list[tuple[Source, str | None]]] = defaultdict(list)
    for entry in entries:
        by_class[entry[1]].append(entry)
    picked: list[tuple[Source, str | None]] = []
    for row in range(max((len(v) for v in by_class.values()), default=0)):
        picked += [v[row] for v in by_class.values() if row < len(v)]
    return picked[:n]


def _decode(entries: Sequence[tuple[Source, str | None]], preprocessing: Preprocessing, labels: list[str],
            warnings: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({c for _, c in entries if c is not None and c not in index})
    if unknown:
        _warn(warnings, f"class folder(s) {', '.join(unknown)} are not among the model's labels; those images "
                        f"count for parity, not for accuracy")
    images, targets, skipped = [], [], 0
    for source, name in entries:
        try:
            images.append(preprocess_image(source, preprocessing))
        except (UnusableImageError, OSError, ValueError, SyntaxError) as e:  # PIL's errors for damaged files
            skipped += 1
            log.warning("skipped %s: %s", source, e)
            continue
        targets.append(index.get(name, -1) if name is not None else -1)
    crop = preprocessing.crop_size
    x = np.stack(images) if images else np.zeros((0, 3, crop, crop), dtype=np.float32)
    return x, np.asarray(targets, dtype=np.int64), skipped
