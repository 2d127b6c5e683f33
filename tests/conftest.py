"""Shared fixtures: a tiny generated dataset and recipe, an uninterrupted run of it, and fake run directories."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data.sample import make_image_folder
from edgetl.recipe import load_recipe
from edgetl.rundir import RunDir
from edgetl.testing import make_run

# The seed of the generated data and of the models that lossy-precision tests judge: `EDGETL_TEST_SEED=1 make
# test` re-runs them on other images and weights, so a test that holds only for one seed's rounding shows up.
TEST_SEED = int(os.environ.get("EDGETL_TEST_SEED", "0"))

# Written by edgetl 0.1.0 before the layout move (`edgetl run` on a 3-class tiny recipe), weights left out.
OLD_RUN = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture(scope="session")
def test_seed() -> int:
    return TEST_SEED


@pytest.fixture
def old_run(tmp_path) -> RunDir:
    """A copy of the 0.1.0 run directory, its stage files in stage order (a checkout sets mtimes in any order)."""
    run = RunDir(shutil.copytree(OLD_RUN, tmp_path / "run"))
    for i, path in enumerate(run.stage_files().values()):
        os.utime(path, (1e9 + i, 1e9 + i))
    return run


@pytest.fixture
def fake_run(tmp_path):
    return lambda **kw: make_run(tmp_path, **kw)


TINY_RECIPE = """
backbone = "mobilenet_v3_small"
weights = "none"
image_size = 32
batch_size = 8
patience = 0
probe_epochs = 0
seed = {seed}

[[phases]]
name = "head"
epochs = 2
train = "head"
head_lr = 1e-2
schedule = "constant"
augment = false

[[phases]]
name = "top"
epochs = 2
train = "last:1"
lr = 1e-3

[[phases]]
name = "all"
epochs = 3
train = "all"
bn = "train"
lr = 1e-3
lr_decay = 0.5
warmup_epochs = 1
"""

@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", classes=3, per_class=8, size=40, seed=TEST_SEED)
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(seed=3 + TEST_SEED))
    return data, recipe


@pytest.fixture(scope="session")
def straight(tiny, tmp_path_factory):
    data, recipe_path = tiny
    recipe = load_recipe(str(recipe_path), overrides={"data": str(data)})
    run = tmp_path_factory.mktemp("straight")
    from edgetl.training import train_run

    train_run(recipe, run_dir=run, device="cpu")
    return recipe, run


@pytest.fixture(scope="session")
def finished_run(tiny, tmp_path_factory):
    """`edgetl run` on the tiny recipe through the CLI, verified quickly: (run, output). Copy it to change it."""
    from typer.testing import CliRunner

    from edgetl.cli import app

    data, recipe = tiny
    run = tmp_path_factory.mktemp("pipeline") / "run"
    result = CliRunner().invoke(app, ["run", "--recipe", str(recipe), "--data", str(data), "--out", str(run),
                                      "--latency-seconds", "0.05", "--samples", "8"])
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.fixture(scope="session")
def exported_both(tmp_path_factory):
    """A fake run exported as ONNX and TorchScript (what verify and predict read), shared by the test modules."""
    from edgetl.export import export_run

    run = make_run(tmp_path_factory.mktemp("exported-both"), backbone="mobilenet_v3_small", image_size=32)
    export_run(run, formats=["onnx", "torchscript"])
    return run


@pytest.fixture
def exported_both_copy(exported_both, tmp_path):
    """A copy to damage."""
    return shutil.copytree(exported_both, tmp_path / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder per class of a fake run (class_0..2), three small noise images each (verify and data tests)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root
