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
"""

from edgetl.train.stage import resume, train

__all__ = ["resume", "train"]
