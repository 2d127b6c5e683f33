"""The train stage: the progressive recipe, from a data folder and pretrained weights to a run directory.

    from edgetl.train import train, resume

    stage.py       train / resume: the phase order, checkpoints, the run directory's files
    phases.py      one phase's policy applied: trainable groups, per-depth rates, BN mode, cached inputs
    epoch.py       one epoch: batches, the training pass, evaluation
    state.py       the resume point, best epoch and early stopping as one typed object
    data.py        folders and named datasets, the seeded split, decoding once, batch augmentation
    sample.py      the generated sample dataset
    weights.py     --weights: ImageNet, a state-dict file or none
    checkpoint.py  atomic save, safe load, the model a checkpoint describes
    lora.py        LoRA adapters: inject, count, merge
    curves.py      curves.png

Called, this package is the Python API's train: `edgetl.train(recipe=..., data=...)` (edgetl.api.train). The two
share a name, and Python binds `edgetl.train` to this package as soon as anything imports it, so the package
forwards calls instead of the name meaning one thing before that import and another after.
"""

import inspect
import sys
import types
from typing import Any

from edgetl.train.stage import resume, train

__all__ = ["resume", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from edgetl.api import train as api_train

        return api_train(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # what help() and a notebook's tooltip show for the call
        from edgetl.api import train as api_train

        return inspect.signature(api_train)


sys.modules[__name__].__class__ = _CallableModule
