"""Preprocessing as typed data: what a device must do to an image before the model sees it.

    Preprocessing.from_transforms(ResNet18_Weights.DEFAULT.transforms()).scaled(128)

It travels with the weights (taken from `weights.transforms()` / timm's pretrained config, never retyped),
into the run directory (`preprocessing.json`), the manifest and the ONNX metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, center-crop `crop_size`, scale to [0, 1], normalize.

    Channel order RGB, layout NCHW, dtype float32.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # PIL / torchvision name: "bilinear" | "bicubic" | "nearest"
    channel_order: str = "RGB"
    layout: str = "NCHW"

    @classmethod
    def from_transforms(cls, transforms: Any) -> Preprocessing:
        """From torchvision's `ImageClassification` preset (what `weights.transforms()` returns)."""
        crop = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
        resize = transforms.resize_size[0] if isinstance(transforms.resize_size, (list, tuple)) else transforms.resize_size
        return cls(
            crop_size=int(crop),
            resize_size=int(resize),
            mean=tuple(float(m) for m in transforms.mean),
            std=tuple(float(s) for s in transforms.std),
            interpolation=transforms.interpolation.value,
        )

    @classmethod
    def from_timm_config(cls, cfg: dict[str, Any]) -> Preprocessing:
        """From timm's pretrained config (`input_size`, `crop_pct`, `mean`, `std`, `interpolation`)."""
        crop = int(cfg["input_size"][-1])
        return cls(
            crop_size=crop,
            resize_size=int(crop / cfg.get("crop_pct", 0.875)),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            interpolation=cfg.get("interpolation", "bilinear"),
        )

    def scaled(self, crop_size: int | None) -> Preprocessing:
        """The same recipe at another input size, keeping the resize/crop ratio."""
        if crop_size is None or crop_size == self.crop_size:
            return self
        resize = round(crop_size * self.resize_size / self.crop_size)
        return dataclasses.replace(self, crop_size=crop_size, resize_size=resize)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
        return cls(**kw)
