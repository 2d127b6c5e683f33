"""Comparing an exported file's outputs with the checkpoint's: the figures, the bars per precision, the gate.

    figures = compare_logits(reference, logits, targets=targets)   # max |Δ|, top-1 agreement, accuracy, ...

    gate.py    checks, bars per precision, the gate that collects them
    parity.py  names, then shapes, then values of one file against the reference logits

Export's INT8 guard and verify judge a file with the same figures and bars.
"""
