"""Recipes: the typed, validated description of a fine-tuning run (TOML in `recipes/`).

    recipe = load_recipe("efficientnet_lite0", overrides={"seed": 1}, epochs_scale=0.5)

A recipe is a list of phases; each phase names what trains (`head`, `last:N`, `all`), its learning rates,
schedule and BatchNorm policy. Unknown keys and bad values are refused with one line per field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgetl.errors import BackboneError, RecipeError

# The export vocabulary, written once: the schema validates with these types, and the CLI's choices, export and
# verify are built from the tuples.
Precision = Literal["fp32", "fp16", "int8"]  # the first is the reference every other precision is judged against
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
Activations = Literal["auto", "uint8", "int8"]  # INT8 activation type; auto: the faster one on this CPU
PRECISIONS: tuple[str, ...] = get_args(Precision)
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
ACTIVATIONS: tuple[str, ...] = get_args(Activations)
InputType = Literal["float", "uint8"]  # what exported files take: float32 NCHW normalized, or the device's uint8 NHWC crop
OutputType = Literal["logits", "probs"]
INPUT_TYPES: tuple[str, ...] = get_args(InputType)
OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)

RECIPES_DIR = Path(__file__).parent / "recipes"  # a link to the top-level recipes/ folder; shipped as package data

MAX_LORA_RANK = 1024  # wider than any layer of the shipped backbones; a typo beyond it would allocate GBs
MAX_LR = 1e6  # far above any useful rate (a NaN run still ends cleanly); beyond it a typo like 1e308 overflows
_TRAIN_SPEC = re.compile(r"^(head|all|last:([1-9][0-9]*))$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class Phase(_Strict):
    """One phase of the progressive recipe."""

    name: str = Field(min_length=1, pattern=r"\S")
    epochs: int = Field(gt=0)
    train: str = "head"  # "head" | "last:N" (head + the last N backbone groups) | "all"
    lr: float = Field(1e-4, gt=0, le=MAX_LR)  # rate of the deepest trainable backbone group
    lr_decay: float = Field(1.0, gt=0, le=1)  # per group towards the input: discriminative rates
    head_lr: float = Field(1e-3, gt=0, le=MAX_LR)
    group_lr: dict[str, float] = {}  # explicit rates by group name; win over lr/lr_decay
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    bn: Literal["frozen", "train"] = "frozen"  # frozen: eval-mode statistics and frozen affine
    augment: bool = True  # off in a head-only phase lets the frozen backbone's features be cached
    # > 0: the frozen part runs once, on this many augmented views of each train image, and every epoch trains
    # on those cached outputs (features for `head`, the first trainable group's input for `last:N`).
    views: int = Field(0, ge=0, le=64)

    @field_validator("train")
    @classmethod
    def _train_spec(cls, v: str) -> str:
        if not _TRAIN_SPEC.match(v):
            raise ValueError("must be 'head', 'all' or 'last:N' with N >= 1")
        return v

    @field_validator("group_lr")
    @classmethod
    def _positive_rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, r in v.items() if not (isinstance(r, (int, float)) and math.isfinite(r) and 0 < r <= MAX_LR)]
        if bad:
            raise ValueError(f"rates must be finite, > 0 and <= {MAX_LR:g} (bad: {', '.join(bad)})")
        return v

    @model_validator(mode="after")
    def _warmup_fits(self) -> Phase:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _views_need_a_frozen_part(self) -> Phase:
        if self.views and self.train == "all":
            raise ValueError("views caches the frozen part's outputs; a phase that trains 'all' has none — "
                             "remove views or train 'head' / 'last:N'")
        if self.views and not self.augment:
            raise ValueError("views are augmented views; with augment = false a head phase caches plain features "
                             "already — remove views or set augment = true")
        return self

    @property
    def cached(self) -> bool:
        """Whether the frozen part runs once before the epochs (features or activations are cached)."""
        return self.views > 0 or (self.train == "head" and not self.augment)

    @property
    def last_n(self) -> int | None:
        """How many backbone groups train: None for all, 0 for head only."""
        if self.train == "all":
            return None
        return 0 if self.train == "head" else int(self.train.split(":")[1])


class LoraSection(_Strict):
    """LoRA adapters: base weights frozen, only adapters (+ head, + norms if asked) train."""

    rank: int = Field(4, ge=1, le=MAX_LORA_RANK)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["pointwise"], min_length=1)  # pointwise | conv | linear | name patterns
    allow_depthwise: bool = False
    train_norms: bool = True  # norms of trainable groups train too (when the phase's bn policy is "train")


DEFAULT_PROBE_EPOCHS = 1
ADDED_SECTIONS = ("export", "head", "probe_epochs")


class HeadSection(_Strict):
    """The classifier: replaced by Linear -> ReLU -> Dropout per `hidden` width, then the output Linear."""

    hidden: list[int] = Field(default_factory=list, max_length=8)  # widths; [] keeps the backbone's own head
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(not 1 <= w <= 65536 for w in v):
            raise ValueError("hidden widths must be whole numbers in [1, 65536]")
        return v

    def spec(self):
        from edgetl.backbones import MLPHead

        return MLPHead(hidden=tuple(self.hidden), dropout=self.dropout)


class ExportSection(_Strict):
    """What `edgetl run` exports (`edgetl export` flags override it): formats, precisions and INT8 calibration."""

    # names of edgetl.formats (checked against the registry before any work); None: onnx and torchscript
    formats: list[str] | None = Field(None, min_length=1)
    precisions: list[Precision] = Field(default_factory=lambda: ["fp32"], min_length=1)
    calibration: CalibrationMethod = "minmax"
    calibration_images: int = Field(128, ge=1, le=10_000)  # train images, a seeded draw over classes
    activations: Activations = "uint8"
    input: InputType = "float"  # uint8: every file takes the device's uint8 [batch, crop, crop, 3] RGB crop
    output: OutputType = "logits"  # probs: a softmax at the end of every file


class Recipe(_Strict):
    backbone: str
    weights: str = "imagenet"  # imagenet | none | a path to a state dict
    data: str = "sample"  # sample | cifar10 | a folder
    subset: int | None = Field(None, gt=0)
    image_size: int | None = Field(None, ge=16, le=1024)  # input (crop) size; None: the weights' own
    batch_size: int = Field(32, gt=0, le=4096)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(3, ge=0)  # a phase ends after this many epochs without a better val figure; 0 disables
    # A phase after the first ends when it has not beaten best.pt after this many of its epochs (a deeper phase
    # that does not pay at once rarely pays later); 0 disables; None (unset): DEFAULT_PROBE_EPOCHS
    probe_epochs: int | None = Field(None, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**63)  # torch generators take int64
    head: HeadSection | None = None  # an MLP head (`hidden`, `dropout`); None: the backbone's classifier
    lora: LoraSection | None = None
    export: ExportSection | None = None
    phases: list[Phase] = Field(min_length=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from edgetl.backbones import check_backbone_name

        try:
            check_backbone_name(v)
        except BackboneError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _batch_of_one_needs_frozen_bn(self) -> Recipe:
        bad = [p.name for p in self.phases if p.bn == "train"]
        if self.batch_size == 1 and bad:
            raise ValueError(f"batch_size 1 cannot train BatchNorm statistics (phase(s) {', '.join(bad)} have "
                             f"bn = 'train'): use batch_size >= 2 or bn = 'frozen'")
        return self

    @model_validator(mode="after")
    def _unique_phase_names(self) -> Recipe:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique (got {names})")
        return self

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(exclude_none=True))

    @property
    def probe(self) -> int:
        """Epochs a deeper phase gets to beat best.pt (`probe_epochs`, else the default)."""
        return DEFAULT_PROBE_EPOCHS if self.probe_epochs is None else self.probe_epochs

    def digest(self) -> str:
        """sha256 of the canonical JSON form: the recipe hash the manifest carries. A section added after
        0.1 is left out while unset, so runs written before it existed keep their hash (and resume)."""
        unset = {key for key in ADDED_SECTIONS if getattr(self, key) is None}
        return hashlib.sha256(json.dumps(self.model_dump(exclude=unset), sort_keys=True).encode()).hexdigest()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "recipe"
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] not in ("missing", "model_type") and not isinstance(e["input"], dict) else ""
        if e["type"] == "extra_forbidden":
            msg = "unknown key — check the spelling against `edgetl recipes` / the README's recipe reference"
        lines.append(f"{source}: {where}: {msg}{got}")
    return "\n".join(lines)


def known_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def find_recipe(name_or_path: str) -> Path:
    """A recipe name (`quickstart`, shipped with the package) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {path} not found")
        return path
    known = known_recipes()
    if name_or_path in known:
        return known[name_or_path]
    hint = difflib.get_close_matches(name_or_path, list(known), n=1)
    maybe = f" — did you mean {hint[0]!r}?" if hint else ""
    raise RecipeError(f"unknown recipe {name_or_path!r}; known: {', '.join(known)}{maybe}, or a path to a .toml file")


