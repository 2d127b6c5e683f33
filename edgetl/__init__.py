"""edgetl: fine-tune a pretrained image classifier, fold and export it, verify it.

    edgetl run            # train -> export -> verify on the built-in sample data

    import edgetl         # the same from Python (edgetl/api.py)
    run = edgetl.train(recipe="quickstart", data="sample"); run.export(); run.verify().passed

The API's names load on first use (PEP 562), so `import edgetl` and `edgetl --help` import no torch. Nothing in
the package imports this module: the version lives in edgetl/version.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetl.version import __version__

__all__ = ["Hooks", "Prediction", "Run", "TqdmHooks", "__version__", "load_run", "train"]

if TYPE_CHECKING:  # what type checkers and IDEs see: the API's functions and classes
    from edgetl.api import Hooks, Prediction, Run, TqdmHooks, load_run, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgetl import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
