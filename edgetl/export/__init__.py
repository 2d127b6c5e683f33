"""The export stage: checkpoint -> deploy model (LoRA merged, BatchNorm folded) -> each format -> manifest.

    from edgetl.export import export_run

    stage.py     export_run: fold (edgetl/model/deploy.py), write every requested format, swap the new export in whole
    manifest.py  manifest.json, filled in (its schema is edgetl.rundir.Manifest)
    precision.py fp16 / INT8 files from the fp32 ones: calibration, the accuracy guard
"""

# deploy_model: the fold (LoRA merged, BatchNorm folded) of a model that is not in a run directory
# (benchmarks/bench_engines.py). QuantPlan: the type of export_run's `plan=` argument.
from edgetl.export.precision import QuantPlan
from edgetl.export.stage import export_run
from edgetl.model.deploy import deploy_model

__all__ = ["QuantPlan", "deploy_model", "export_run"]
