import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from edgetl.data.augment import augment_batch, center_crop_batch, normalize
from edgetl.data.datasets import allocate_images, load_data
from edgetl.data.sample import make_image_folder
from edgetl.errors import DataError
from edgetl.images import load_image
from edgetl.preprocessing import Preprocessing

PP = Preprocessing(crop_size=32, resize_size=40, mean=(0.5, 0.25, 0.75), std=(0.25, 0.5, 0.125))


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels: enough for PIL's decompression-bomb check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def _entries(bundle, part: str) -> list[str]:
    return [rel for rel, _ in bundle.split[part]]


# --- layouts and splits ------------------------------------------------------------------------------------

def test_train_val_folders(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=4, val_per_class=2, size=48, seed=0)
    bundle = load_data(str(root), preprocessing=PP)
    assert bundle.classes == ["circle", "cross", "ring"]
    assert bundle.train.images.shape == (12, 3, 40, 40) and bundle.train.images.dtype == torch.uint8
    assert bundle.val.images.shape == (6, 3, 32, 32) and bundle.val.images.dtype == torch.uint8
    assert bundle.train.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert bundle.val.targets.dtype == torch.int64 and bundle.val.targets.bincount().tolist() == [2, 2, 2]
    assert all(Path(p).is_file() for p in bundle.train.paths + bundle.val.paths)
    assert bundle.split["layout"] == "train/val" and bundle.skipped == []
    assert _entries(bundle, "val")[0] == "val/circle/circle_000.png"
    json.dumps(bundle.split)  # saved as split.json


def test_class_folders_split_is_stratified_seeded_and_replays(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=10, size=32, seed=0, split=False)
    a = load_data(str(root), preprocessing=PP, seed=1, val_fraction=0.2)
    assert a.val.targets.bincount().tolist() == [2, 2, 2] and a.train.targets.bincount().tolist() == [8, 8, 8]
    assert not set(a.train.paths) & set(a.val.paths)
    assert a.split["seed"] == 1 and a.split["val_fraction"] == 0.2 and a.split["layout"] == "split"

    again = load_data(str(root), preprocessing=PP, seed=1, val_fraction=0.2)
    assert again.split == a.split and torch.equal(again.val.images, a.val.images)
    other = load_data(str(root), preprocessing=PP, seed=2, val_fraction=0.2)
    assert _entries(other, "val") != _entries(a, "val")

    # A resume replays the saved lists exactly, whatever the seed, and ignores files added since.
    saved = json.loads(json.dumps(a.split))
    Image.new("RGB", (32, 32)).save(root / "circle" / "new.png")
    replay = load_data(str(root), preprocessing=PP, seed=99, val_fraction=0.5, split=saved)
    assert replay.train.paths == a.train.paths and replay.val.paths == a.val.paths
    assert torch.equal(replay.train.images, a.train.images) and torch.equal(replay.val.targets, a.val.targets)


def test_every_class_gets_a_val_image_and_subset_is_stratified(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=3, size=32, seed=0, split=False)
    bundle = load_data(str(root), preprocessing=PP, val_fraction=0.01)
    assert bundle.val.targets.bincount().tolist() == [1, 1, 1]

    root = make_image_folder(tmp_path / "big", classes=3, per_class=10, size=32, seed=0, split=False)
    small = load_data(str(root), preprocessing=PP, subset=7)
    assert small.train.targets.bincount().tolist() == [3, 2, 2]
    assert len(small.val) == 3 and small.split["subset"] == 7


def test_a_test_folder_is_held_out_beside_train_and_val(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=4, val_per_class=1, test_per_class=2, size=32,
                             seed=0)
    bundle = load_data(str(root), preprocessing=PP)
    assert bundle.split["layout"] == "train/val" and len(bundle.train) == 12 and len(bundle.val) == 3
    assert bundle.test.images.shape == (6, 3, 32, 32) and bundle.test.targets.bincount().tolist() == [2, 2, 2]
    assert _entries(bundle, "test")[0] == "test/circle/circle_000.png"
    assert not set(bundle.test.paths) & set(bundle.val.paths + bundle.train.paths)
    assert bundle.test_duplicates == []
    # without a test/ folder there is no test split, and split.json says so
    plain = load_data(str(make_image_folder(tmp_path / "plain", classes=2, per_class=2, size=32, seed=0)),
                      preprocessing=PP)
    assert plain.test is None and plain.split["test"] == []


