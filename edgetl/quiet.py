"""Silence chatty libraries for a block: their loggers raised to WARNING (or their native prints sent to the
debug log), then restored.

    with quiet("onnxscript", "onnx_ir"): torch.onnx.export(...)
    with quiet_native(): interpreter = Interpreter(model_path=...)
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise these libraries' loggers to `level` (WARNING) for the block, then restore them."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(max(saved[name], level))
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Send what native code prints during the block (absl's and ExecuTorch's C++ logs: "Created TensorFlow Lite
    XNNPACK delegate", "Resetting threadpool", cpuinfo probes) to the debug log instead of the terminal: file
    descriptors 1 and 2, and Python's own streams (ExecuTorch's bindings print through them). Python exceptions
    still propagate with their own messages."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # no stdout or stderr to redirect (a daemon): nothing can reach a terminal anyway
        saved = {}
    captured = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                yield
        finally:
            _flush_c_stdio()  # C's stdout is block-buffered off a terminal: flush it while it points at the sink
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = (sink.read().decode("utf-8", errors="replace") + captured.getvalue()).strip()
            if text:
                logging.getLogger(__name__).debug("native output: %s", text[-2000:])


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach (Windows): nothing buffered there to lose
        pass
