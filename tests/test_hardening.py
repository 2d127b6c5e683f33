"""Issue 29's hardening: every write goes to a regular file or into a stream, never over a device; SIGTERM is Ctrl-C
(exit 130, temp folders gone, a killed export's cleaned by the next); a backbone too big to train is refused before
it is built; names that are not UTF-8; a resume before the first checkpoint; one rule of what an image file is."""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetl import files
from edgetl.backbones import create_meta_model, create_model, get_backbone
from edgetl.cli import app
from edgetl.data.datasets import load_data
from edgetl.data.folders import image_name_problem, is_image_name, walk_images
from edgetl.data.inputs import gather_inputs
from edgetl.data.sample import make_image_folder
from edgetl.errors import DataError, EdgetlError, RecipeError
from edgetl.recipe import load_recipe
from edgetl.training import Callbacks, train_run

runner = CliRunner()

ONE_EPOCH = """
backbone = "mobilenet_v3_small"
weights = "none"
image_size = 32
batch_size = 8

[[phases]]
name = "head"
epochs = 1
train = "head"
"""


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


# --- writes: regular files replaced atomically, streams written into, folders refused -----------------------------

def read_fifo_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    return reader, got


def test_json_onto_a_fifo_goes_into_it_and_the_fifo_stays(tmp_path):
    fifo = tmp_path / "report"
    os.mkfifo(fifo)
    reader, got = read_fifo_in_background(fifo)
    result = runner.invoke(app, ["recipes", "--json", str(fifo)])
    reader.join(10)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert "quickstart" in {row["name"] for row in json.loads(got[0])}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp file left beside it


