"""Regimes of a run in steps, not rows (science.md, "What the analysis derives").

The drift is measured at some recorded steps s_0 < s_1 < ... < s_m (its cadence c is the
median spacing, in steps). Each measured verdict (in S, undecided, outside S) is taken to hold
for the steps from its own step up to the next measured step; the last one holds up to the
last recorded step T, inclusive. Everything below is a function of that step-level verdict, so
changing the cadence changes the answers only within the resolution the summary states:

- Window W = max(WINDOW_MIN_STEPS, WINDOW_CADENCES * c) steps, but no more than half the steps
  from the first drift measurement to the end (a short run still gets an entrance), and no less than c.
- Entrance: the first step in S from which every window of W consecutive steps that fits
  before T + 1 is at least half in S (undecided counts as not in S). None when even the
  last such window is less than half in S, or the run is shorter than W.
- Excursion: a maximal stretch of consecutive measured rows not in S that holds at least one
  outside-S verdict (stretches of undecided rows alone are not excursions; they count as not
  in S in the fractions). Its exit is the step of its first row, its return the step of the
  next in-S row; its length (return - exit) is known to within one cadence either side.
- Excursions shorter than c are invisible. The exit rate is reported only where they are
  resolved: c = 1 step, or at least one excursion was seen after entrance and their median
  length is at least EXCURSION_MIN_CADENCES cadences (and c <= W / WINDOW_CADENCES).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .verdict import IN_S, OUTSIDE_S, UNDECIDED, verdicts

WINDOW_MIN_STEPS = 100  # the entrance window is at least this many steps
WINDOW_CADENCES = 4  # ... and at least this many drift cadences
EXCURSION_MIN_CADENCES = 3  # excursions are resolved when their median length is this many cadences
LEVEL = 0.95  # two-sided level of every interval in the summary


def verdict_column(stable: np.ndarray, stable_p: np.ndarray, confidence: float) -> tuple[np.ndarray, bool]:
    """The three-valued verdict per row (NaN: drift not measured), and whether it was recomputed.

    Traces written before the verdict was three-valued hold 0/1 decided at stable_p >= 0.5. A
    `stable` column that contradicts the three-valued contract (a 0 or 1 on a row whose stable_p
    lies strictly between 1 - confidence and confidence, where the contract says 0.5) is such a
    trace: its verdicts are recomputed from stable_p at the spec's confidence. Otherwise the
    `stable` column is used as it is, and stable_p is not read.
    """
    stable = np.asarray(stable, dtype=np.float64)
    decided = np.isfinite(stable) & (stable != UNDECIDED)
    if decided.any():  # else nothing can contradict (a run without drift measurements)
        p = np.asarray(stable_p, dtype=np.float64)
        if (decided & np.isfinite(p) & (p > 1.0 - confidence) & (p < confidence)).any():
            return verdicts(p, confidence), True
    return stable, False


@dataclass(frozen=True)
class StepVerdicts:
    """The measured rows as step intervals [start[i], end[i]) carrying verdict[i]."""

    start: np.ndarray  # int64, the measured steps s_i
    end: np.ndarray  # int64, s_{i+1}, and T + 1 for the last
    verdict: np.ndarray  # float64 in {IN_S, UNDECIDED, OUTSIDE_S}
    cadence: int  # steps, the median spacing of the measured steps

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    @property
    def first(self) -> int:
        return int(self.start[0])

    @property
    def stop(self) -> int:
        return int(self.end[-1])

    @functools.cached_property
    def _in_s_knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The knots of in_s_before and its values there (asked for four times per summary)."""
        knots = np.append(self.start, self.stop).astype(np.float64)
        return knots, np.concatenate([[0.0], np.cumsum(self.length * (self.verdict == IN_S))])

    def in_s_before(self, t: np.ndarray | float) -> np.ndarray:
        """Steps in S in [s_0, t), for any real t in [s_0, T + 1] (piecewise linear in t)."""
        return np.asarray(np.interp(t, *self._in_s_knots))


def step_verdicts(step: np.ndarray, verdict: np.ndarray, last_step: int) -> StepVerdicts | None:
    measured = np.isfinite(verdict)
    if not measured.any():
        return None
    start = np.asarray(step[measured], dtype=np.int64)
    end = np.append(start[1:], max(int(last_step), int(start[-1])) + 1)
    gaps = np.diff(start)
    cadence = int(np.median(gaps)) if len(gaps) else int(end[-1] - start[0])
    return StepVerdicts(start, end, verdict[measured], max(1, cadence))


