"""The client over the embedded SQLite store: the same API app in-process, runs trained in a thread."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from eos_client import Client, Conflict, InputError, NotFound, ValidationFailed
from eos_core import RunResult, RunSpec, train_slice
from eos_core.trace import COLUMNS

from .conftest import LRS, Finished
from .support import long_spec, tiny_spec


def test_sweep_gives_one_row_per_run_with_params_and_summary(finished: Finished) -> None:
    runs = finished.client.runs(finished.experiment)
    assert list(runs["run"]) == finished.experiment.run_ids
    assert list(runs["optimizer.lr"]) == LRS
    assert set(runs["status"]) == {"completed"}
    summaries = [finished.client.run(r).summary or {} for r in runs["run"]]
    assert list(runs["final_loss"]) == [s["final_loss"] for s in summaries]
    assert list(runs["entrance_step"]) == [s["entrance_step"] for s in summaries]
    assert {"exits_observed", "exit_rate_per_1000", "rate_slope", "kappa_B", "progress"} <= set(runs.columns)
    every = finished.client.runs(finished.experiment, fields="all")
    assert "max_loss" in every.columns and list(every.columns).count("status") == 1  # the summary's is left out
    assert list(every["max_loss"]) == [s["max_loss"] for s in summaries]


def test_full_resolution_trace_is_what_training_records(finished: Finished) -> None:
    client, run_ids = finished.client, finished.experiment.run_ids
    run_id = run_ids[1]
    # The sweep trains as one slice (worker.slicing): the same slice, trained here, is the reference (in
    # float32 a run stacked with others may differ by rounding from the run alone).
    outcome = train_slice([RunSpec.model_validate(client.run(i).spec) for i in run_ids])[1]
    assert isinstance(outcome, RunResult)
    expected = outcome.trace
    frame = client.trace(run_id)
    assert list(frame.columns) == ["run", *COLUMNS]
    assert (frame["run"] == run_id).all()
    for name in COLUMNS:
        np.testing.assert_array_equal(frame[name].to_numpy(), expected[name], err_msg=name)


def test_trace_of_several_runs_is_long(finished: Finished) -> None:
    frame = finished.client.trace(finished.experiment, ["loss", "drift"])
    assert list(frame.columns) == ["run", "step", "loss", "drift"]
    assert frame.groupby("run").size().to_dict() == {r: 61 for r in finished.experiment.run_ids}
    assert frame["drift"].isna().sum() == 2 * 30  # drift every 2nd recorded step


def test_downsampled_trace_respects_max_points_and_keeps_extremes(finished: Finished) -> None:
    client, run_ids = finished.client, finished.experiment.run_ids
    full = client.trace(run_ids, "loss")
    small = client.trace(run_ids, "loss", max_points=7)
    assert list(small.columns) == ["run", "step", "loss", "loss_min", "loss_max"]
    for run_id in run_ids:
        mine, all_rows = small[small["run"] == run_id], full[full["run"] == run_id]
        assert 1 <= len(mine) <= 7
        assert mine["loss_max"].max() == all_rows["loss"].max()  # a bucket's extremes are exact
        assert mine["loss_min"].min() == all_rows["loss"].min()
        assert (mine["loss_min"] <= mine["loss"]).all() and (mine["loss"] <= mine["loss_max"]).all()


def test_events_list_the_attempt_and_the_entrance(finished: Finished) -> None:
    run = finished.client.run(finished.experiment.run_ids[0])
    events = finished.client.events(run)
    assert (events["run"] == run.id).all()
    assert events["kind"].iloc[0] == "attempt"
    entrance = events[events["kind"] == "entrance"]
    assert list(entrance["step"]) == [(run.summary or {})["entrance_step"]]


def test_compare_aligns_runs_on_one_grid(finished: Finished) -> None:
    comparison = finished.client.compare(finished.experiment, ["loss", "sharpness"], max_points=10)
    assert list(comparison.runs["run"]) == finished.experiment.run_ids
    assert list(comparison.runs["optimizer.lr"]) == LRS
    series = comparison.series
    assert list(series.columns) == ["run", "step", "loss", "sharpness"]
    grids = [tuple(series[series["run"] == r]["step"]) for r in finished.experiment.run_ids]
    assert grids[0] == grids[1] and len(grids[0]) <= 10
    first = finished.client.trace(finished.experiment.run_ids[0], "loss")
    width = grids[0][1] - grids[0][0]
    bucket = first[first["step"] < width]["loss"].mean()
    assert series["loss"].iloc[0] == pytest.approx(bucket)


def test_cancel_of_a_finished_run_is_a_conflict(finished: Finished) -> None:
    with pytest.raises(Conflict, match="already completed") as caught:
        finished.client.cancel(finished.experiment.run_ids[0])
    assert caught.value.status == 409 and caught.value.exit_code == 1


def test_invalid_spec_names_the_field(local: Client) -> None:
    with pytest.raises(ValidationFailed, match=r"optimizer\.lr: .*positive") as caught:
        local.submit(tiny_spec(lr=-1.0))
    assert caught.value.fields == ["optimizer.lr"] and caught.value.exit_code == 2
    with pytest.raises(ValidationFailed) as swept:
        local.submit(tiny_spec(), sweep=["optimizer.nope=1,2"])
    assert swept.value.fields == ["sweep optimizer.nope"]
    with pytest.raises(ValidationFailed, match="unknown metric") as metric:
        local.trace(1, "lossy")
    assert metric.value.fields == ["metrics"]


def test_unknown_ids_are_not_found(local: Client) -> None:
    with pytest.raises(NotFound, match="999") as caught:
        local.run(999)
    assert caught.value.exit_code == 3
    with pytest.raises(NotFound):
        local.runs(999)


def test_submit_reads_a_spec_file(local: Client, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(steps=5)))
    experiment = local.submit(path, sweep={"optimizer.batch_size": [2, 4]}, name="from-file", tags=["t"])
    assert experiment.name == "from-file" and experiment.tags == ["t"]
    assert [r.params for r in experiment.runs or []] == [{"optimizer.batch_size": 2}, {"optimizer.batch_size": 4}]
    assert set(local.wait(progress=False)["status"]) == {"completed"}
    with pytest.raises(InputError, match="cannot read spec file"):
        local.submit(tmp_path / "missing.yaml")


def _until(client: Client, run_id: int, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.run(run_id).status != status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status}"
        time.sleep(0.05)


def test_cancel_stops_a_running_run(local: Client) -> None:
    run_id = local.submit(long_spec()).run_ids[0]
    _until(local, run_id, "running")
    assert local.cancel(run_id).status == "running"  # it stops at its next flush
    frame = local.wait(runs=[run_id], progress=False, timeout=60)
    assert list(frame["status"]) == ["cancelled"]
    rows = len(local.trace(run_id, "loss"))
    assert 0 < rows < 200_000 // 10
    assert "cancel" in set(local.events(run_id)["kind"])


def test_closing_a_local_client_cancels_what_it_did_not_finish(tmp_path: Path) -> None:
    db = tmp_path / "eos.sqlite"
    with Client.local(db) as client:
        ids = client.submit(long_spec(), sweep={"optimizer.lr": [1.0, 2.0]}).run_ids
        _until(client, ids[0], "running")
    with Client.local(db) as again:
        assert [again.run(i).status for i in ids] == ["cancelled", "cancelled"]


def test_client_without_url_is_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOS_URL", raising=False)
    monkeypatch.setenv("EOS_DATABASE_URL", f"sqlite:///{tmp_path / 'default.sqlite'}")
    with Client() as client:
        assert client.is_local and client.url.endswith("default.sqlite")
        assert client.experiments().empty
    assert (tmp_path / "default.sqlite").exists()


def test_waiting_trains_queued_runs_left_in_the_store(tmp_path: Path) -> None:
    """A run queued by a process that is gone (here: written straight into the store) trains when waited for."""
    from store import queries
    from store.db import make_engine, session_factory, upgrade

    db = tmp_path / "eos.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    with session_factory(engine).begin() as session:
        owner = queries.local_user(session=session)
        experiment_id = queries.create_experiment(session=session, owner=owner, spec=tiny_spec(steps=10)).id
    engine.dispose()
    with Client.local(db) as client:
        assert list(client.wait(experiment_id, progress=False, timeout=60)["status"]) == ["completed"]
        assert len(client.trace(client.experiment(experiment_id), "loss")) == 11
