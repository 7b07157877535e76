"""The three-valued stability verdict of a measured step (science.md, "What the analysis derives").

A step is in S when the drift is confidently <= 0 (stable_p >= level), outside S when it is
confidently > 0 (stable_p <= 1 - level), and undecided otherwise. The drift estimator decides
at a level that accounts for its sequential looks (eos_core.drift); the trace's `stable` column
holds its verdict, and NaN there means the drift was not measured at that step.
"""

from __future__ import annotations

import math

import numpy as np

IN_S = 1.0
UNDECIDED = 0.5
OUTSIDE_S = 0.0


def verdict(stable_p: float, level: float) -> float:
    """IN_S, OUTSIDE_S or UNDECIDED for one estimate; NaN when there is no estimate."""
    if not math.isfinite(stable_p):
        return math.nan
    if stable_p >= level:
        return IN_S
    if stable_p <= 1.0 - level:
        return OUTSIDE_S
    return UNDECIDED


def verdicts(stable_p: np.ndarray, confidence: float) -> np.ndarray:
    """The verdict of every row; NaN where stable_p is NaN (not measured)."""
    p = np.asarray(stable_p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    measured = np.isfinite(p)
    out[measured] = UNDECIDED
    out[measured & (p >= confidence)] = IN_S
    out[measured & (p <= 1.0 - confidence)] = OUTSIDE_S
    return out
