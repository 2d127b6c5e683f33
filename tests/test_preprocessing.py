"""The manifest-only device preprocessing gives the tensor edgetl's eval transform gives, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgetl.backbones import get_backbone
from edgetl.data.augment import normalize
from edgetl.data.datasets import load_data
from edgetl.errors import RunDirError
from edgetl.preprocessing import Preprocessing, center_crop, preprocess_batch, preprocess_image, resize_shorter_side

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """An ImageFolder tree of two real photos, each as JPEG and PNG, plus an EXIF-rotated JPEG and an RGBA PNG."""
    root = tmp_path_factory.mktemp("photos")
    photos = {"cat": skimage_data.chelsea(), "coffee": skimage_data.coffee()}  # 451x300 and 600x400 RGB
    for part in ("train", "val"):
        for name, pixels in photos.items():
            folder = root / part / name
            folder.mkdir(parents=True)
            img = Image.fromarray(pixels)
            img.save(folder / f"{name}.jpg", quality=90)
            img.save(folder / f"{name}.png")
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
            img.save(folder / f"{name}_exif6.jpg", quality=90, exif=exif)
            rgba = img.convert("RGBA")
            rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, img.width, dtype=np.uint8), (img.height, 1))))
            rgba.save(folder / f"{name}_alpha.png")
    return root


PREPROCESSINGS = {
    "resnet18": get_backbone("resnet18").preprocessing,  # bilinear 256 -> 224
    "efficientnet_b0": get_backbone("efficientnet_b0").preprocessing,  # bicubic
    "efficientnet_lite0": get_backbone("efficientnet_lite0").preprocessing,  # timm crop_pct
    "mobilenet_v3_small@32": get_backbone("mobilenet_v3_small").preprocessing.scaled(32),
    "resnet18@99": get_backbone("resnet18").preprocessing.scaled(99),  # odd sizes exercise the crop rounding
}


@pytest.mark.parametrize("name", list(PREPROCESSINGS))
def test_device_preprocessing_matches_the_eval_transform(photo_tree, name):
    prep: Preprocessing = PREPROCESSINGS[name]
    bundle = load_data(str(photo_tree), preprocessing=prep)
    assert len(bundle.val) == 8, bundle.skipped
    expected = normalize(bundle.val.images, prep).numpy()
    manifest_prep = prep.to_dict()  # what the manifest carries: plain JSON values
    got = preprocess_batch(bundle.val.paths, manifest_prep)
    assert got.dtype == np.float32 and got.shape == expected.shape
    for path, g, e in zip(bundle.val.paths, got, expected):
        np.testing.assert_allclose(g, e, atol=1e-6, rtol=0, err_msg=f"{name}: {path}")


def test_exif_orientation_is_applied(photo_tree):
    prep = {"crop_size": 64, "resize_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bilinear"}
    upright = preprocess_image(photo_tree / "val" / "cat" / "cat.png", prep)
    rotated = preprocess_image(photo_tree / "val" / "cat" / "cat_exif6.jpg", prep)
    # chelsea is landscape; orientation 6 displays it as portrait, so the crop sees a rotated cat
    assert upright.shape == rotated.shape == (3, 64, 64)
    assert np.abs(upright - rotated).mean() > 0.05


def test_resize_and_crop_follow_torchvision_rounding():
    img = Image.new("RGB", (451, 300))
    resized = resize_shorter_side(img, 37, interpolation="bilinear")
    assert resized.size == (55, 37)  # int(37 * 451 / 300) = 55, truncated
    assert center_crop(Image.new("RGB", (55, 37)), 32).size == (32, 32)
    with pytest.raises(RunDirError, match="unknown interpolation 'cubic'"):
        resize_shorter_side(img, 37, interpolation="cubic")
    with pytest.raises(RunDirError, match="larger than the resized image"):
        center_crop(Image.new("RGB", (20, 30)), 32)