def parse_recipe(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(source, e)) from None


# --- settings from flags: `--set key=value`, `--epochs N`, `--lr X` ------------------------------------------

Settings = Mapping[str, Any] | Sequence[str]  # {"head.dropout": 0.2} or ["head.dropout=0.2"]


def parse_setting(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value): the value read as a TOML value (0.05, true, ["fp32", "int8"]), else as the
    plain string it is (adamw, a path)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set label_smoothing=0.05 or "
                          "--set phases.0.epochs=3")
    try:
        return key, tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw.strip()


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The recipe table type an annotation holds (`X | None`, `list[X]`), and whether it is a list of them."""
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if get_origin(arg) is list and get_args(arg) and isinstance(get_args(arg)[0], type) \
                and issubclass(get_args(arg)[0], BaseModel):
            return get_args(arg)[0], True
    return None, False


def _unknown_key(key: str, part: str, known: Sequence[str]) -> RecipeError:
    hint = difflib.get_close_matches(part, list(known), n=1)
    maybe = f" — did you mean {hint[0]!r}?" if hint else f"; known here: {', '.join(known)}"
    return RecipeError(f"--set {key}: unknown recipe key {part!r}{maybe}")


def apply_setting(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted `key` (`label_smoothing`, `head.dropout`, `phases.1.lr`, `export.precisions`) in the
    recipe's raw table, checking each part against the schema, so a typo is named with the closest key."""
    parts = key.split(".")
    model: type[BaseModel] | None = Recipe
    node: Any = data
    i = 0
    while True:
        part = parts[i]
        if model is None:  # a free-form table (a phase's group_lr): the key is the user's
            if i != len(parts) - 1:
                raise RecipeError(f"--set {key}: {'.'.join(parts[:i])} holds values, not tables")
            node[part] = value
            return
        if part not in model.model_fields:
            raise _unknown_key(key, part, list(model.model_fields))
        if i == len(parts) - 1:
            node[part] = value
            return
        inner, is_list = _model_in(model.model_fields[part].annotation)
        if is_list:
            items = node.get(part) or []
            index = parts[i + 1] if i + 1 < len(parts) else ""
            if not index.isdigit() or int(index) >= len(items):
                raise RecipeError(f"--set {key}: {part} needs an index 0..{len(items) - 1} (e.g. {part}.0.epochs)")
            node, model, i = items[int(index)], inner, i + 2
            if i == len(parts):
                raise RecipeError(f"--set {key}: name a key of {part}.{index}, e.g. {part}.{index}.epochs")
            continue
        is_table = inner is not None or get_origin(model.model_fields[part].annotation) is dict
        if not is_table:
            raise RecipeError(f"--set {key}: {part} is a value, not a table")
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise RecipeError(f"--set {key}: {part} is not a table in this recipe")
        node, model, i = node[part], inner, i + 1


