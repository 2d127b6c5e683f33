"""Two processes under torchrun (gloo, CPU) train the model one process trains over the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from edgetl.data.sample import make_image_folder
from edgetl.errors import EdgetlError
from edgetl.model.checkpoint import load_checkpoint
from edgetl.recipe import load_recipe
from edgetl.testing import StopAfterEpoch
from edgetl.training import distributed, train_run

# No dropout (resnet18's head is one Linear) and frozen BatchNorm: the batch split changes nothing else, so the two
# runs must agree to float tolerance. 24 images, 19 to train on: batches of 8, 8 and 3, the last split 2 + 1.
DDP_RECIPE = """
backbone = "resnet18"
weights = "none"
image_size = 32
batch_size = 8
patience = 0
probe_epochs = 0
seed = 1

[[phases]]
name = "head"        # cached: 2 augmented views, the cache pass split over the ranks
epochs = 2
train = "head"
head_lr = 1e-2
views = 2

[[phases]]
name = "top"         # uncached, augmented: each rank its rows of the same augmented batch
epochs = 2
train = "last:1"
lr = 1e-3

[[phases]]
name = "all"         # DDP over every parameter
epochs = 1
train = "all"
lr = 1e-4
augment = false
"""


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_image_folder(root / "data", classes=3, per_class=8, size=40, seed=0)
    recipe = root / "ddp.toml"
    recipe.write_text(DDP_RECIPE)
    return data, recipe


def torchrun(*args: str, procs: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                           "-m", "edgetl", "train", *args, "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def one_process(ddp_data, tmp_path_factory):
    data, recipe = ddp_data
    run = tmp_path_factory.mktemp("one")
    train_run(load_recipe(str(recipe), overrides={"data": str(data)}), run_dir=run, device="cpu")
    return run


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a, b):
    ma, mb = metrics(a), metrics(b)
    assert [m["phase"] for m in ma] == [m["phase"] for m in mb] == ["head"] * 2 + ["top"] * 2 + ["all"]
    for x, y in zip(ma, mb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4), (x, y)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4), (x, y)
        assert x["train_acc"] == y["train_acc"] and x["val_acc"] == y["val_acc"]
    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    for k in wa:  # summation order differs (2 x 4 rows vs 8): float noise, which Adam's steps carry on
        diff = (wa[k].float() - wb[k].float()).norm() / (wa[k].float().norm() + 1e-12)
        assert diff < 1e-4, (k, float(diff))


@pytest.mark.slow  # 14 s of torchrun; `make test` keeps the rank-death test, `make test-all` runs this one
def test_two_processes_train_what_one_trains(ddp_data, one_process, tmp_path):
    data, recipe = ddp_data
    run = tmp_path / "two"
    done = torchrun("--recipe", str(recipe), "--data", str(data), "--out", str(run))
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_training(one_process, run)
    summary = json.loads((run / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    one = json.loads((one_process / "train.json").read_text())
    assert one["world_size"] == 1
    # every val row's prediction is gathered from the rank that computed it: the same per-class figures
    assert summary["per_class"]["confusion"] == one["per_class"]["confusion"]
    assert sum(map(sum, summary["per_class"]["confusion"])) == len(json.loads((run / "split.json").read_text())["val"])
    assert sorted(w["path"] for w in summary["confidently_wrong"]) == sorted(w["path"] for w in one["confidently_wrong"])
    # rank 0 alone reports: one summary table, one progress line per phase
    assert done.stdout.count("best val acc") == 1, done.stdout


@pytest.mark.slow  # 11 s of torchrun (see above)
def test_resume_under_two_processes_continues_the_same_run(ddp_data, one_process, tmp_path):
    data, recipe = ddp_data
    run = tmp_path / "cut"

    with pytest.raises(KeyboardInterrupt):  # killed after epoch 3 (inside `top`): last.pt holds it
        train_run(load_recipe(str(recipe), overrides={"data": str(data)}), run_dir=run, device="cpu",
              callbacks=StopAfterEpoch(3))
    assert len(metrics(run)) == 3
    done = torchrun("--resume", str(run))
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_training(one_process, run)


def test_only_rank_zero_writes_and_reports(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.launched() and not distributed.is_main()
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert not distributed.launched() and distributed.is_main() and distributed.world_size() == 1


def test_edgetl_run_under_torchrun_says_what_to_do_instead(monkeypatch):
    from edgetl.pipeline import TrainRequest, run_pipeline

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EdgetlError, match="does not run under torchrun: train with"):
        run_pipeline(TrainRequest(device="cpu"))


def test_each_rank_gets_its_rows_of_the_same_augmented_batch(monkeypatch):
    """Rank r of W takes rows r, r+W, ... of every global batch; together the ranks cover it once, and the
    augmented pixels are those one process would feed (the whole batch's draws happen on every rank)."""
    from edgetl.preprocessing import Preprocessing
    from edgetl.training.epoch import Batcher

    prep = Preprocessing(crop_size=8, resize_size=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.randint(0, 255, (7, 3, 10, 10), dtype=torch.uint8)
    data = Batcher(x, torch.arange(7), prep, torch.device("cpu"), augment=True)

    def batches():
        return list(data.batches(4, torch.Generator().manual_seed(5)))

    alone = batches()
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(batches())
    for (x1, y1, n1), (x0, y0, n0), (xr, yr, nr) in zip(alone, *shares):
        assert n1 == n0 == nr == len(y1) and len(y0) + len(yr) == len(y1)
        assert torch.equal(y0, y1[0::2]) and torch.equal(yr, y1[1::2])
        assert torch.equal(x0, x1[0::2]) and torch.equal(xr, x1[1::2])


def test_the_gpu_choices_without_a_gpu(monkeypatch):
    """bf16 autocast where the GPU has it, fp16 (with loss scaling) where not, fp32 on the CPU; channels_last on
    CUDA only. The choices are plain functions, so they are checked here without a GPU."""
    from edgetl.training.epoch import autocast_dtype, memory_format

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda) == torch.float16
    assert autocast_dtype(cpu) is None
    assert memory_format(cuda) == torch.channels_last and memory_format(cpu) == torch.contiguous_format


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/bench_gpu.py ran on an H200)")
def test_a_cuda_run_trains_and_checkpoints_fp32(ddp_data, tmp_path):
    data, recipe = ddp_data
    run = tmp_path / "cuda"
    train_run(load_recipe(str(recipe), overrides={"data": str(data)}), run_dir=run, device="cuda")
    weights = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())


def test_a_rank_that_dies_ends_the_job_and_keeps_last_pt(ddp_data, tmp_path):
    import time

    import psutil

    data, recipe = ddp_data
    run = tmp_path / "died"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "edgetl", "train", "--recipe", str(recipe), "--data", str(data), "--out", str(run),
                            "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
        time.sleep(0.05)
    workers = [c for c in psutil.Process(job.pid).children(recursive=True) if "RANK=1" in " ".join(
        f"{k}={v}" for k, v in c.environ().items() if k == "RANK")]
    assert len(workers) == 1
    workers[0].kill()  # rank 1 dies mid-run
    out, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    # rank 0 stops after its step (torchrun's SIGTERM) or at the broken all-reduce: one line either way
    assert ("another training process stopped" in out or "stopped after" in out) and \
        "continue with: torchrun --nproc_per_node=N -m edgetl train --resume" in out, out
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # intact: written atomically by rank 0
    assert ckpt["global_epoch"] >= 2
