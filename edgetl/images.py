"""Decode any image file to an RGB PIL image, or say in a few words why it cannot be used.

    img = load_image("photos/cat/1.jpg")   # UnusableImageError("empty file (0 bytes)") for a bad file

The one decoder of edgetl: training, `verify`, `predict` and a device port all see the same pixels (EXIF
orientation applied, 16-bit scaled, transparency on white), and the same guards (regular files only, so a
FIFO cannot hang a read; PIL's decompression-bomb limit, on the source and on the resized size).
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgetl.errors import DataError


class UnusableImageError(DataError):
    """One file cannot be used as an image; the message is the reason."""


def load_image(path: str | os.PathLike, *, draft_size: int | None = None) -> Image.Image:
    """Decode any still image to RGB; raise UnusableImageError with the reason.

    EXIF orientation is applied; 16-bit and float grayscale are scaled to 8 bits (not clipped); palette and
    alpha images are composited on white (what viewers and most product photos assume); CMYK is converted;
    animated GIF/WebP/PNG give their first frame. `draft_size` lets a large JPEG decode at 1/2..1/8 scale
    as long as its shorter side stays >= draft_size (train images only: val must see the full decode).
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except OSError as e:
        raise UnusableImageError(stat_reason(path, e)) from None
    if not stat.S_ISREG(info.st_mode):
        raise UnusableImageError("not a regular file")
    if info.st_size == 0:
        raise UnusableImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"Image size ({img.width * img.height} pixels) exceeds limit of "
                                                   f"{Image.MAX_IMAGE_PIXELS} pixels")
            if draft_size and img.format == "JPEG" and min(img.size) >= 2 * draft_size:
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # decodes now, so a truncated file raises here (LOAD_TRUNCATED_IMAGES stays False)
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise UnusableImageError("not an image (PIL cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's text names the limit that tripped: 1x MAX_IMAGE_PIXELS (a warning) or 2x (its hard error).
        raise UnusableImageError(f"too many pixels for PIL's decompression-bomb guard ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise UnusableImageError(f"damaged or unsupported image ({type(e).__name__}: {e})") from None


MAX_ASPECT = 50  # longer side / shorter side; a wider strip is not a photo of one thing


def check_resizable(size: tuple[int, int], shorter_side: int) -> None:
    """Refuse an image whose shorter-side resize would be absurd: PIL's decompression guard counts the source
    pixels, but a 4 KB 1x1,000,000 PNG resized to a 256-px shorter side would be 256x256,000,000 px."""
    short, long = min(size), max(size)
    if long > MAX_ASPECT * short:
        raise UnusableImageError(f"aspect ratio {long}:{short} is beyond {MAX_ASPECT}:1 (its resize to a "
                                 f"{shorter_side}-px shorter side would be {long * shorter_side // short} px long) "
                                 f"— crop it")
    resized = shorter_side * (long * shorter_side // short)
    if Image.MAX_IMAGE_PIXELS and resized > Image.MAX_IMAGE_PIXELS:
        raise UnusableImageError(f"resized to a {shorter_side}-px shorter side it would have {resized} pixels, "
                                 f"beyond PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS})")


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


def stat_reason(path: str, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.ENOENT:
        return f"broken symlink (to {os.readlink(path)})" if os.path.islink(path) else "file not found"
    return f"cannot read ({e.strerror})"
