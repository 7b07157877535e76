"""κ_B: the paper's stable set contains the sub-level set {θ : η L(θ) <= κ_B} (science.md).

Every measured step judged outside S at η·L = x says κ_B < x (if the verdict is right), so the
smallest such x is an upper bound that one row sets. The estimate here is robust to single rows:

- Upper bound (some decided row was outside S): κ̂ = the KAPPA_QUANTILE-quantile of η·L over
  the rows judged outside S, taken as the order statistic x_(k), k = ceil(q n) (1-based, n rows
  outside S): at most a fraction q of the steps seen outside S had η·L below κ̂. Its interval is
  the distribution-free order-statistic interval for that quantile at LEVEL: [x_(l), x_(u)] with
  l, u from the Binomial(n, q) quantiles; l < 1 means no lower end (0), u > n means no upper end
  (None). One row moves κ̂ by at most one order statistic.
- Lower bound (no decided row was outside S): nothing bounds κ_B from above; κ̂ is the
  (1 - q)-quantile of η·L over the rows in S (x_(ceil((1 - q) n))), with the same kind of
  interval: the iterate was seen in S, and never outside it, up to about there.
- Undecided rows and rows with no drift measurement are not used.

Pooling over the runs of an experiment that share a batch size concatenates their rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .regimes import LEVEL
from .verdict import IN_S, OUTSIDE_S

KAPPA_QUANTILE = 0.05


@functools.cache
def _order_statistics(n: int, q: float) -> tuple[int, int]:
    """The 1-based order statistics bounding the q-quantile of n values at LEVEL (cached: scipy's
    binomial quantiles cost about 50 us each, and every run of a sweep of one length asks the same)."""
    from scipy import stats  # here: the API imports eos_core and should not pay for scipy

    a = (1 - LEVEL) / 2
    return int(stats.binom.ppf(a, n, q)), int(stats.binom.ppf(1 - a, n, q)) + 1


def _quantile_with_interval(x: np.ndarray, q: float) -> tuple[float, float, float | None]:
    x = np.sort(x)
    n = len(x)
    k = max(1, math.ceil(q * n))
    lo, hi = _order_statistics(n, q)
    low = float(x[lo - 1]) if lo >= 1 else 0.0
    high = float(x[hi - 1]) if hi <= n else None
    return float(x[k - 1]), low, high


def kappa_b(
    eta_loss: Sequence[np.ndarray] | np.ndarray, verdict: Sequence[np.ndarray] | np.ndarray, q: float = KAPPA_QUANTILE
) -> dict[str, Any]:
    """κ_B from one run's arrays, or pooled over several runs' arrays (lists of equal-length pairs)."""
    if isinstance(eta_loss, np.ndarray):
        eta_loss, verdict = [eta_loss], [np.asarray(verdict)]
    x = np.concatenate([np.asarray(a, dtype=np.float64) for a in eta_loss]) if len(eta_loss) else np.zeros(0)
    v = np.concatenate([np.asarray(a, dtype=np.float64) for a in verdict]) if len(verdict) else np.zeros(0)
    ok = np.isfinite(x) & np.isfinite(v)
    outside, inside = x[ok & (v == OUTSIDE_S)], x[ok & (v == IN_S)]
    out: dict[str, Any] = {
        "kappa_B": None,
        "kappa_B_bound": None,
        "kappa_B_interval": None,
        "kappa_B_quantile": q,
        "kappa_B_rows_outside": len(outside),
        "kappa_B_rows_in_S": len(inside),
    }
    if len(outside):
        value, low, high = _quantile_with_interval(outside, q)
        out.update(kappa_B=value, kappa_B_bound="upper", kappa_B_interval=[low, high])
    elif len(inside):
        value, low, high = _quantile_with_interval(inside, 1 - q)
        out.update(kappa_B=value, kappa_B_bound="lower", kappa_B_interval=[low, high])
    return out