def _settings(settings: Settings | None) -> list[tuple[str, Any]]:
    if not settings:
        return []
    if isinstance(settings, Mapping):
        return list(settings.items())
    return [parse_setting(text) for text in settings]


def _total_epochs(data: dict[str, Any], epochs: int) -> None:
    """Spread `epochs` over the phases in the recipe's proportions, each at least 1, summing exactly to it."""
    phases = [p for p in data.get("phases", []) if isinstance(p, dict) and isinstance(p.get("epochs"), int)]
    if not phases or epochs < len(phases):
        raise RecipeError(f"--epochs {epochs}: the recipe has {len(phases)} phase(s), each needs at least one epoch")
    total = sum(p["epochs"] for p in phases)
    shares = [epochs * p["epochs"] / total for p in phases]
    counts = [max(1, math.floor(s)) for s in shares]
    by_remainder = sorted(range(len(phases)), key=lambda k: shares[k] - math.floor(shares[k]), reverse=True)
    for k in (by_remainder * epochs)[:max(0, epochs - sum(counts))]:  # largest remainders first
        counts[k] += 1
    while sum(counts) > epochs:  # the minimum of 1 overshot: take from the longest
        counts[counts.index(max(counts))] -= 1
    for phase, count in zip(phases, counts):
        if "warmup_epochs" in phase:  # keep the warmup's share of the phase
            phase["warmup_epochs"] = min(phase["warmup_epochs"] * count / phase["epochs"], count / 2)
        phase["epochs"] = count


