"""Where a run directory stands: which stages finished, and what they produced.

    stage = first_unfinished(Path("artifacts/my-run"))   # "train" | "export" | "verify"

The run directory is the contract between the stages, so this reads only files the stages write last:
train.json (end of training), export/manifest.json (written last by export), verify.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetl.errors import RunDirError

STAGES = ("train", "export", "verify")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stage_files(run_dir: Path) -> dict[str, Path]:
    return {"train": run_dir / "train.json", "export": run_dir / "export" / "manifest.json", "verify": run_dir / "verify.json"}


def first_unfinished(run_dir: Path) -> str | None:
    """The first stage whose closing file is missing or older than the stage before it; None when all are done."""
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    previous = 0.0
    for stage, path in stage_files(run_dir).items():
        if not path.is_file() or path.stat().st_mtime < previous or _read(path) is None:
            return stage
        previous = path.stat().st_mtime
    return None


def describe(run_dir: Path) -> dict[str, Any]:
    """Everything `edgetl info` shows, from the run directory's own files."""
    if not (run_dir / "recipe.resolved.toml").is_file():
        raise RunDirError(f"{run_dir} is not an edgetl run directory (no recipe.resolved.toml) — pass the --out of `edgetl train`")
    files = stage_files(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
    return {
        "run_dir": str(run_dir),
        "recipe": (run_dir / "recipe.resolved.toml").read_text(encoding="utf-8"),
        "labels": _read(run_dir / "labels.json"),
        "epochs_done": len(metrics),
        "train": _read(files["train"]),
        "manifest": _read(files["export"]),
        "verify": _read(files["verify"]),
        "next_stage": first_unfinished(run_dir),
    }
