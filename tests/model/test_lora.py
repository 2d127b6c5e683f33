import pytest
import torch
from torch import nn

from edgetl.backbones import BACKBONES, get_backbone
from edgetl.errors import RecipeError
from edgetl.model.lora import LoraConfig, count_lora, inject_lora, lora_parameters, merge_lora
from edgetl.preprocessing import Preprocessing
from edgetl.recipe import parse_recipe
from edgetl.testing import randomize_for_parity
from edgetl.training.epoch import Batcher, Callbacks, train_one_epoch
from edgetl.training.phases import configure_phase, lora_config, lr_factor, make_optimizer, set_train_mode


def adapted(name: str, targets=("conv", "linear")):
    bb = get_backbone(name)
    torch.manual_seed(0)
    model = randomize_for_parity(bb.build(4)).eval()
    section = parse_recipe({"backbone": name, "lora": {"rank": 4, "targets": list(targets)}, "phases": [{"name": "p", "epochs": 1}]}).lora
    inject_lora(model, lora_config(section, model, bb.groups(model)))
    g = torch.Generator().manual_seed(1)
    for p in lora_parameters(model):  # B starts at zero; give the adapters something to merge
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return bb, model


@pytest.mark.parametrize("name", list(BACKBONES))
def test_merged_equals_unmerged(name):
    bb, model = adapted(name)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = model(x)
        n = count_lora(model)
        merged = merge_lora(model)
        after = merged(x)
    assert n > 0 and count_lora(merged) == 0
    assert not any("lora" in k or "parametrizations" in k for k in merged.state_dict())
    assert before.abs().max() > 1.0, "outputs must have real magnitude for the comparison to mean something"
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())
    assert set(merged.state_dict()) == set(bb.build(4).state_dict()), "merged keys equal a model without LoRA"


def test_depthwise_convs_get_no_adapter_by_default():
    bb, model = adapted("mobilenet_v3_small", targets=("conv",))
    from edgetl.model.lora import lora_modules

    assert all(m.groups == 1 for _, m in lora_modules(model))
    assert not any(n.startswith("classifier") for n, _ in lora_modules(model)), "the head trains in full"


def test_pointwise_targets_only_1x1():
    model = get_backbone("efficientnet_lite0").build(3)
    names = inject_lora(model, LoraConfig(targets=["pointwise"]))
    modules = dict(model.named_modules())
    assert names and all(modules[n].kernel_size == (1, 1) for n in names)


def test_only_adapters_and_head_change_during_a_lora_phase():
    bb = get_backbone("resnet18")
    torch.manual_seed(0)
    model = bb.build(3)
    recipe = parse_recipe({"backbone": "resnet18", "lora": {"rank": 2, "targets": ["conv"], "train_norms": False},
                           "phases": [{"name": "all", "epochs": 1, "train": "all", "bn": "train", "lr": 1e-2}]})
    groups = bb.groups(model)
    inject_lora(model, lora_config(recipe.lora, model, groups))
    phase = recipe.phases[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = configure_phase(model, groups, phase, backbone="resnet18", weight_decay=0.01, lora=recipe.lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("fc.") for n in trainable)
    optimizer = make_optimizer(params, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(phase, 2))
    set_train_mode(model, groups, phase, backbone="resnet18")
    prep = Preprocessing(crop_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = Batcher(torch.randint(0, 255, (8, 3, 36, 36), dtype=torch.uint8), torch.arange(8) % 3, prep, torch.device("cpu"), augment=True)
    train_one_epoch(model, data, optimizer=optimizer, scheduler=scheduler, loss_fn=nn.CrossEntropyLoss(), batch_size=4,
                    generator=torch.Generator().manual_seed(0), callbacks=Callbacks())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    weights = {k for k in changed if "running_" not in k and "num_batches" not in k}
    assert weights and all("lora_" in k or k.startswith("fc.") for k in weights), sorted(weights)
    assert any("lora_B" in k for k in weights) and "fc.weight" in weights


@pytest.mark.parametrize("lora, message", [
    ({"rank": 0}, "lora.rank: Input should be greater than or equal to 1"),
    ({"targets": []}, "lora.targets"),
    ({"alpha": -1}, "lora.alpha"),
    ({"colour": 1}, "lora.colour: unknown key"),
])
def test_bad_lora_sections(lora, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"backbone": "resnet18", "lora": lora, "phases": [{"name": "p", "epochs": 1}]})


def test_bad_patterns_and_depthwise_patterns_are_refused():
    model = get_backbone("mobilenet_v3_small").build(3)
    with pytest.raises(RecipeError, match="matches no conv or linear layer"):
        inject_lora(model, LoraConfig(targets=["backbone.layer9.*"]))
    with pytest.raises(RecipeError, match="depthwise"):
        inject_lora(model, LoraConfig(targets=["features.1.block.0.0"]))
    with pytest.raises(ValueError, match=r"rank must be a whole number in \[1, 1024\]"):
        LoraConfig(rank=0)  # refused on construction: a checkpoint's [lora] is checked as it is read
    names = inject_lora(model, LoraConfig(targets=["features.1.block.0.0"], allow_depthwise=True))
    assert names == ["features.1.block.0.0"]


# the ViT case (12 s) runs in `make test-all`; LoRA on linear layers is also exported in test_named_backbones
@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_lite0",
                                      pytest.param("timm:vit_tiny_patch16_224", marks=pytest.mark.slow)])
def test_a_lora_export_has_exactly_the_structure_of_a_plain_one(fake_run, backbone):
    import onnx

    from edgetl.export.stage import export_run

    graphs = {}
    for lora in (None, {"rank": 4, "targets": ["conv", "linear"]}):
        run = fake_run(backbone=backbone, lora=lora)
        result = export_run(run, formats=("onnx",))
        assert (result.deploy.lora_before > 0) == (lora is not None) and result.deploy.lora_after == 0
        graph = onnx.load(result.out_dir / "model.onnx").graph
        graphs[lora is None] = graph
    plain, adapted = graphs[True], graphs[False]
    assert len(adapted.node) == len(plain.node)
    assert [n.op_type for n in adapted.node] == [n.op_type for n in plain.node]
    assert sorted(tuple(i.dims) for i in adapted.initializer) == sorted(tuple(i.dims) for i in plain.initializer)
