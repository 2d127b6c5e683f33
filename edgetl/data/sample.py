"""The built-in sample dataset: six classes of coloured shapes on busy backgrounds, generated, never downloaded.

    root = ensure_sample()   # ~/.cache/edgetl/sample-v1/{train,val}/<shape>/*.png|jpg, written once

Each image is drawn from its own seed (dataset seed, split, class, index), so the files are byte-identical
on every machine and adding a class or an image does not change the others. Shapes vary in colour, size,
position, rotation and proportions and sit on gradients, blotchy noise, stripes or checkers with distractor
lines and dots: easy for a fine-tuned ImageNet backbone (well above 80 %), not for a trivial colour rule.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgetl import files
from edgetl.errors import DataError

SHAPES = ("circle", "cross", "ring", "square", "star", "triangle")  # sorted: targets follow this order
SAMPLE_NAME = "sample-v1"  # bump the version whenever the drawing changes, so old caches are not reused
SAMPLE_SIZE, SAMPLE_TRAIN, SAMPLE_VAL, SAMPLE_SEED = 128, 60, 15, 0
SUPERSAMPLE = 3  # shapes are drawn 3x larger and downsampled: antialiased edges, like a photo


def cache_dir() -> Path:
    """`$EDGETL_CACHE`, else `~/.cache/edgetl`: the sample data, torchvision datasets, spilled image arrays."""
    return Path(os.environ.get("EDGETL_CACHE") or Path.home() / ".cache" / "edgetl")


def ensure_sample(root: Path | None = None) -> Path:
    """Return the sample ImageFolder tree (train/ and val/), generating it once on the first call."""
    root = Path(root) if root is not None else cache_dir() / SAMPLE_NAME
    if root.is_dir():
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # A hidden temp folder beside the target, renamed at the end: a crash or a concurrent run never
        # leaves a half-written dataset behind that a later call would take for complete.
        tmp = files.make_temp_dir(root, prefix=f".{root.name}.")
    except OSError as e:
        raise DataError(f"cannot write the sample data into {root.parent} ({e.strerror}) — set EDGETL_CACHE "
                        f"to a writable folder") from None
    try:
        make_image_folder(tmp, classes=list(SHAPES), per_class=SAMPLE_TRAIN, val_per_class=SAMPLE_VAL,
                          size=SAMPLE_SIZE, seed=SAMPLE_SEED)
        os.rename(tmp, root)
    except OSError as e:
        if not root.is_dir():  # else another process renamed its copy first: use that one
            raise DataError(f"cannot write the sample data into {root} ({e.strerror}) — set EDGETL_CACHE "
                            f"to a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_image_folder(root: Path, *, classes: int | list[str], per_class: int, size: int, seed: int,
                      split: bool = True, val_per_class: int | None = None, test_per_class: int = 0) -> Path:
    """Write shape images as `root/{train,val}/<class>/` (or `root/<class>/` with split=False); return root.

    An int `classes` takes the first shape names; a list names the folders and draws shape i % 6 for the
    i-th name. `val_per_class` defaults to a quarter of `per_class` (at least 1); `test_per_class` > 0 adds a
    held-out `root/test/<class>/` (drawn from seeds of its own: no image repeats another split's).
    """
    names = list(SHAPES[:classes]) if isinstance(classes, int) else list(classes)
    if isinstance(classes, int) and not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be 1..{len(SHAPES)} when given as a count (got {classes}); pass names")
    root = Path(root)
    splits = {"train": per_class, "val": max(1, per_class // 4) if val_per_class is None else val_per_class}
    if test_per_class > 0:
        splits["test"] = test_per_class
    for split_id, (split_name, count) in enumerate(splits.items() if split else [("", per_class)]):
        for class_id, name in enumerate(names):
            folder = root / split_name / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                image = draw_shape(SHAPES[class_id % len(SHAPES)], size=size, rng=rng)
                # A third as JPEG so both decoders are exercised; the quality is fixed for reproducibility.
                if i % 3 == 2:
                    image.save(folder / f"{name}_{i:03d}.jpg", quality=90)
                else:
                    image.save(folder / f"{name}_{i:03d}.png", compress_level=1)
    return root


def draw_shape(shape: str, *, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape` over a random background, from `rng` alone."""
    background = _background(size, rng)
    big = size * SUPERSAMPLE
    radius = rng.uniform(0.2, 0.42) * big
    center = rng.uniform(radius * 0.8, big - radius * 0.8, size=2)  # may touch the border a little
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, fill in _polygons(shape, rng):
        points = _place(polygon, center=center, radius=radius, angle=rng.uniform(0, 2 * math.pi))
        draw.polygon([tuple(p) for p in points], fill=fill)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    # A fill colour far enough from the background under the shape, so every label stays visible.
    under = (background * alpha).sum((0, 1)) / max(float(alpha.sum()), 1.0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - under) > 110:
            break
        colour = rng.uniform(0, 255, size=3)
    shading = 1 + rng.uniform(-0.25, 0.25) * _ramp(size, rng)[..., None]  # uneven lighting across the shape
    image = background * (1 - alpha) + np.clip(colour.astype(np.float32) * shading, 0, 255) * alpha
    image = _distractors(image, rng)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 12)  # sensor noise
    return Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB")