def window_steps(cadence: int, horizon: int) -> int:
    """W = max(WINDOW_MIN_STEPS, WINDOW_CADENCES c), but at most half the measured horizon (and at least c)."""
    return max(min(max(WINDOW_MIN_STEPS, WINDOW_CADENCES * cadence), horizon // 2), cadence)


def entrance_step(sv: StepVerdicts, window: int) -> int | None:
    """The first step in S from which every full window of `window` steps is at least half in S."""
    last_u = sv.stop - window  # the last window [u, u + W) that fits
    if last_u < sv.first:
        return None
    knots = np.append(sv.start, sv.stop)
    # f(u) = in-S steps in [u, u + W) is linear between these points, with slope -1, 0 or +1.
    points = np.unique(np.clip(np.concatenate([knots, knots - window, [sv.first, last_u]]), sv.first, last_u))
    inside = sv.in_s_before(points + window) - sv.in_s_before(points)
    bad = np.flatnonzero(inside < window / 2)
    if len(bad) == 0:
        begin = sv.first
    else:
        j = int(bad[-1])
        if j == len(points) - 1:
            return None  # the last window is less than half in S
        # f rises by one per step from points[j] until it reaches W/2 (f is integer-valued).
        begin = int(points[j]) + math.ceil(window / 2 - inside[j])
    later = (sv.verdict == IN_S) & (sv.end > begin)
    return int(max(sv.start[later][0], begin))


@dataclass(frozen=True)
class Excursion:
    exit: int  # step of the first row not in S
    ret: int | None  # step of the next row in S; None when the run ends outside S


def excursions(sv: StepVerdicts) -> list[Excursion]:
    """Maximal stretches of rows not in S that hold at least one outside-S verdict."""
    out: list[Excursion] = []
    v, n, i = sv.verdict, len(sv.verdict), 0
    while i < n:
        if v[i] == IN_S:
            i += 1
            continue
        j = i
        while j < n and v[j] != IN_S:
            j += 1
        if (v[i:j] == OUTSIDE_S).any() and i > 0:  # an exit needs a row in S before it
            out.append(Excursion(int(sv.start[i]), int(sv.start[j]) if j < n else None))
        i = j
    return out


def poisson_rate(count: int, exposure: float, per: float = 1000.0) -> tuple[float, float, float] | None:
    """count / exposure * per with Garwood's exact two-sided interval at LEVEL."""
    # scipy.special's ufuncs, not scipy.stats: the same quantiles at a fortieth of the cost (the
    # summary of every run of a slice asks for them). Imported here: the API should not pay for scipy.
    from scipy import special

    if exposure <= 0:
        return None
    a = (1 - LEVEL) / 2
    low = special.chdtri(2 * count, 1 - a) / 2 if count > 0 else 0.0  # chi2.ppf(a, 2 count) / 2
    high = special.chdtri(2 * count + 2, a) / 2
    scale = per / exposure
    return count * scale, float(low) * scale, float(high) * scale


def fraction_interval(inside: np.ndarray, weights: np.ndarray) -> tuple[float, float, float] | None:
    """Step-weighted fraction of rows with `inside`, and a Clopper-Pearson interval at LEVEL on an
    effective sample size n_eff = n (1 - r) / (1 + r), r the lag-1 autocorrelation of `inside` over
    the rows (clipped to [0, 0.99]): persistent verdicts carry less information than n rows."""
    from scipy import special

    n = len(inside)
    total = float(weights.sum())
    if n == 0 or total <= 0:
        return None
    x = inside.astype(np.float64)
    frac = float((x * weights).sum() / total)
    r = 0.0
    if n > 2 and _varies(inside[:-1]) and _varies(inside[1:]):  # else the correlation is undefined
        r = min(max(0.0, float(np.corrcoef(x[:-1], x[1:])[0, 1])), 0.99)
    n_eff = max(1.0, n * (1 - r) / (1 + r))
    k = frac * n_eff
    a = (1 - LEVEL) / 2
    low = 0.0 if k <= 0 else float(special.betaincinv(k, n_eff - k + 1, a))  # beta.ppf(a, k, n_eff - k + 1)
    high = 1.0 if k >= n_eff else float(special.betaincinv(k + 1, n_eff - k, 1 - a))
    return frac, low, high


def _varies(inside: np.ndarray) -> bool:
    """Whether the 0/1 values are not all equal (their standard deviation is not 0)."""
    return bool(inside.any()) and not bool(inside.all())


def _clip(sv: StepVerdicts, begin: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows overlapping [begin, T + 1): their verdicts and the steps of each inside it."""
    keep = sv.end > begin
    return sv.verdict[keep], (sv.end[keep] - np.maximum(sv.start[keep], begin)).astype(np.float64)


def exits_by_loss_decade(
    sv: StepVerdicts, exits: list[Excursion], entrance: int, step: np.ndarray, loss: np.ndarray, resolved: bool
) -> list[dict[str, Any]]:
    """Exits per 1,000 steps in S, by decade of the loss, after entrance.

    Every recorded row with a finite positive loss holds its loss for the steps up to the next
    recorded row; its steps in S (after entrance) go to the decade of that loss. An exit goes to
    the decade of the loss recorded at its step.
    """
    ok = np.isfinite(loss) & (loss > 0)
    st, ls = np.asarray(step[ok], dtype=np.int64), loss[ok]
    if len(st) == 0:
        return []
    nxt = np.append(st[1:], sv.stop)
    idx = np.searchsorted(sv.start, st, side="right") - 1  # the measured row in force at each step
    holds = idx >= 0
    state = np.where(holds, sv.verdict[np.maximum(idx, 0)], np.nan)
    span = np.maximum(nxt - np.maximum(st, entrance), 0)
    in_steps = np.where(state == IN_S, span, 0).astype(np.float64)
    decade = np.floor(np.log10(ls)).astype(int)
    exit_decade = [int(decade[max(0, np.searchsorted(st, e.exit, side="right") - 1)]) for e in exits]
    rows = []
    for d in sorted(set(decade[in_steps > 0].tolist()) | set(exit_decade), reverse=True):
        count, exposure = exit_decade.count(d), float(in_steps[decade == d].sum())
        rate = poisson_rate(count, exposure) if resolved else None
        rows.append(
            {
                "loss_low": _power_of_ten(d),
                "loss_high": _power_of_ten(d + 1),
                "steps_in_S": int(exposure),
                "exits": count,
                "exit_rate_per_1000": rate[0] if rate else None,
                "exit_rate_interval": [rate[1], rate[2]] if rate else None,
            }
        )
    return rows


def _power_of_ten(exponent: int) -> float:
    """10^exponent as a float; inf past the largest (a loss of 1e308 is in the decade [1e308, inf))."""
    try:
        return 10.0**exponent
    except OverflowError:
        return math.inf


def regimes(step: np.ndarray, verdict: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """The regime fields of RunSummary (see eos_core/summary.py for each one's meaning)."""
    last = int(step[-1]) if len(step) else 0
    sv = step_verdicts(step, verdict, last)
    if sv is None:
        return {"drift_measured": False}
    window = window_steps(sv.cadence, sv.stop - sv.first)
    entrance = entrance_step(sv, window)
    out: dict[str, Any] = {
        "drift_measured": True,
        "drift_cadence_steps": sv.cadence,
        "window_steps": window,
        "entrance_step": entrance,
        "regime_steps": sv.stop - sv.first,
    }
    v_all, w_all = _clip(sv, sv.first)
    overall = fraction_interval(v_all == IN_S, w_all)
    undecided = fraction_interval(v_all == UNDECIDED, w_all)
    out["fraction_in_S"], out["fraction_in_S_interval"] = _pair(overall)
    out["fraction_undecided"], out["fraction_undecided_interval"] = _pair(undecided)
    if entrance is None:
        # No entrance, no exits counted: the step lists are empty, the counts and rates None.
        out.update(
            exit_steps=[],
            return_steps=[],
            excursion_lengths=[],
            exits_resolved=None,
            exits_note="no entrance: exits are counted after entrance only",
        )
        return out
    v_e, w_e = _clip(sv, entrance)
    # Often the entrance is the first measured step: the same rows as `overall`.
    after_entrance = overall if entrance == sv.first else fraction_interval(v_e == IN_S, w_e)
    out["fraction_in_S_after_entrance"], out["fraction_in_S_after_entrance_interval"] = _pair(after_entrance)
    out["fraction_undecided_after_entrance"] = float((w_e * (v_e == UNDECIDED)).sum() / w_e.sum())
    after = [e for e in excursions(sv) if e.exit > entrance]
    lengths = [e.ret - e.exit for e in after if e.ret is not None]
    exposure = float(sv.in_s_before(float(sv.stop)) - sv.in_s_before(float(entrance)))
    resolved = sv.cadence == 1 or (
        bool(lengths)
        and float(np.median(lengths)) >= EXCURSION_MIN_CADENCES * sv.cadence
        and sv.cadence * WINDOW_CADENCES <= window
    )
    rate = poisson_rate(len(after), exposure) if resolved else None
    out.update(
        exits_observed=len(after),
        exit_steps=[e.exit for e in after],
        return_steps=[e.ret for e in after if e.ret is not None],
        excursion_lengths=lengths,
        median_excursion_steps=float(np.median(lengths)) if lengths else None,
        open_excursion=bool(after) and after[-1].ret is None,
        steps_in_S_after_entrance=int(exposure),
        exits_resolved=resolved,
        exit_rate_per_1000=rate[0] if rate else None,
        exit_rate_interval=[rate[1], rate[2]] if rate else None,
        exits_note=None if resolved else _unresolved_note(sv.cadence, lengths),
        exits_by_loss_decade=exits_by_loss_decade(sv, after, entrance, step, loss, resolved),
    )
    return out


def _unresolved_note(cadence: int, lengths: list[int]) -> str:
    seen = f"median excursion {float(np.median(lengths)):g} steps" if lengths else "no excursion seen"
    return (
        f"not resolved at this cadence: the drift is measured every {cadence} steps and {seen}; "
        f"excursions shorter than {cadence} steps are invisible"
    )


def _pair(value: tuple[float, float, float] | None) -> tuple[float | None, list[float] | None]:
    return (value[0], [value[1], value[2]]) if value else (None, None)


__all__ = ["IN_S", "OUTSIDE_S", "UNDECIDED", "regimes", "verdict_column"]
