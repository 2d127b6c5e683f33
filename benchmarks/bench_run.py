"""The whole chain, photos to a shipped INT8 file: `edgetl run` side by side with the plain way, same photos.

    .venv/bin/python benchmarks/bench_run.py --photos ../shared/data/flowers128   # the shipped Lite0 recipe, 224 px
    .venv/bin/python benchmarks/bench_run.py --quick    # generated shapes, 64 px, a few epochs: a smoke test (~1.5 min)

Both sides run on the same train/ and val/ folders (every image of each), one after the other, each in its own
fresh process (imports included in its process wall time), then this process measures the files each side wrote
the same way: top-1 accuracy on ALL val photos (onnxruntime, batch 1, each side's own preprocessing through
`edgetl.preprocessing.preprocess_image`), top-1 agreement with the side's fp32 file, size on disk, and p50 at
batch 1 on 2 threads (`edgetl.verify.time_runner`, warm-up excluded).

* edgetl: the CLI as a user types it, `edgetl run --recipe efficientnet_lite0 --data DIR --precision fp32
  --precision int8 --format onnx --json OUT` (train -> export -> verify). Stage times, the shipped file and the
  go/no-go come from its --json (or, without it, from RUN/train.json, RUN/export/manifest.json, RUN/verify.json).
  The shipped file is evaluated with the manifest's preprocessing and labels.
* plain: what a timm/torchvision user writes (`run_plain` below, stage by stage):
  1. train: `ImageFolder` + torchvision transforms (Resize + CenterCrop to the recipe's input size, flip,
     rotation 15°, colour jitter; mean/std from timm's data config), timm `tf_efficientnet_lite0` with the same
     offline ImageNet weights edgetl uses (`edgetl.model.weights.load_pretrained`, what `pretrained=True` gives),
     batch 32, the classifier alone 3 epochs (Adam 1e-3, model in train mode so BatchNorm adapts), then the last
     stage + conv_head + bn2 join for 2 epochs (Adam 1e-4); val accuracy after every epoch; the model of the last
     epoch is the one exported (bench_train's progressive tutorial loop).
  2. export: `torch.onnx.export(model, (x,), "model.onnx")` with this torch's defaults (the dynamo exporter).
  3. quantize: onnxruntime's `quantize_static(fp32, int8, reader)` with its defaults (QDQ, int8 weights and
     activations, per-tensor, MinMax), a `CalibrationDataReader` over 100 random train photos through the val
     transform.
  4. check: top-1 agreement of int8 vs fp32 (and each one's accuracy) over the val folder, by hand.

--quick: 3 classes of generated shapes (`edgetl.data.sample.make_image_folder`, 12 train / 6 val each), 64 px
(the edgetl recipe is the shipped one with `image_size = 64`, `--epochs-scale 0.2`), the plain loop 1 + 1
epochs, short timings; no /work/shared needed. Without --photos and --quick: ../shared/data/flowers128.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_run"
RECIPE = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
DEFAULT_PHOTOS = common.REPO.parent / "shared" / "data" / "flowers128"
P50_THREADS = 2
CALIBRATION_PHOTOS = 100

MODES: dict[str, dict[str, Any]] = {
    # edgetl: the recipe as shipped. plain: bench_train's progressive tutorial loop (3 + 2 epochs, batch 32).
    "photos": {"image_size": None, "epochs_scale": None, "latency_seconds": 1.0, "head_epochs": 3, "top_epochs": 2,
               "timing": {"seconds": 2.0, "min_iterations": 50, "max_seconds": 6.0, "warmup": 10}},
    "quick": {"image_size": 64, "epochs_scale": 0.2, "latency_seconds": 0.2, "head_epochs": 1, "top_epochs": 1,
              "timing": {"seconds": 0.3, "min_iterations": 10, "max_seconds": 1.0, "warmup": 3}},
}


# --- edgetl: the CLI ------------------------------------------------------------------------------------------------


def quick_recipe(folder: Path, image_size: int) -> Path:
    """The shipped recipe with an input size (`edgetl run` has no --image-size flag): a top-level key prepended."""
    from edgetl.recipe import find_recipe

    path = folder / f"{RECIPE}-{image_size}px.toml"
    path.write_text(f"image_size = {image_size}  # bench_run --quick\n" + find_recipe(RECIPE).read_text())
    return path


def run_edgetl(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """`edgetl run` in its own process; its figures from --json (or the run directory's files without it)."""
    run_dir, json_path, log_path = work / "edgetl-run", work / "edgetl-run.json", work / "edgetl-run.log"
    cmd = [sys.executable, "-m", "edgetl", "run", "--recipe", cfg["recipe"], "--data", cfg["data"], "--out", str(run_dir),
           "--precision", "fp32", "--precision", "int8", "--format", "onnx", "--device", cfg["device"],
           "--latency-seconds", str(cfg["latency_seconds"])]
    if cfg["epochs_scale"]:
        cmd += ["--epochs-scale", str(cfg["epochs_scale"])]
    has_json = "--json" in subprocess.run([sys.executable, "-m", "edgetl", "run", "--help"], capture_output=True,
                                          text=True, env=_wide_env()).stdout
    if has_json:
        cmd += ["--json", str(json_path)]
    common.console.print(f"[bold]edgetl[/]: {' '.join(['edgetl', *cmd[3:]])}")
    start = time.perf_counter()
    with open(log_path, "w") as log:  # its tables go to the log; progress (stderr) stays on the terminal
        rc = subprocess.run(cmd, stdout=log).returncode
    wall = time.perf_counter() - start
    if rc != 0:  # a failed verify bar still leaves its figures: a result here, reported; anything earlier is fatal
        sys.stderr.write(log_path.read_text()[-4000:])
        if not ((run_dir / "verify.json").is_file() and (run_dir / "export" / "manifest.json").is_file()):
            raise SystemExit(f"edgetl run failed (exit code {rc}); its output is above")
        common.console.print(f"[yellow]edgetl run exited {rc} (its output is above); measuring what it wrote[/]")
    out = json.loads(json_path.read_text()) if has_json and json_path.is_file() else from_run_dir(run_dir)
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    return {"command": ["edgetl", *cmd[3:]], "exit_code": rc, "process_wall_s": wall, "run_json": has_json, "stage_seconds": out["stage_seconds"],
            "stages_total_s": out.get("seconds") or sum(v for v in out["stage_seconds"].values() if v),
            "export_seconds": out.get("export_seconds") or {}, "best_val_acc": out["best_val_acc"],
            "epochs": sum(p.get("epochs", 0) for p in out.get("phases") or []) or None, "go_no_go": out.get("go_no_go"),
            "verify_passed": out.get("verify_passed"), "shipped": out["shipped"], "run_dir": str(run_dir),
            "export_dir": str(run_dir / "export"), "preprocessing": manifest["preprocessing"], "labels": manifest["labels"]}


def from_run_dir(run_dir: Path) -> dict[str, Any]:
    """The --json figures rebuilt from RUN/train.json, RUN/export/manifest.json and RUN/verify.json."""
    train = json.loads((run_dir / "train.json").read_text())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    verify = json.loads((run_dir / "verify.json").read_text())
    export_seconds = {a["file"]: a.get("seconds") for a in manifest["artifacts"]}
    shipped = next((g["file"] for g in verify.get("go_no_go") or [] if g.get("decision") == "ship"), "model.onnx")
    return {"stage_seconds": {"train": train.get("wall_seconds") or train.get("seconds"),
                              "export": sum(v or 0 for v in export_seconds.values()), "verify": None},
            "export_seconds": export_seconds, "best_val_acc": train["best_val_acc"], "phases": train.get("phases"),
            "go_no_go": verify.get("go_no_go"), "verify_passed": verify.get("passed"), "shipped": shipped}


def _wide_env() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "200"}


