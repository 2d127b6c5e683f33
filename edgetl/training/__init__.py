"""The training stage: the progressive recipe, from a data folder and pretrained weights to a run directory.

    from edgetl.training import train_run, resume_run
    summary = train_run(load_recipe("quickstart", overrides={"data": "sample"}), run_dir=Path("artifacts/r1"))

    stage.py        train_run / resume_run: the phase order, checkpoints, the run directory's files
    phases.py       one phase's policy applied: trainable groups, per-depth rates, BN mode, cached inputs
    epoch.py        one epoch: batches, the training pass, evaluation
    state.py        the resume point, best epoch and early stopping as one typed object
    cache.py        the frozen prefix run once (in onnxruntime) over augmented views; phases train on its output
    distributed.py  torchrun / DDP: ranks, the shared batch order, agreed stops
    memory.py       the size guard: a backbone whose training cannot fit is refused before it is built
    curves.py       curves.png

The Python API's `edgetl.train(recipe=..., data=...)` (edgetl/api.py) resolves a recipe and calls `train_run`.
"""

# Callbacks: the base class of train_run's `callbacks=` argument. Batcher, memory_format, train_one_epoch: the
# one-epoch loop itself, for callers that time it alone on their own tensors (benchmarks/bench_gpu.py).
from edgetl.training.epoch import Batcher, Callbacks, memory_format, train_one_epoch
from edgetl.training.stage import resume_run, train_run

__all__ = ["Batcher", "Callbacks", "memory_format", "resume_run", "train_one_epoch", "train_run"]
