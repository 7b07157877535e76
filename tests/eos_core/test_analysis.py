"""The analysis on synthetic traces whose answers are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from eos_core import METRICS, RunSpec, RunSummary, analyze, kappa_b
from eos_core.rate import frozen_from, upper_envelope
from eos_core.summary import SCHEMA_VERSION
from eos_core.verdict import IN_S, OUTSIDE_S, UNDECIDED


def _trace(n: int, step: np.ndarray | None = None, **columns: np.ndarray) -> dict[str, np.ndarray]:
    trace = {name: np.full(n, np.nan) for name in METRICS}
    trace["step"] = np.arange(n) if step is None else np.asarray(step)
    trace.update(columns)
    return trace


def _spec(lr: float = 10.0, model: str = "linear") -> RunSpec:
    return RunSpec.model_validate(
        {"optimizer": {"lr": lr}, "instrument": {"confidence": 0.95}, "model": {"kind": model}}
    )


def _verdicts(n: int, outside: list[tuple[int, int]], undecided: list[tuple[int, int]] = ()) -> np.ndarray:  # type: ignore[assignment]
    v = np.full(n, IN_S)
    for a, b in outside:
        v[a:b] = OUTSIDE_S
    for a, b in undecided:
        v[a:b] = UNDECIDED
    return v


def _summary(trace: dict[str, np.ndarray], spec: RunSpec | None = None, info: dict | None = None) -> RunSummary:
    return RunSummary.model_validate(analyze(trace, spec or _spec(), info))


# --- regimes, in steps -------------------------------------------------------------------------


def test_entrance_is_the_first_step_in_s_after_the_last_window_less_than_half_in_s() -> None:
    # Outside S until 300; in S after, but for a dip of 60 steps at 500 (W = 100: a window holding
    # more than 50 of those steps is less than half in S). The last such window starts at 509, so
    # from 510 on every window is at least half in S, and the first step in S from there is 560.
    v = _verdicts(1000, [(0, 300), (500, 560)])
    s = _summary(_trace(1000, stable=v, loss=np.ones(1000)))
    assert s.drift_cadence_steps == 1 and s.window_steps == 100
    assert s.entrance_step == 560
    # A dip of 40 steps leaves every later window at least half in S: entrance at 300.
    v = _verdicts(1000, [(0, 300), (500, 540)])
    s = _summary(_trace(1000, stable=v, loss=np.ones(1000)))
    assert s.entrance_step == 300
    # Undecided counts as not in S.
    v = _verdicts(1000, [(0, 300)], undecided=[(500, 560)])
    assert _summary(_trace(1000, stable=v, loss=np.ones(1000))).entrance_step == 560


def test_entrance_is_none_when_the_last_window_is_less_than_half_in_s() -> None:
    v = _verdicts(1000, [(0, 100), (940, 1000)])
    none = _summary(_trace(1000, stable=v, loss=np.ones(1000)))
    assert none.entrance_step is None and none.exit_steps == [] and none.exits_observed is None
    assert none.exit_rate_per_1000 is None and none.exits_note is not None
    # A run shorter than 2 x 100 steps gets a window of half its length: here 30 steps.
    short = _summary(_trace(60, stable=_verdicts(60, [(0, 20)]), loss=np.ones(60)))
    assert short.window_steps == 30 and short.entrance_step == 20


def test_a_coarser_cadence_moves_the_entrance_by_less_than_its_resolution() -> None:
    v = _verdicts(2000, [(0, 300), (500, 560), (700, 720)])
    fine = _summary(_trace(2000, stable=v, loss=np.ones(2000)))
    for c in (5, 10, 25):  # W = 100 for all: only the cadence changes (4c > 100 would widen the window)
        coarse = np.full(2000, np.nan)
        coarse[::c] = v[::c]
        s = _summary(_trace(2000, stable=coarse, loss=np.ones(2000)))
        assert s.drift_cadence_steps == c and s.window_steps == max(100, 4 * c)
        assert fine.entrance_step is not None and s.entrance_step is not None
        assert abs(s.entrance_step - fine.entrance_step) <= max(s.window_steps, 2 * c)


def test_fractions_are_weighted_by_steps_not_rows() -> None:
    # Drift measured at steps 0, 10, 30 (in, out, in); the last row is step 39: 10 + 10 of 40 steps in S.
    step = np.array([0, 10, 20, 30, 39])
    stable = np.array([IN_S, OUTSIDE_S, np.nan, IN_S, np.nan])
    s = _summary(_trace(5, step=step, stable=stable, loss=np.ones(5)))
    assert s.fraction_in_S == pytest.approx(0.5)
    assert s.fraction_undecided == 0.0
    assert s.fraction_in_S_interval is not None
    low, high = s.fraction_in_S_interval
    assert low is not None and high is not None and low < 0.5 < high


def test_exits_returns_and_rate_per_thousand_steps_in_s() -> None:
    # In S from 0, out 100..104 and at 180, undecided 150..152 (not an exit: no outside verdict).
    v = _verdicts(200, [(100, 105), (180, 181)], undecided=[(150, 153)])
    s = _summary(_trace(200, stable=v, loss=np.ones(200)))
    assert s.entrance_step == 0
    assert s.exit_steps == [100, 180] and s.return_steps == [105, 181]
    assert s.excursion_lengths == [5, 1] and s.open_excursion is False
    assert s.exits_observed == 2 and s.exits_resolved is True  # every step measured
    in_s = 200 - 5 - 1 - 3
    assert s.steps_in_S_after_entrance == in_s
    assert s.exit_rate_per_1000 == pytest.approx(2 / in_s * 1000)
    low = stats.chi2.ppf(0.025, 4) / 2 / in_s * 1000
    high = stats.chi2.ppf(0.975, 6) / 2 / in_s * 1000
    assert s.exit_rate_interval == pytest.approx([low, high])
    assert s.fraction_undecided == pytest.approx(3 / 200)
    assert s.fraction_in_S == pytest.approx(in_s / 200)


def test_exits_are_not_counted_where_the_cadence_cannot_resolve_them() -> None:
    # Drift every 10 steps; each excursion is one measured row (10 steps) < 3 cadences.
    n = 1000
    stable = np.full(n, np.nan)
    stable[::10] = IN_S
    stable[[300, 500, 700]] = OUTSIDE_S
    s = _summary(_trace(n, stable=stable, loss=np.ones(n)))
    assert s.drift_cadence_steps == 10
    assert s.exits_observed == 3 and s.excursion_lengths == [10, 10, 10]
    assert s.exits_resolved is False and s.exit_rate_per_1000 is None and s.exit_rate_interval is None
    assert s.exits_note is not None and "not resolved at this cadence" in s.exits_note
    # Long excursions (50 steps = 5 cadences) are resolved.
    stable[::10] = IN_S
    stable[300:350:10] = OUTSIDE_S
    s = _summary(_trace(n, stable=stable, loss=np.ones(n)))
    assert s.exits_resolved is True and s.exit_rate_per_1000 == pytest.approx(1 / (n - 50) * 1000)


def test_exit_rate_per_loss_decade_is_per_steps_in_s() -> None:
    # 400 steps at loss 0.5 (decade 1e-1) with 2 exits of 5 steps; 600 at 0.05 (1e-2) with none.
    n = 1000
    loss = np.where(np.arange(n) < 400, 0.5, 0.05)
    v = _verdicts(n, [(100, 105), (300, 305)])
    s = _summary(_trace(n, stable=v, loss=loss))
    rows = {round(math.log10(r.loss_low or 0)): r for r in s.exits_by_loss_decade or []}
    assert rows[-1].exits == 2 and rows[-1].steps_in_S == 390
    assert rows[-1].exit_rate_per_1000 == pytest.approx(2 / 390 * 1000)
    assert rows[-2].exits == 0 and rows[-2].steps_in_S == 600 and rows[-2].exit_rate_per_1000 == 0.0


def test_old_zero_one_verdicts_are_recomputed_from_stable_p() -> None:
    # An old trace: stable = (p >= 0.5). p = 0.6 is undecided at confidence 0.95.
    p = np.array([0.99, 0.6, 0.99, 0.01, 0.99])
    old = _summary(_trace(5, stable=(p >= 0.5).astype(float), stable_p=p, loss=np.ones(5)))
    assert old.verdicts_recomputed is True and old.fraction_undecided == pytest.approx(0.2)
    # A three-valued column that agrees with stable_p (or has none) is read as it is.
    three = np.array([1, 0.5, 1, 0, 1.0])
    new = _summary(_trace(5, stable=three, stable_p=np.array([0.99, 0.6, 0.99, 0.01, 0.99]), loss=np.ones(5)))
    assert new.verdicts_recomputed is False and new.fraction_undecided == pytest.approx(0.2)
    p_only = _summary(_trace(5, stable=three, stable_p=np.full(5, np.nan), loss=np.ones(5)))
    assert p_only.verdicts_recomputed is False and p_only.fraction_in_S == pytest.approx(0.6)


def test_no_drift_measured() -> None:
    s = _summary(_trace(10, loss=np.linspace(1, 0.1, 10)))
    assert s.drift_measured is False and s.entrance_step is None and s.fraction_in_S is None


# --- rate ----------------------------------------------------------------------------------------


def test_rate_recovers_c_over_eta_t_as_a_bound_and_a_slope() -> None:
    lr, c = 20.0, 3.5
    steps = np.arange(0, 5001)
    loss = c / (lr * np.maximum(steps, 1))
    s = _summary(_trace(len(steps), loss=loss, stable=np.ones(len(steps))), _spec(lr), {"separable": True})
    assert s.entrance_step == 0 and s.rate_window_start == 1 and s.rate_window_rule == "entrance"
    assert s.rate_applies is True
    assert s.rate_slope == pytest.approx(-1.0, abs=1e-9)
    assert s.rate_slope_interval == pytest.approx([-1.0, -1.0], abs=1e-9)
    assert s.rate_C == pytest.approx(c, rel=1e-12)
    assert s.rate_points == 5000


def test_rate_c_is_the_max_and_the_slope_fits_the_upper_envelope() -> None:
    lr = 10.0
    t = np.arange(1, 2001)
    wiggle = np.where(t % 7 == 0, 3.0, 1.0)  # spikes every 7 steps
    loss = 2.0 / (lr * t) * wiggle
    trace = _trace(len(t), step=t, loss=loss, stable=np.ones(len(t)))
    s = _summary(trace, _spec(lr), {"separable": True})
    assert s.rate_C == pytest.approx(float((lr * t * loss).max()))
    assert s.rate_C is not None and (lr * t * loss <= s.rate_C * (1 + 1e-12)).all()
    env = upper_envelope(loss)
    assert (env >= loss).all() and (np.diff(env) <= 0).all()
    assert s.rate_slope == pytest.approx(np.polyfit(np.log(t), np.log(env), 1)[0], abs=1e-9)
    assert s.rate_slope_interval is not None
    low, high = s.rate_slope_interval
    assert low is not None and high is not None and low <= s.rate_slope <= high


def test_rate_does_not_apply_to_a_linear_model_on_non_separable_data() -> None:
    t = np.arange(1, 200)
    trace = _trace(len(t), step=t, loss=1.0 / t, stable=np.ones(len(t)))
    s = _summary(trace, _spec(model="linear"), {"separable": False})
    assert s.rate_applies is False and s.rate_slope is None and s.rate_C is None
    assert s.rate_note is not None and "not linearly separable" in s.rate_note
    assert s.best_loss == pytest.approx(1 / 199)  # the best-iterate curve is kept
    unknown = _summary(trace, _spec(model="linear"), None)
    assert unknown.rate_applies is None and unknown.rate_slope is not None


def test_a_frozen_iterate_is_reported_and_not_fitted() -> None:
    lr = 1.0
    t = np.arange(1, 1001)
    loss = 1.0 / t
    norm = np.log(t)
    loss[t >= 500], norm[t >= 500] = loss[t == 500][0], norm[t == 500][0]  # stuck from step 500
    s = _summary(
        _trace(len(t), step=t, loss=loss, param_norm=norm, stable=np.ones(len(t))), _spec(lr), {"separable": True}
    )
    assert s.frozen_from_step == 500
    assert s.rate_window_end == 499 and s.rate_slope == pytest.approx(-1.0, abs=1e-9)
    zero = np.where(t >= 300, 0.0, 1.0 / t)
    assert frozen_from(t, zero, np.log(t)) == 300
    assert frozen_from(t, 1.0 / t, np.log(t)) is None


def test_final_test_metrics_say_where_they_were_measured() -> None:
    test_acc = np.array([0.2, np.nan, 0.7, np.nan, np.nan])
    s = _summary(_trace(5, loss=np.ones(5), test_acc=test_acc, test_loss=test_acc))
    assert s.final_test_acc == 0.7 and s.final_test_step == 2 and s.last_step == 4


def test_best_iterate() -> None:
    loss = np.array([1.0, 0.5, 0.8, 0.2, 0.3])
    s = _summary(_trace(5, loss=loss))
    assert s.best_loss == 0.2 and s.best_step == 3
    assert s.best_iterate_curve is not None and s.best_iterate_curve.loss == [1.0, 0.5, 0.5, 0.2, 0.2]


# --- κ_B -----------------------------------------------------------------------------------------


def test_kappa_is_a_quantile_of_eta_loss_outside_s_that_one_row_cannot_move_far() -> None:
    outside = np.arange(100.0, 200.0)  # 100 rows outside S at η·L = 100 .. 199
    inside = np.linspace(0.01, 50, 300)
    x = np.concatenate([outside, inside])
    v = np.concatenate([np.full(100, OUTSIDE_S), np.full(300, IN_S)])
    k = kappa_b(x, v)
    assert k["kappa_B_bound"] == "upper" and k["kappa_B"] == 104.0  # x_(5) of 100: ceil(0.05 * 100)
    assert k["kappa_B_rows_outside"] == 100 and k["kappa_B_rows_in_S"] == 300
    lo = int(stats.binom.ppf(0.025, 100, 0.05))
    hi = int(stats.binom.ppf(0.975, 100, 0.05)) + 1
    assert k["kappa_B_interval"] == [outside[lo - 1], outside[hi - 1]]
    # One wild row outside S at η·L = 1 moves it by one order statistic, not to 1.
    wild = kappa_b(np.append(x, 1.0), np.append(v, OUTSIDE_S))
    assert wild["kappa_B"] == 104.0  # x_(6) of 101 values: 1, 100, ..., 104
    assert wild["kappa_B_interval"][1] <= k["kappa_B_interval"][1]
    # Undecided and unmeasured rows are not used.
    same = kappa_b(np.append(x, [1.0, 2.0]), np.append(v, [UNDECIDED, np.nan]))
    assert same["kappa_B"] == k["kappa_B"] and same["kappa_B_rows_outside"] == 100


def test_kappa_pools_runs_and_is_a_lower_bound_when_nothing_was_outside() -> None:
    a, b = np.arange(1.0, 51.0), np.arange(51.0, 101.0)
    va, vb = np.full(50, OUTSIDE_S), np.full(50, IN_S)
    pooled = kappa_b([a, b], [va, vb])
    assert pooled == kappa_b(np.concatenate([a, b]), np.concatenate([va, vb]))
    only_in = kappa_b(b, vb)
    assert only_in["kappa_B_bound"] == "lower" and only_in["kappa_B"] == 98.0  # x_(48) of 51..100
    assert kappa_b(np.ones(3), np.full(3, np.nan))["kappa_B"] is None


def test_summary_kappa_uses_the_verdict_column() -> None:
    eta_loss = np.array([10.0, 8.0, 5.0, 2.0, 3.0])
    stable = np.array([OUTSIDE_S, OUTSIDE_S, IN_S, IN_S, UNDECIDED])
    s = _summary(_trace(5, loss=eta_loss / 10, eta_loss=eta_loss, stable=stable))
    assert s.kappa_B == 8.0 and s.kappa_B_bound == "upper" and s.kappa_B_rows_outside == 2


# --- the rest ------------------------------------------------------------------------------------


def test_sharpness_above_the_edge_counts_against_two_over_eta() -> None:
    lr = 10.0  # 2 / eta = 0.2
    sharp = np.array([0.1, 0.25, np.nan, 0.3, 0.19])
    s = _summary(_trace(5, sharpness=sharp, batch_sharpness=sharp * 2, loss=np.ones(5)), _spec(lr))
    assert s.sharpness_edge is not None and s.batch_sharpness_edge is not None
    assert s.sharpness_edge.steps_above == 2 and s.sharpness_edge.first_step_above == 1
    assert s.batch_sharpness_edge.steps_above == 3


def test_divergence_is_the_first_non_finite_iterate() -> None:
    loss = np.array([1.0, 2.0, 1e30, np.inf])
    norm = np.array([1.0, 2.0, 3.0, np.inf])
    summary = _summary(_trace(4, loss=loss, param_norm=norm))
    assert summary.diverged_step == 3
    assert summary.max_loss == 1e30
    assert _summary(_trace(3, loss=loss[:3], param_norm=norm[:3])).diverged_step is None


def test_summary_is_strict_json_and_old_summaries_load_as_legacy() -> None:
    v = _verdicts(300, [(0, 50)])
    fresh = _summary(_trace(300, stable=v, loss=np.linspace(1, 0.1, 300), drift=np.full(300, np.nan)))
    assert fresh.legacy is None and fresh.schema_version == 2
    json.dumps(fresh.to_json(), allow_nan=False)
    assert RunSummary.from_stored(fresh.to_json()) == fresh  # the store's JSON reads back the same
    non_finite = RunSummary(final_loss=math.nan, exit_rate_interval=[1.0, math.inf]).to_json()
    assert non_finite["final_loss"] is None and non_finite["exit_rate_interval"] == [1.0, None]
    old = {"status": "completed", "final_loss": 0.1, "entrance_step": 7, "n_exits": 3, "stability_constant": 4.0}
    read = RunSummary.from_stored(old)
    assert read is not None and read.final_loss == 0.1 and read.status == "completed"
    assert read.entrance_step is None  # the old definition is not passed off as the new one
    assert read.legacy == {"entrance_step": 7, "n_exits": 3, "stability_constant": 4.0}
    assert read["final_loss"] == 0.1 and read.get("kappa_B", "none") == "none"
    assert RunSummary.from_stored(None) is None


def test_short_traces_are_summarised_as_worked_out_by_hand() -> None:
    """A sliced run with instruments off records two rows: every field of its summary, and a diverged four-row run's."""
    trace = _trace(
        2,
        step=np.array([0, 400]),
        loss=np.array([2.3, 0.01]),
        acc=np.array([0.2, 1.0]),
        param_norm=np.array([0.0, 5.0]),
        sharpness=np.array([np.nan, 0.5]),
    )
    lr = 10.0
    s = analyze(trace, _spec(lr), {"separable": True})
    assert s == {
        "schema_version": SCHEMA_VERSION,
        "recorded_steps": 2,
        "last_step": 400,
        "final_loss": 0.01,
        "final_acc": 1.0,
        "final_test_loss": None,
        "final_test_acc": None,
        "final_test_step": None,
        "max_loss": 2.3,
        "loss_spikes": 0,
        "diverged_step": None,
        "verdicts_recomputed": None,
        "drift_measured": False,
        "sharpness_edge": {
            "measured": 1,
            "steps_above": 1,
            "fraction_above": 1.0,
            "first_step_above": 400,
            "max_times_eta_over_2": 0.5 * lr / 2,
        },
        "batch_sharpness_edge": {"measured": 0},
        "rate_applies": True,
        "rate_note": None,
        "frozen_from_step": None,
        "rate_window_start": 40,
        "rate_window_rule": "tenth_of_run",
        "rate_C": lr * 400.0 * 0.01,
        "rate_C_step": 400,
        "rate_points": 1,
        "best_loss": 0.01,
        "best_step": 400,
        "best_iterate_curve": {"step": [0, 400], "loss": [2.3, 0.01]},
        "kappa_B": None,
        "kappa_B_bound": None,
        "kappa_B_interval": None,
        "kappa_B_quantile": 0.05,
        "kappa_B_rows_outside": 0,
        "kappa_B_rows_in_S": 0,
    }
    # A diverged run: the loss and the norm go to inf at step 300; the frozen tail is the last two rows.
    trace = _trace(
        4,
        step=np.array([0, 100, 200, 300]),
        loss=np.array([1.0, 3.0, 3.0, np.inf]),
        param_norm=np.array([1, 2, 2, np.inf]),
    )
    s = analyze(trace, _spec(lr), None)
    assert s["diverged_step"] == 300 and s["loss_spikes"] == 1 and s["max_loss"] == 3.0 and s["final_loss"] == 3.0
    # Frozen from 100 (loss and norm constant since): the window [30, 100) holds no row.
    assert s["frozen_from_step"] == 100 and s["rate_window_start"] == 30 and "rate_C" not in s
    assert s["rate_applies"] is None and s["best_step"] == 0


def test_a_loss_in_the_last_decade_of_the_floats_has_an_open_decade() -> None:
    """A loss of 1e308 in S after entrance: its decade is [1e308, inf), stored as [1e308, None]
    (10.0 ** 309 raised OverflowError, and the run lost its summary)."""
    n = 200
    loss = np.where(np.arange(n) < 100, 1.5e308, 0.5)
    s = _summary(_trace(n, stable=_verdicts(n, [(150, 155)]), loss=loss))
    rows = {round(math.log10(r.loss_low or 1)): r for r in s.exits_by_loss_decade or []}
    assert rows[308].loss_low == 1e308 and rows[308].loss_high is None and rows[308].steps_in_S == 100
    assert rows[-1].exits == 1 and rows[-1].loss_high == 1.0
