"""Resource limits at submission (issue 9 item 2): a run beyond the server's memory or work limit
is a 422 that names the limit and the estimate, and nothing is created; accepted runs carry
their estimate."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api, small_spec


def test_the_created_runs_carry_their_estimate(api: Api) -> None:
    runs = api.submit(sweep={"optimizer.steps": [100, 200]})["runs"]
    first, second = (run["estimate"] for run in runs)
    assert 0 < first["memory_gib"] < 1 and first["parameters"] == 100  # 5 classes x dim 20
    assert second["tflop"] == pytest.approx(2 * first["tflop"], rel=0.05)
    shown = api.get(f"/api/v1/experiments/{runs[0]['experiment_id']}").json()["runs"][0]["estimate"]
    assert shown == first


@pytest.mark.parametrize(
    ("spec", "limit"),
    [
        ({"dataset": {"classes": 10**9, "per_class": 10**9, "dim": 10**9}}, "EOS_MAX_RUN_MEMORY_GIB"),
        ({"model": {"kind": "mlp", "width": 10**8, "depth": 10**5}}, "EOS_MAX_RUN_MEMORY_GIB"),
        ({"dataset": {"classes": 10, "per_class": 10**6, "dim": 1000}}, "EOS_MAX_RUN_MEMORY_GIB"),
        ({"optimizer": {"steps": 2 * 10**9}, "model": {"kind": "mlp", "width": 512, "depth": 4}}, "EOS_MAX_RUN_TFLOP"),
    ],
)
def test_a_run_beyond_the_limits_is_refused_and_nothing_is_created(api: Api, spec: dict[str, Any], limit: str) -> None:
    before = api.counts()
    body = {**small_spec(), **spec, "optimizer": {**small_spec()["optimizer"], **spec.get("optimizer", {})}}
    response = api.post("/api/v1/experiments", "alice", json={"spec": body})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == "too_costly" and limit in error["msg"] and "would need" in error["msg"]
    assert api.counts() == before