def test_train_and_test_folders_split_val_off_train_and_replay_on_resume(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=5, val_per_class=1, test_per_class=2, size=32,
                             seed=0)
    (root / "val").rename(tmp_path / "no-val")
    bundle = load_data(str(root), preprocessing=PP, seed=1, val_fraction=0.2)
    assert bundle.split["layout"] == "train split/test" and bundle.split["val_fraction"] == 0.2
    assert bundle.val.targets.bincount().tolist() == [1, 1, 1] and bundle.train.targets.bincount().tolist() == [4, 4, 4]
    assert all(e.startswith("train/") for e in _entries(bundle, "train") + _entries(bundle, "val"))
    assert len(bundle.test) == 6 and not set(_entries(bundle, "val")) & set(_entries(bundle, "train"))
    Image.new("RGB", (32, 32)).save(root / "test" / "circle" / "new.png")  # a resume replays the saved lists
    replay = load_data(str(root), preprocessing=PP, split=json.loads(json.dumps(bundle.split)))
    assert replay.test.paths == bundle.test.paths and torch.equal(replay.test.images, bundle.test.images)
    small = load_data(str(root), preprocessing=PP, subset=6)  # the test split shrinks with val
    assert len(small.test) == len(small.val) == 3


def test_test_images_copied_from_train_or_val_are_warned_about(tmp_path, caplog):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=2, val_per_class=1, test_per_class=1, size=32,
                             seed=0)
    shutil.copy(root / "val" / "cross" / "cross_000.png", root / "test" / "cross" / "copy.png")
    with caplog.at_level(logging.WARNING):
        bundle = load_data(str(root), preprocessing=PP)
    assert bundle.test_duplicates == [("test/cross/copy.png", "val/cross/cross_000.png")]
    assert "1 test image(s) are byte-identical copies of train or val images" in caplog.text


def test_unicode_class_names(tmp_path):
    names = ["日本語", "café", "Ünïcode"]
    root = make_image_folder(tmp_path / "données", classes=names, per_class=3, val_per_class=1, size=32, seed=0)
    bundle = load_data(str(root), preprocessing=PP)
    assert bundle.classes == sorted(names)
    assert bundle.train.targets.bincount().tolist() == [3, 3, 3]
    assert all(Path(p).is_file() for p in bundle.val.paths)


def test_progress_is_reported(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=3, val_per_class=1, size=32, seed=0)
    calls = []
    load_data(str(root), preprocessing=PP, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 8) for i in range(1, 9)]


# --- decoding ------------------------------------------------------------------------------------------------

def _save_modes(folder: Path) -> dict[str, tuple[int, int, int]]:
    """One file per awkward mode, and the RGB value its top-left pixel must decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(folder / "gray.png")
    Image.new("1", (8, 8), 1).save(folder / "bits.png")
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "gray16.png")  # mode I;16
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(folder / "clear.png")  # fully transparent -> white
    Image.new("LA", (8, 8), (0, 128)).save(folder / "gray_alpha.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(folder / "palette.png")
    palette.save(folder / "palette_clear.png", transparency=1)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    return {"gray.png": (100, 100, 100), "bits.png": (255, 255, 255), "gray16.png": (128, 128, 128),
            "clear.png": (255, 255, 255), "gray_alpha.png": (127, 127, 127), "palette.png": (0, 255, 0),
            "palette_clear.png": (255, 255, 255), "cmyk.jpg": (255, 0, 0), "anim.gif": (255, 0, 0),
            "anim.webp": (255, 0, 0)}


def test_every_mode_decodes_to_rgb(tmp_path):
    expected = _save_modes(tmp_path / "modes")
    for name, rgb in expected.items():
        img = load_image(tmp_path / "modes" / name)
        assert img.mode == "RGB", name
        np.testing.assert_allclose(img.getpixel((0, 0)), rgb, atol=3, err_msg=name)

    # ... and through load_data they become uint8 CHW tensors with the same colours.
    for cls in ("a", "b"):
        _save_modes(tmp_path / "ds" / "train" / cls)
        _save_modes(tmp_path / "ds" / "val" / cls)
    bundle = load_data(str(tmp_path / "ds"), preprocessing=PP)
    assert bundle.skipped == [] and len(bundle.train) == 2 * len(expected)
    for path, image in zip(bundle.train.paths, bundle.train.images):
        np.testing.assert_allclose(image[:, 20, 20].tolist(), expected[Path(path).name], atol=3, err_msg=path)


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the left half ends up on top
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "phone.jpg")
    assert img.size == (20, 40)
    np.testing.assert_allclose(img.getpixel((10, 5)), (255, 0, 0), atol=8)
    np.testing.assert_allclose(img.getpixel((10, 35)), (0, 0, 255), atol=8)


def _hand_eval_transform(path: Path, *, resize: int, crop: int, resample: int) -> np.ndarray:
    """What a device does: PIL resize of the shorter side, then torchvision's center-crop rounding."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize(size, resample)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    return np.asarray(img.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)


