"""The gate: every check with its bar, one ✓/✗ line each, and the bars per precision.

    gate = Gate(); gate.check("model.onnx", "values", "max abs diff", 3e-6, "<=", 1e-4); gate.failures

Checks are collected, never raised one by one: verify reports every failure at once (`ChecksFailed`).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Bars:
    min_top1: float  # fraction of inputs whose top-1 class must agree with the reference
    atol: float | None = None  # max |artifact - reference| over every logit
    rtol: float | None = None  # max |artifact - reference| per row, relative to the row's largest |logit| (at
    # least the median row's: a near tie's own logits are near zero)
    max_accuracy_drop: float | None = None  # reference accuracy - artifact accuracy on labelled images


# Per precision: how close an artifact must stay to the fp32 checkpoint; a precision without an entry fails
# verify, it never passes. fp32: rounding only. fp16: 11-bit mantissas through ~50 layers stay within a few
# tenths of a percent of the logit scale on real images; 2 % leaves room for the noise inputs. int8: what
# users accept from post-training quantization (onnxruntime / TensorRT guides): the same class on 98 % of
# images and at most 1 point of accuracy lost; and its values within half the logit scale of the checkpoint's on
# every real image (shipped Lite0 INT8 files stay under 0.15), so a file whose logits are scaled, shifted or
# swapped fails even where the winning class survives.
BARS: dict[str, Bars] = {
    "fp32": Bars(min_top1=1.0, atol=1e-4),
    "fp16": Bars(min_top1=0.98, rtol=0.02),
    "int8": Bars(min_top1=0.98, rtol=0.5, max_accuracy_drop=0.01),
}
OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}
SYMBOLS = {"<=": "≤", ">=": "≥", "==": "="}


@dataclass(frozen=True)
class Check:
    artifact: str
    kind: str  # integrity | meaning | load | names | shapes | values | golden | latency | regression
    measure: str
    value: Any
    op: str  # a key of OPS
    bar: Any
    passed: bool
    unit: str = ""  # how value and bar print: "" (as they are), "%", "+%" (signed), "ms"
    detail: str = ""

    def line(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.artifact} · {self.kind} · {self.measure} " \
               f"{_fmt(self.value, self.unit)} (bar {SYMBOLS[self.op]} {_fmt(self.bar, self.unit)})"

    def message(self) -> str:
        text = f"{self.artifact}: {self.measure} {_fmt(self.value, self.unit)} fails the bar " \
               f"{SYMBOLS[self.op]} {_fmt(self.bar, self.unit)}"
        return f"{text} — {self.detail}" if self.detail else text


def _fmt(x: Any, unit: str) -> str:
    if unit in ("%", "+%"):
        return f"{100 * x:+.1f} %" if unit == "+%" else f"{100 * x:.1f} %"
    if unit == "ms":
        return f"{x:.3g} ms"
    return f"{x:.3g}" if isinstance(x, float) else repr(x) if isinstance(x, str) else str(x)


class Gate:
    """Collects checks, logging one ✓/✗ line each; the failures are raised once, at the end."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def check(self, artifact: str, kind: str, measure: str, value: Any, op: str, bar: Any, *, unit: str = "",
              detail: str = "") -> bool:
        check = Check(artifact, kind, measure, value, op, bar, bool(OPS[op](value, bar)), unit, detail)
        self.checks.append(check)
        (log.info if check.passed else log.warning)(check.line())
        return check.passed

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


