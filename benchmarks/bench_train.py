"""Training: `edgetl train` side by side with the plain PyTorch fine-tuning loop tutorials teach, in one run.

    .venv/bin/python benchmarks/bench_train.py            # efficientnet_lite0, sample data, quickstart recipe, 96 px
    .venv/bin/python benchmarks/bench_train.py --quick    # a tiny generated folder, 48 px, 3 epochs: a smoke test
    .venv/bin/python benchmarks/bench_train.py --full     # every backbone, its own recipe, 224 px (a GPU box)
    .venv/bin/python benchmarks/bench_train.py --photos ../shared/data/flowers128 --save   # real photos (issue 11)

`--photos DIR` (DIR with train/ and val/ class folders) is the real-photo mode: each backbone's shipped recipe,
exactly as a user runs it (its own epochs, early stopping and input size), against the progressive tutorial
loop written out below (`run_plain_progressive`), on the first `--per-class` train images of each class
(default 100) and the whole val split. That loop is what a user of timm/torchvision writes without edgetl:
`Resize + CenterCrop` to the input size with flip, rotation 15° and colour jitter, batch 32, 3 epochs of the
classifier alone (Adam 1e-3, backbone frozen, the model in train mode so BatchNorm statistics adapt), then 2
epochs with the last block and the final conv joining (Adam 1e-4); val accuracy after every epoch.

Both sides get the same backbone and ImageNet weights (`edgetl.model.weights.load_pretrained`), the same images
(the train/ and val/ folders), the same number of epochs, input size, seed, batch size and optimizer family
(AdamW, the recipe's weight decay). They differ in everything the recipe and the trainer add:

* edgetl: `edgetl.training.train_run` with the recipe (`--recipe`, patience forced to 0 so both sides run every
  epoch): images decoded once, a head phase on cached features, partial unfreezing with per-depth rates,
  frozen BatchNorm, warmup + cosine, label smoothing, channels_last, no per-step host sync.
* plain: `torchvision.datasets.ImageFolder` + `Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor,
  Normalize])` for train and `Resize + CenterCrop` for val, decoding every file every epoch, a default
  `DataLoader` (`--workers`, 0 unless given), every layer trainable at one constant learning rate
  (`--plain-lr`, default 1e-3: AdamW's own default, what `AdamW(model.parameters())` gives — and the stronger
  baseline here: at 1e-4 the plain loop ends far lower), the whole model in train mode, plain cross-entropy,
  `loss.item()` every step.

Time to accuracy is reported for two targets: a fixed val accuracy (`--target`, default 0.8) and the lower of
the two sides' final val accuracies; each is the wall time at the end of the first epoch that reaches it.

On CUDA, edgetl trains under bf16 autocast (its trainer's choice) and the plain loop in fp32, as tutorials do;
the JSON then also holds each side's peak CUDA memory.

Each side runs in its own fresh process (the script re-invokes itself with `--side`), one after the other, so
peak memory (kernel VmHWM, and psutil sampling) and caches never mix. Wall time counts from before the model
is built to the end of the last validation pass, data loading included; imports are excluded on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "bench_train"
ALL_BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_b0", "resnet18")

# Per mode: backbones, recipe (None: the backbone's own), input size, epochs scale, plain loop's DataLoader workers.
MODES: dict[str, dict[str, Any]] = {
    "quick": {"backbones": ["efficientnet_lite0"], "recipe": "quickstart", "image_size": 48, "epochs_scale": 0.01,
              "batch_size": 8, "workers": 0},
    "default": {"backbones": ["efficientnet_lite0"], "recipe": "quickstart", "image_size": 96, "epochs_scale": None,
                "batch_size": None, "workers": 0},
    "full": {"backbones": list(ALL_BACKBONES), "recipe": None, "image_size": 224, "epochs_scale": None,
             "batch_size": None, "workers": 4},
    # Real photos: the shipped recipes as they are, against the progressive tutorial loop. Only Lite0's ImageNet
    # weights work offline; the other backbones need their torchvision weights in torch hub's cache.
    "photos": {"backbones": ["efficientnet_lite0"], "recipe": None, "image_size": None, "epochs_scale": None,
               "batch_size": None, "workers": 0, "plain": "progressive", "shipped": True},
}
PLAIN_HEAD_EPOCHS, PLAIN_TOP_EPOCHS = 3, 2  # the progressive tutorial loop of --photos


# --- the two sides (each in its own process) ----------------------------------------------------------------


def edgetl_recipe(cfg: dict[str, Any]):
    from edgetl.recipe import load_recipe

    overrides = {"backbone": cfg["backbone"], "weights": cfg["weights"], "data": cfg["data"], "seed": cfg["seed"],
                 "image_size": cfg["image_size"], "batch_size": cfg["batch_size"]}
    if not cfg.get("shipped"):  # both sides run every epoch; --photos runs the recipe as a user does
        overrides["patience"] = 0
    return load_recipe(cfg["recipe"], overrides=overrides, epochs_scale=cfg["epochs_scale"])


def run_edgetl(cfg: dict[str, Any], start: float) -> dict[str, Any]:
    """`edgetl train` through its library entry point; one record per epoch, stamped with the wall clock."""
    from edgetl.training import Callbacks, train_run

    recipe = edgetl_recipe(cfg)
    epochs: list[dict[str, Any]] = []

    class Stamp(Callbacks):
        def epoch_end(self, record: dict[str, Any]) -> None:
            epochs.append({**record, "wall_s": time.perf_counter() - start})
            _progress("edgetl", epochs[-1])

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        run_dir = Path(tmp) / "run"
        result = train_run(recipe, run_dir=run_dir, device=cfg["device"], callbacks=Stamp())
        n_train = len(json.loads((run_dir / "split.json").read_text())["train"])
    phases = {}
    for name in dict.fromkeys(e["phase"] for e in epochs):
        rows = [e for e in epochs if e["phase"] == name]
        # images / (sum of per-epoch train-loop seconds): the phase's throughput with the epochs weighted by time
        phases[name] = {"epochs": len(rows), "images_per_s": len(rows) * n_train / sum(n_train / e["images_per_s"] for e in rows),
                        "cached_features": rows[0]["cached_features"]}
    train_loop_s = sum(n_train / e["images_per_s"] for e in epochs)
    return {"epochs": epochs, "phases": phases, "n_train": n_train, "train_loop_s": train_loop_s,
            "best_val_acc_checkpoint": result.best_val_acc, "recipe": recipe.model_dump()}


def run_plain(cfg: dict[str, Any], start: float) -> dict[str, Any]:
    """The tutorial fine-tune: ImageFolder + Compose transforms + DataLoader, all layers, one learning rate."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from edgetl.backbones import get_backbone
    from edgetl.model.weights import load_pretrained

    device = tutorial_device(cfg["device"])
    backbone = get_backbone(cfg["backbone"])
    prep = backbone.preprocessing.scaled(cfg["image_size"])
    interpolation = transforms.InterpolationMode(prep.interpolation)
    normalize = transforms.Normalize(prep.mean, prep.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(prep.crop_size, interpolation=interpolation),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(prep.resize_size, interpolation=interpolation),
                                 transforms.CenterCrop(prep.crop_size), transforms.ToTensor(), normalize])
    root = data_root(cfg["data"])
    train_set = datasets.ImageFolder(str(root / "train"), train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), val_tf)

    torch.manual_seed(cfg["seed"])
    model = backbone.build(len(train_set.classes))
    load_pretrained(model, backbone, cfg["weights"])
    model.to(device)
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True, num_workers=cfg["workers"])
    val_loader = DataLoader(val_set, batch_size=cfg["batch_size"] * 2, num_workers=cfg["workers"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["plain_lr"], weight_decay=cfg["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()

    epochs: list[dict[str, Any]] = []
    train_loop_s = 0.0
    for epoch in range(1, cfg["epochs"] + 1):
        record = plain_epoch(model, train_loader, val_loader, optimizer=optimizer, loss_fn=loss_fn, device=device)
        train_loop_s += record.pop("seconds")
        epochs.append({"epoch": epoch, **record, "wall_s": time.perf_counter() - start})
        _progress("plain", epochs[-1])
    return {"epochs": epochs, "n_train": len(train_set), "train_loop_s": train_loop_s}


def tutorial_device(spec: str):
    """`--device` as a tutorial picks it: auto = cuda if there is one, else mps, else cpu."""
    import torch

    if spec != "auto":
        return torch.device(spec)
    return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")


def plain_epoch(model, train_loader, val_loader, *, optimizer, loss_fn, device) -> dict[str, Any]:
    """One tutorial epoch: train mode, `loss.item()` every step, then a full val pass in eval mode."""
    import torch

    t0 = time.perf_counter()
    model.train()
    running, seen = 0.0, 0
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(y)
        seen += len(y)
    seconds = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return {"train_loss": running / seen, "val_acc": correct / len(val_loader.dataset), "images_per_s": seen / seconds,
            "seconds": seconds}


def run_plain_progressive(cfg: dict[str, Any], start: float) -> dict[str, Any]:
    """The progressive tutorial loop: frozen backbone + new classifier, then the last block joins."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from edgetl.backbones import get_backbone
    from edgetl.model.weights import load_pretrained

    device = tutorial_device(cfg["device"])
    backbone = get_backbone(cfg["backbone"])
    prep = backbone.preprocessing.scaled(cfg["image_size"])
    size, normalize = prep.crop_size, transforms.Normalize(prep.mean, prep.std)
    resize = [transforms.Resize(size), transforms.CenterCrop(size)]
    train_tf = transforms.Compose([*resize, transforms.RandomHorizontalFlip(), transforms.RandomRotation(15),
                                   transforms.ColorJitter(0.2, 0.2, 0.2), transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([*resize, transforms.ToTensor(), normalize])
    root = data_root(cfg["data"])
    train_set = datasets.ImageFolder(str(root / "train"), train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), val_tf)
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=cfg["workers"])
    val_loader = DataLoader(val_set, batch_size=64, num_workers=cfg["workers"])

    torch.manual_seed(cfg["seed"])
    model = backbone.build(len(train_set.classes))  # what timm.create_model(..., pretrained=True, num_classes=N) gives
    load_pretrained(model, backbone, cfg["weights"])
    model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    groups = backbone.groups(model)
    classifier, last_block = groups[-1], groups[-2]  # Lite0: classifier; blocks[-1] + conv_head + bn2

    epochs: list[dict[str, Any]] = []
    train_loop_s = 0.0
    for stage, (n_epochs, lr, trainable) in enumerate(((PLAIN_HEAD_EPOCHS, 1e-3, [classifier]),
                                                       (PLAIN_TOP_EPOCHS, 1e-4, [last_block, classifier]))):
        model.requires_grad_(False)
        for group in trainable:
            for module in group.modules:
                module.requires_grad_(True)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(n_epochs):
            record = plain_epoch(model, train_loader, val_loader, optimizer=optimizer, loss_fn=loss_fn, device=device)
            train_loop_s += record.pop("seconds")
            epochs.append({"epoch": len(epochs) + 1, "phase": ("head", "top")[stage], **record,
                           "wall_s": time.perf_counter() - start})
            _progress("plain", epochs[-1])
    return {"epochs": epochs, "n_train": len(train_set), "train_loop_s": train_loop_s}


def photo_subset(root: Path, folder: Path, *, per_class: int) -> Path:
    """train/: the first `per_class` files of each class (sorted names, linked); val/: the whole split."""
    for class_dir in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        target = folder / "train" / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:per_class]:
            (target / image.name).symlink_to(image.resolve())
    (folder / "val").symlink_to((root / "val").resolve())
    return folder


def _progress(side: str, e: dict[str, Any]) -> None:
    phase = f" {e['phase']:>5}" if "phase" in e else ""
    print(f"  [{side:>6}] epoch {e['epoch']:>2}{phase}  val acc {e['val_acc']:.3f}  "
          f"{e['images_per_s']:7.1f} img/s  at {e['wall_s']:6.1f} s", file=sys.stderr, flush=True)


def data_root(spec: str) -> Path:
    from edgetl.data.sample import ensure_sample

    return ensure_sample() if spec == "sample" else Path(spec)


def run_side(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available() and cfg["device"] in ("auto", "cuda")
    start = time.perf_counter()
    with common.peak_rss() as memory:
        plain = run_plain_progressive if cfg.get("plain") == "progressive" else run_plain
        result = (run_edgetl if side == "edgetl" else plain)(cfg, start)
    wall = time.perf_counter() - start
    if cuda:
        memory["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    images = result["n_train"] * len(result["epochs"])
    return {**result, "side": side, "wall_s": wall, "images_per_s": images / wall,
            "train_loop_images_per_s": images / result["train_loop_s"], "final_val_acc": result["epochs"][-1]["val_acc"],
            "best_val_acc": max(e["val_acc"] for e in result["epochs"]), "memory": memory,
            "torch_threads": torch.get_num_threads()}


# --- the parent: configure, run both sides, compare -------------------------------------------------------------


def side_config(backbone: str, mode: dict[str, Any], args) -> dict[str, Any]:
    """Everything both sides need, resolved once from the edgetl recipe so the plain loop matches it."""
    cfg = {"backbone": backbone, "recipe": args.recipe or mode["recipe"] or backbone, "weights": args.weights,
           "data": args.data or mode.get("data", "sample"), "seed": args.seed, "device": args.device,
           "image_size": args.image_size or mode["image_size"], "batch_size": mode["batch_size"],
           "epochs_scale": args.epochs_scale or mode["epochs_scale"], "workers": args.workers if args.workers is not None else mode["workers"],
           "plain_lr": args.plain_lr, "plain": mode.get("plain", "all-layers"), "shipped": mode.get("shipped", False)}
    recipe = edgetl_recipe(cfg)
    return {**cfg, "batch_size": recipe.batch_size, "weight_decay": recipe.weight_decay,
            "epochs": sum(p.epochs for p in recipe.phases),
            "image_size": recipe.image_size or common_crop(backbone)}


def common_crop(backbone: str) -> int:
    from edgetl.backbones import get_backbone

    return get_backbone(backbone).preprocessing.crop_size


def spawn(side: str, cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = folder / f"{cfg['backbone']}-{side}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--config", json.dumps(cfg), "--out", str(out)]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def time_to(epochs: list[dict[str, Any]], target: float) -> float | None:
    """Wall seconds (from the side's start) at the end of the first epoch whose val accuracy reaches `target`."""
    return next((e["wall_s"] for e in epochs if e["val_acc"] >= target - 1e-9), None)


def compare(cfg: dict[str, Any], edgetl: dict[str, Any], plain: dict[str, Any], *, target: float) -> dict[str, Any]:
    targets = {"fixed": target, "lower final": min(edgetl["final_val_acc"], plain["final_val_acc"]),
               "plain's best": plain["best_val_acc"]}
    reach = {rule: {"val_acc": acc, "edgetl_s": time_to(edgetl["epochs"], acc), "plain_s": time_to(plain["epochs"], acc)}
             for rule, acc in targets.items()}
    for r in reach.values():
        r["edgetl_over_plain"] = common.ratio(r["edgetl_s"], r["plain_s"])
    return {
        "config": cfg, "edgetl": edgetl, "plain": plain, "time_to_target": reach,
        "ratios_edgetl_over_plain": {
            "images_per_s": common.ratio(edgetl["images_per_s"], plain["images_per_s"]),
            "train_loop_images_per_s": common.ratio(edgetl["train_loop_images_per_s"], plain["train_loop_images_per_s"]),
            "wall_s": common.ratio(edgetl["wall_s"], plain["wall_s"]),
            "best_val_acc_gain_pts": 100 * (edgetl["best_val_acc"] - plain["best_val_acc"]),
            **{f"time_to_{rule.replace(' ', '_')}_s": r["edgetl_over_plain"] for rule, r in reach.items()},
            "peak_rss_mb": common.ratio(peak_mb(edgetl), peak_mb(plain)),
        },
    }


def peak_mb(side: dict[str, Any]) -> float:
    return side["memory"]["vm_hwm_mb"] or side["memory"]["peak_rss_mb"]


def print_report(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        cfg, e, p = r["config"], r["edgetl"], r["plain"]
        ratios = r["ratios_edgetl_over_plain"]
        body = [
            ("epochs", len(e["epochs"]), len(p["epochs"]), None),
            ("best val acc gain", common.fmt(ratios["best_val_acc_gain_pts"], "+.1f", " pts"), None, None),
            ("images/s (whole run)", f"{e['images_per_s']:.1f}", f"{p['images_per_s']:.1f}", common.fmt(ratios["images_per_s"], ".2f", "×")),
            ("images/s (train loop)", f"{e['train_loop_images_per_s']:.1f}", f"{p['train_loop_images_per_s']:.1f}",
             common.fmt(ratios["train_loop_images_per_s"], ".2f", "×")),
            *((f"  phase {name}" + (" (cached features)" if ph["cached_features"] else ""), f"{ph['images_per_s']:.1f}", None, None)
              for name, ph in e["phases"].items()),
            ("wall time", f"{e['wall_s']:.1f} s", f"{p['wall_s']:.1f} s", common.fmt(ratios["wall_s"], ".2f", "×")),
            ("final val acc", f"{e['final_val_acc']:.3f}", f"{p['final_val_acc']:.3f}", None),
            ("best val acc (any epoch)", f"{e['best_val_acc']:.3f}", f"{p['best_val_acc']:.3f}", None),
            *((f"time to val acc ≥ {t['val_acc']:.3f} ({rule})", common.fmt(t["edgetl_s"], ".1f", " s") or "not reached",
               common.fmt(t["plain_s"], ".1f", " s") or "not reached", common.fmt(t["edgetl_over_plain"], ".2f", "×"))
              for rule, t in r["time_to_target"].items()),
            ("peak RSS", f"{peak_mb(e):.0f} MB", f"{peak_mb(p):.0f} MB", common.fmt(ratios["peak_rss_mb"], ".2f", "×")),
        ]
        caption = (f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['image_size']} px, seed {cfg['seed']}, "
                   f"data {cfg['data']}, weights {cfg['weights']}, device {cfg['device']}, {e['torch_threads']} torch threads. "
                   f"{_sides(cfg)}. Ratios edgetl/plain: images/s > 1 and times < 1 mean "
                   f"edgetl is faster. Whole run = from model build to the last validation, data loading included; train "
                   f"loop = the training passes alone. Time to accuracy: wall time at the end of the first epoch that "
                   f"reaches it. Peak RSS: kernel high-water mark of each side's own process.")
        common.console.print(common.table(f"bench_train · {cfg['backbone']}", ["", "edgetl", "plain", "edgetl/plain"],
                                          body, caption=caption))
        curve = [(i + 1, a.get("phase"), f"{a['val_acc']:.3f}", f"{a['wall_s']:.1f} s", f"{b['val_acc']:.3f}", f"{b['wall_s']:.1f} s")
                 for i, (a, b) in enumerate(zip(e["epochs"], p["epochs"]))]
        common.console.print(common.table(f"bench_train · {cfg['backbone']} · val accuracy by epoch",
                                          ["epoch", "edgetl phase", "edgetl val acc", "at", "plain val acc", "at"], curve))


def _sides(cfg: dict[str, Any]) -> str:
    if cfg.get("plain") == "progressive":
        return (f"edgetl: the shipped recipe {cfg['recipe']} as it is (early stopping on). plain: the progressive "
                f"tutorial loop, {PLAIN_HEAD_EPOCHS} epochs classifier (Adam 1e-3, BN adapting) + {PLAIN_TOP_EPOCHS} "
                f"epochs last block (Adam 1e-4), flip/rotation/colour jitter, DataLoader num_workers={cfg['workers']}")
    return (f"edgetl: recipe {cfg['recipe']} (patience 0). plain: AdamW lr {cfg['plain_lr']} wd {cfg['weight_decay']}, "
            f"all layers, DataLoader num_workers={cfg['workers']}")


def main() -> None:
    p = common.parser(SCRIPT, __doc__)
    p.add_argument("--backbone", action="append", help="backbone to train (repeatable; default per mode)")
    p.add_argument("--recipe", help="edgetl recipe (default: quickstart; --full: each backbone's own)")
    p.add_argument("--weights", default="imagenet", help="weights for both sides (default: %(default)s)")
    p.add_argument("--data", help="a folder with train/ and val/ class folders, or `sample` (default)")
    p.add_argument("--image-size", type=int, help="input size for both sides (default per mode)")
    p.add_argument("--epochs-scale", type=float, help="scale every recipe phase's epochs")
    p.add_argument("--plain-lr", type=float, default=1e-3, help="the plain loop's one learning rate (default: %(default)s, AdamW's default)")
    p.add_argument("--workers", type=int, help="the plain loop's DataLoader num_workers (default: 0; --full: 4)")
    p.add_argument("--target", type=float, default=0.8, help="fixed val accuracy for time-to-accuracy (default: %(default)s; "
                   "the lower of the two finals is always reported too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (both sides)")
    p.add_argument("--photos", type=Path, help="real-photo mode: a folder with train/ and val/ class folders")
    p.add_argument("--per-class", type=int, default=100, help="--photos: train images per class (default: %(default)s)")
    p.add_argument("--side", choices=("edgetl", "plain"), help="internal: run one side in this process")
    p.add_argument("--config", help="internal: the side's configuration as JSON")
    args = p.parse_args()
    common.quiet_logs()

    if args.side:
        common.write_json(args.out, run_side(args.side, json.loads(args.config)))
        return

    mode_name = "photos" if args.photos else common.mode_of(args)
    mode = dict(MODES[mode_name])
    busy = common.warn_if_busy()
    started = time.perf_counter()
    rows = []
    with common.others_load() as noise, tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if mode_name == "quick" and not args.data:
            from edgetl.data.sample import make_image_folder

            mode["data"] = str(make_image_folder(Path(tmp) / "data", classes=3, per_class=8, val_per_class=4, size=56, seed=0))
        if args.photos:
            mode["data"] = str(photo_subset(args.photos, Path(tmp) / "photos", per_class=args.per_class))
            mode["source"] = f"{args.photos} ({args.per_class} train images per class, the whole val split)"
        for backbone in args.backbone or mode["backbones"]:
            cfg = side_config(backbone, mode, args)
            common.console.print(f"[bold]{backbone}[/]: edgetl, then plain, {cfg['epochs']} epochs each at {cfg['image_size']} px")
            edgetl, plain = spawn("edgetl", cfg, Path(tmp)), spawn("plain", cfg, Path(tmp))
            rows.append(compare(cfg, edgetl, plain, target=args.target))
    print_report(rows)
    summary = [{"backbone": r["config"]["backbone"], **r["ratios_edgetl_over_plain"],
                "time_to_target": r["time_to_target"],
                "final_val_acc": {"edgetl": r["edgetl"]["final_val_acc"], "plain": r["plain"]["final_val_acc"]}} for r in rows]
    data = {"script": SCRIPT, "mode": mode_name, "machine": common.fingerprint(), "environment": common.environment(),
            "busy_at_start": busy, "others_during_run": noise, "seconds": time.perf_counter() - started, "runs": rows, "summary": summary}
    common.write_results("train_photos" if args.photos else "train", data, out=args.out, save=args.save)


if __name__ == "__main__":
    main()
