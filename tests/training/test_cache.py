"""Cached phases: the frozen part runs once, on K augmented views; what trains on it is what trains uncached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgetl.backbones import BACKBONES, get_backbone, run_groups
from edgetl.cli import app
from edgetl.data.augment import center_crop_batch, normalize
from edgetl.model.checkpoint import load_checkpoint
from edgetl.recipe import load_recipe
from edgetl.testing import StopAfterEpoch, randomize_for_parity
from edgetl.training import cache, train_run
from edgetl.training.cache import frozen_outputs
from edgetl.training.epoch import Batcher
from edgetl.training.state import better

runner = CliRunner()
ATOL = 1e-5  # per unit of logit scale


def images(backbone: str, n: int = 6, size: int = 40) -> Batcher:
    prep = get_backbone(backbone).preprocessing.scaled(32)
    # Photo-like statistics (what the parity models were calibrated on), not uniform noise that saturates them.
    noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(0))
    x = (128 + 40 * noise).clamp(0, 255).to(torch.uint8)
    return Batcher(x, torch.arange(n) % 3, prep, torch.device("cpu"))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_cached_activations_equal_a_recomputed_forward(name):
    bb = get_backbone(name)
    torch.manual_seed(0)  # the same model whatever ran before: the bar is tight
    model = randomize_for_parity(bb.build(3), image_size=32).eval()
    groups = bb.groups(model)
    body, head = groups[:-1], bb.head(model)
    data = images(name)
    x = normalize(center_crop_batch(data.x, 32), data.preprocessing)
    with torch.no_grad():
        expected = model(x)
        scale = max(1.0, float(expected.abs().max()))
        for n in (1, 2):  # the input of the last group, of the last two
            cached = frozen_outputs(model, bb, body[:-n], data, views=0, batch_size=4, seed=0, pool=False)
            assert cached.features and cached.x.shape[0] == len(data)
            logits = head(bb.pool(model, run_groups(body[-n:], cached.x)))
            np.testing.assert_allclose(logits, expected, atol=ATOL * scale, rtol=0, err_msg=f"{name} last:{n}")
        features = frozen_outputs(model, bb, body, data, views=0, batch_size=4, seed=0, pool=True)
        reference = bb.features(model, x)
        atol = ATOL * max(1.0, float(reference.abs().max()))
        np.testing.assert_allclose(features.x, reference, atol=atol, rtol=0, err_msg=name)
    assert not model.training and all(p.is_contiguous() for p in model.parameters())  # layout restored


def test_views_are_augmented_seeded_and_labelled():
    bb = get_backbone("mobilenet_v3_small")
    model = randomize_for_parity(bb.build(3), image_size=32).eval()
    body, data = bb.groups(model)[:-1], images("mobilenet_v3_small")
    a = frozen_outputs(model, bb, body, data, views=3, batch_size=4, seed=7, pool=True)
    b = frozen_outputs(model, bb, body, data, views=3, batch_size=4, seed=7, pool=True)
    c = frozen_outputs(model, bb, body, data, views=3, batch_size=4, seed=8, pool=True)
    assert a.x.shape[0] == 3 * len(data) and torch.equal(a.y, data.y.repeat(3))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)  # a resumed run rebuilds the very same cache
    assert not torch.allclose(a.x[6:12], a.x[12:], rtol=1e-3, atol=0)  # each augmented view is its own
    center = frozen_outputs(model, bb, body, data, views=0, batch_size=4, seed=0, pool=True)
    assert torch.equal(a.x[:6], center.x)  # view 0: the center crop the device sees


def test_a_cache_over_budget_is_stored_in_bf16_then_recomputed(monkeypatch, caplog):
    bb = get_backbone("mobilenet_v3_small")
    model = bb.build(3).eval()
    body, data = bb.groups(model)[:-1], images("mobilenet_v3_small")
    need = frozen_outputs(model, bb, body, data, views=0, batch_size=4, seed=0, pool=True).x.nbytes  # in fp32
    monkeypatch.setattr(cache, "_budget", lambda device: need - 1)
    half = frozen_outputs(model, bb, body, data, views=0, batch_size=4, seed=0, pool=True)
    assert half.x.dtype == torch.bfloat16 and half.inputs(torch.arange(2), None).dtype == torch.float32
    monkeypatch.setattr(cache, "_budget", lambda device: need // 4)
    assert frozen_outputs(model, bb, body, data, views=0, batch_size=4, seed=0, pool=True) is None
    assert "recomputing them every epoch" in caplog.text


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Two classes anyone can tell apart: reddish and bluish noise."""
    root = tmp_path_factory.mktemp("separable")
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("val", 4)):
        for c, channel in (("blue", 2), ("red", 0)):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (40, 40, 3), dtype=np.uint8)
                pixels[..., channel] += 160
                Image.fromarray(pixels).save(root / part / c / f"{i}.png")
    return root


