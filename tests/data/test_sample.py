import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data.sample import SHAPES, ensure_sample, make_image_folder


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_image_folder_layout_counts_and_size(tmp_path):
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=4, val_per_class=2, size=32, seed=0)
    for split, count in (("train", 4), ("val", 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == list(SHAPES[:3])
        for folder in folders:
            images = sorted((root / split / folder).iterdir())
            assert len(images) == count
            assert {p.suffix for p in images} <= {".png", ".jpg"}
            with Image.open(images[0]) as img:
                assert (img.size, img.mode) == ((32, 32), "RGB")


def test_make_image_folder_unsplit_and_named_classes(tmp_path):
    names = ["zèbre", "猫"]
    root = make_image_folder(tmp_path / "ds", classes=names, per_class=3, size=32, seed=1, split=False)
    assert sorted(p.name for p in root.iterdir()) == sorted(names)
    assert all(len(list((root / n).iterdir())) == 3 for n in names)


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = _files(make_image_folder(tmp_path / "a", classes=6, per_class=3, size=48, seed=7))
    b = _files(make_image_folder(tmp_path / "b", classes=6, per_class=3, size=48, seed=7))
    c = _files(make_image_folder(tmp_path / "c", classes=6, per_class=3, size=48, seed=8))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_too_many_classes_by_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pass names"):
        make_image_folder(tmp_path, classes=7, per_class=1, size=32, seed=0)


def test_ensure_sample_writes_once_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    start = time.perf_counter()
    root = ensure_sample()
    first = time.perf_counter() - start
    assert root == tmp_path / "sample-v1"
    assert first < 15  # ~3 s on 2 cores; the quickstart waits for this
    assert [p.name for p in tmp_path.iterdir()] == ["sample-v1"]  # the temp folder was renamed, none left
    for split, count in (("train", 60), ("val", 15)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SHAPES)
        assert all(len(list((root / split / s).iterdir())) == count for s in SHAPES)
    with Image.open(next((root / "val" / "star").iterdir())) as img:
        assert img.size == (128, 128)

    start = time.perf_counter()
    assert ensure_sample() == root
    assert time.perf_counter() - start < 0.1

    # Not trivial: a nearest-mean-colour rule is close to chance (1/6), so a model must look at shapes.
    def mean_colours(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, shape in enumerate(SHAPES):
            for p in sorted((root / split / shape).iterdir()):
                xs.append(np.asarray(Image.open(p), dtype=np.float64).mean((0, 1)))
                ys.append(label)
        return np.array(xs), np.array(ys)

    x_train, y_train = mean_colours("train")
    x_val, y_val = mean_colours("val")
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(len(SHAPES))])
    predicted = np.linalg.norm(x_val[:, None] - centroids[None], axis=2).argmin(1)
    assert (predicted == y_val).mean() < 0.4