def _polygons(shape: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Unit-radius outlines around the origin, each with its mask fill (255 = shape, 0 = hole)."""
    def regular(n: int, start: float = 0.0) -> np.ndarray:
        t = start + np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(t), np.sin(t)], axis=1)

    if shape == "circle":
        return [(regular(72) * [1.0, rng.uniform(0.8, 1.0)], 255)]  # slightly elliptic at times
    if shape == "ring":
        return [(regular(72), 255), (regular(72) * rng.uniform(0.45, 0.7), 0)]
    if shape == "square":
        return [(regular(4, math.pi / 4) * math.sqrt(2) * 0.8 * [1.0, rng.uniform(0.85, 1.0)], 255)]
    if shape == "triangle":
        return [(regular(3, -math.pi / 2), 255)]
    if shape == "star":
        points = rng.integers(5, 7)
        outline = regular(2 * points, -math.pi / 2)
        outline[1::2] *= rng.uniform(0.38, 0.5)
        return [(outline, 255)]
    if shape == "cross":
        a = rng.uniform(0.17, 0.3)  # half the arm width
        arms = [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a),
                (-a, a), (-a, 1)]
        return [(np.array(arms, dtype=np.float64) * 0.9, 255)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _place(polygon: np.ndarray, *, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return polygon @ rotation.T * radius + center


def _ramp(size: int, rng: np.random.Generator) -> np.ndarray:
    """A linear ramp from -1 to 1 across the image in a random direction."""
    t = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) * 2 - 1
    ramp = x * math.cos(t) + y * math.sin(t)
    return ramp / max(float(np.abs(ramp).max()), 1e-6)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size, 3] in 0..255: a gradient, blotchy noise, stripes, a checker or a plain colour."""
    a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    kind = rng.integers(5)
    if kind == 0:  # gradient
        w = (_ramp(size, rng)[..., None] + 1) / 2
    elif kind == 1:  # blotches: coarse random grid, smoothly upscaled
        cells = rng.uniform(0, 255, size=(int(rng.integers(2, 8)),) * 2 + (3,)).astype(np.uint8)
        return np.asarray(Image.fromarray(cells).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    elif kind in (2, 3):  # stripes / checker at a random angle and period
        t, period = rng.uniform(0, math.pi), rng.uniform(6, 24) * size / 128
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        w = (np.sin(u * 2 * math.pi / period) > 0) if kind == 2 else \
            ((np.floor(u / period) + np.floor(v / period)) % 2 == 0)
        w = w[..., None].astype(np.float32)
    else:  # plain colour
        w = np.zeros((size, size, 1), np.float32)
    return (a * (1 - w) + b * w).astype(np.float32)


def _distractors(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to three random lines and small dots, so no single colour or edge gives the class away."""
    size = image.shape[0]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(0, 4))):
        if rng.random() < 0.5:
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=255,
                      width=max(1, int(rng.integers(1, 4) * size / 128)))
        else:
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(0.02, 0.05) * size
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255
    return image * (1 - alpha) + rng.uniform(0, 255, size=3).astype(np.float32) * alpha
