"""The verify stage, a CI gate: integrity, parity with the checkpoint, latency; exit 1 when a bar fails.

    from edgetl.verify import VerifySettings, verify_run

    stage.py    verify_run: the checks in order, verify.json
    gate.py     checks, bars per precision, the gate that collects them
    inputs.py   real images preprocessed from the manifest alone, plus noise (export's fold check uses them
                too); train images for INT8 calibration
    parity.py   names, then shapes, then values of one file against the checkpoint's logits
    latency.py  honest timing, the machine's fingerprint, latency bars and regressions
    decide.py   the go/no-go per fp16 / int8 file: speed-up, size, accuracy, one word
"""

from edgetl.verify.stage import ChecksFailed, VerifyResult, VerifySettings, verify_run

__all__ = ["ChecksFailed", "VerifyResult", "VerifySettings", "verify_run"]
