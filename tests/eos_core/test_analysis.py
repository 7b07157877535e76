"""The analysis on synthetic traces whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np

from eos_core import METRICS, RunSpec, analyze
from eos_core.analysis import exit_probability_by_loss, rate_fit, regime_states


def _trace(n: int, **columns: np.ndarray) -> dict[str, np.ndarray]:
    trace = {name: np.full(n, np.nan) for name in METRICS}
    trace["step"] = np.arange(n)
    trace.update(columns)
    return trace


def _spec(lr: float = 10.0) -> RunSpec:
    return RunSpec.model_validate({"optimizer": {"lr": lr}, "instrument": {"confidence": 0.95}})


def test_entrance_exits_returns_and_excursions() -> None:
    #            0    1    2    3     4    5    6    7    8    9
    p = np.array([0.0, 0.5, 1.0, 0.99, 0.6, 0.0, 0.01, 1.0, 0.0, 0.97])
    trace = _trace(10, stable_p=p, loss=np.linspace(1, 0.1, 10))
    summary = analyze(trace, _spec())
    assert summary["entrance_step"] == 2
    assert summary["exit_steps"] == [5, 8]  # 4 is undecided (0.6): the state stays in S
    assert summary["return_steps"] == [7, 9]
    assert summary["excursion_lengths"] == [2, 1]
    assert summary["open_excursion"] is False
    states = regime_states(p, 0.95)
    assert states[0] == 0.0 and states[4] == 1.0
    assert np.isnan(regime_states(np.array([0.5]), 0.95)[0])  # nothing decided yet
    assert summary["fraction_in_S"] == np.mean(states == 1.0)


def test_exit_probability_per_loss_decade() -> None:
    # In S at every step but two exits, both from the 1e-1 decade; the 1e-2 decade has none.
    p = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=float)
    loss = np.array([0.5, 0.4, 0.3, 0.2, 0.15, 0.05, 0.04, 0.03, 0.02, 0.01])
    bins = {row["loss_low"]: row for row in exit_probability_by_loss(loss, p, 0.95)}
    assert bins[0.1]["steps_in_S"] == 3 and bins[0.1]["exits"] == 2
    assert math.isclose(bins[0.1]["p_exit"], 2 / 3)
    assert bins[0.01]["exits"] == 0 and bins[0.01]["steps_in_S"] == 4


def test_rate_fit_recovers_c_over_eta_t() -> None:
    lr, c = 20.0, 3.5
    steps = np.arange(0, 20001)
    loss = np.where(steps > 0, c / (lr * np.maximum(steps, 1)), 1.0)
    fit = rate_fit(steps, loss, lr, start=10)
    assert math.isclose(fit["rate_slope"], -1.0, abs_tol=1e-9)
    assert math.isclose(fit["rate_C"], c, rel_tol=1e-9)
    assert fit["rate_fit_from"] == math.ceil(math.sqrt(10 * 20000))


def test_sharpness_above_the_edge_counts_against_two_over_eta() -> None:
    lr = 10.0  # 2 / eta = 0.2
    sharp = np.array([0.1, 0.25, np.nan, 0.3, 0.19])
    summary = analyze(_trace(5, sharpness=sharp, batch_sharpness=sharp * 2, loss=np.ones(5)), _spec(lr))
    assert summary["sharpness_edge"]["steps_above"] == 2
    assert summary["sharpness_edge"]["first_step_above"] == 1
    assert summary["batch_sharpness_edge"]["steps_above"] == 3


def test_best_iterate_and_stability_constant() -> None:
    loss = np.array([1.0, 0.5, 0.8, 0.2, 0.3])
    eta_loss = 10 * loss
    p = np.array([0.0, 1.0, 0.0, 1.0, 1.0])  # unstable at eta*L = 10 and 8; stable at 5, 2, 3
    summary = analyze(_trace(5, loss=loss, eta_loss=eta_loss, stable_p=p), _spec())
    assert summary["best_loss"] == 0.2 and summary["best_step"] == 3
    assert summary["best_iterate_curve"]["loss"] == [1.0, 0.5, 0.5, 0.2, 0.2]
    assert summary["stability_constant"] == 5.0 and summary["lowest_unstable_eta_loss"] == 8.0


def test_divergence_is_the_first_non_finite_iterate() -> None:
    loss = np.array([1.0, 2.0, 1e30, np.inf])
    norm = np.array([1.0, 2.0, 3.0, np.inf])
    summary = analyze(_trace(4, loss=loss, param_norm=norm), _spec())
    assert summary["diverged_step"] == 3
    assert summary["max_loss"] == 1e30
    finite = analyze(_trace(3, loss=loss[:3], param_norm=norm[:3]), _spec())
    assert finite["diverged_step"] is None
