"""`RunSummary`: what the analysis of a finished trace says, typed and described.

Every field is optional with a None default: summaries stored by older versions of the service
must still load. Keys this model does not know (the retired definitions of older summaries) are
kept, untouched, under `legacy` instead of failing or vanishing; a fresh summary has none.
Non-finite floats become None, so `model_dump(mode="json")` is strict JSON.

Steps are optimizer steps (step t is the iterate before update t). Intervals are two-sided at
95% (eos_core.regimes.LEVEL) as [low, high]; None for an end means it is open. "Resolution"
says how far the cadence of the drift measurement can move a value.
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Mapping
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2
# Fields whose meaning did not change in version 2: read from older summaries as they are.
UNCHANGED_FIELDS = frozenset(
    {
        *("status", "device", "lr_effective", "lr_scaling", "n_params", "timing", "recorded_steps", "last_step"),
        *("final_loss", "final_acc", "final_test_loss", "final_test_acc", "max_loss", "loss_spikes"),
        *("diverged_step", "sharpness_edge", "batch_sharpness_edge", "best_loss", "best_step"),
        *("best_iterate_curve", "max_drift", "legacy"),
    }
)


def _finite_or_none(value: Any) -> Any:
    if value.__class__ is float:  # the common case first: pydantic calls this for every number of a summary
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Num = Annotated[float | None, BeforeValidator(_finite_or_none)]
Interval = list[Num]


def _split_legacy(data: Mapping[str, Any], known: AbstractSet[str]) -> dict[str, Any]:
    if data.keys() <= known:  # a fresh summary: one set comparison, not two passes over its keys
        return dict(data)
    unknown = {k: v for k, v in data.items() if k not in known}
    kept = {k: v for k, v in data.items() if k in known}
    if unknown:
        kept["legacy"] = {**(kept.get("legacy") or {}), **unknown}
    return kept


class _Record(BaseModel):
    """A typed record that callers written for the old dict summaries can still read by name."""

    model_config = ConfigDict(extra="forbid")

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name, None) if name in type(self).model_fields else None
        return default if value is None else value

    def items(self) -> ItemsView[str, Any]:
        """The strict-JSON fields (what the store keeps)."""
        return self.model_dump(mode="json").items()


class RunTiming(_Record):
    setup_seconds: Num = Field(None, description="seconds spent before the first step (data, model)")
    loop_seconds: Num = Field(None, description="seconds in the SGD loop, measurements included")
    measure_seconds: Num = Field(None, description="seconds of the loop spent measuring")
    seconds_per_step: Num = Field(None, description="loop_seconds / steps")
    slice_runs: int | None = Field(
        None, description="runs trained together as one stacked computation (1: alone); the loop's seconds are theirs"
    )


class EdgeSummary(_Record):
    measured: int | None = Field(None, description="recorded steps where this curvature was measured")
    steps_above: int | None = Field(None, description="measured steps with the value > 2/η")
    fraction_above: Num = Field(None, description="steps_above / measured (per measured row)")
    first_step_above: int | None = Field(None, description="first measured step with the value > 2/η")
    max_times_eta_over_2: Num = Field(None, description="max over measured steps of value·η/2 (1 = the edge)")


class DecadeExits(_Record):
    loss_low: Num = Field(None, description="the decade's lower loss (inclusive)")
    loss_high: Num = Field(None, description="the decade's upper loss (exclusive)")
    steps_in_S: int | None = Field(
        None, description="steps after entrance in S while the recorded loss was in this decade"
    )
    exits: int | None = Field(None, description="exits after entrance whose recorded loss was in this decade")
    exit_rate_per_1000: Num = Field(
        None, description="exits per 1,000 steps in S in this decade; None where exits are not resolved"
    )
    exit_rate_interval: Interval | None = Field(None, description="Garwood exact Poisson interval of the rate")


class Curve(_Record):
    step: list[int] = Field(default_factory=list)
    loss: list[Num] = Field(default_factory=list)


class RunSummary(_Record):
    schema_version: int | None = Field(None, description="2 for summaries with these definitions; None before")
    legacy: dict[str, Any] | None = Field(
        None, description="fields of an older summary that this version does not define (their old meaning)"
    )

    # -- the run
    status: str | None = Field(None, description="completed, diverged or stopped")
    device: str | None = Field(None, description="torch device the run used")
    lr_effective: Num = Field(None, description="the step size η applied (after width scaling)")
    lr_scaling: str | None = Field(None, description="'width' when η = lr·m for the two-layer model, else 'none'")
    n_params: int | None = Field(None, description="trained parameters")
    timing: RunTiming | None = None
    recorded_steps: int | None = Field(None, description="rows in the trace")
    last_step: int | None = Field(None, description="step of the last row")
    final_loss: Num = Field(None, description="training (evaluation-set) loss at the last row")
    final_acc: Num = Field(None, description="training accuracy at the last row")
    final_test_loss: Num = Field(None, description="test loss at the last row where it was measured")
    final_test_acc: Num = Field(None, description="test accuracy at the last row where it was measured")
    final_test_step: int | None = Field(
        None, description="the step of final_test_loss and final_test_acc (the last step when it was measured there)"
    )
    max_loss: Num = Field(None, description="largest finite recorded loss")
    loss_spikes: int | None = Field(None, description="recorded rows whose loss exceeds twice the previous row's")
    diverged_step: int | None = Field(None, description="first step whose iterate or loss is not finite")

    # -- verdicts and regimes (eos_core/regimes.py); all in steps
    drift_measured: bool | None = Field(None, description="whether any row has a drift verdict")
    verdicts_recomputed: bool | None = Field(
        None,
        description="True when the trace's `stable` column is the old 0/1 (p >= 0.5) one and the verdicts "
        "were recomputed from stable_p at the spec's confidence",
    )
    drift_cadence_steps: int | None = Field(
        None, description="c: median steps between drift measurements; each verdict holds until the next one"
    )
    window_steps: int | None = Field(
        None, description="W = max(100, 4c) steps, at most half of regime_steps (and at least c): the entrance window"
    )
    regime_steps: int | None = Field(None, description="steps from the first drift measurement to the end")
    entrance_step: int | None = Field(
        None,
        description="first step in S from which every window of W steps is at least half in S (undecided "
        "counts as not in S); resolution: about max(W, 2c) steps. None: no such step",
    )
    fraction_in_S: Num = Field(None, description="fraction of steps in S (from the first drift measurement)")
    fraction_in_S_interval: Interval | None = Field(
        None, description="Clopper-Pearson on an autocorrelation-corrected effective number of rows"
    )
    fraction_undecided: Num = Field(None, description="fraction of steps whose verdict is undecided")
    fraction_undecided_interval: Interval | None = Field(None, description="as fraction_in_S_interval")
    fraction_in_S_after_entrance: Num = Field(None, description="fraction of steps in S from entrance on")
    fraction_in_S_after_entrance_interval: Interval | None = Field(None, description="as fraction_in_S_interval")
    fraction_undecided_after_entrance: Num = Field(None, description="fraction of steps undecided from entrance on")
    exits_observed: int | None = Field(
        None,
        description="excursions out of S seen after entrance at this cadence (a stretch of rows not in S with "
        "at least one outside-S verdict); a lower bound: excursions shorter than c steps are invisible",
    )
    exit_steps: list[int] | None = Field(None, description="step of each exit after entrance (±c)")
    return_steps: list[int] | None = Field(None, description="step of each return into S (±c)")
    excursion_lengths: list[int] | None = Field(None, description="return - exit, steps, of closed excursions (±c)")
    median_excursion_steps: Num = Field(None, description="median of excursion_lengths")
    open_excursion: bool | None = Field(None, description="the run ends outside S")
    steps_in_S_after_entrance: int | None = Field(None, description="the exposure of the exit rate")
    exits_resolved: bool | None = Field(
        None,
        description="c = 1, or the median excursion after entrance lasts at least 3c steps; when False the "
        "exit rates are None",
    )
    exit_rate_per_1000: Num = Field(None, description="exits per 1,000 steps in S after entrance")
    exit_rate_interval: Interval | None = Field(None, description="Garwood exact Poisson interval")
    exits_note: str | None = Field(None, description="why the exit rate is not given")
    exits_by_loss_decade: list[DecadeExits] | None = Field(
        None, description="exits after entrance and steps in S per decade of the recorded loss"
    )
    fraction_positive_drift_before_entrance: Num = Field(
        None, description="fraction of measured rows up to the entrance with a positive drift estimate"
    )
    max_drift: Num = Field(None, description="largest drift estimate")

    # -- classical edge of stability
    sharpness_edge: EdgeSummary | None = Field(None, description="λ_max(H) against 2/η")
    batch_sharpness_edge: EdgeSummary | None = Field(None, description="batch sharpness against 2/η")

    # -- the rate (eos_core/rate.py)
    rate_applies: bool | None = Field(
        None, description="False: linear model on data that are not separable; None: separability not checked"
    )
    rate_note: str | None = Field(None, description="why the rate does not (or may not) apply")
    frozen_from_step: int | None = Field(
        None,
        description="first step from which the loss is exactly 0, or loss and ‖θ‖ are exactly constant, to the "
        "end: the iterate no longer moves; the rate uses only earlier steps",
    )
    rate_window_start: int | None = Field(None, description="t0: the rate window's first step")
    rate_window_rule: Literal["entrance", "tenth_of_run"] | None = Field(
        None, description="t0 is the entrance, or (no entrance) a tenth of the run"
    )
    rate_window_end: int | None = Field(None, description="the last step used by the slope fit")
    rate_points: int | None = Field(None, description="recorded steps in the window")
    rate_C: Num = Field(
        None, description="Ĉ = max over recorded t in the window of η t L_t: the tightest C in L_t <= C/(η t)"
    )
    rate_C_step: int | None = Field(None, description="the step where Ĉ is reached")
    rate_slope: Num = Field(
        None,
        description="least-squares slope of log of the running upper envelope max_{s>=t} L_s against log t, on "
        "every recorded step of the window (the paper: -1)",
    )
    rate_slope_interval: Interval | None = Field(
        None, description="block bootstrap: 10 equal log-time blocks, 1,000 resamples, seed 0, percentiles"
    )
    best_loss: Num = Field(None, description="min over recorded steps of L")
    best_step: int | None = Field(None, description="step of best_loss")
    best_iterate_curve: Curve | None = Field(
        None, description="min_{s<=t} L_s at step 0 and about 64 log-spaced recorded steps"
    )

    # -- κ_B (eos_core/kappa.py), this run alone
    kappa_B: Num = Field(
        None,
        description="bound 'upper': the 5% quantile of η·L over rows outside S; bound 'lower' (no row "
        "outside S): the 95% quantile of η·L over rows in S",
    )
    kappa_B_bound: Literal["upper", "lower"] | None = Field(None, description="which side of κ_B the value bounds")
    kappa_B_interval: Interval | None = Field(None, description="order-statistic interval of that quantile")
    kappa_B_quantile: Num = Field(None, description="q of the quantile (0.05)")
    kappa_B_rows_outside: int | None = Field(None, description="decided rows outside S used")
    kappa_B_rows_in_S: int | None = Field(None, description="decided rows in S")

    @model_validator(mode="before")
    @classmethod
    def _keep_unknown_as_legacy(cls, data: Any) -> Any:
        if data.__class__ is dict and _RUN_SUMMARY_FIELDS.issuperset(data):
            return data  # a fresh summary (pydantic copies what it keeps, so no copy is needed)
        if not isinstance(data, Mapping):
            return data
        return _split_legacy(data, cls.model_fields.keys())

    @classmethod
    def from_stored(cls, data: Mapping[str, Any] | RunSummary | None) -> RunSummary | None:
        """A stored summary (a JSON dict of any version) as a RunSummary; None stays None.

        Before SCHEMA_VERSION 2 the regime, rate and κ fields had other definitions: those of a
        summary without `schema_version` go under `legacy`, and only UNCHANGED_FIELDS are read.
        """
        if data is None or isinstance(data, RunSummary):
            return data
        if data.get("schema_version") is None:
            data = _split_legacy(data, UNCHANGED_FIELDS)
        return cls.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        """Strict JSON (no NaN): what the store keeps."""
        return self.model_dump(mode="json")


# RunSummary's fields, for its validator's test of a fresh summary (a frozenset: the fastest superset test).
_RUN_SUMMARY_FIELDS = frozenset(RunSummary.model_fields)