def _peak_lr(data: dict[str, Any], lr: float) -> None:
    """`--lr`: the first phase's head rate becomes `lr`; every rate of every phase scales by the same factor, so
    the recipe's ratios (head vs backbone, per-depth decay, later phases) stay as tuned."""
    if not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise RecipeError(f"--lr must be > 0 and <= {MAX_LR:g} (got {lr})")
    phases = [p for p in data.get("phases", []) if isinstance(p, dict)]
    if not phases:
        return
    fields = Phase.model_fields
    first = phases[0].get("head_lr", fields["head_lr"].default)
    if not (_number(first) and first > 0):
        return  # nothing to scale by: the schema then names the bad rate in one line

    def scaled(value: Any) -> Any:
        return value * factor if _number(value) else value  # a bad value stays for the schema to name

    factor = lr / first
    for phase in phases:
        for name in ("lr", "head_lr"):
            phase[name] = scaled(phase.get(name, fields[name].default))
        phase["head_lr"] = lr if phase is phases[0] else phase["head_lr"]  # exact, not a float product
        if isinstance(phase.get("group_lr"), dict):
            phase["group_lr"] = {k: scaled(v) for k, v in phase["group_lr"].items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_EPOCHS_SCALE = 100  # a recipe's epochs times 100 is already far past any fine-tune; beyond is a typo


def load_recipe(name_or_path: str, *, overrides: dict[str, Any] | None = None, epochs_scale: float | None = None,
                settings: Settings | None = None, epochs: int | None = None, lr: float | None = None) -> Recipe:
    """Load, apply CLI overrides (None values are ignored) and validate a recipe. Then `settings` (dotted recipe
    keys, `--set`), `epochs` (the total over the phases, `--epochs`) and `lr` (the first phase's head rate, the
    others scaled with it, `--lr`), in that order."""
    path = find_recipe(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: editors on Windows add a BOM
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    lora = {k.removeprefix("lora_"): overrides.pop(k) for k in ("lora_rank", "lora_alpha") if k in overrides}
    if lora:  # --lora-rank / --lora-alpha switch LoRA on (with the recipe's other [lora] settings, if any)
        data["lora"] = {**(data.get("lora") or {}), **lora}
    data.update(overrides)
    if epochs_scale is not None:
        if not (math.isfinite(epochs_scale) and 0 < epochs_scale <= MAX_EPOCHS_SCALE):
            raise RecipeError(f"--epochs-scale must be > 0 and at most {MAX_EPOCHS_SCALE} (got {epochs_scale:g}) — "
                              f"e.g. 0.5 for half the epochs; --epochs N sets the total")
        for phase in data.get("phases", []):
            if isinstance(phase, dict) and isinstance(phase.get("epochs"), int):
                phase["epochs"] = max(1, round(phase["epochs"] * epochs_scale))
                if "warmup_epochs" in phase:
                    phase["warmup_epochs"] = phase["warmup_epochs"] * epochs_scale
    for key, value in _settings(settings):
        apply_setting(data, key, value)
    if epochs is not None:
        _total_epochs(data, epochs)
    if lr is not None:
        _peak_lr(data, lr)
    return parse_recipe(data, source=str(path))