# --- plain: what a user writes without edgetl (runs in its own process) ---------------------------------------------


def run_plain(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train (the progressive tutorial loop), torch.onnx.export, quantize_static, a parity check by hand."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from timm import create_model
    from timm.data import resolve_data_config
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from edgetl.backbones import get_backbone
    from edgetl.model.weights import load_pretrained

    stages: dict[str, float] = {}
    epochs: list[dict[str, Any]] = []
    root, size = Path(cfg["data"]), cfg["image_size"]

    # 1. train ----------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    device = torch.device(cfg["device"] if cfg["device"] != "auto" else
                          "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    torch.manual_seed(cfg["seed"])
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    model = create_model(TIMM_NAME, num_classes=len(classes))
    # = create_model(..., pretrained=True) with the ImageNet weights that load offline here (edgetl's too)
    load_pretrained(model, get_backbone(RECIPE), "imagenet")
    data_config = resolve_data_config({}, model=model)  # mean / std the weights were trained with
    mean, std = list(data_config["mean"]), list(data_config["std"])
    resize = [transforms.Resize(size), transforms.CenterCrop(size)]
    normalize = transforms.Normalize(mean, std)
    train_tf = transforms.Compose([*resize, transforms.RandomHorizontalFlip(), transforms.RandomRotation(15),
                                   transforms.ColorJitter(0.2, 0.2, 0.2), transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([*resize, transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(str(root / "train"), train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), val_tf)
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=64)
    model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    phases = (("head", cfg["head_epochs"], 1e-3, [model.classifier]),
              ("top", cfg["top_epochs"], 1e-4, [model.blocks[-1], model.conv_head, model.bn2, model.classifier]))
    for phase, n_epochs, lr, trainable in phases:
        model.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(n_epochs):
            model.train()
            running = 0.0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                running += loss.item() * len(y)
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
            epochs.append({"epoch": len(epochs) + 1, "phase": phase, "val_acc": correct / len(val_set),
                           "train_loss": running / len(train_set), "wall_s": time.perf_counter() - t0})
            print(f"  [plain] epoch {len(epochs)} {phase:>4}  val acc {epochs[-1]['val_acc']:.3f}  at "
                  f"{epochs[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    stages["train"] = time.perf_counter() - t0

    # 2. export ---------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    model = model.cpu().eval()
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(fp32))
    stages["export"] = time.perf_counter() - t0

    # 3. quantize -------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    picked = random.Random(cfg["seed"]).sample(range(len(train_set)), min(CALIBRATION_PHOTOS, len(train_set)))
    calib_set = datasets.ImageFolder(str(root / "train"), val_tf)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(picked)

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.items, None)
            return None if i is None else {input_name: calib_set[i][0].unsqueeze(0).numpy()}

    quantize_static(str(fp32), str(int8), Reader())
    stages["quantize"] = time.perf_counter() - t0

    # 4. check: int8 against fp32 on the val photos ---------------------------------------------------------------
    t0 = time.perf_counter()
    sessions = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (fp32, int8)]
    agree = right32 = right8 = 0
    for x, y in val_set:  # the exported graph takes batch 1
        a, b = (int(s.run(None, {input_name: x.unsqueeze(0).numpy()})[0].argmax()) for s in sessions)
        agree, right32, right8 = agree + (a == b), right32 + (a == y), right8 + (b == y)
    n = len(val_set)
    stages["check"] = time.perf_counter() - t0
    check = {"images": n, "top1_agreement": agree / n, "fp32_accuracy": right32 / n, "int8_accuracy": right8 / n}
    print(f"  [plain] int8 vs fp32: top-1 agreement {check['top1_agreement']:.3f} on {n} val photos",
          file=sys.stderr, flush=True)
    return {"stage_seconds": stages, "stages_total_s": sum(stages.values()), "epochs": epochs, "check": check,
            "best_val_acc": max(e["val_acc"] for e in epochs), "final_val_acc": epochs[-1]["val_acc"],
            "labels": train_set.classes, "calibration_photos": len(picked), "device": str(device),
            "torch_threads": torch.get_num_threads(), "files": {"fp32": str(fp32), "int8": str(int8)},
            "preprocessing": {"crop_size": size, "resize_size": size, "mean": mean, "std": std,
                              "interpolation": "bilinear"}}  # = Resize(size) + CenterCrop(size) + Normalize


def spawn_plain(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / "plain.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "plain", "--config", json.dumps(cfg),
           "--work", str(work), "--out", str(out)]
    common.console.print("[bold]plain[/]: ImageFolder + timm progressive loop -> torch.onnx.export -> quantize_static "
                         "-> agreement by hand")
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {**json.loads(out.read_text()), "process_wall_s": time.perf_counter() - start}


# --- the same measurements for both sides' files ----------------------------------------------------------------------


def file_bytes(path: Path) -> int:
    """The file and its external data (`model.onnx.data` beside it), if the exporter wrote any."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(path.name + "."))


def evaluate(files: dict[str, Path], *, val: Path, preprocessing: dict[str, Any], labels: list[str],
             reference: str) -> dict[str, dict[str, Any]]:
    """Top-1 accuracy of each file on every val photo (batch 1) and agreement with `reference`'s top-1."""
    from torchvision.datasets import ImageFolder

    from edgetl.preprocessing import Preprocessing, preprocess_image
    from edgetl.verify import all_threads

    prep = Preprocessing.coerce(preprocessing)
    listing = ImageFolder(str(val))
    index = {name: i for i, name in enumerate(labels)}
    runners = {k: common.onnx_session(p, threads=all_threads()) for k, p in files.items()}
    right = dict.fromkeys(files, 0)
    agree = dict.fromkeys(files, 0)
    for path, y in listing.samples:
        x = preprocess_image(path, prep)[None]
        top1 = {k: int(run(x).argmax()) for k, run in runners.items()}
        truth = index[listing.classes[y]]
        for k in files:
            right[k] += top1[k] == truth
            agree[k] += top1[k] == top1[reference]
    n = len(listing.samples)
    return {k: {"file": p.name, "bytes": file_bytes(p), "val_images": n, "accuracy": right[k] / n,
                "top1_agreement_vs_fp32": agree[k] / n} for k, p in files.items()}


def p50(path: Path, *, x, plan) -> dict[str, Any]:
    from edgetl.verify import time_runner

    t = time_runner(lambda: common.onnx_session(path, threads=P50_THREADS), runtime="onnx", x=x, threads=P50_THREADS,
                    plan=plan, file=path)
    return {"p50_ms": t.p50_ms, "p90_ms": t.p90_ms, "iterations": t.iterations, "warmup": t.warmup}


def measure(edgetl: dict[str, Any], plain: dict[str, Any], *, val: Path, plan) -> None:
    """Add `files` (accuracy on all val photos, agreement, size, p50) to each side's record."""
    from torchvision.datasets import ImageFolder

    from edgetl.preprocessing import Preprocessing, preprocess_image

    export = Path(edgetl["export_dir"])
    sides = [(edgetl, {"fp32": export / "model.onnx", "shipped": export / edgetl["shipped"]}),
             (plain, {"fp32": Path(plain["files"]["fp32"]), "int8": Path(plain["files"]["int8"])})]
    first = ImageFolder(str(val)).samples[0][0]  # one real val photo, each side's preprocessing, for the timing
    for side, files in sides:
        side["files"] = evaluate(files, val=val, preprocessing=side["preprocessing"], labels=side["labels"],
                                 reference="fp32")
        x = preprocess_image(first, Preprocessing.coerce(side["preprocessing"]))[None]
        for key, path in files.items():
            side["files"][key].update(p50(path, x=x, plan=plan))


# --- report ---------------------------------------------------------------------------------------------------------


def pct(x: float | None) -> str | None:
    return common.fmt(None if x is None else 100 * x, ".1f", " %")


def seconds(x: float | None) -> str | None:
    return common.fmt(x, ".1f", " s")


def print_report(data: dict[str, Any]) -> None:
    e, p = data["edgetl"], data["plain"]
    es, ps = e["stage_seconds"], p["stage_seconds"]
    eship, pship = e["files"]["shipped"], p["files"]["int8"]
    e32, p32 = e["files"]["fp32"], p["files"]["fp32"]
    gng = next((g for g in e.get("go_no_go") or [] if g.get("file") == eship["file"]), None)
    plain_export = ps["export"] + ps["quantize"]

    def row(name: str, a: float | None, b: float | None, fmt=seconds, ratio: bool = True) -> list[Any]:
        return [name, fmt(a), fmt(b), common.fmt(common.ratio(a, b), ".2f", "×") if ratio else None]

    n = eship["val_images"]
    body = [
        ["epochs", e.get("epochs"), len(p["epochs"]), None],
        row("best val acc (training)", e["best_val_acc"], p["best_val_acc"], pct, ratio=False),
        row("train", es.get("train"), ps["train"]),
        row("export fp32 + int8", es.get("export"), plain_export),
        row("  fp32 ONNX", e["export_seconds"].get("model.onnx"), ps["export"]),
        row("  int8 ONNX", e["export_seconds"].get("model.int8.onnx"), ps["quantize"]),
        row("verify / parity by hand", es.get("verify"), ps["check"]),
        row("total (stages)", e["stages_total_s"], p["stages_total_s"]),
        row("process wall (imports included)", e["process_wall_s"], p["process_wall_s"]),
        ["shipped file", eship["file"], pship["file"], None],
        ["  decision", (gng or {}).get("decision", "fp32 (no int8 shipped)" if eship["file"] == "model.onnx" else None),
         "by hand", None],
        row("  size", eship["bytes"] / 1e6, pship["bytes"] / 1e6, lambda v: common.fmt(v, ".2f", " MB")),
        row(f"  accuracy, all {n} val photos", eship["accuracy"], pship["accuracy"], pct, ratio=False),
        row("  top-1 agreement with fp32", eship["top1_agreement_vs_fp32"], pship["top1_agreement_vs_fp32"], pct,
            ratio=False),
        row(f"  p50, batch 1, {P50_THREADS} threads", eship["p50_ms"], pship["p50_ms"], lambda v: common.fmt(v, ".2f", " ms")),
        ["fp32 file", e32["file"], p32["file"], None],
        row("  size", e32["bytes"] / 1e6, p32["bytes"] / 1e6, lambda v: common.fmt(v, ".2f", " MB")),
        row(f"  accuracy, all {n} val photos", e32["accuracy"], p32["accuracy"], pct, ratio=False),
        row(f"  p50, batch 1, {P50_THREADS} threads", e32["p50_ms"], p32["p50_ms"], lambda v: common.fmt(v, ".2f", " ms")),
    ]
    cfg = data["config"]
    caption = (f"Data: {data['source']}; {cfg['image_size']} px. edgetl: `{' '.join(e['command'])}` (the recipe as "
               f"shipped, early stopping on); its stages from its --json. plain: timm {TIMM_NAME} + ImageFolder, "
               f"{cfg['head_epochs']} epochs classifier (Adam 1e-3) + {cfg['top_epochs']} epochs last stage (Adam 1e-4), "
               f"batch 32, the last epoch's model; torch.onnx.export defaults; quantize_static defaults (QDQ, MinMax) on "
               f"{p['calibration_photos']} train photos; int8 vs fp32 agreement by hand. Files measured here, the same "
               f"way for both: onnxruntime CPU, batch 1, each side's own preprocessing; p50 after warm-up "
               f"(edgetl.verify.time_runner). Ratios edgetl/plain: below 1 = edgetl takes less.")
    common.console.print(common.table("bench_run · photos -> shipped file, edgetl vs plain",
                                      ["", "edgetl", "plain", "edgetl/plain"], body, caption=caption))


def summary(data: dict[str, Any]) -> dict[str, Any]:
    e, p = data["edgetl"], data["plain"]
    es, ps = e["files"]["shipped"], p["files"]["int8"]
    return {"edgetl_shipped": es["file"], "shipped_accuracy": {"edgetl": es["accuracy"], "plain": ps["accuracy"]},
            "shipped_p50_ms": {"edgetl": es["p50_ms"], "plain": ps["p50_ms"]},
            "shipped_bytes": {"edgetl": es["bytes"], "plain": ps["bytes"]},
            "best_val_acc": {"edgetl": e["best_val_acc"], "plain": p["best_val_acc"]},
            "stages_total_s": {"edgetl": e["stages_total_s"], "plain": p["stages_total_s"]},
            "process_wall_s": {"edgetl": e["process_wall_s"], "plain": p["process_wall_s"]},
            "ratios_edgetl_over_plain": {"shipped_p50_ms": common.ratio(es["p50_ms"], ps["p50_ms"]),
                                         "shipped_bytes": common.ratio(es["bytes"], ps["bytes"]),
                                         "stages_total_s": common.ratio(e["stages_total_s"], p["stages_total_s"]),
                                         "shipped_accuracy_gain_pts": 100 * (es["accuracy"] - ps["accuracy"])}}


# --- main -----------------------------------------------------------------------------------------------------------


def main() -> None:
    p = common.parser(SCRIPT, __doc__)
    p.add_argument("--photos", type=Path, help=f"a folder with train/ and val/ class folders (default: {DEFAULT_PHOTOS}; "
                   "--quick: generated shapes)")
    p.add_argument("--device", default="auto", help="where both sides train: auto | cpu | cuda | mps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the plain side's seed (the recipe has its own: 0)")
    p.add_argument("--work", type=Path, help="keep both sides' files here (default: a temporary folder, removed)")
    p.add_argument("--side", choices=("plain",), help="internal: run the plain side in this process")
    p.add_argument("--config", help="internal: the side's configuration as JSON")
    args = p.parse_args()
    common.quiet_logs()

    if args.side:
        common.write_json(args.out, run_plain(json.loads(args.config), args.work))
        return

    mode_name = "quick" if args.quick else "photos"
    mode = MODES[mode_name]
    photos = args.photos or (None if args.quick else DEFAULT_PHOTOS)
    if photos is not None and not (photos / "train").is_dir():
        raise SystemExit(f"{photos}: expected train/ and val/ class folders (pass --photos DIR)")
    busy = common.warn_if_busy()
    started = time.perf_counter()
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if photos is None:
            from edgetl.data.sample import make_image_folder

            data = make_image_folder(work / "data", classes=3, per_class=12, val_per_class=6, size=64, seed=0)
            source = "generated shapes (3 classes, 12 train / 6 val each, 64 px)"
        else:
            data, source = photos.resolve(), str(photos)
        from edgetl.recipe import load_recipe

        recipe = RECIPE if mode["image_size"] is None else str(quick_recipe(work, mode["image_size"]))
        image_size = load_recipe(recipe).image_size or load_recipe(RECIPE).image_size
        if image_size is None:
            from edgetl.backbones import get_backbone

            image_size = get_backbone(RECIPE).preprocessing.crop_size
        cfg = {"recipe": recipe, "data": str(data), "device": args.device, "seed": args.seed, "image_size": image_size,
               "epochs_scale": mode["epochs_scale"], "latency_seconds": mode["latency_seconds"],
               "head_epochs": mode["head_epochs"], "top_epochs": mode["top_epochs"]}
        edgetl = run_edgetl(cfg, work)
        (work / "plain").mkdir(exist_ok=True)
        plain = spawn_plain(cfg, work / "plain")
        from edgetl.verify import TimingPlan

        common.console.print(f"measuring the files: accuracy on every val photo, p50 at batch 1 on {P50_THREADS} threads")
        measure(edgetl, plain, val=Path(data) / "val", plan=TimingPlan(**mode["timing"]))
    result = {"script": SCRIPT, "mode": mode_name, "source": source, "config": cfg, "machine": common.fingerprint(),
              "environment": common.environment(), "busy_at_start": busy, "others_during_run": noise,
              "seconds": time.perf_counter() - started, "edgetl": edgetl, "plain": plain}
    result["summary"] = summary(result)
    print_report(result)
    common.write_results("run_photos" if mode_name == "photos" else "run", result, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