@pytest.mark.parametrize("interpolation, resample", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_val_images_equal_the_device_transform_pixel_for_pixel(tmp_path, interpolation, resample):
    photos = {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee()}  # 451x300, 600x400
    for split in ("train", "val"):
        for name, pixels in photos.items():
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / split / name / f"{name}.png")
    pp = Preprocessing(crop_size=128, resize_size=146, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation=interpolation)
    bundle = load_data(str(tmp_path), preprocessing=pp)
    for path, image in zip(bundle.val.paths, bundle.val.images):
        expected = _hand_eval_transform(Path(path), resize=146, crop=128, resample=resample)
        np.testing.assert_array_equal(image.numpy(), expected, err_msg=path)
    for path, image in zip(bundle.train.paths, bundle.train.images):  # PNG: no draft, the full square
        expected = _hand_eval_transform(Path(path), resize=146, crop=146, resample=resample)
        np.testing.assert_array_equal(image.numpy(), expected, err_msg=path)


def test_large_train_jpegs_use_draft_mode_but_val_never_does(tmp_path):
    big = Image.fromarray(skimage.data.chelsea()).resize((1804, 1200))
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            big.save(tmp_path / split / name / "big.jpg", quality=90)
    assert load_image(tmp_path / "val" / "a" / "big.jpg", draft_size=146).size == (226, 150)  # 1/8 scale
    pp = Preprocessing(crop_size=128, resize_size=146, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    bundle = load_data(str(tmp_path), preprocessing=pp)
    val = _hand_eval_transform(tmp_path / "val" / "a" / "big.jpg", resize=146, crop=128, resample=Image.BILINEAR)
    np.testing.assert_array_equal(bundle.val.images[0].numpy(), val)
    full = _hand_eval_transform(tmp_path / "train" / "a" / "big.jpg", resize=146, crop=146, resample=Image.BILINEAR)
    drafted = bundle.train.images[0].numpy().astype(int)
    assert 0 < np.abs(drafted - full).mean() < 4  # decoded at reduced scale: close, not identical


# --- unusable and ignored files ----------------------------------------------------------------------------

def test_bad_files_are_skipped_with_one_warning_each_and_hidden_files_ignored(tmp_path, caplog):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=3, val_per_class=1, size=32, seed=0)
    bad = root / "train" / "circle"
    (bad / "empty.jpg").touch()
    jpeg = bad / "circle_002.jpg"
    (bad / "truncated.jpg").write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (bad / "notes.txt").write_text("not a picture")
    (bad / "fake.png").write_text("not a picture either")
    (bad / "bomb.png").write_bytes(_png_header(20000, 20000))  # over 2x PIL's limit: an error in PIL
    (bad / "big.png").write_bytes(_png_header(10000, 10000))  # over 1x: only a warning in PIL
    os.symlink(bad / "gone.png", bad / "broken.png")
    os.symlink(bad / "loop_b.png", bad / "loop_a.png")
    os.symlink(bad / "loop_a.png", bad / "loop_b.png")
    os.symlink(bad, bad / "again")  # a folder loop: must neither hang nor count twice
    Image.new("RGB", (1, 1), (9, 200, 90)).save(bad / "dot.png")  # tiny but fine: upscaled
    for hidden in (".DS_Store", "._circle_000.png", "__MACOSX/circle_000.png", ".git/objects/x.png"):
        (bad / hidden).parent.mkdir(parents=True, exist_ok=True)
        (bad / hidden).write_bytes(b"\0\0junk")

    caplog.set_level(logging.WARNING, logger="edgetl.data")
    bundle = load_data(str(root), preprocessing=PP)
    reasons = {Path(path).name: reason for path, reason in bundle.skipped}
    assert reasons.keys() == {"empty.jpg", "truncated.jpg", "notes.txt", "fake.png", "bomb.png", "big.png",
                              "broken.png", "loop_a.png", "loop_b.png", "again"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.txt"] and "not an image" in reasons["fake.png"]
    assert "decompression-bomb" in reasons["bomb.png"] and "decompression-bomb" in reasons["big.png"]
    assert "broken symlink" in reasons["broken.png"]
    assert "symlink loop" in reasons["loop_a.png"] and "symlink loop" in reasons["again"]
    for path, _ in bundle.skipped:  # one warning line per file, naming it
        assert sum(path in r.getMessage() for r in caplog.records) == 1, path
    assert len(caplog.records) == len(bundle.skipped)

    assert bundle.train.targets.bincount().tolist() == [4, 3]  # 3 generated + the 1x1 dot
    dot = bundle.train.paths.index(str(bad / "dot.png"))
    assert bundle.train.images[dot].flatten(1).unique(dim=1).T.tolist() == [[9, 200, 90]]
    assert "circle/truncated.jpg" not in json.dumps(bundle.split)  # a resume replays usable files only


@pytest.mark.parametrize("name, payload", [("empty.jpg", b""), ("fake.png", b"hello")])
def test_load_image_raises_a_data_error_with_the_reason(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(DataError, match="0 bytes" if not payload else "not an image"):
        load_image(tmp_path / name)


# --- errors before training --------------------------------------------------------------------------------

def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "nope"), preprocessing=PP)
    assert str(tmp_path / "nope") in _one_line(e) and "not found" in str(e.value) and "cifar10" in str(e.value)


