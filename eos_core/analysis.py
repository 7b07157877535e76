"""What a finished trace says (science.md, "What the analysis derives").

`analyze(trace, spec)` needs only the stored trace and the spec, so the service can
recompute a summary from the database. Regimes are decided on `stable_p` at the
spec's confidence, with hysteresis: a step is in S once stable_p >= confidence, out
of S once stable_p <= 1 - confidence, and undecided steps keep the previous state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .spec import RunSpec
from .trace import Trace

FIT_POINTS = 64  # log-spaced points used by the rate fit and the best-iterate curve


def _finite(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a)


def regime_states(stable_p: np.ndarray, confidence: float) -> np.ndarray:
    """Per row: 1 in S, 0 out of S, NaN before the first decided measurement."""
    states = np.full(len(stable_p), np.nan)
    current = math.nan
    for i, p in enumerate(stable_p):
        if math.isfinite(p):
            if p >= confidence:
                current = 1.0
            elif p <= 1 - confidence:
                current = 0.0
        states[i] = current
    return states


def regimes(step: np.ndarray, stable_p: np.ndarray, confidence: float) -> dict[str, Any]:
    measured = _finite(stable_p)
    if not measured.any():
        return {"drift_measured": False}
    steps, states = step[measured], regime_states(stable_p[measured], confidence)
    inside = states == 1.0
    entrance = int(steps[np.argmax(inside)]) if inside.any() else None
    exits: list[int] = []
    returns: list[int] = []
    for i in range(1, len(states)):
        if states[i - 1] == 1.0 and states[i] == 0.0:
            exits.append(int(steps[i]))
        elif states[i - 1] == 0.0 and states[i] == 1.0 and entrance is not None and steps[i] > entrance:
            returns.append(int(steps[i]))
    excursions = [r - e for e, r in zip(exits, returns, strict=False)]
    windows = np.array_split(inside, min(10, len(inside)))
    return {
        "drift_measured": True,
        "entrance_step": entrance,
        "exit_steps": exits,
        "return_steps": returns,
        "n_exits": len(exits),
        "excursion_lengths": excursions,
        "mean_excursion": float(np.mean(excursions)) if excursions else None,
        "open_excursion": len(exits) > len(returns),
        "fraction_in_S": float(inside.mean()),
        "fraction_in_S_after_entrance": float(inside[steps >= entrance].mean()) if entrance is not None else None,
        "fraction_in_S_by_window": [float(w.mean()) for w in windows],
        "fraction_unstable_steps": float((stable_p[measured] <= 1 - confidence).mean()),
        "fraction_positive_drift_early": None,
    }


def exit_probability_by_loss(loss: np.ndarray, stable_p: np.ndarray, confidence: float) -> list[dict[str, float]]:
    """P(exit at the next measured step | in S now), by decade of the current loss (Thm 4.2)."""
    measured = _finite(stable_p) & _finite(loss) & (loss > 0)
    loss, states = loss[measured], regime_states(stable_p[measured], confidence)
    if len(loss) < 2:
        return []
    in_now = states[:-1] == 1.0
    exit_next = in_now & (states[1:] == 0.0)
    decade = np.floor(np.log10(loss[:-1])).astype(int)
    out = []
    for d in sorted(set(decade[in_now].tolist()), reverse=True):
        here = in_now & (decade == d)
        count = int(here.sum())
        exits = int((exit_next & here).sum())
        out.append(
            {
                "loss_low": 10.0**d,
                "loss_high": 10.0 ** (d + 1),
                "steps_in_S": count,
                "exits": exits,
                "p_exit": exits / count,
            }
        )
    return out


def above_edge(step: np.ndarray, values: np.ndarray, lr: float) -> dict[str, Any]:
    measured = _finite(values)
    if not measured.any():
        return {"measured": 0}
    above = values[measured] > 2.0 / lr
    return {
        "measured": int(measured.sum()),
        "steps_above": int(above.sum()),
        "fraction_above": float(above.mean()),
        "first_step_above": int(step[measured][above][0]) if above.any() else None,
        "max_times_eta_over_2": float(values[measured].max() * lr / 2),
    }


def _log_spaced(rows: np.ndarray, count: int) -> np.ndarray:
    """Indices into `rows` (sorted steps >= 1) at about log-uniform spacing, unique."""
    if len(rows) <= count:
        return np.arange(len(rows))
    targets = np.geomspace(rows[0], rows[-1], count)
    return np.unique(np.clip(np.searchsorted(rows, targets), 0, len(rows) - 1))


def rate_fit(step: np.ndarray, loss: np.ndarray, lr: float, start: int) -> dict[str, Any]:
    """Least squares of log L on log t over log-spaced steps: L ~ C' t^slope.

    The window is the later half, in log time, of the steps after `start` (the entrance
    into S): [sqrt(start * T), T]. The steps right after entrance are still transient;
    the paper's rate L ~ C / (eta t) describes the regime that follows.
    """
    empty = {"rate_slope": None, "rate_intercept": None, "rate_C": None, "rate_fit_from": None}
    ok = _finite(loss) & (loss > 0) & (step >= max(start, 1))
    if ok.sum() < 3:
        return empty
    t, l_ = step[ok].astype(float), loss[ok]
    first = math.sqrt(t[0] * t[-1])
    window = t >= first
    t, l_ = t[window], l_[window]
    pick = _log_spaced(t, FIT_POINTS)
    if len(pick) < 3:
        return empty
    slope, intercept = np.polyfit(np.log(t[pick]), np.log(l_[pick]), 1)
    # Under the paper's L ~ C / (eta t), C is the geometric mean of eta t L.
    c = float(np.exp(np.mean(np.log(lr * t[pick] * l_[pick]))))
    return {"rate_slope": float(slope), "rate_intercept": float(intercept), "rate_C": c, "rate_fit_from": int(t[0])}


def best_iterate(step: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    ok = _finite(loss)
    if not ok.any():
        return {"best_loss": None, "best_step": None, "best_iterate_curve": {"step": [], "loss": []}}
    s, best = step[ok], np.minimum.accumulate(loss[ok])
    positive = s >= 1
    pick = _log_spaced(s[positive], FIT_POINTS)
    curve_steps = ([int(s[0])] if s[0] == 0 else []) + s[positive][pick].astype(int).tolist()
    curve_loss = ([float(best[0])] if s[0] == 0 else []) + best[positive][pick].tolist()
    return {
        "best_loss": float(best[-1]),
        "best_step": int(s[np.argmin(loss[ok])]),
        "best_iterate_curve": {"step": curve_steps, "loss": curve_loss},
    }


def stability_constant(eta_loss: np.ndarray, stable_p: np.ndarray, confidence: float) -> dict[str, Any]:
    """The largest eta*L below which every confidently decided step was stable (kappa_B)."""
    ok = _finite(eta_loss) & _finite(stable_p)
    if not ok.any():
        return {"stability_constant": None, "stability_constant_bound": None}
    el, p = eta_loss[ok], stable_p[ok]
    unstable = p <= 1 - confidence
    stable = p >= confidence
    if not unstable.any():
        top = float(el[stable].max()) if stable.any() else None
        return {"stability_constant": top, "stability_constant_bound": "lower"}
    ceiling = float(el[unstable].min())
    below = stable & (el < ceiling)
    return {
        "stability_constant": float(el[below].max()) if below.any() else 0.0,
        "stability_constant_bound": "exact",
        "lowest_unstable_eta_loss": ceiling,
    }


def divergence(step: np.ndarray, loss: np.ndarray, param_norm: np.ndarray) -> int | None:
    bad = np.isinf(param_norm) | np.isinf(loss) | (np.isnan(loss) & _finite(param_norm))
    return int(step[np.argmax(bad)]) if bad.any() else None


def spikes(loss: np.ndarray, factor: float = 2.0) -> int:
    """Recorded steps at which the loss rose by more than `factor` over the previous record."""
    ok = _finite(loss)
    l_ = loss[ok]
    if len(l_) < 2:
        return 0
    return int((l_[1:] > factor * l_[:-1]).sum())


def _last(a: np.ndarray) -> float | None:
    ok = a[_finite(a)]
    return float(ok[-1]) if len(ok) else None


def analyze(trace: Trace, spec: RunSpec, dataset_info: dict[str, Any] | None = None) -> dict[str, Any]:
    step = np.asarray(trace["step"]).astype(np.int64)
    col = {k: np.asarray(v, dtype=np.float64) for k, v in trace.items() if k != "step"}
    lr, conf = spec.effective_lr, spec.instrument.confidence
    loss, stable_p = col["loss"], col["stable_p"]
    summary: dict[str, Any] = {
        "recorded_steps": len(step),
        "last_step": int(step[-1]) if len(step) else None,
        "final_loss": _last(loss),
        "final_acc": _last(col["acc"]),
        "final_test_loss": _last(col["test_loss"]),
        "final_test_acc": _last(col["test_acc"]),
        "max_loss": float(np.nanmax(loss[_finite(loss)])) if _finite(loss).any() else None,
        "loss_spikes": spikes(loss),
        "diverged_step": divergence(step, loss, col["param_norm"]),
    }
    reg = regimes(step, stable_p, conf)
    if reg.get("drift_measured"):
        drift = col["drift"]
        early = _finite(drift) & (step <= (reg["entrance_step"] if reg["entrance_step"] is not None else step.max()))
        reg["fraction_positive_drift_early"] = float((drift[early] > 0).mean()) if early.any() else None
        reg["max_drift"] = float(drift[_finite(drift)].max()) if _finite(drift).any() else None
    summary.update(reg)
    summary["exit_probability_by_loss"] = exit_probability_by_loss(loss, stable_p, conf)
    summary["sharpness_edge"] = above_edge(step, col["sharpness"], lr)
    summary["batch_sharpness_edge"] = above_edge(step, col["batch_sharpness"], lr)
    entrance = summary.get("entrance_step")
    start = entrance if entrance is not None else int(step.max() // 10) if len(step) else 0
    summary.update(rate_fit(step, loss, lr, start))
    summary.update(best_iterate(step, loss))
    summary.update(stability_constant(col["eta_loss"], stable_p, conf))
    return summary
