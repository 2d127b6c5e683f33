"""The user-facing error types. Only `edgetl.cli` turns them into an exit code and a one-line message.

    raise RecipeError("recipes/x.toml: phases.0.epochs: must be > 0 (got -1)")
"""

import unicodedata


class EdgetlError(Exception):
    """A mistake in the user's input or environment: the message names the problem and the fix."""

    exit_code = 2


class RecipeError(EdgetlError):
    """A recipe file or flag is invalid."""


class BackboneError(EdgetlError):
    """An unknown backbone name."""


class WeightsError(EdgetlError):
    """Pretrained weights cannot be resolved or do not fit the model."""


class DataError(EdgetlError):
    """The dataset is unusable (missing folder, too few classes, empty class...)."""


class RunDirError(EdgetlError):
    """A run directory is missing files or holds damaged ones."""


class CheckpointError(RunDirError):
    """A checkpoint is missing, damaged or belongs to another model."""


class TrainingError(EdgetlError):
    """Training cannot continue (non-finite loss...)."""

    exit_code = 1


class ExportError(EdgetlError):
    """An export step failed; the previous export is left intact."""

    exit_code = 1


class VerifyFailed(EdgetlError):
    """A verification bar failed (exit code 1, the CI gate)."""

    exit_code = 1


def first_line(e: BaseException, *, limit: int = 200) -> str:
    """The first line of an exception's text (its type name when it has none), cut to `limit` characters:
    libraries raise multi-page messages, and a one-line error must stay one line."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def describe_error(e: BaseException, *, limit: int = 200) -> str:
    """`Type: first line` for a library's exception; an EdgetlError's own text needs no type name."""
    return first_line(e, limit=limit) if isinstance(e, EdgetlError) else f"{type(e).__name__}: {first_line(e, limit=limit)}"


# Bidirectional overrides and isolates: text that reorders itself on screen (U+202A-202E, U+2066-2069).
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x1b`, `\\n`): a file or folder name can hold
    terminal escape sequences, and a message or table must print what it names, never what it commands."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" or c in _BIDI else c for c in text)
