"""Silence chatty libraries for a block: their loggers raised to WARNING, then restored.

    with quiet("onnxscript", "onnx_ir"): torch.onnx.export(...)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Raise these libraries' loggers to WARNING for the block, then restore them."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(max(saved[name], logging.WARNING))
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
