"""torchrun on the CPU: the same epochs trained by 1 process (all threads) and by N gloo processes (1 thread each).

    .venv/bin/python benchmarks/bench_ddp.py --photos ../shared/data/flowers128        # 2 processes, real photos
    .venv/bin/python benchmarks/bench_ddp.py --quick                                  # generated images, seconds

Both sides run `edgetl train` as a user types it (`python -m edgetl train` / `torchrun --nproc_per_node=N -m
edgetl train`), one after the other, on the first `--per-class` train images of each class and the whole val
split, with a recipe of uncached phases (the last stage, then everything), so every epoch runs the model
forward and backward. Reported: each epoch's own time (from metrics.jsonl: the training pass and the val pass),
the whole command's wall time, val accuracy, and the ratio N-process / 1-process. On a 2-core CPU the point is
correctness and overhead, not speed: 2 processes of 1 thread do the work 1 process does with 2 threads.
A torch build without torch.distributed (gloo) skips: exit 0 and a JSON that says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_ddp"
RECIPE = """
backbone = "efficientnet_lite0"
weights = "imagenet"
image_size = {size}
batch_size = 32
patience = 0
seed = 0

[[phases]]
name = "top"
epochs = {epochs}
train = "last:2"
lr = 3e-4

[[phases]]
name = "all"
epochs = {epochs}
train = "all"
lr = 1e-4
"""


def run_side(cmd: list[str], run: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = json.loads((run / "train.json").read_text())
    return {"wall_seconds": round(wall, 1), "epoch_seconds": [m["seconds"] for m in metrics],
            "epochs_seconds_total": round(sum(m["seconds"] for m in metrics), 2), "best_val_acc": train["best_val_acc"],
            "world_size": train.get("world_size", 1), "backend": train.get("backend")}


def main() -> None:
    p = common.parser(SCRIPT, __doc__)
    p.add_argument("--photos", type=Path, help="a folder with train/ and val/ class folders (real photos)")
    p.add_argument("--per-class", type=int, default=60, help="--photos: train images per class (default: %(default)s)")
    p.add_argument("--procs", type=int, default=2, help="processes of the torchrun side (default: %(default)s)")
    args = p.parse_args()
    import torch.distributed

    from edgetl.data.sample import make_image_folder
    from edgetl.verify import all_threads

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        reason = "this torch build has no torch.distributed with the gloo backend: nothing to compare"
        common.console.print(f"[yellow]skipped: {reason}[/]")
        common.write_results("ddp", {"script": SCRIPT, "mode": common.mode_of(args), "skipped": reason,
                                     "environment": common.environment()}, out=args.out, save=False)
        return
    size, epochs = (48, 1) if args.quick else (128, 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.photos:
            from bench_train import photo_subset

            data = photo_subset(args.photos, root / "photos", per_class=args.per_class)
        else:
            data = make_image_folder(root / "data", classes=3, per_class=16, val_per_class=8, size=56, seed=0)
        recipe = root / "ddp.toml"
        recipe.write_text(RECIPE.format(size=size, epochs=epochs))
        common_args = ["train", "--recipe", str(recipe), "--data", str(data), "--device", "cpu"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        busy = common.warn_if_busy()
        one = run_side([sys.executable, "-m", "edgetl", *common_args, "--out", str(root / "one")], root / "one", env)
        many = run_side([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
                         "-m", "edgetl", *common_args, "--out", str(root / "many")], root / "many",
                        {**env, "OMP_NUM_THREADS": str(max(1, all_threads() // args.procs))})
    ratio = many["epochs_seconds_total"] / one["epochs_seconds_total"]
    results = {"environment": common.environment(), "load": busy, "data": str(args.photos or "generated"),
               "image_size": size, "epochs_per_phase": epochs, "one_process": one, f"{args.procs}_processes": many,
               "epoch_time_ratio": round(ratio, 3), "wall_ratio": round(many["wall_seconds"] / one["wall_seconds"], 3)}
    common.console.print(f"1 process: {one}\n{args.procs} processes: {many}\nepoch time {args.procs}/1: {ratio:.2f}×, "
                         f"wall {results['wall_ratio']:.2f}×")
    common.write_results("ddp", results, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
