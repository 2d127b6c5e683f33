"""What a device must do to an image before the model sees it: typed data, and the steps in PIL + numpy.

    prep = Preprocessing.from_transforms(ResNet18_Weights.DEFAULT.transforms()).scaled(128)
    x = preprocess_batch(["cat.jpg"], prep)   # float32 [1, 3, crop, crop]

`Preprocessing` travels with the weights (taken from `weights.transforms()` / timm's pretrained config, never
retyped), into the run directory (`preprocessing.json`), the manifest and the ONNX metadata.

The steps need no torch and no training code: they are the reference a device port copies, and `edgetl
verify` feeds their output to the exported files, so a mismatch between the manifest and the training
transform shows up as a parity or accuracy failure instead of a silent accuracy drop on the device. They are
torchvision's eval transform spelled out: decode (`edgetl.images`), resize of the shorter side with PIL's
antialiased filter (the longer side truncated, as torchvision does), center crop with torchvision's rounding,
/255, normalize, CHW float32.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgetl.errors import RunDirError
from edgetl.images import check_resizable, load_image

MAX_SIZE = 8192  # pixels per side: beyond any classifier's input
# manifest name -> PIL filter; the names are torchvision's InterpolationMode values.
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, center-crop `crop_size`, scale to [0, 1], normalize.

    Channel order RGB, layout NCHW, dtype float32.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # PIL / torchvision name: "bilinear" | "bicubic" | "nearest"
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        """Values a device could not run (a read file's schema errors come from here, one field named)."""
        sizes = (self.crop_size, self.resize_size)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in sizes):
            raise ValueError(f"crop_size and resize_size must be whole pixels in [1, {MAX_SIZE}] (got {sizes})")
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than crop_size {self.crop_size}")
        stats = (*self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in stats):
            raise ValueError(f"mean and std must be 3 finite numbers each (got {self.mean}, {self.std})")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0 (got {self.std})")

    @classmethod
    def from_transforms(cls, transforms: Any) -> Preprocessing:
        """From torchvision's `ImageClassification` preset (what `weights.transforms()` returns)."""
        crop = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
        resize = transforms.resize_size[0] if isinstance(transforms.resize_size, (list, tuple)) else transforms.resize_size
        return cls(
            crop_size=int(crop),
            resize_size=int(resize),
            mean=tuple(float(m) for m in transforms.mean),
            std=tuple(float(s) for s in transforms.std),
            interpolation=transforms.interpolation.value,
        )

    @classmethod
    def from_timm_config(cls, cfg: dict[str, Any]) -> Preprocessing:
        """From timm's pretrained config (`input_size`, `crop_pct`, `mean`, `std`, `interpolation`)."""
        crop = int(cfg["input_size"][-1])
        return cls(
            crop_size=crop,
            resize_size=int(crop / cfg.get("crop_pct", 0.875)),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            interpolation=cfg.get("interpolation", "bilinear"),
        )

    def scaled(self, crop_size: int | None) -> Preprocessing:
        """The same recipe at another input size, keeping the resize/crop ratio."""
        if crop_size is None or crop_size == self.crop_size:
            return self
        resize = round(crop_size * self.resize_size / self.crop_size)
        return dataclasses.replace(self, crop_size=crop_size, resize_size=resize)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
        return cls(**kw)

    @classmethod
    def coerce(cls, value: Preprocessing | Mapping[str, Any]) -> Preprocessing:
        """A Preprocessing as it is, or from its JSON form (preprocessing.json, the manifest)."""
        return value if isinstance(value, cls) else cls.from_dict(value)


def resize_shorter_side(img: Image.Image, size: int, *, interpolation: str) -> Image.Image:
    """Shorter side to `size`, aspect kept; the longer side is truncated (`int`), as torchvision does."""
    if interpolation not in INTERPOLATION:
        raise RunDirError(f"manifest preprocessing: unknown interpolation {interpolation!r}; "
                          f"known: {', '.join(INTERPOLATION)}")
    check_resizable(img.size, size)
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


def preprocess_image(image: str | os.PathLike | Image.Image, preprocessing: Preprocessing | Mapping[str, Any]
                     ) -> np.ndarray:
    """One image (a path or a decoded PIL image) -> float32 [3, crop, crop], per the manifest.

    A file that cannot be used raises `edgetl.images.UnusableImageError` with the reason."""
    prep = Preprocessing.coerce(preprocessing)
    if prep.channel_order != "RGB" or prep.layout != "NCHW":
        raise RunDirError(f"manifest preprocessing: only RGB / NCHW is supported (got {prep.channel_order} / "
                          f"{prep.layout})")
    img = image.convert("RGB") if isinstance(image, Image.Image) else load_image(image)
    img = resize_shorter_side(img, prep.resize_size, interpolation=prep.interpolation)
    img = center_crop(img, prep.crop_size)
    return to_chw(img, mean=prep.mean, std=prep.std)


def preprocess_batch(images: Sequence[str | os.PathLike | Image.Image],
                     preprocessing: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Several images -> float32 [N, 3, crop, crop]."""
    prep = Preprocessing.coerce(preprocessing)
    if not images:
        return np.zeros((0, 3, prep.crop_size, prep.crop_size), dtype=np.float32)
    return np.stack([preprocess_image(image, prep) for image in images])
