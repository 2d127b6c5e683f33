"""Export formats, one module each, in one registry: `FORMATS = {name: Format}`.

    from edgetl.formats import FORMATS, resolve_formats
    resolve_formats(["all"])   # ["onnx", "torchscript", "executorch", "litert"]
    DEFAULT_FORMATS            # ["onnx", "torchscript"]: those without an optional extra
    ENGINE_FORMAT              # "onnx": the format the --runtime engines run

Adding a format is adding a module with a `FORMAT` and one line here; export, verify, predict and the CLI's
`--format` choices follow from the registry. Formats whose runtime is an optional extra (ExecuTorch, LiteRT) are
written when asked for (`--format`, the recipe's [export] formats, or `all`), never by default: a default export
must work on the core install.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from edgetl.errors import EdgetlError
from edgetl.formats import executorch, litert, onnx, torchscript
from edgetl.formats.base import Format

FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if fmt.name in FORMATS or fmt.name == "all":
        raise ValueError(f"export format {fmt.name!r} is registered twice (or is the reserved name 'all')")
    FORMATS[fmt.name] = fmt
    return fmt


for _module in (onnx, torchscript, executorch, litert):  # the order of `--format all`, the manifest and the reports
    register(_module.FORMAT)

DEFAULT_FORMATS: list[str] = [name for name, fmt in FORMATS.items() if fmt.extra is None]
# The format whose files `--runtime openvino|opencv` runs: the engines are ONNX engines.
ENGINE_FORMAT: str = next(name for name, fmt in FORMATS.items() if fmt.runs_in_engines)


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(FORMATS), n=1)
        maybe = f" — did you mean {hint[0]!r}?" if hint else ""
        raise EdgetlError(f"unknown export format {name!r}; known: {', '.join(FORMATS)}, all{maybe}") from None


def resolve_formats(names: Sequence[str]) -> list[str]:
    """Format names in order, `all` expanded, duplicates dropped; an unknown name is a usage error."""
    resolved: list[str] = []
    for name in names:
        for n in FORMATS if name == "all" else [get_format(name).name]:
            if n not in resolved:
                resolved.append(n)
    if not resolved:
        raise EdgetlError(f"no export format given; known: {', '.join(FORMATS)}, all")
    return resolved
