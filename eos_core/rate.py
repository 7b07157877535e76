"""The paper's rate in the stable regime, L(θ_t) <= C / (η t), measured as an upper bound.

- Window: the recorded steps t with t >= t0 and t >= 1, where t0 is the entrance into S (or,
  when there is none, a tenth of the run: `rate_window_rule` says which), and t before
  `frozen_from_step` when the iterate has stopped moving.
- Ĉ = max over the window of η t L_t (and the step where it is reached).
- Envelope: E_t = max over recorded s >= t in the window of L_s, the tightest non-increasing
  upper envelope of the loss. The slope is the least-squares slope of log E_t on log t over
  every recorded step of the window. Its interval is a block bootstrap: the window is cut into
  RATE_BLOCKS blocks of equal width in log t, blocks are drawn with replacement
  (numpy default_rng(0), RATE_RESAMPLES resamples) and the slope refitted; the interval is the
  percentile interval at LEVEL.
- Frozen: the loss is exactly 0 from some recorded step to the end, or the loss and the
  parameter norm are both exactly constant from some recorded step to the end (at least two
  rows): the iterate no longer moves at the dtype's resolution.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .regimes import LEVEL

RATE_BLOCKS = 10
RATE_RESAMPLES = 1000
RATE_MIN_POINTS = 3
BEST_CURVE_POINTS = 64  # log-spaced points of the best-iterate curve (a plot, not a fit)


def frozen_from(step: np.ndarray, loss: np.ndarray, param_norm: np.ndarray) -> int | None:
    """The first recorded step from which the iterate no longer moves (see the module doc)."""
    ok = np.isfinite(loss)
    s, l_, p = step[ok], loss[ok], param_norm[ok]
    if len(s) < 2:
        return None
    zero = l_ == 0
    if zero[-1]:
        first = len(zero) - int(np.argmin(zero[::-1])) if not zero.all() else 0
        return int(s[first])
    same = (l_[:-1] == l_[-1]) & ((p[:-1] == p[-1]) | (np.isnan(p[:-1]) & np.isnan(p[-1])))
    if not same[-1]:
        return None
    run = len(same) - int(np.argmin(same[::-1])) if not same.all() else 0
    return int(s[run])


def upper_envelope(loss: np.ndarray) -> np.ndarray:
    """E_i = max_{j >= i} loss_j: the tightest non-increasing upper envelope."""
    return np.maximum.accumulate(loss[::-1])[::-1]


@functools.cache
def _block_counts(blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How often each of `blocks` blocks is drawn in each resample, float64 (resamples, blocks), and
    the first and last block each resample draws: read-only, the same for every run."""
    picks = np.random.default_rng(0).integers(0, blocks, (RATE_RESAMPLES, blocks))
    counts = np.zeros((RATE_RESAMPLES, blocks), dtype=np.int64)
    np.add.at(counts, (np.arange(RATE_RESAMPLES)[:, None], picks), 1)
    weights = counts.astype(np.float64)
    first, last = picks.min(axis=1), picks.max(axis=1)
    for a in (weights, first, last):
        a.setflags(write=False)
    return weights, first, last