def test_fewer_than_two_classes(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=3, size=32, seed=0, split=False)
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path), preprocessing=PP)
    assert "found 1 class folder(s) (circle), need at least 2" in _one_line(e)


def test_class_without_usable_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=3, val_per_class=1, size=32, seed=0)
    (root / "train" / "empty_class").mkdir()
    (root / "train" / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_data(str(root), preprocessing=PP)
    assert "empty_class have no usable image" in _one_line(e)

    (root / "train" / "empty_class" / "readme.txt").unlink()
    (root / "train" / "empty_class" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError) as e:
        load_data(str(root), preprocessing=PP)
    assert "empty_class have no usable train image" in _one_line(e)


def test_val_classes_missing_from_train_are_named(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=2, val_per_class=1, size=32, seed=0)
    (root / "val" / "ring").rename(root / "val" / "rings")
    with pytest.raises(DataError) as e:
        load_data(str(root), preprocessing=PP)
    assert "rings are not in" in _one_line(e)


def test_test_classes_missing_from_train_are_named(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=2, val_per_class=1, test_per_class=1, size=32,
                             seed=0)
    (root / "test" / "owl").mkdir()
    Image.new("RGB", (32, 32)).save(root / "test" / "owl" / "1.png")
    with pytest.raises(DataError, match="class folder.s. owl are not in .*every test class needs train images"):
        load_data(str(root), preprocessing=PP)


def test_a_class_without_val_images_is_warned_about(tmp_path, caplog):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=2, val_per_class=1, size=32, seed=0)
    (root / "val" / "ring" / "ring_000.png").unlink()
    caplog.set_level(logging.WARNING, logger="edgetl.data")
    bundle = load_data(str(root), preprocessing=PP)
    assert len(bundle.val) == 2 and bundle.val.targets.tolist() == [0, 1]
    assert [r.getMessage() for r in caplog.records] == [
        f"{root}: no usable val image for class(es) ring: their accuracy is not measured"]


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_outside_zero_one(tmp_path, val_fraction):
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path), preprocessing=PP, val_fraction=val_fraction)
    assert f"val_fraction must be between 0 and 1, exclusive (got {val_fraction})" in _one_line(e)


