"""Reliability end to end: a messy dataset, unwritable and full disks, hostile and foreign checkpoints.

The pieces are tested where they live (test_data: bad image files one by one, test_export/test_verify: damaged
run directories and artifacts, test_interrupt: signals). Here the whole chain meets them at once, through the
CLI, the way a user's real photo folder and a real disk do.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.data.sample import make_image_folder
from edgetl.errors import EdgetlError
from edgetl.files import atomic_path, write_bytes, write_json
from edgetl.model.checkpoint import load_checkpoint, save_checkpoint
from edgetl.testing import make_run

runner = CliRunner()
UNICODE_CLASS = "café_☕"
CLASSES = ["circle", UNICODE_CLASS, "ring"]
FAST = ["--latency-seconds", "0.05", "--samples", "8"]

# name (relative to the data root) -> the words its skip reason must contain
BAD = {
    "train/circle/truncated.jpg": "truncated",
    "train/circle/empty.png": "0 bytes",
    "train/circle/notes.jpg": "not an image",
    "train/circle/notes.txt": "not an image file (extension .txt)",
    "train/circle/bomb.png": "decompression-bomb",
    "train/circle/broken.png": "broken symlink",
    "train/circle/loop": "symlink loop",
    "val/ring/truncated.jpg": "truncated",
    f"val/{UNICODE_CLASS}/notes.jpg": "not an image",
}
# odd but valid images: every one must be trained or validated on
ODD = ["train/circle/exif6.jpg", "train/circle/dot.png", "train/ring/rgba.png", "train/ring/palette_clear.png",
       "train/ring/anim.gif", f"train/{UNICODE_CLASS}/gray.png", "val/circle/cmyk.jpg", "val/ring/gray16.png"]
HIDDEN = [".DS_Store", "train/.DS_Store", "train/circle/.DS_Store", "train/circle/._circle_000.png",
          "__MACOSX/train/circle/circle_000.png", "train/__MACOSX/circle_000.png",
          "train/circle/__MACOSX/circle_000.png", "train/circle/.thumbs/circle_000.png", "val/.thumbs/x/a.png"]


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels: PIL's decompression-bomb guard trips on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def _exif_rotated(path: Path) -> None:
    """A 48x36 landscape photo whose EXIF orientation 6 says: display it rotated, as 36x48 portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = np.random.default_rng(6).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=90)


