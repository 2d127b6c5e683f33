"""The export stage: checkpoint -> deploy model (LoRA merged, BatchNorm folded) -> each format -> manifest.

    from edgetl.export import export_run

    stage.py     export_run: fold, write every requested format, swap the new export in whole
    deploy.py    the pure model transform: merge LoRA, fold BatchNorm, check nothing is left
    manifest.py  manifest.json, filled in (its schema is edgetl.rundir.Manifest)
    precision.py fp16 / INT8 files from the fp32 ones: calibration, the accuracy guard
"""

# deploy_model: the fold (LoRA merged, BatchNorm folded) of a model that is not in a run directory
# (benchmarks/bench_engines.py). QuantPlan: the type of export_run's `plan=` argument.
from edgetl.export.deploy import deploy_model
from edgetl.export.precision import QuantPlan
from edgetl.export.stage import export_run

__all__ = ["QuantPlan", "deploy_model", "export_run"]
