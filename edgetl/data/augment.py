"""Batch augmentation on uint8 tensors, seeded so that a resumed run replays it, and the normalization a model sees.

    crops = augment_batch(images, crop_size=224, generator=g); x = normalize(crops, preprocessing)
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F

from edgetl.preprocessing import Preprocessing


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