def test_a_cached_head_phase_drives_the_training_loss_down(separable, tmp_path):
    # Real pretrained features (Lite0 weights ship offline): a fresh model's features are collapsed to ~0.
    recipe = tmp_path / "r.toml"
    recipe.write_text('backbone = "efficientnet_lite0"\nweights = "imagenet"\nimage_size = 32\nbatch_size = 8\n'
                      'patience = 0\nlabel_smoothing = 0.0\n[[phases]]\nname = "head"\nepochs = 8\ntrain = "head"\n'
                      'head_lr = 2e-2\nviews = 2\n')
    summary = train_run(load_recipe(str(recipe), overrides={"data": str(separable)}), run_dir=tmp_path / "run", device="cpu")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics]
    assert all(m["cached_features"] for m in metrics)
    assert losses[-1] < 0.5 * losses[0], losses
    assert summary.best_val_acc == 1.0


def test_best_pt_is_the_epoch_the_rule_names(straight):
    _, run = straight
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = metrics[0]
    for m in metrics[1:]:
        if better(m["val_acc"], m["val_loss"], than_acc=best["val_acc"], than_loss=best["val_loss"]):
            best = m
    assert max(m["val_acc"] for m in metrics) == best["val_acc"]
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (ckpt["epoch"], ckpt["val_acc"], ckpt["val_loss"]) == (best["epoch"], best["val_acc"], best["val_loss"])
    assert json.loads((run / "train.json").read_text())["best_epoch"] == best["epoch"]


def test_better_prefers_accuracy_and_breaks_ties_by_loss():
    assert better(0.9, 0.8, than_acc=0.8, than_loss=0.1)
    assert better(0.9, 0.3, than_acc=0.9, than_loss=0.4)
    assert not better(0.9, 0.5, than_acc=0.9, than_loss=0.4)
    assert not better(0.7, 0.1, than_acc=0.8, than_loss=0.9)


CACHED_RECIPE = """
backbone = "mobilenet_v3_small"
weights = "none"
image_size = 32
batch_size = 8
patience = 0
probe_epochs = 0
seed = 5

[[phases]]
name = "head"
epochs = 2
train = "head"
head_lr = 1e-2
views = 2

[[phases]]
name = "top"
epochs = 3
train = "last:2"
lr = 1e-3
views = 2
bn = "train"
"""




@pytest.fixture(scope="module")
def cached_straight(tiny, tmp_path_factory):
    data, _ = tiny
    path = tmp_path_factory.mktemp("cached") / "cached.toml"
    path.write_text(CACHED_RECIPE)
    recipe = load_recipe(str(path), overrides={"data": str(data)})
    run = tmp_path_factory.mktemp("cached-straight")
    train_run(recipe, run_dir=run, device="cpu")
    return recipe, run


