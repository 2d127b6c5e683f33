"""The device's tensors: a file that takes the uint8 crop a device already has and gives probabilities.

    model = device_model(deployed, mean=prep.mean, std=prep.std, uint8_input=True, probs=True)  # what export writes
    image = to_device_input(x, mean=prep.mean, std=prep.std)   # float NCHW, normalized -> uint8 NHWC crops
    runner = fmt.open(path)                                     # such a file, still callable on float NCHW

A device-input file (`[export] input = "uint8"`) takes `uint8 [batch, crop, crop, 3]` (RGB, after the device's
resize and center crop) and does `/255`, the normalization and the NCHW layout inside the graph; a probabilities
file (`output = "probs"`) ends in a softmax. The rest of edgetl keeps feeding float NCHW normalized images: `adapt`
turns them back into the exact uint8 crops they were made from (every image edgetl reads is a uint8 crop first,
so the round trip is exact) before calling the file, and marks what the file returns
(`edgetl.formats.base.adapt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn



def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 value v -> normalized (v / 255 - mean) / std, as one multiply-add per channel: v * a + b."""
    std_ = np.asarray(std, dtype=np.float64)
    return 1.0 / (255.0 * std_), -np.asarray(mean, dtype=np.float64) / std_


def to_device_input(x: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Float NCHW normalized images -> the uint8 NHWC crops they came from (rounded and clipped: noise inputs
    land on the nearest uint8 image)."""
    a, b = _affine(mean, std)
    values = (x.astype(np.float64) - b[None, :, None, None]) / a[None, :, None, None]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def from_device_input(images: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC crops -> float32 NCHW normalized, as torchvision's ToTensor + Normalize compute them."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)[None, :, None, None]) / np.asarray(std, np.float32)[None, :, None, None])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def device_model(model: nn.Module, *, mean: Sequence[float], std: Sequence[float], uint8_input: bool,
                 probs: bool) -> nn.Module:
    """`model` behind the device's tensors: uint8 NHWC in (cast, one multiply-add per channel, NCHW), softmax out.
    Plain tensor ops, so every exporter (ONNX, TorchScript, ExecuTorch, LiteRT) traces them into its graph."""
    import torch
    from torch import nn

    a, b = _affine(mean, std)

    class DeviceModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("scale", torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("shift", torch.tensor(b, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if uint8_input:
                # contiguous: a strided NCHW view makes the exporter trace the pooling as an as_strided Gather
                x = x.permute(0, 3, 1, 2).contiguous().float() * self.scale + self.shift
            out = self.model(x)
            return torch.softmax(out, dim=1) if probs else out

    return DeviceModel().eval()
