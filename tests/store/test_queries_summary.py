"""κ_B per batch size from stored traces, and the regime events of a summary."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session

from eos_core.kappa import kappa_b
from eos_core.summary import RunSummary
from eos_core.trace import METRICS
from eos_core.verdict import IN_S, OUTSIDE_S, UNDECIDED
from store import lifecycle, queries
from store.models import Experiment, Run, User
from store.traces import append_trace


def _trace(eta_loss: np.ndarray, stable: np.ndarray) -> dict[str, np.ndarray]:
    n = len(eta_loss)
    trace = {name: np.full(n, np.nan) for name in METRICS}
    trace.update(step=np.arange(n, dtype=np.int64), eta_loss=eta_loss, stable=stable, stable_p=np.full(n, np.nan))
    return trace


def test_kappa_is_pooled_per_batch_size_over_analysed_runs(session: Session) -> None:
    user = User(name="kappa")
    experiment = Experiment(name="kappa", owner=user, spec={})
    session.add_all([user, experiment])
    rng = np.random.default_rng(0)
    made: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {4: [], 16: []}
    for b, summary in ((4, {}), (4, {}), (16, {}), (16, None)):  # the last one has not been analysed
        spec = {"optimizer": {"batch_size": b, "lr": 1.0}}
        run = Run(experiment=experiment, spec=spec, spec_hash="0" * 64, summary=summary)
        session.add(run)
        session.flush()
        x = rng.uniform(0, 100, 200)
        v = np.where(x > 60, OUTSIDE_S, IN_S)
        v[::7] = UNDECIDED
        append_trace(session=session, run_id=run.id, chunk=_trace(x, v))
        if summary is not None:
            made[b].append((x, v))
    got = queries.kappa_by_batch_size(session=session, experiment_id=experiment.id)
    assert [g["batch_size"] for g in got] == [4, 16] and [g["runs"] for g in got] == [2, 1]
    for entry in got:
        pairs = made[entry["batch_size"]]
        expected = kappa_b([x for x, _ in pairs], [v for _, v in pairs])
        assert {k: entry[k] for k in expected} == expected
        assert entry["kappa_B_bound"] == "upper" and entry["kappa_B"] > 60


def test_summary_events_follow_the_summary_and_ignore_old_definitions() -> None:
    s = RunSummary(
        schema_version=2, entrance_step=50, exit_steps=[80, 120], return_steps=[90], diverged_step=None,
        drift_cadence_steps=5, window_steps=100,
    )  # fmt: skip
    events = queries.summary_events(s)
    assert [(k, step) for k, step, _ in events] == [("entrance", 50), ("exit", 80), ("return", 90), ("exit", 120)]
    assert events[1][2] == {"resolution_steps": 5}
    assert queries.summary_events(s.to_json()) == events
    old = {"entrance_step": 3, "exit_steps": [5], "diverged_step": 9}  # a summary from before version 2
    assert queries.summary_events(old) == [("divergence", 9, {})]
    assert queries.summary_events(None) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_finish_run_stores_strict_json(session: Session, value: float) -> None:
    user = User(name="json")
    experiment = Experiment(name="json", owner=user, spec={})
    run = Run(experiment=experiment, spec={}, spec_hash="0" * 64, status="running")
    session.add_all([user, experiment, run])
    session.flush()
    lifecycle.finish(
        session=session,
        run=run,
        status=lifecycle.RunStatus.COMPLETED,
        summary=RunSummary(final_loss=value, max_drift=1.0),
    )
    assert run.summary is not None and run.summary["final_loss"] is None and run.summary["max_drift"] == 1.0