def test_a_single_image_class_cannot_be_split(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=2, per_class=3, size=32, seed=0, split=False)
    for extra in sorted((root / "cross").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DataError) as e:
        load_data(str(root), preprocessing=PP)
    assert "class 'cross' has only 1 image" in _one_line(e)


def test_named_dataset_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_data("cifar10", preprocessing=PP)
    assert "cannot download cifar10" in _one_line(e) and "use a folder" in str(e.value)


# --- batch transforms --------------------------------------------------------------------------------------

def test_augment_batch_is_shaped_and_driven_by_its_generator_only():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(123)
    a = augment_batch(images, crop_size=32, generator=torch.Generator().manual_seed(0))
    after = torch.rand(1)
    torch.manual_seed(123)
    b = augment_batch(images, crop_size=32, generator=torch.Generator().manual_seed(0))
    assert torch.rand(1) == after  # the global RNG was not consumed
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(images, crop_size=32, generator=torch.Generator().manual_seed(1)))
    generator = torch.Generator().manual_seed(0)
    augment_batch(images, crop_size=32, generator=generator)
    assert not torch.equal(a, augment_batch(images, crop_size=32, generator=generator))  # the state advances


def test_augment_batch_keeps_a_flat_image_flat():
    images = torch.full((4, 3, 40, 40), 77, dtype=torch.uint8)
    out = augment_batch(images, crop_size=24, generator=torch.Generator().manual_seed(0))
    assert (out == 77).all()


def test_center_crop_batch_uses_torchvision_rounding():
    images = torch.arange(2 * 3 * 41 * 41, dtype=torch.int64).reshape(2, 3, 41, 41).to(torch.uint8)
    out = center_crop_batch(images, 32)
    assert torch.equal(out, images[..., 4:36, 4:36])  # (41 - 32) / 2 = 4.5 rounds to 4


def test_normalize_math():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 3, 2, 3)
    out = normalize(images, PP)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 3)
    mean, std = torch.tensor(PP.mean).view(3, 1), torch.tensor(PP.std).view(3, 1)
    expected = (torch.tensor([0.0, 0.2, 1.0]).view(1, 3) - mean) / std
    torch.testing.assert_close(out[0, :, 0, :], expected)
    torch.testing.assert_close(normalize(images[0], PP), out[0])  # a single CHW image works too


def test_disk_backed_allocation_behaves_like_a_tensor(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    images = allocate_images(3, 8, on_disk=True)
    images[1] = 200
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert int(images[1].sum()) == 200 * 3 * 64 and (tmp_path / "cache").is_dir()


def test_named_dataset_arrays_subset_and_decode():
    # torchvision's CIFAR needs a download; a stand-in with its attributes exercises the rest of the path.
    from types import SimpleNamespace

    from edgetl.data.arrays import list_torchvision
    from edgetl.data.datasets import ArraySource, decode_sets

    rng = np.random.default_rng(0)
    fake = {part: SimpleNamespace(classes=["cat", "dog"], targets=[0, 1] * n,
                                  data=rng.integers(0, 256, (2 * n, 32, 32, 3), dtype=np.uint8))
            for part, n in (("train", 10), ("test", 5))}
    source = ArraySource("cifar10", fake)
    classes, train, val, split = list_torchvision(source.name, source.sets, subset=6, split=None)
    assert classes == ["cat", "dog"] and train == [[f"train/{i}", "cat" if i % 2 == 0 else "dog"] for i in range(6)]
    assert len(val) == 2 and split["source"] == "cifar10"
    sets, failed = decode_sets(source, {"train": train, "val": val}, classes=classes, preprocessing=PP, progress=None)
    train_set, val_set = sets["train"], sets["val"]
    assert failed == [] and train_set.images.shape == (6, 3, 40, 40) and val_set.images.shape == (2, 3, 32, 32)
    assert train_set.paths[0] == "cifar10/train/0" and val_set.targets.tolist() == [0, 1]
    expected = np.asarray(Image.fromarray(fake["test"].data[1]).resize((40, 40), Image.BILINEAR))[4:36, 4:36]
    np.testing.assert_array_equal(val_set.images[1].permute(1, 2, 0).numpy(), expected)
