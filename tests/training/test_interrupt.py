"""Killed and interrupted training runs lose at most the current epoch and resume to the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.model.checkpoint import load_checkpoint

runner = CliRunner()


def start_training(run, data, recipe):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgetl", "train", "--recipe", str(recipe), "--data", str(data),
                             "--out", str(run), "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epochs(run, n, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise AssertionError("training did not progress")


def assert_same_weights(a_run, b_run):
    a = load_checkpoint(a_run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(b_run / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_resumes_exactly(tiny, straight, tmp_path, sig):
    data, recipe = tiny
    run = tmp_path / "cut"
    proc = start_training(run, data, recipe)
    wait_for_epochs(run, 3, proc)  # inside the `top` phase, mid-epoch
    time.sleep(0.3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "continue with: edgetl train --resume" in out and "Traceback" not in out
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["next_phase"] >= 1
    result = runner.invoke(app, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert_same_weights(straight[1], run)
    assert [json.loads(m)["epoch"] for m in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))


def test_sigkill_mid_epoch_loses_at_most_that_epoch(tiny, straight, tmp_path):
    data, recipe = tiny
    run = tmp_path / "killed"
    proc = start_training(run, data, recipe)
    wait_for_epochs(run, 4, proc)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 4 <= done < 7, "the kill came mid-run"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # intact despite the kill
    assert ckpt["global_epoch"] >= done - 1
    result = runner.invoke(app, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert_same_weights(straight[1], run)