@pytest.fixture
def char_device(tmp_path) -> Path:
    """A character device to write to: as root a private /dev/null twin (so a regression replaces only it, never
    the machine's), else /dev/null itself, which a non-root process could not replace anyway."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    path = tmp_path / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.close(os.open(path, os.O_WRONLY))
    except OSError:
        pytest.skip("cannot make a character device here")
    return path


def test_json_onto_a_character_device_writes_into_it(char_device):
    before = os.stat(char_device)
    result = runner.invoke(app, ["backbones", "--json", str(char_device)])
    assert result.exit_code == 0, result.output
    files.write_json(char_device, {"a": 1})
    with files.atomic_path(char_device) as tmp:  # what checkpoints, curves and the card go through
        tmp.write_bytes(b"x")
    after = os.stat(char_device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)


def test_dash_and_dev_stdout_are_stdout_never_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files.write_json("-", {"report": 1})
    files.write_json(Path("-"), {"report": 2})  # Run.verify(json_path="-") arrives as a Path
    files.write_text("/dev/stdout", "three\n")
    assert capsys.readouterr().out == '{\n  "report": 1\n}\n{\n  "report": 2\n}\nthree\n'
    assert list(tmp_path.iterdir()) == []


def test_a_folder_target_is_refused_in_one_line(tmp_path):
    (tmp_path / "report.json").mkdir()
    with pytest.raises(EdgetlError) as e:
        files.write_json(tmp_path / "report.json", {})
    assert str(e.value) == f"cannot write {tmp_path / 'report.json'}: it is a folder — pass a file path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_json_keeps_a_name_that_is_not_utf8_and_text_refuses_it_in_one_line(tmp_path):
    name = os.fsdecode(b"photos/caf\xe9.png")  # how Python hands over such a name: a lone surrogate
    files.write_json(tmp_path / "a.json", [name])
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == [name]  # valid JSON, the same name
    with pytest.raises(EdgetlError, match=r'not valid UTF-8 \(…data = "photos/caf\\xe9.png"…\) — rename that'):
        files.write_text(tmp_path / "a.toml", f'data = "{name}"')


# --- SIGTERM is Ctrl-C; a killed export's temp folder goes with the next export ---------------------------------

def test_sigterm_mid_export_exits_130_and_leaves_no_temp_folder(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    stale = run / "export.tmp-k9ll3d0_"  # what a kill -9 leaves: mkdtemp's name, half an export inside
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    (run / "export.tmp-notmine").mkdir()  # not mkdtemp's pattern: someone's folder, kept
    before = {p.name for p in (run / "export").iterdir()}
    proc = subprocess.Popen([sys.executable, "-m", "edgetl", "export", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (set(glob.glob(f"{run}/export.tmp-*")) - {str(stale), str(run / "export.tmp-notmine")}):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    assert not stale.exists()  # the next export took it away, under the run's lock
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert out.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in out
    assert sorted(glob.glob(f"{run}/export*")) == [str(run / "export"), str(run / "export.tmp-notmine")]
    assert {p.name for p in (run / "export").iterdir()} == before  # the previous export as it was


def test_an_export_stopped_between_its_renames_gets_its_previous_export_back(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    shipped = {p.name: p.read_bytes() for p in (run / "export").iterdir() if p.is_file()}
    left = run / "export.old-k9ll3d0_"  # what a kill between _swap_in's renames leaves: no export/, the old one here
    left.mkdir()
    (run / "export").rename(left / "export")
    result = runner.invoke(app, ["export", str(run), "-f", "torchscript"])
    assert result.exit_code == 0, result.output
    assert sorted(glob.glob(f"{run}/export*")) == [str(run / "export")]  # put back, then swapped; nothing left over
    listed = {a["file"] for a in json.loads((run / "export" / "manifest.json").read_text())["artifacts"]}
    assert "model.onnx" in listed and (run / "export" / "model.onnx").read_bytes() == shipped["model.onnx"]


# --- the size guard --------------------------------------------------------------------------------------------

@pytest.fixture
def at_most_16_gib_more():
    """ulimit -v: this process may map 16 GiB more than now, so the guard's verdict is the same on any machine
    (and a guard that let the build through would fail to allocate rather than exhaust the machine)."""
    import psutil

    previous = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + (16 << 30), previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def test_a_backbone_too_big_to_train_is_refused_in_seconds_before_it_is_built(tiny, tmp_path, at_most_16_gib_more):
    data, recipe = tiny
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "run"),
                                 "--backbone", "timm:vit_7b_patch16_dinov3", "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert line.startswith("error: timm:vit_7b_patch16_dinov3 has 6,716 M parameters; training 6,716 M of them")
    assert " GiB of memory and " in line and "choose a smaller backbone" in line
    assert seconds < 10 and not (tmp_path / "run").exists()


def test_the_meta_device_counts_what_the_build_holds():
    backbone = get_backbone("resnet18")
    meta = create_meta_model(backbone, num_classes=5)
    built = create_model(backbone, num_classes=5)
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in built.parameters()) == 11_179_077


# --- names that are not UTF-8 ----------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path) -> Path:
    return make_image_folder(tmp_path / "photos", classes=2, per_class=3, val_per_class=2, size=32, seed=0)


def test_a_class_folder_not_in_utf8_is_refused_naming_it(photos, tmp_path):
    for part in ("train", "val"):
        os.rename(photos / part / "circle", os.fsencode(photos / part) + b"/caf\xe9")
    (tmp_path / "r.toml").write_text(ONE_EPOCH)
    result = runner.invoke(app, ["train", "--recipe", str(tmp_path / "r.toml"), "--data", str(photos),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert one_line(result) == (f"error: {photos / 'train'}/caf\\xe9: class folder name is not valid UTF-8, and a "
                                f"class name is the label a device shows — rename the folder (e.g. to its UTF-8 "
                                f"spelling)")
    assert not (tmp_path / "run").exists()


def test_a_file_name_not_in_utf8_is_skipped_and_listed(photos, tmp_path):
    first = sorted((photos / "train" / "circle").iterdir())[0]
    os.rename(first, os.fsencode(first.parent) + b"/\xff\xfe.png")
    prep = get_backbone("mobilenet_v3_small").preprocessing.scaled(32)
    data = load_data(str(photos), preprocessing=prep)
    shown = str(photos / "train" / "circle") + "/\\xff\\xfe.png"
    assert data.skipped == [(shown, "file name is not valid UTF-8 — rename it")]
    assert len(data.train) == 5 and all(files.is_utf8(e) for e, _ in data.split["train"])
    files.write_json(tmp_path / "data.json", {"skipped": data.skipped})  # what crashed before: one readable line
    assert json.loads((tmp_path / "data.json").read_text(encoding="utf-8"))["skipped"] == [[shown, data.skipped[0][1]]]


# --- resume before the first checkpoint --------------------------------------------------------------------------

class KilledBeforeTheFirstEpoch(Callbacks):
    def phase_start(self, **_) -> None:
        raise KeyboardInterrupt


def test_resume_of_a_run_with_no_checkpoint_yet_starts_it_afresh(photos, tmp_path):
    (tmp_path / "r.toml").write_text(ONE_EPOCH)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(load_recipe(str(tmp_path / "r.toml"), overrides={"data": str(photos)}), run_dir=run, device="cpu",
                  callbacks=KilledBeforeTheFirstEpoch())
    assert (run / "recipe.resolved.toml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    info = runner.invoke(app, ["info", str(run), "--json", "-"])
    assert json.loads(info.output)["next_stage"] == "train", info.output
    result = runner.invoke(app, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "train.json").is_file()
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])  # still no changes on a resume
    assert result.exit_code == 2 and "--resume continues the run as it started; --epochs" in one_line(result)


def test_a_resume_keeps_the_files_skipped_at_the_start_and_survives_a_val_image_gone_since(photos, tmp_path):
    (photos / "train" / "circle" / "bad.jpg").write_text("not an image")  # skipped when the run starts
    (tmp_path / "r.toml").write_text(ONE_EPOCH)
    run = tmp_path / "run"
    train_run(load_recipe(str(tmp_path / "r.toml"), overrides={"data": str(photos)}), run_dir=run, device="cpu")
    result = runner.invoke(app, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "changed since it started" not in result.output  # nothing changed: the unusable file is not counted
    summary = json.loads((run / "train.json").read_text())
    assert [Path(p).name for p, _ in summary["skipped"]] == ["bad.jpg"] and summary["per_class"] is not None

    sorted((photos / "val" / "circle").iterdir())[0].unlink()  # a val photo deleted since best.pt was chosen
    result = runner.invoke(app, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no per-class results: the val split has 3 image(s) now, 4 when best.pt was chosen" in result.output
    summary = json.loads((run / "train.json").read_text())
    assert summary["per_class"] is None and [Path(p).name for p, _ in summary["skipped"]][0] == "bad.jpg"
    assert len(summary["skipped"]) == 2


# --- one rule of what an image file is, by name --------------------------------------------------------------------

def test_one_rule_decides_what_an_image_file_is(tmp_path):
    names = ["a.jpg", "b.JPG", "c.jfif", "d.JFIF", "e", "f.heic", "g.HEIF", "h.txt", "i.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    skipped: list[tuple[str, str]] = []
    listed = [p.name for p in walk_images(tmp_path, skipped, root=tmp_path)]
    assert listed == [n for n in names if is_image_name(n)] == ["a.jpg", "b.JPG", "c.jfif", "d.JFIF", "e", "i.png"]
    assert dict(skipped) == {str(tmp_path / n): image_name_problem(n) for n in ("f.heic", "g.HEIF", "h.txt")}
    assert image_name_problem("f.heic") == ".heic (HEIF) photo: PIL cannot decode it here — convert it to JPEG or PNG"
    assert image_name_problem(os.fsdecode(b"\xff.jpg")) == "file name is not valid UTF-8 — rename it"


# --- flags and folders refused in one line ------------------------------------------------------------------------

def test_an_absurd_epochs_scale_is_refused():
    with pytest.raises(RecipeError, match=r"--epochs-scale must be > 0 and at most 100 \(got 1e\+300\)"):
        load_recipe("quickstart", epochs_scale=1e300)
    assert load_recipe("quickstart", epochs_scale=100).phases


@pytest.mark.parametrize("folder", ["/proc", "/proc/self"])
def test_a_system_folder_as_data_is_one_line(tiny, tmp_path, folder):
    _, recipe = tiny
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", folder, "--out", str(tmp_path / "run"),
                                 "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"error: data folder {folder} is" in one_line(result) and "/proc, the kernel's own files" in one_line(result)
    assert not (tmp_path / "run").exists()


def test_verify_data_in_proc_is_one_line(tmp_path):
    with pytest.raises(DataError, match="^--data /proc is /proc, the kernel's own files, not images"):
        gather_inputs(tmp_path, labels=["a"], preprocessing=get_backbone("resnet18").preprocessing, data="/proc",
                      samples=1)
