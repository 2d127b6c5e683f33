"""The inputs parity is checked on: real images from --data or the run's split (round-robin over classes), then
random tensors; missing and foreign files are warned about, never fatal."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data.inputs import RANDOM_INPUTS, gather_inputs
from edgetl.errors import DataError
from edgetl.files import write_json
from edgetl.preprocessing import Preprocessing, preprocess_image
from edgetl.rundir import RunDir, read_json
from edgetl.testing import make_run

LABELS = ["class_0", "class_1", "class_2"]
PREP = Preprocessing(crop_size=32, resize_size=36, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def gather(data, *, samples: int, run_dir: Path | None = None, **kw):
    return gather_inputs(run_dir or Path("no-run"), labels=LABELS, preprocessing=PREP, data=data and str(data),
                         samples=samples, **kw)


def test_inputs_fall_back_when_split_files_are_gone(images, tmp_path):
    run = make_run(tmp_path, backbone="mobilenet_v3_small", image_size=32)
    labels = read_json(RunDir(run).labels)
    preprocessing = Preprocessing.coerce(read_json(RunDir(run).preprocessing))
    val = [[f"class_{c}/{i}.png", f"class_{c}"] for c in range(3) for i in range(3)]
    write_json(run / "split.json", {"source": str(images), "train": [], "val": val})
    inputs = gather_inputs(run, labels=labels, preprocessing=preprocessing, data=None, samples=4)
    assert inputs.x.shape == (4 + 4, 3, 32, 32) and list(inputs.targets[:4]) == [0, 1, 2, 0]  # round-robin
    gone = tmp_path / "gone"
    write_json(run / "split.json", {"source": str(gone), "train": [], "val": val})
    inputs = gather_inputs(run, labels=labels, preprocessing=preprocessing, data=None, samples=4)
    assert inputs.info["source"] == "random" and inputs.x.shape[0] == 4
    assert inputs.warnings[0] == f"9 of 9 validation images listed in {run / 'split.json'} are gone from {gone}"


def test_a_data_folder_of_class_folders_gives_labelled_images_then_random_ones(images):
    inputs = gather(images, samples=32)
    assert inputs.x.shape == (9 + RANDOM_INPUTS, 3, 32, 32) and inputs.x.dtype == np.float32
    assert list(inputs.targets) == [0, 1, 2] * 3 + [-1] * RANDOM_INPUTS
    assert inputs.info == {"source": "data", "root": str(images), "listed": 9, "images": 9, "labelled": 9,
                           "random": RANDOM_INPUTS, "skipped": 0}
    assert inputs.warnings == []
    # the first image is class_0/0.png as the device preprocesses it, from the manifest alone
    np.testing.assert_array_equal(inputs.x[0], preprocess_image(images / "class_0" / "0.png", PREP))


def test_the_pick_goes_round_robin_over_classes(images, tmp_path):
    root = Path(shutil.copytree(images, tmp_path / "data"))
    for i in range(3, 6):  # class_2 gets more images than the others
        shutil.copy(root / "class_2" / "0.png", root / "class_2" / f"{i}.png")
    assert list(gather(root, samples=7).targets[:7]) == [0, 1, 2, 0, 1, 2, 0]
    assert list(gather(root, samples=12).targets[:12]) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 2, 2]
    assert gather(root, samples=2).info["images"] == 2


def test_an_unknown_class_folder_is_warned_about_and_its_images_get_no_target(images, tmp_path):
    root = Path(shutil.copytree(images, tmp_path / "data"))
    (root / "zebra").mkdir()
    shutil.copy(root / "class_0" / "0.png", root / "zebra" / "z.png")
    Image.new("RGB", (40, 40)).save(root / "loose.png")  # an image outside any class folder: unlabelled
    inputs = gather(root, samples=32)
    assert inputs.info["images"] == 11 and inputs.info["labelled"] == 9
    # in path order, loose.png (no class) and zebra/ take their round-robin turns after class_0..2
    assert inputs.targets[:11].tolist() == [0, 1, 2, -1, -1, 0, 1, 2, 0, 1, 2]
    assert inputs.warnings == ["class folder(s) zebra are not among the model's labels; those images count for "
                               "parity, not for accuracy"]


def test_a_val_folder_inside_data_is_used_and_a_damaged_image_is_skipped(images, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(images, root / "val")
    (root / "train").mkdir()
    (root / "val" / "class_1" / "broken.png").write_bytes(b"not a png")
    inputs = gather(root, samples=32)
    assert inputs.info["images"] == 9 and inputs.info["skipped"] == 1 and inputs.info["root"] == str(root)


def test_a_test_folder_inside_data_comes_before_its_val_folder(images, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(images, root / "val")
    shutil.copytree(images / "class_2", root / "test" / "class_2")
    inputs = gather(root, samples=32)
    assert inputs.info["part"] == "test" and inputs.info["images"] == 3 and set(inputs.targets[:3]) == {2}


def test_the_runs_test_split_is_judged_on_when_it_has_one_else_its_val_split(images, tmp_path):
    """The one default that verify and export's INT8 guard both take (gather_inputs with data=None): so the
    guard and verify's go/no-go judge a file on the same images."""
    run = tmp_path  # gather_inputs reads the run's split.json alone
    val = [[f"class_{c}/{i}.png", f"class_{c}"] for c in range(3) for i in range(2)]
    test = [[f"class_{c}/2.png", f"class_{c}"] for c in range(3)]
    write_json(run / "split.json", {"source": str(images), "train": [], "val": val, "test": test})
    inputs = gather(None, samples=100, run_dir=run, random=0)
    assert inputs.info["part"] == "test" and inputs.info["listed"] == inputs.info["images"] == 3
    np.testing.assert_array_equal(inputs.x[0], preprocess_image(images / "class_0" / "2.png", PREP))
    assert gather(None, samples=2, run_dir=run).info == {**inputs.info, "images": 2, "labelled": 2,
                                                         "random": RANDOM_INPUTS}  # --samples 2 of the 3
    write_json(run / "split.json", {"source": str(images), "train": [], "val": val})  # no test split
    inputs = gather(None, samples=100, run_dir=run, random=0)
    assert inputs.info["part"] == "val" and inputs.info["images"] == 6


def test_no_images_or_no_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        gather(tmp_path / "empty", samples=4)
    with pytest.raises(DataError, match="folder not found"):
        gather(tmp_path / "missing", samples=4)


def test_without_a_split_the_random_inputs_are_used_and_the_same_for_a_seed(tmp_path):
    a = gather(None, samples=4, run_dir=tmp_path, random=3, seed=5)
    b = gather(None, samples=4, run_dir=tmp_path, random=3, seed=5)
    assert a.x.shape == (3, 3, 32, 32) and list(a.targets) == [-1, -1, -1] and a.info["source"] == "random"
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, gather(None, samples=4, run_dir=tmp_path, random=3, seed=6).x)
    assert a.warnings[0] == f"{tmp_path / 'split.json'} not found: no validation images to check with"