def build_messy(root: Path) -> Path:
    """3 classes (one with a unicode name) x 8 train + 2 val good images, plus every kind of litter."""
    make_image_folder(root, classes=CLASSES, per_class=8, size=40, seed=0)
    good_jpeg = (root / "train" / "circle" / "circle_002.jpg").read_bytes()
    for name in BAD:
        path = root / name
        if name.endswith("truncated.jpg"):
            path.write_bytes(good_jpeg[: len(good_jpeg) // 2])
        elif name.endswith("empty.png"):
            path.touch()
        elif name.endswith(("notes.jpg", "notes.txt")):
            path.write_text("shopping list: eggs, milk\n")
        elif name.endswith("bomb.png"):
            path.write_bytes(_png_header(30000, 30000))  # 900 Mpx claimed in 60 bytes
        elif name.endswith("broken.png"):
            os.symlink(path.parent / "gone.png", path)
        elif name.endswith("loop"):
            os.symlink(path.parent, path)  # a folder link to its own parent folder
    c = root / "train" / "circle"
    _exif_rotated(c / "exif6.jpg")
    Image.new("RGB", (1, 1), (9, 200, 90)).save(c / "dot.png")
    r = root / "train" / "ring"
    Image.new("RGBA", (40, 40), (255, 0, 0, 100)).save(r / "rgba.png")
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(r / "palette_clear.png", transparency=0)
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(r / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("L", (40, 40), 90).save(root / "train" / UNICODE_CLASS / "gray.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "val" / "circle" / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(root / "val" / "ring" / "gray16.png")
    for name in HIDDEN:  # real images: they would be used, were they not hidden
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "train" / "circle" / "circle_000.png", root / name)
    return root


# --- a messy photo folder, end to end -------------------------------------------------------------------------

def one_error_line(result) -> str:
    """The CLI's error: exactly one `error:` line, no traceback."""
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return build_messy(tmp_path_factory.mktemp("messy") / "photos")


@pytest.fixture(scope="module")
def messy_run(messy, tiny, tmp_path_factory) -> tuple[Path, str]:
    """`edgetl run` on the messy folder, once for the module: (run dir, CLI output). Tests damage copies."""
    _, recipe = tiny
    run = tmp_path_factory.mktemp("messy-run") / "run"
    result = runner.invoke(app, ["run", "--recipe", str(recipe), "--data", str(messy), "--out", str(run),
                                 "--epochs-scale", "0.3", *FAST])
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.fixture
def run_copy(messy_run, tmp_path) -> Path:
    return Path(shutil.copytree(messy_run[0], tmp_path / "run"))


def test_each_bad_file_is_skipped_with_one_warning_naming_it_and_its_reason(messy, messy_run):
    run, output = messy_run
    skipped = json.loads((run / "data.json").read_text(encoding="utf-8"))["skipped"]
    reasons = {Path(path).relative_to(messy).as_posix(): reason for path, reason in skipped}
    assert reasons.keys() == BAD.keys() and len(skipped) == len(BAD)

    def squash(text: str) -> str:  # rich wraps (and may fold) a long log record over lines; it is still one
        return "".join(text.split())

    flat = squash(output)
    for name, words in BAD.items():
        assert words in reasons[name], (name, reasons[name])
        path = str(messy / name)
        assert flat.count(squash(f"skipped {path}:")) == 1, name
        assert squash(f"skipped {path}: {reasons[name]}") in flat, name
    assert squash(f"{len(BAD)} unreadable file(s) skipped; see {run / 'data.json'}") in flat


def test_odd_but_valid_images_are_trained_and_validated_on(messy_run):
    run, _ = messy_run
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    used = {rel for rel, _ in split["train"] + split["val"]}
    assert set(ODD) <= used
    assert not used & set(BAD), "a resume must replay usable files only"
    assert len(split["train"]) == 3 * 8 + 6 and len(split["val"]) == 3 * 2 + 2
    assert json.loads((run / "verify.json").read_text())["passed"] is True  # val's CMYK and 16-bit files too


def test_hidden_files_and_folders_appear_nowhere(messy_run):
    run, output = messy_run
    for text in (output, *(p.read_text(encoding="utf-8") for p in run.glob("*.json"))):
        for litter in (".DS_Store", "._circle", "__MACOSX", ".thumbs"):
            assert litter not in text


def test_a_unicode_class_reaches_labels_manifest_and_onnx(messy_run):
    run, _ = messy_run
    labels = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    assert labels == sorted(CLASSES) and UNICODE_CLASS in labels
    assert json.loads((run / "export" / "manifest.json").read_text(encoding="utf-8"))["labels"] == labels
    props = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx"), load_external_data=False).metadata_props}
    assert json.loads(props["labels"]) == labels


def test_a_class_only_in_val_is_named_before_anything_is_written(tiny, tmp_path):
    _, recipe = tiny
    data = make_image_folder(tmp_path / "photos", classes=2, per_class=2, val_per_class=1, size=32, seed=0)
    shutil.copytree(data / "val" / "circle", data / "val" / "zèbre")
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", "--recipe", str(recipe), "--data", str(data), "--out", str(run)])
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "class folder(s) zèbre are not in" in line and str(data / "train") in line
    assert not run.exists()


def test_the_device_decodes_a_16_bit_png_as_training_did(messy):
    from edgetl.images import load_image
    from edgetl.preprocessing import preprocess_image

    path = messy / "val" / "ring" / "gray16.png"
    assert load_image(path).getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257
    # One decoder: the device path reads the same pixel (117 / 255 normalised), not PIL's clipped white.
    prep = {"crop_size": 1, "resize_size": 1, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "nearest"}
    assert preprocess_image(path, prep)[:, 0, 0] == pytest.approx([117 / 255] * 3)


# --- unwritable and full disks ---------------------------------------------------------------------------------

def test_a_full_disk_midway_keeps_the_previous_file_and_no_temp_file(tmp_path):
    target = tmp_path / "labels.json"
    target.write_text('["old"]')
    with pytest.raises(EdgetlError) as e, atomic_path(target) as tmp:
        tmp.write_text('["new", "but cut')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    message = str(e.value)
    assert message == f"cannot write {target}: No space left on device — the previous file is left intact"
    assert target.read_text() == '["old"]' and sorted(tmp_path.iterdir()) == [target]


@pytest.fixture
def file_size_limit():
    """RLIMIT_FSIZE as a stand-in for a full disk: the kernel fails any write past 1 MiB (EFBIG, SIGXFSZ ignored)."""
    import resource
    import signal

    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, file_size_limit):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(4)}, "backbone": "x"})
    before = path.read_bytes()
    with pytest.raises(EdgetlError) as e:  # torch.save reports the failed write as a RuntimeError of its own
        save_checkpoint(path, {"model": {"w": torch.zeros(1 << 20)}, "backbone": "x"})  # 4 MiB
    assert str(e.value).startswith(f"cannot write {path}: torch.save failed (") and "\n" not in str(e.value)
    assert str(e.value).endswith("is the disk full? The previous file is left intact")
    with pytest.raises(EdgetlError, match="File too large — the previous file is left intact"):
        write_bytes(path, b"\0" * (2 << 20))
    assert path.read_bytes() == before and sorted(path.parent.iterdir()) == [path]
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0] * 4


