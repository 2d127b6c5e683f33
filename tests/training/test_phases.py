import math

import pytest
import torch
from torch import nn

from edgetl.backbones import get_backbone
from edgetl.errors import RecipeError
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import Phase, parse_recipe
from edgetl.training.epoch import Batcher, Callbacks, train_one_epoch
from edgetl.training.phases import (
    configure_phase,
    count_trainable,
    group_learning_rates,
    lr_factor,
    make_optimizer,
    set_train_mode,
)

PREP = Preprocessing(crop_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def n_params(*modules, bn=True):
    return sum(p.numel() for m in modules for name, sub in m.named_modules() for p in sub.parameters(recurse=False)
               if bn or not isinstance(sub, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("train, bn", [("head", "frozen"), ("last:2", "frozen"), ("last:2", "train"), ("all", "frozen"), ("all", "train")])
def test_freezing_per_phase_is_exactly_the_recipe(train, bn):
    bb = get_backbone("resnet18")
    model = bb.build(3)
    groups = bb.groups(model)
    phase = Phase(name="p", epochs=1, train=train, bn=bn)
    configure_phase(model, groups, phase, backbone="resnet18", weight_decay=0.01)
    counts = count_trainable(groups)
    keep_bn = bn == "train"
    stages = {"stem": [model.conv1, model.bn1], "stage1": [model.layer1], "stage2": [model.layer2],
              "stage3": [model.layer3], "stage4": [model.layer4]}
    trained = {"head": [], "last:2": ["stage3", "stage4"], "all": list(stages)}[train]
    expected = {g: (n_params(*mods, bn=keep_bn) if g in trained else 0) for g, mods in stages.items()}
    expected["head"] = n_params(model.fc)
    assert counts == expected


def test_last_n_beyond_the_backbone_and_unknown_groups_are_refused():
    bb = get_backbone("mobilenet_v3_small")
    model = bb.build(3)
    with pytest.raises(RecipeError, match="has 5 groups"):
        configure_phase(model, bb.groups(model), Phase(name="p", epochs=1, train="last:9"), backbone=bb.name, weight_decay=0)
    with pytest.raises(RecipeError, match="unknown groups"):
        configure_phase(model, bb.groups(model), Phase(name="p", epochs=1, group_lr={"neck": 1e-3}), backbone=bb.name, weight_decay=0)


def test_discriminative_rates_per_group_and_no_decay_on_norms_and_biases():
    bb = get_backbone("resnet18")
    model = bb.build(3)
    groups = bb.groups(model)
    phase = Phase(name="all", epochs=2, train="all", bn="train", lr=1e-4, lr_decay=0.1, head_lr=1e-3, group_lr={"stage1": 5e-5})
    rates = group_learning_rates(groups, phase)
    assert rates == pytest.approx({"stem": 1e-8, "stage1": 5e-5, "stage2": 1e-6, "stage3": 1e-5, "stage4": 1e-4, "head": 1e-3})
    param_groups = configure_phase(model, groups, phase, backbone="resnet18", weight_decay=0.05)
    for g in param_groups:
        assert g["lr"] == pytest.approx(rates[g["name"]])
        assert all((p.ndim > 1) == (g["weight_decay"] == 0.05) for p in g["params"])


def test_warmup_then_cosine_step_by_step():
    phase = Phase(name="p", epochs=3, lr=1e-4, head_lr=1e-3, warmup_epochs=1, schedule="cosine")
    bb = get_backbone("resnet18")
    model = bb.build(3)
    groups = bb.groups(model)
    optimizer = make_optimizer(configure_phase(model, groups, phase, backbone="resnet18", weight_decay=0), parse_recipe(
        {"backbone": "resnet18", "phases": [phase.model_dump()]}))
    steps_per_epoch = 4
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(phase, steps_per_epoch))
    head = next(g for g in optimizer.param_groups if g["name"] == "head")
    seen = []
    for _ in range(3 * steps_per_epoch):
        seen.append(head["lr"])
        optimizer.step()
        scheduler.step()
    warm = [1e-3 * (s + 1) / 4 for s in range(4)]  # linear warmup over the first epoch
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]  # then cosine over the other 8 steps
    assert seen == pytest.approx(warm + cosine)
    assert seen[3] == pytest.approx(1e-3) and seen[-1] < 0.05 * 1e-3


def test_constant_schedule_holds_the_rate():
    f = lr_factor(Phase(name="p", epochs=2, schedule="constant"), 5)
    assert [f(s) for s in range(10)] == [1.0] * 10


def test_frozen_bn_leaves_running_statistics_bit_identical():
    bb = get_backbone("mobilenet_v3_small")
    torch.manual_seed(0)
    model = bb.build(3)
    groups = bb.groups(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    phase = Phase(name="all", epochs=1, train="all", bn="frozen", lr=1e-3)
    recipe = parse_recipe({"backbone": bb.name, "phases": [phase.model_dump()]})
    optimizer = make_optimizer(configure_phase(model, groups, phase, backbone=bb.name, weight_decay=0), recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(phase, 2))
    set_train_mode(model, groups, phase, backbone=bb.name)
    data = Batcher(torch.randint(0, 255, (8, 3, 36, 36), dtype=torch.uint8), torch.arange(8) % 3, PREP, torch.device("cpu"), augment=True)
    conv_before = model.features[1].block[0][0].weight.clone()
    train_one_epoch(model, data, optimizer=optimizer, scheduler=scheduler, loss_fn=nn.CrossEntropyLoss(), batch_size=4,
                    generator=torch.Generator().manual_seed(0), callbacks=Callbacks())
    after = {k: v for k, v in model.state_dict().items() if k in before}
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(conv_before, model.features[1].block[0][0].weight), "the convolutions did train"
    # with bn = "train" the statistics move
    phase_train = Phase(name="all", epochs=1, train="all", bn="train", lr=1e-3)
    configure_phase(model, groups, phase_train, backbone=bb.name, weight_decay=0)
    set_train_mode(model, groups, phase_train, backbone=bb.name)
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before["features.0.1.running_mean"], model.state_dict()["features.0.1.running_mean"])


def test_a_backbone_that_is_not_sequential_caches_only_its_whole_body():
    """A ViT's groups cannot run one by one: its head phase caches pooled features, a `last:N` phase with views
    recomputes the frozen part (no cache at a partial depth), and its frozen groups still take no gradient."""
    from edgetl.backbones import create_model
    from edgetl.training.phases import cacheable, configure_phase, prefix_caches

    bb = get_backbone("timm:vit_tiny_patch16_224")
    model = create_model(bb, num_classes=3, image_size=32)
    groups = bb.groups(model)
    body = len(groups) - 1
    head, top = Phase(name="head", epochs=1, views=2), Phase(name="top", epochs=1, train="last:1", views=3)
    assert cacheable(head, body=body, sequential=False) and not cacheable(top, body=body, sequential=False)
    assert cacheable(top, body=body, sequential=True)
    caches = prefix_caches([head, top], body=body, seed=0, sequential=bb.sequential)
    assert list(caches) == [2] and caches[2].depth == body
    configure_phase(model, groups, top, backbone=bb.name, weight_decay=0.01)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    trained = {id(p) for g in groups[-2:] for p in g.parameters()}
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in trained)
