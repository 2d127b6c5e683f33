"""What a device does to a photo before the model sees it, from the export manifest alone: PIL + numpy.

    x = preprocess_batch(["cat.jpg"], manifest["preprocessing"])   # float32 [1, 3, crop, crop]

No torch and no edgetl training code: this is the reference a device port copies, and `edgetl verify` feeds
its output to the exported files, so a mismatch between the manifest and the training transform shows up as
a parity or accuracy failure instead of a silent accuracy drop on the device. The steps are torchvision's
eval transform spelled out: EXIF orientation, RGB (transparency on white), resize of the shorter side with
PIL's antialiased filter (the longer side truncated, as torchvision does), center crop with torchvision's
rounding, /255, normalize, CHW float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from edgetl.errors import RunDirError

# manifest name -> PIL filter; the names are torchvision's InterpolationMode values.
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode, apply the EXIF orientation, and convert to RGB (see `to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float grayscale scaled to 8 bits (PIL's own convert clips them white),
    palette and alpha composited on white, CMYK converted. Training decodes with this same function."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255):
            a = a / 257  # 65535 -> 255
        elif img.mode == "F" and a.max() <= 1:
            a = a * 255
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, size: int, *, interpolation: str) -> Image.Image:
    """Shorter side to `size`, aspect kept; the longer side is truncated (`int`), as torchvision does."""
    if interpolation not in INTERPOLATION:
        raise RunDirError(f"manifest preprocessing: unknown interpolation {interpolation!r}; "
                          f"known: {', '.join(INTERPOLATION)}")
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample=INTERPOLATION[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """A `size` square from the middle; offsets rounded half to even like torchvision's `round`."""
    w, h = img.size
    if size > w or size > h:
        raise RunDirError(f"manifest preprocessing: crop {size} px is larger than the resized image {w}x{h} — "
                          f"resize_size must be >= crop_size")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_chw(img: Image.Image, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC -> float32 CHW, x / 255 then (x - mean) / std, in float32 like the model was trained."""
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(image: str | os.PathLike | Image.Image, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """One image (a path or a decoded PIL image) -> float32 [3, crop, crop], per the manifest."""
    if preprocessing.get("channel_order", "RGB") != "RGB" or preprocessing.get("layout", "NCHW") != "NCHW":
        raise RunDirError(f"manifest preprocessing: only RGB / NCHW is supported (got "
                          f"{preprocessing.get('channel_order')} / {preprocessing.get('layout')})")
    img = image.convert("RGB") if isinstance(image, Image.Image) else load_rgb(image)
    img = resize_shorter_side(img, int(preprocessing["resize_size"]),
                              interpolation=preprocessing.get("interpolation", "bilinear"))
    img = center_crop(img, int(preprocessing["crop_size"]))
    return to_chw(img, mean=preprocessing["mean"], std=preprocessing["std"])


def preprocess_batch(images: Sequence[str | os.PathLike | Image.Image], preprocessing: Mapping[str, Any]
                     ) -> np.ndarray:
    """Several images -> float32 [N, 3, crop, crop]."""
    crop = int(preprocessing["crop_size"])
    if not images:
        return np.zeros((0, 3, crop, crop), dtype=np.float32)
    return np.stack([preprocess_image(image, preprocessing) for image in images])
