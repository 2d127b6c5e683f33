"""deploy.py: BatchNorm folded into the convolutions on every backbone, outputs unchanged, nothing left over."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgetl.backbones import BACKBONES
from edgetl.errors import ExportError
from edgetl.model.checkpoint import load_model
from edgetl.model.deploy import count_bn, deploy_model
from edgetl.testing import make_run

ATOL = 1e-4  # per unit of logit scale (see export.FOLD_ATOL)


@pytest.fixture(scope="module")
def checkpoint_model(tmp_path_factory) -> Callable[[str], nn.Module]:
    """backbone -> a fresh copy of the model a fake run's best.pt describes (each run made once)."""
    models: dict[str, nn.Module] = {}

    def get(backbone: str) -> nn.Module:
        if backbone not in models:
            run = make_run(tmp_path_factory.mktemp(backbone), backbone=backbone, image_size=32)
            models[backbone] = load_model(run / "checkpoints" / "best.pt")[0]
        return copy.deepcopy(models[backbone])

    return get


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_folded_model_matches_the_checkpoint(checkpoint_model, backbone):
    model = checkpoint_model(backbone)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bn = count_bn(model)
    deployed, report = deploy_model(model, example=x)

    assert type(deployed) is type(model)
    assert count_bn(model) == bn > 0, "the input model must be left untouched"
    assert report.bn_before == bn and report.bn_after == 0 and report.bn_folded == bn
    assert not any(isinstance(m, _BatchNorm) for m in deployed.modules())
    assert report.lora_before == report.lora_after == 0
    assert report.params == sum(p.numel() for p in deployed.parameters())
    with torch.no_grad():
        expected, got = model(x).numpy(), deployed(x).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL * scale, err_msg=f"{backbone}: fold changed the logits")
    assert report.max_abs_diff == pytest.approx(float(np.abs(got - expected).max()))
    assert report.max_abs_diff <= ATOL * scale


def test_fold_is_exact_in_float64(checkpoint_model):
    """fp32 rounding aside, the fold is exact: in float64 the difference vanishes (timm's Conv2dSame +
    BatchNormAct2d, the trickiest layout)."""
    model = checkpoint_model("efficientnet_lite0").double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, report = deploy_model(model, example=x)
    assert report.max_abs_diff < 1e-9


def test_batchnorm_act_keeps_its_activation(checkpoint_model):
    model = checkpoint_model("efficientnet_lite0")
    deployed, _ = deploy_model(model)
    assert type(model.bn1).__name__ == "BatchNormAct2d"
    assert isinstance(deployed.bn1, nn.Sequential) and isinstance(deployed.bn1[-1], nn.ReLU6)
    assert type(deployed.conv_stem).__name__ == "Conv2dSame" and deployed.conv_stem.bias is not None


def test_a_batchnorm_that_follows_no_conv_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4)).eval()
    with pytest.raises(ExportError, match=r"1 BatchNorm layer\(s\) could not be folded, e\.g\. 2 \(BatchNorm1d\)"):
        deploy_model(model)


def test_a_conv_used_twice_is_not_folded():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's raw output is needed too: folding would change it

    with pytest.raises(ExportError, match=r"e\.g\. bn \(BatchNorm2d\)"):
        deploy_model(Shared().eval())


def test_the_input_model_keeps_its_mode_and_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy_model(model, example=torch.randn(2, 3, 8, 8))
    assert model.training and isinstance(model[1], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lora_adapters_are_merged_before_folding(checkpoint_model):
    from edgetl.model.lora import LoraConfig, count_lora, inject_lora, lora_parameters

    model = checkpoint_model("mobilenet_v3_small")
    names = inject_lora(model, LoraConfig(rank=2, alpha=4, targets=["pointwise"]))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)  # B starts at zero; a trained adapter changes the outputs
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    deployed, report = deploy_model(model, example=x)
    assert report.lora_before == len(names) > 0 and report.lora_after == 0 and report.lora_merged == len(names)
    assert count_lora(model) == len(names) and count_lora(deployed) == 0
    assert report.bn_after == 0 and report.max_abs_diff <= ATOL * max(1.0, report.max_abs_logit)
