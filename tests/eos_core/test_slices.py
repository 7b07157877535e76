"""Sweep slices: R runs trained as one stacked computation measure what each measures alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import eos_core.training as training
from eos_core import RunSpec, StopTraining, train, train_slice
from eos_core.sampling import BatchSampler
from eos_core.slices import plan_slices, slice_key
from eos_core.sweep import expand_sweep
from eos_core.trace import METRICS, Trace

TOLERANCE = 1e-9


def _specs(
    model: dict[str, Any], lrs: list[float], instrument: dict[str, Any], batch_size: int = 4, steps: int = 100
) -> list[RunSpec]:
    base = {
        "dtype": "float64",
        "dataset": {"kind": "gaussian_mixture", "classes": 3, "per_class": 20, "dim": 6, "data_seed": 7},
        "model": model,
        "optimizer": {"lr": 1.0, "batch_size": batch_size, "steps": steps},
        "instrument": instrument,
    }
    grid = expand_sweep(RunSpec.model_validate(base), {"optimizer.lr": lrs, "seed": [0, 1]})
    return [spec for _, spec in grid]


EVERY_INSTRUMENT = {
    "every": 1,
    "drift_every": 1,
    "drift_samples": 8,
    "drift_max_samples": 32,
    "sharpness_every": 10,
    "batch_sharpness_samples": 4,
    "test_every": 10,
}


def _assert_same_trace(alone: Trace, sliced: Trace, label: str) -> None:
    assert np.array_equal(alone["step"], sliced["step"]), label
    for name in METRICS:
        a, b = alone[name], sliced[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{label}: {name} measured at other rows"
        ok = np.isfinite(a)
        scale = np.maximum(np.abs(a[ok]), 1e-300)
        worst = float(np.max(np.abs(a[ok] - b[ok]) / scale)) if ok.any() else 0.0
        # Differences of tiny quantities (a drift near 0) are judged against the row's loss.
        if worst > TOLERANCE and name in ("drift", "quad_drift", "rel_drift", "drift_se"):
            worst = float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(alone["loss"][ok]), 1e-300)))
        assert worst <= TOLERANCE, f"{label}: {name} differs by {worst:.2e} relative"


def _check_slice(specs: list[RunSpec]) -> None:
    outcomes = train_slice(specs)
    for spec, outcome in zip(specs, outcomes, strict=True):
        assert not isinstance(outcome, Exception), outcome
        alone = train(spec)
        _assert_same_trace(alone.trace, outcome.trace, spec.name)
        assert outcome.status == alone.status
        assert np.array_equal(alone.trace["stable"], outcome.trace["stable"], equal_nan=True)
        assert np.allclose(alone.params, outcome.params, rtol=TOLERANCE, atol=0)
        assert outcome.summary["timing"]["slice_runs"] == len(specs)


def test_linear_slice_equals_each_run_alone_for_every_instrument() -> None:
    specs = _specs({"kind": "linear"}, [1.0, 3.0, 10.0], EVERY_INSTRUMENT)
    assert len({slice_key(s) for s in specs}) == 1
    _check_slice(specs)


def test_two_layer_slice_equals_each_run_alone() -> None:
    model = {"kind": "two_layer", "width": 8, "activation": "leaky_softplus"}
    _check_slice(_specs(model, [0.05, 0.2], EVERY_INSTRUMENT))


def test_mlp_slice_with_own_data_and_evaluation_subsets_equals_each_run_alone() -> None:
    # No data_seed: each seed draws its own data; eval_subset: each run its own evaluation points.
    specs = _specs({"kind": "mlp", "depth": 3, "width": 8, "activation": "gelu"}, [0.1, 0.5], EVERY_INSTRUMENT)
    specs = [
        s.model_copy(
            update={
                "dataset": s.dataset.model_copy(update={"data_seed": None}),
                "instrument": s.instrument.model_copy(update={"eval_subset": 25}),
            }
        )
        for s in specs
    ]
    _check_slice(specs)


def test_exact_drift_by_enumeration_in_a_slice_equals_alone() -> None:
    instrument = {**EVERY_INSTRUMENT, "drift_samples": "exact", "drift_max_samples": 64}
    _check_slice(_specs({"kind": "linear"}, [2.0, 8.0], instrument, batch_size=1, steps=30))


def test_a_diverging_run_leaves_the_slice_at_its_own_step_and_the_others_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    off = {"every": 1000, "drift_samples": 0, "sharpness_every": 0, "test_every": 0}
    specs = _specs({"kind": "mlp", "depth": 3, "width": 8, "activation": "relu"}, [0.5, 1e300], off, steps=300)
    outcomes = train_slice(specs)
    statuses = [o.status for o in outcomes if not isinstance(o, Exception)]
    assert "diverged" in statuses and "completed" in statuses
    for spec, outcome in zip(specs, outcomes, strict=True):
        assert not isinstance(outcome, Exception)
        alone = train(spec)
        assert outcome.status == alone.status
        _assert_same_trace(alone.trace, outcome.trace, spec.name)
        # The diverged step found by replaying the steps since the last check is the one a check at every step finds.
        monkeypatch.setattr(training, "CHECK_EVERY", 1)
        every_step = train(spec)
        monkeypatch.undo()
        assert every_step.status == alone.status
        assert np.array_equal(every_step.trace["step"], alone.trace["step"])
        assert np.array_equal(every_step.params, alone.params)
        assert np.isfinite(outcome.params).all()
    diverged = [o for o in outcomes if not isinstance(o, Exception) and o.status == "diverged"]
    assert all(1 < o.trace["step"][-1] < 32 for o in diverged)  # between two checks: found by the replay


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.rows = step, 0

    def __call__(self, chunk: Trace) -> None:
        self.rows += len(chunk["step"])
        if chunk["step"][-1] >= self.step:
            raise StopTraining


class _Breaks:
    def __call__(self, chunk: Trace) -> None:
        raise RuntimeError("the store is full")


def test_stopping_or_failing_one_run_ends_it_alone() -> None:
    instrument = {**EVERY_INSTRUMENT, "chunk_rows": 8}
    specs = _specs({"kind": "linear"}, [1.0, 5.0], instrument)[:3]
    stop = _StopAt(40)
    outcomes = train_slice(specs, [None, stop, _Breaks()])
    kept, stopped, failed = outcomes
    assert isinstance(failed, RuntimeError) and "store is full" in str(failed)
    assert not isinstance(stopped, Exception) and stopped.status == "stopped"
    # Every row recorded is in the result, those the sink did not take included; none after the stop.
    assert 40 <= stopped.trace["step"][-1] < 100
    assert len(stopped.trace["step"]) >= stop.rows
    assert not isinstance(kept, Exception) and kept.status == "completed"
    _assert_same_trace(train(specs[0]).trace, kept.trace, "kept")
    alone = train(specs[1])
    rows = len(stopped.trace["step"])
    assert np.allclose(alone.trace["loss"][:rows], stopped.trace["loss"], rtol=TOLERANCE, atol=0)
    # Its parameters are the iterate it stopped at (after the update of its last row), not a later one.
    last = int(stopped.trace["step"][-1])
    short = specs[1].model_copy(update={"optimizer": specs[1].optimizer.model_copy(update={"steps": last + 1})})
    assert np.allclose(train(short).params, stopped.params, rtol=TOLERANCE, atol=0)


def test_a_run_alone_is_a_slice_of_one_and_its_sink_error_propagates() -> None:
    spec = _specs({"kind": "linear"}, [1.0], {"every": 1, "chunk_rows": 4})[0]
    with pytest.raises(RuntimeError, match="store is full"):
        train(spec, sink=_Breaks())


def test_slices_group_runs_differing_only_in_name_seed_and_step_size() -> None:
    specs = _specs({"kind": "linear"}, [1.0, 3.0], {"every": 5})
    other = specs[0].model_copy(update={"optimizer": specs[0].optimizer.model_copy(update={"batch_size": 8})})
    assert slice_key(other) != slice_key(specs[0])
    plan = plan_slices([*specs, other, specs[0]], max_runs=3)
    assert plan == [[0, 1, 2], [3, 5], [4]]
    with pytest.raises(ValueError, match="differ"):
        train_slice([specs[0], other])


def test_slices_respect_the_memory_bound() -> None:
    specs = _specs({"kind": "linear"}, [1.0, 3.0], {"every": 5})
    assert plan_slices(specs, max_runs=64, max_memory_gib=1e-9) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("kind", ["with_replacement", "without_replacement", "reshuffle"])
def test_batches_drawn_ahead_are_the_stream_drawn_one_at_a_time(kind: str) -> None:
    one = BatchSampler(10, 3, kind, torch.Generator().manual_seed(4))
    ahead = BatchSampler(10, 3, kind, torch.Generator().manual_seed(4))
    singles = torch.stack([one.next() for _ in range(7)])
    assert torch.equal(singles, torch.cat([ahead.block(3), ahead.block(4)]))


def test_a_run_stopped_between_recorded_steps_keeps_the_iterate_it_stopped_at() -> None:
    specs = _specs({"kind": "linear"}, [1.0, 5.0], {"every": 5, "drift_samples": 0, "sharpness_every": 0})[:2]

    def stop_at_37(step: int, steps: int) -> None:
        if step == 37:  # called after the update that made iterate 37
            raise StopTraining

    kept, stopped = train_slice(specs, progress=[None, stop_at_37])
    assert not isinstance(stopped, Exception) and stopped.status == "stopped"
    assert not isinstance(kept, Exception) and kept.status == "completed"
    short = specs[1].model_copy(update={"optimizer": specs[1].optimizer.model_copy(update={"steps": 37})})
    assert np.allclose(train(short).params, stopped.params, rtol=TOLERANCE, atol=0)
    assert stopped.trace["step"][-1] == 35  # the last recorded row before the stop