@pytest.mark.parametrize("stop_after", [1, 3])  # inside the cached head phase, inside the cached last:2 phase
def test_resume_with_caches_gives_the_same_final_weights(cached_straight, tmp_path, stop_after):
    recipe, straight_run = cached_straight
    metrics = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["cached_features"] for m in metrics) and [m["phase"] for m in metrics] == ["head"] * 2 + ["top"] * 3
    with pytest.raises(KeyboardInterrupt):
        train_run(recipe, run_dir=tmp_path / "cut", device="cpu", callbacks=StopAfterEpoch(stop_after))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    a = load_checkpoint(straight_run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_one_prefix_pass_serves_a_head_phase_and_a_last_phase(monkeypatch):
    bb = get_backbone("efficientnet_lite0")
    model = randomize_for_parity(bb.build(3), image_size=32).eval()
    body, data = bb.groups(model)[:-1], images("efficientnet_lite0")
    calls, real = [], cache.frozen_outputs
    monkeypatch.setattr(cache, "frozen_outputs", lambda *a, **kw: calls.append(kw["views"]) or real(*a, **kw))
    prefix = cache.PrefixCache(depth=len(body) - 1, views=2, seed=3)
    features, val_features = prefix.outputs(model, bb, body, depth=len(body), train=data, val=data, batch_size=4)
    activations, _ = prefix.outputs(model, bb, body, depth=len(body) - 1, train=data, val=data, batch_size=4)
    assert calls == [2, 0]  # one pass over the train views, one over val: shared by both phases
    direct = real(model, bb, body, data, views=2, batch_size=4, seed=3, pool=True)
    atol = ATOL * max(1.0, float(direct.x.abs().max()))
    np.testing.assert_allclose(features.x, direct.x, atol=atol, rtol=0)
    assert activations.x.shape[0] == 2 * len(data) and val_features.x.shape[0] == len(data)
    prefix.drop_if_trained(len(body) - 1)  # training the last group leaves its input valid
    assert prefix.train is not None
    prefix.drop_if_trained(0)  # an `all` phase does not
    assert prefix.train is None


# Lite0's pass is the longer (13 s): `make test-all` runs it, `make test` the ResNet-18 one (the same code path)
@pytest.mark.parametrize("name", [pytest.param("efficientnet_lite0", marks=pytest.mark.slow), "resnet18"])
def test_a_large_pass_runs_in_onnxruntime_with_the_same_outputs(name, monkeypatch):
    bb = get_backbone(name)
    model = randomize_for_parity(bb.build(3), image_size=32).eval()
    body, data = bb.groups(model)[:-1], images(name)
    assert cache.onnx_prefix(model, bb, body, pool=True, crop=32, rows=len(data)) is None  # too small to pay
    monkeypatch.setattr(cache, "ONNX_MIN_PIXELS", 0)
    for depth, pool in ((len(body), True), (len(body) - 1, False)):
        prefix = cache.onnx_prefix(model, bb, body[:depth], pool=pool, crop=32, rows=len(data))
        assert prefix is not None
        fast = frozen_outputs(model, bb, body[:depth], data, views=2, batch_size=4, seed=1, pool=pool, prefix=prefix)
        eager = frozen_outputs(model, bb, body[:depth], data, views=2, batch_size=4, seed=1, pool=pool)
        # onnxruntime folds BatchNorm and picks its own kernels: the export parity bar, 1e-4 of the scale.
        atol = 1e-4 * max(1.0, float(eager.x.abs().max()))
        np.testing.assert_allclose(fast.x, eager.x, atol=atol, rtol=0, err_msg=f"{name} depth {depth}")
    assert not model.training


def test_each_phase_reports_what_it_gained(cached_straight):
    _, run = cached_straight
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    head = max(m["val_acc"] for m in metrics if m["phase"] == "head")
    top = max(m["val_acc"] for m in metrics if m["phase"] == "top")
    phases = json.loads((run / "train.json").read_text())["phases"]
    assert [p["val_acc_gain"] for p in phases] == pytest.approx([head, top - head])
