"""Traces in json (downsampled), csv and parquet (streamed, full resolution), and /compare."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from eos_core.trace import COLUMNS, METRICS
from store.traces import append_trace

from .conftest import Api

N = 5000
SPIKE = 1234


def synthetic(steps: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
    """loss = scale * step (spike at SPIKE), drift every 10th step, everything else NaN."""
    chunk = {name: np.full(len(steps), np.nan) for name in METRICS}
    chunk["step"] = steps.astype(np.int64)
    chunk["loss"] = scale * steps.astype(np.float64)
    chunk["loss"][steps == SPIKE] = 1e6
    chunk["drift"] = np.where(steps % 10 == 0, -1.0, np.nan)
    return chunk


def run_with_trace(api: Api, steps: np.ndarray, scale: float = 1.0) -> int:
    run_id: int = api.submit()["runs"][0]["id"]
    with api.sessions.begin() as session:
        append_trace(session=session, run_id=run_id, chunk=synthetic(steps, scale))
    return run_id


@pytest.fixture
def run_id(api: Api) -> int:
    return run_with_trace(api, np.arange(N))


def test_json_full_resolution_has_nulls_for_nan(api: Api, run_id: int) -> None:
    body = api.get(f"/api/v1/runs/{run_id}/trace", params={"metrics": "loss,drift", "max_points": N}).json()
    assert body["points"] == N and body["step"] == list(range(N)) and body["metrics"] == ["loss", "drift"]
    columns = body["columns"]
    assert set(columns) == {"loss", "loss_min", "loss_max", "drift", "drift_min", "drift_max"}
    assert columns["loss"][7] == 7.0 and columns["loss"][SPIKE] == 1e6
    assert columns["drift"][:3] == [-1.0, None, None] and columns["drift_max"] == columns["drift"]


def test_json_downsampled_honours_max_points_and_keeps_spikes(api: Api, run_id: int) -> None:
    body = api.get(f"/api/v1/runs/{run_id}/trace", params={"metrics": "loss", "max_points": 100}).json()
    assert 0 < body["points"] <= 100 and len(body["columns"]["loss"]) == body["points"]
    assert body["step"][:2] == [0, 50]
    assert body["columns"]["loss_min"][1] == 50.0 and body["columns"]["loss_max"][1] == 99.0
    assert max(body["columns"]["loss_max"]) == 1e6  # the one-step spike survives
    window = api.get(f"/api/v1/runs/{run_id}/trace", params={"metrics": "loss", "start": 100, "end": 199}).json()
    assert window["step"] == list(range(100, 200))


def test_json_all_metrics_by_default(api: Api, run_id: int) -> None:
    body = api.get(f"/api/v1/runs/{run_id}/trace", params={"max_points": 10}).json()
    assert body["metrics"] == list(METRICS) and len(body["columns"]) == 3 * len(METRICS)
    assert body["columns"]["sharpness"] == [None] * body["points"]


def test_csv_streams_every_step(api: Api, run_id: int) -> None:
    response = api.get(f"/api/v1/runs/{run_id}/trace", params={"metrics": "loss,drift", "format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(response.text))
    assert list(frame.columns) == ["step", "loss", "drift"] and len(frame) == N
    assert frame["loss"].iloc[SPIKE] == 1e6 and frame["loss"].iloc[7] == 7.0
    assert frame["drift"].isna().sum() == N - N // 10


def test_parquet_streams_every_step(api: Api, run_id: int) -> None:
    response = api.get(f"/api/v1/runs/{run_id}/trace", params={"format": "parquet"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == list(COLUMNS) and table.num_rows == N
    np.testing.assert_array_equal(table.column("step").to_numpy(), np.arange(N))
    assert table.column("loss").to_numpy()[SPIKE] == 1e6


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_unknown_metric_is_422_listing_valid_names(api: Api, run_id: int, fmt: str) -> None:
    response = api.get(f"/api/v1/runs/{run_id}/trace", params={"metrics": "loss,lossy", "format": fmt})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "metrics"] and "lossy" in error["msg"] and "sharpness" in error["msg"]
    assert error["ctx"]["valid"] == list(METRICS)


def test_trace_of_missing_run_is_404(api: Api) -> None:
    for fmt in ("json", "csv", "parquet"):
        response = api.get("/api/v1/runs/999999/trace", params={"format": fmt})
        assert response.status_code == 404 and response.json() == {"detail": "no run 999999"}


def test_deleting_a_run_deletes_its_trace(api: Api, run_id: int) -> None:
    assert api.counts()["trace_chunks"] > 0
    assert api.delete(f"/api/v1/runs/{run_id}").status_code == 204
    assert api.counts()["trace_chunks"] == 0


def test_compare_aligns_runs_on_one_grid(api: Api) -> None:
    long = run_with_trace(api, np.arange(1, 1001))
    short = run_with_trace(api, np.arange(1, 501), scale=2.0)
    response = api.get("/api/v1/compare", params={"runs": f"{long},{short}", "metrics": "loss,drift", "max_points": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["runs"]] == [long, short] and body["metrics"] == ["loss", "drift"]
    assert body["runs"][0]["summary"] is None and body["runs"][0]["params"] == {}
    assert body["step"] == list(range(1, 1001, 100))
    first, second = (s["columns"]["loss"] for s in body["series"])
    assert first[0] == pytest.approx(50.5) and second[0] == pytest.approx(101.0)  # mean of steps 1..100 (x2)
    assert second[5:] == [None] * 5  # the short run ends at step 500
    assert body["series"][0]["columns"]["drift"] == [-1.0] * 10


def test_compare_bad_input(api: Api, run_id: int) -> None:
    assert api.get("/api/v1/compare", params={"runs": f"{run_id},999999"}).status_code == 404
    bad_ids = api.get("/api/v1/compare", params={"runs": "1,x"})
    assert bad_ids.status_code == 422 and bad_ids.json()["detail"][0]["loc"] == ["query", "runs"]
    bad_metric = api.get("/api/v1/compare", params={"runs": str(run_id), "metrics": "nope"})
    assert bad_metric.status_code == 422 and "nope" in bad_metric.json()["detail"][0]["msg"]