def test_a_killed_checkpoint_writes_temp_file_goes_with_the_next_write(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    killed = path.parent / ".last.pt.k9ll3d0_.tmp"  # what a kill -9 during torch.save leaves: mkstemp's name
    killed.write_bytes(b"half a checkpoint")
    mine = path.parent / ".last.pt.notes.tmp"  # not mkstemp's pattern: someone's file, kept
    mine.write_text("mine")
    save_checkpoint(path, {"model": {"w": torch.ones(4)}, "backbone": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == [mine.name, path.name]


def test_writing_under_a_file_names_that_file(tmp_path):
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(EdgetlError) as e:
        write_json(tmp_path / "notes" / "run" / "labels.json", ["a"])
    assert str(e.value).startswith(f"cannot write into {tmp_path / 'notes' / 'run'}: {tmp_path / 'notes'} is a file, "
                                   f"not a folder")
    assert (tmp_path / "notes").read_text() == "mine"


def test_export_and_verify_into_an_unwritable_place_fail_in_one_line_and_keep_earlier_files(run_copy, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    kept = {p: p.read_bytes() for p in [run_copy / "verify.json", *(run_copy / "export").iterdir()]}

    result = runner.invoke(app, ["export", str(run_copy), "--out", str(blocker / "export")])
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a folder — pass --out a folder you can write to" in one_error_line(result)

    result = runner.invoke(app, ["verify", str(run_copy), "--json", str(blocker / "verify.json"), "--samples", "2",
                                 "--threads", "1", "--latency-seconds", "0.01"])
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a folder" in one_error_line(result)
    assert {p: p.read_bytes() for p in kept} == kept and blocker.read_text() == "a file, not a folder"


def test_train_into_a_path_under_a_file_is_a_one_line_usage_error(tiny, tmp_path):
    data, recipe = tiny
    (tmp_path / "blocker").write_text("x")
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", str(data),
                                 "--out", str(tmp_path / "blocker" / "run")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'blocker'} is a file, not a folder" in one_error_line(result)


# --- hostile and foreign checkpoints -----------------------------------------------------------------------------

class RunsCode:
    """A pickle that runs a shell command when unpickled: what a booby-trapped checkpoint looks like."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    evil = {"model": RunsCode(marker), "backbone": "mobilenet_v3_small"}
    torch.save(evil, run_copy / "checkpoints" / "best.pt")
    torch.save(evil, run_copy / "checkpoints" / "last.pt")
    export = {p.name: p.read_bytes() for p in (run_copy / "export").iterdir()}
    for args in (["export", str(run_copy)],
                 ["verify", str(run_copy), "--latency-seconds", "0.01"],
                 ["train", "--resume", str(run_copy)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        line = one_error_line(result)
        assert "refused: loading it would import posix.system" in line or "refused: loading it would import os.system" in line
        assert "weights_only=True" in line
        assert not marker.exists(), f"`edgetl {args[0]}` ran code from a checkpoint"
    for protocol, why in ((2, "refused: loading it would import"),  # protocol 4's FRAME opcode is refused first:
                          (4, "(not an edgetl checkpoint: torch.load weights_only=True: Unsupported")):
        with open(run_copy / "checkpoints" / "best.pt", "wb") as f:  # a bare pickle, not torch's zip format
            pickle.dump(evil, f, protocol=protocol)
        result = runner.invoke(app, ["export", str(run_copy)])
        assert result.exit_code == 2, result.output
        assert why in one_error_line(result)
        assert len(result.output.strip().splitlines()) == 1, result.output  # torch's protocol warning is silenced
        assert not marker.exists()
    assert {p.name: p.read_bytes() for p in (run_copy / "export").iterdir()} == export


@pytest.mark.parametrize("backbone, num_classes", [("resnet18", 3), ("mobilenet_v3_small", 5),
                                                   ("mobilenet_v3_small", 3)])
def test_a_checkpoint_from_another_run_is_refused_saying_what_it_is(run_copy, tmp_path, backbone, num_classes):
    other = make_run(tmp_path / "other", backbone=backbone, num_classes=num_classes, image_size=32)
    shutil.copyfile(other / "checkpoints" / "best.pt", run_copy / "checkpoints" / "best.pt")
    labels = ", ".join(f"class_{i}" for i in range(min(num_classes, 4))) + (", …" if num_classes > 4 else "")
    result = runner.invoke(app, ["export", str(run_copy)])
    assert result.exit_code == 2, result.output
    assert one_error_line(result) == (
        f"error: {run_copy / 'checkpoints' / 'best.pt'} belongs to another run: it is {backbone} with {num_classes} "
        f"classes ({labels}), this run is mobilenet_v3_small with 3 classes ({', '.join(sorted(CLASSES))}) — put this "
        f"run's own checkpoint back, or use the run it came from")


def test_resuming_from_another_runs_checkpoint_is_refused_saying_what_it_is(run_copy, tmp_path):
    other = make_run(tmp_path / "other", backbone="resnet18", num_classes=5, image_size=32)
    shutil.copyfile(other / "checkpoints" / "last.pt", run_copy / "checkpoints" / "last.pt")
    result = runner.invoke(app, ["train", "--resume", str(run_copy)])
    assert result.exit_code == 2, result.output
    assert "belongs to another run: it is resnet18 with 5 classes" in one_error_line(result)
