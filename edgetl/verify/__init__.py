"""The verify stage, a CI gate: integrity, parity with the checkpoint, latency; exit 1 when a bar fails.

    from edgetl.verify import VerifySettings, verify_run

    stage.py    verify_run: the checks in order, verify.json
    latency.py  honest timing, the machine's fingerprint, latency bars and regressions
    decide.py   the go/no-go per fp16 / int8 file: speed-up, size, accuracy, one word
    localize.py where a file that failed a parity bar departs: the stage, then the node in the file

The inputs it checks with are edgetl/data/inputs.py; the figures and bars, edgetl/compare/.
"""

# Verify's honest timing and the machine it ran on, for figures meant to be compared with verify's own (the
# benchmarks): TimingPlan is also the type of VerifySettings.timing.
from edgetl.verify.latency import TimingPlan, all_threads, machine_fingerprint, time_runner
from edgetl.verify.stage import ChecksFailed, VerifyResult, VerifySettings, verify_run

__all__ = ["ChecksFailed", "TimingPlan", "VerifyResult", "VerifySettings", "all_threads", "machine_fingerprint",
           "time_runner", "verify_run"]
