"""What a finished trace says (science.md, "What the analysis derives").

`analyze(trace, spec, dataset_info)` needs only the stored trace, the spec and the dataset's
info, so the service can recompute a summary from the database. Regimes come from the trace's
three-valued `stable` verdict column alone (eos_core/regimes.py), the rate from the loss
(eos_core/rate.py), κ_B from the (η·L, verdict) pairs (eos_core/kappa.py). The fields and their
exact meaning are those of eos_core.summary.RunSummary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kappa import kappa_b
from .rate import best_iterate, rate, rate_applies
from .regimes import regimes, verdict_column
from .spec import RunSpec
from .summary import SCHEMA_VERSION
from .trace import Trace


def _finite(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a)


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


def divergence(step: np.ndarray, loss: np.ndarray, param_norm: np.ndarray) -> int | None:
    bad = np.isinf(param_norm) | np.isinf(loss) | (np.isnan(loss) & _finite(param_norm))
    return int(step[np.argmax(bad)]) if bad.any() else None


def spikes(loss: np.ndarray, factor: float = 2.0) -> int:
    """Recorded steps at which the loss rose by more than `factor` over the previous record."""
    ok = _finite(loss)
    l_ = loss[ok]
    if len(l_) < 2:
        return 0
    with np.errstate(over="ignore"):  # a loss near the float maximum: factor * it is inf, no spike
        return int((l_[1:] > factor * l_[:-1]).sum())


def _last(a: np.ndarray) -> float | None:
    ok = a[_finite(a)]
    return float(ok[-1]) if len(ok) else None


def _last_step(step: np.ndarray, a: np.ndarray) -> int | None:
    ok = np.flatnonzero(_finite(a))
    return int(step[ok[-1]]) if len(ok) else None


def analyze(trace: Trace, spec: RunSpec, dataset_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The analysis fields of a RunSummary (the run's status, device and timing are added by train)."""
    step = np.asarray(trace["step"]).astype(np.int64)
    col = {k: np.asarray(v, dtype=np.float64) for k, v in trace.items() if k != "step"}
    lr = spec.effective_lr
    loss = col["loss"]
    verdict, recomputed = verdict_column(col["stable"], col["stable_p"], spec.instrument.confidence)
    finite_loss = loss[_finite(loss)]
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "recorded_steps": len(step),
        "last_step": int(step[-1]) if len(step) else None,
        "final_loss": _last(loss),
        "final_acc": _last(col["acc"]),
        "final_test_loss": _last(col["test_loss"]),
        "final_test_acc": _last(col["test_acc"]),
        "final_test_step": _last_step(step, col["test_acc"]),
        "max_loss": float(finite_loss.max()) if len(finite_loss) else None,
        "loss_spikes": spikes(loss),
        "diverged_step": divergence(step, loss, col["param_norm"]),
        "verdicts_recomputed": recomputed if np.isfinite(verdict).any() else None,
    }
    summary.update(regimes(step, verdict, loss))
    entrance = summary.get("entrance_step")
    if summary["drift_measured"]:
        drift = col["drift"]
        early = _finite(drift) & (step <= (entrance if entrance is not None else step.max()))
        summary["fraction_positive_drift_before_entrance"] = float((drift[early] > 0).mean()) if early.any() else None
        summary["max_drift"] = float(drift[_finite(drift)].max()) if _finite(drift).any() else None
    summary["sharpness_edge"] = above_edge(step, col["sharpness"], lr)
    summary["batch_sharpness_edge"] = above_edge(step, col["batch_sharpness"], lr)
    applies = rate_applies(spec.model.kind, dataset_info)
    summary.update(rate(step, loss, col["param_norm"], lr, entrance, applies))
    summary.update(best_iterate(step, loss))
    summary.update(kappa_b(col["eta_loss"], verdict))
    return summary
