"""Checkpoints: the save/load round trip, refusal of pickles that run code, one-line errors for damaged or
foreign files, and the messages that say what a checkpoint is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetl import __version__
from edgetl.errors import CheckpointError
from edgetl.model.checkpoint import (
    build_model,
    check_belongs,
    check_fits,
    checkpoint_meta,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from edgetl.rundir import SCHEMA_VERSION
from edgetl.testing import make_run


class RunsCode:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def best(tmp_path) -> Path:
    return make_run(tmp_path, backbone="mobilenet_v3_small", image_size=32) / "checkpoints" / "best.pt"


def test_a_saved_checkpoint_loads_back_with_its_tensors_metadata_and_versions(best, tmp_path):
    ckpt = load_checkpoint(best)
    state = {k: v for k, v in ckpt.items() if k not in ("schema_version", "edgetl_version")}
    save_checkpoint(tmp_path / "again.pt", state)
    again = load_checkpoint(tmp_path / "again.pt")
    assert again["schema_version"] == SCHEMA_VERSION and again["edgetl_version"] == __version__
    assert again.keys() == ckpt.keys()
    assert {k: v for k, v in again.items() if k != "model"} == {k: v for k, v in ckpt.items() if k != "model"}
    assert again["model"].keys() == ckpt["model"].keys()
    for key, tensor in ckpt["model"].items():
        torch.testing.assert_close(again["model"][key], tensor, rtol=0, atol=0, msg=key)
    assert not list(tmp_path.glob("again.pt.*")), "the atomic write left a temporary file"


def test_the_model_a_checkpoint_describes_is_rebuilt_in_eval_mode_with_its_weights(best):
    model, ckpt = load_model(best)
    assert not model.training
    assert model.state_dict().keys() == ckpt["model"].keys()
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["model"][key], rtol=0, atol=0, msg=key)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, ckpt["num_classes"]) and logits.abs().max() > 0.5  # real-magnitude logits


def test_a_pickle_that_would_import_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "backbone": "mobilenet_v3_small"}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} refused: loading it would import ")
    assert "os.system" in message or "posix.system" in message
    assert "weights_only=True" in message and "\n" not in message
    assert not marker.exists(), "loading the checkpoint ran its code"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_file_is_a_one_line_checkpoint_error_naming_it(best, tmp_path, damage):
    path = tmp_path / "damaged.pt"
    data = best.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 64, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"damaged: {path} (not an edgetl checkpoint: ")
    assert "\n" not in message and len(message) < 400


def test_a_missing_file_or_a_foreign_torch_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found — train first"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "foreign.pt")
    assert str(err.value) == (f"damaged: {tmp_path / 'foreign.pt'} (not an edgetl checkpoint: no model/backbone entries); "
                              f"re-run `edgetl train`")


def test_weights_of_another_class_count_do_not_fit_and_say_what_differs():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError) as err:
        check_fits(model, nn.Sequential(nn.Linear(4, 5)).state_dict(), backbone="tiny", num_classes=3, source="x.pt")
    assert str(err.value) == ("x.pt: weights do not fit tiny with 3 classes (0 missing, 0 unexpected, 2 wrongly shaped, "
                              "e.g. '0.weight')")
    state = {"0.weight": torch.zeros(3, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"\(1 missing, 1 unexpected, 0 wrongly shaped, e\.g\. '0\.bias'\)"):
        check_fits(model, state, backbone="tiny", num_classes=3, source="x.pt")
    check_fits(model, model.state_dict(), backbone="tiny", num_classes=3, source="x.pt")  # its own weights fit


def test_build_model_refuses_weights_that_do_not_fit_the_backbone(best):
    ckpt = load_checkpoint(best)
    with pytest.raises(CheckpointError, match=r"^best\.pt: weights do not fit mobilenet_v3_small with 5 classes"):
        build_model({**ckpt, "num_classes": 5}, source="best.pt")
    with pytest.raises(CheckpointError, match=r"^best\.pt: .*no_such_net"):
        build_model({**ckpt, "backbone": "no_such_net"}, source="best.pt")


def test_a_checkpoint_of_another_run_is_refused_saying_what_it_is_and_what_the_run_is():
    ckpt = {"backbone": "resnet18", "labels": [f"c{i}" for i in range(5)]}
    with pytest.raises(CheckpointError) as err:
        check_belongs(ckpt, backbone="mobilenet_v3_small", labels=["a", "b", "c"], source="run/best.pt")
    assert str(err.value) == ("run/best.pt belongs to another run: it is resnet18 with 5 classes (c0, c1, c2, c3, …), "
                              "this run is mobilenet_v3_small with 3 classes (a, b, c) — put this run's own checkpoint "
                              "back, or use the run it came from")
    with pytest.raises(CheckpointError, match="it is resnet18 with 3 classes \\(a, c, b\\)"):  # label order matters
        check_belongs({"backbone": "resnet18", "labels": ["a", "c", "b"]}, backbone="resnet18", labels=["a", "b", "c"],
                      source="best.pt")
    check_belongs({"backbone": "resnet18", "labels": ["a", "b"]}, backbone="resnet18", labels=["a", "b"], source="x")


def test_metadata_without_labels_is_a_checkpoint_error_naming_the_field(best):
    ckpt = load_checkpoint(best)
    meta = checkpoint_meta(ckpt, source=best)
    assert meta.labels == ["class_0", "class_1", "class_2"] and meta.backbone == "mobilenet_v3_small"
    del ckpt["labels"]
    with pytest.raises(CheckpointError) as err:
        checkpoint_meta(ckpt, source=best)
    message = str(err.value)
    assert message.startswith(f"damaged: {best} (labels: ")
    assert "\n" not in message