def envelope_slope(t: np.ndarray, loss: np.ndarray) -> tuple[float, list[float] | None]:
    """Least-squares slope of log E_t on log t (t increasing), and its block-bootstrap interval."""
    x, y = np.log(t.astype(np.float64)), np.log(upper_envelope(loss))
    xc, yc = x - x.mean(), y - y.mean()  # centred on the window's means, so that nothing cancels below
    slope = float((xc * yc).sum() / (xc * xc).sum())
    # Blocks of equal width in log t (block b holds edges[b] <= log t < edges[b + 1], the last one
    # closed): t increasing, block b is the points [bounds[b], bounds[b + 1]).
    edges = np.linspace(x[0], x[-1], RATE_BLOCKS + 1)
    bounds = np.concatenate([[0], np.searchsorted(x, edges[1:-1]), [len(x)]])
    held = bounds[1:] > bounds[:-1]
    starts, ends = bounds[:-1][held], bounds[1:][held]
    if len(starts) < 3:
        return slope, None
    # All resamples at once: resample r counts block b picks[r] == b times, and each point of
    # block b enters its least-squares fit with that weight (the same slope as the concatenation).
    counts, first, last = _block_counts(len(starts))
    # Each fit from the blocks' sums (counts, sums and cross products of the points): O(resamples x
    # blocks) whatever the row count.
    terms = np.stack([np.ones_like(xc), xc, yc, xc * xc, xc * yc])
    sums = np.array([terms[:, i:j].sum(axis=1) for i, j in zip(starts, ends, strict=True)])
    n, sx, sy, sxx, sxy = (counts @ sums).T
    # The blocks lie in order along log t: a resample's points span from the lowest of its first
    # block to the highest of its last.
    moving = np.maximum.reduceat(x, starts)[last] > np.minimum.reduceat(x, starts)[first]
    spread = sxx - sx * sx / n
    draws = (sxy - sx * sy / n)[moving] / spread[moving]  # the picked points span some log t
    a = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [a, 1 - a])
    return slope, [float(low), float(high)]


def rate_applies(spec_model: str, dataset_info: dict[str, Any] | None) -> tuple[bool | None, str | None]:
    separable = (dataset_info or {}).get("separable")
    if separable is False and spec_model == "linear":
        return False, "the training data are not linearly separable: the 1/t rate of a linear model does not apply"
    if separable is None:
        return None, "separability was not checked: the 1/t rate is a statement about separable data"
    return True, None


def rate(
    step: np.ndarray,
    loss: np.ndarray,
    param_norm: np.ndarray,
    lr: float,
    entrance: int | None,
    applies: tuple[bool | None, str | None],
) -> dict[str, Any]:
    """The rate fields of RunSummary."""
    frozen = frozen_from(step, loss, param_norm)
    last = int(step[-1]) if len(step) else 0
    start, rule = (entrance, "entrance") if entrance is not None else (last // 10, "tenth_of_run")
    out: dict[str, Any] = {
        "rate_applies": applies[0],
        "rate_note": applies[1],
        "frozen_from_step": frozen,
        "rate_window_start": max(start, 1),
        "rate_window_rule": rule,
    }
    if applies[0] is False:
        return out
    ok = np.isfinite(loss) & (loss > 0) & (step >= max(start, 1))
    if frozen is not None:
        ok &= step < frozen
    t, l_ = step[ok], loss[ok]
    if len(t) == 0:
        return out
    with np.errstate(over="ignore"):  # a loss near the float maximum: C is inf (stored as null)
        c = lr * t.astype(np.float64) * l_
    out.update(rate_C=float(c.max()), rate_C_step=int(t[int(np.argmax(c))]), rate_points=len(t))
    if len(t) >= RATE_MIN_POINTS and t[-1] > t[0]:
        slope, interval = envelope_slope(t, l_)
        out.update(rate_slope=slope, rate_slope_interval=interval, rate_window_end=int(t[-1]))
    return out


def best_iterate(step: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """min_{s <= t} L(θ_s) at about BEST_CURVE_POINTS log-spaced recorded steps (and step 0)."""
    ok = np.isfinite(loss)
    if not ok.any():
        return {"best_loss": None, "best_step": None, "best_iterate_curve": None}
    s, best = step[ok], np.minimum.accumulate(loss[ok])
    positive = np.flatnonzero(s >= 1)
    pick = positive
    if len(positive) > BEST_CURVE_POINTS:
        targets = np.geomspace(s[positive[0]], s[positive[-1]], BEST_CURVE_POINTS)
        pick = positive[np.unique(np.clip(np.searchsorted(s[positive], targets), 0, len(positive) - 1))]
    if s[0] == 0:
        pick = np.concatenate([[0], pick])
    return {
        "best_loss": float(best[-1]),
        "best_step": int(s[int(np.argmin(loss[ok]))]),
        "best_iterate_curve": {"step": s[pick].astype(int).tolist(), "loss": best[pick].tolist()},
    }
