"""Each dashboard page in headless Chromium against the real server and data (see conftest.py):
the plots hold exactly what the API returns, the numbers drawn are the right ones, live runs update,
and the browser reports no error. Screenshots go to out/screenshots/ (copied by hand to docs/screenshots/)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from .conftest import (
    BATCHES,
    FAIL_AT,
    FAILURE,
    LONG_ROWS,
    LONG_SPIKE,
    LRS,
    SPEC,
    Data,
    Page,
    mark_completed,
    mark_running,
)

MAX_POINTS = 1500


def run_with(data: Data, lr: float, batch: int) -> int:
    return next(i for i, p in data.params.items() if p == {"optimizer.lr": lr, "optimizer.batch_size": batch})


def test_first_visit_asks_for_a_token_then_lists_experiments(bare_page: Page, data: Data) -> None:
    tab = bare_page.open("/")
    assert "eos users create" in tab.inner_text("main")
    assert tab.locator("#token-input").count() == 1

    # A token in the address is never used (the access log would hold it): dropped, and the page says why.
    tab = bare_page.open(f"/?token={data.token}")
    assert "token=" not in tab.url
    assert tab.evaluate("localStorage.getItem('eos.token')") is None
    assert "not used" in tab.inner_text("#token-in-url")
    assert tab.locator("#token-input").count() == 1

    # The sign-in box keeps it in localStorage; the API sees it only in the Authorization header.
    sent: list[str] = []
    tab.on("request", lambda request: sent.append(request.url))
    tab.fill("#token-input", data.token)
    with tab.expect_navigation():
        tab.press("#token-input", "Enter")
    tab.wait_for_selector("body[data-ready='1']")
    assert tab.evaluate("localStorage.getItem('eos.token')") == data.token
    assert sent and not [url for url in sent if data.token in url]
    row = tab.locator(f"#experiments tr[data-id='{data.experiment_id}']")
    assert "fig4 lr x batch" in row.inner_text()
    assert "η (2) × B (2) = 4 runs" in row.inner_text()
    assert row.locator("[data-status='running']").count() == 1  # it has a live run
    assert tab.get_attribute("body", "data-live") == "polling"
    bare_page.screenshot("experiments")
    bare_page.assert_clean()


def test_experiment_page_shows_the_sweep_grid_and_a_heatmap(page: Page, data: Data, api: httpx.Client) -> None:
    tab = page.open(f"/experiments/{data.experiment_id}")
    runs = {r["id"]: r for r in api.get(f"/experiments/{data.experiment_id}").json()["runs"]}

    cells = tab.locator("#status-grid td.cell")
    assert cells.count() == 4
    shown = {int(c.get_attribute("data-run")): c.get_attribute("data-status") for c in cells.all()}
    assert shown == {i: r["status"] for i, r in runs.items()}
    assert sorted(set(shown.values())) == ["completed", "running"]
    # Columns are the step sizes, rows the batch sizes, each cell the run of that pair.
    headers = tab.locator("#status-grid thead th").all_inner_texts()
    assert headers[1:] == [f"η = {lr:g}" for lr in LRS]
    for r, batch in enumerate(BATCHES):
        for c, lr in enumerate(LRS):
            cell = tab.locator(f"#status-grid tbody tr:nth-child({r + 1}) td:nth-child({c + 2})")
            assert int(cell.get_attribute("data-run")) == run_with(data, lr, batch)

    assert tab.locator("#heat-field").input_value() == "final_loss"
    heat = tab.locator("#heatmap td.heat")
    assert heat.count() == 3  # the finished runs; the running one has no summary yet
    for cell in heat.all():
        run = runs[int(cell.get_attribute("data-run"))]
        assert float(cell.get_attribute("data-value")) == pytest.approx(run["summary"]["final_loss"])
        assert "background" in (cell.get_attribute("style") or "")
    assert tab.locator(f"#heatmap td[data-run='{data.running_id}']").inner_text() == "running"
    tab.select_option("#heat-field", "rate_slope")
    for cell in tab.locator("#heatmap td.heat").all():
        run = runs[int(cell.get_attribute("data-run"))]
        assert float(cell.get_attribute("data-value")) == pytest.approx(run["summary"]["rate_slope"])
    tab.select_option("#heat-field", "final_loss")

    assert tab.locator("#runs tbody tr").count() == 4
    # κ_B per batch size, pooled over the finished runs: what the API computes, row by row.
    kappa = api.get(f"/experiments/{data.experiment_id}/kappa").json()["items"]
    rows = tab.locator("#kappa tbody tr")
    assert rows.count() == len(kappa) >= 1
    for row, entry in zip(rows.all(), kappa, strict=True):
        assert int(row.get_attribute("data-batch")) == entry["batch_size"]
        assert row.locator("td").nth(3).inner_text() == (entry["kappa_B_bound"] or "—")
    assert tab.get_attribute("#compare-link", "href") == f"/compare?runs={','.join(map(str, data.run_ids))}"
    page.screenshot("experiment")
    page.assert_clean()


def test_run_page_plots_the_downsampled_trace_the_guides_and_the_events(
    page: Page, data: Data, api: httpx.Client
) -> None:
    lr = LRS[-1]
    run_id = run_with(data, lr, BATCHES[0])
    requests: list[str] = []
    page.page.on("request", lambda r: requests.append(r.url))
    tab = page.open(f"/runs/{run_id}")
    run = api.get(f"/runs/{run_id}").json()
    summary = run["summary"]
    loss = api.get(f"/runs/{run_id}/trace", params={"metrics": "loss,test_loss", "start": 1, "max_points": MAX_POINTS})
    trace = loss.json()
    assert trace["points"] > 0

    plotted = tab.evaluate("() => eosDashboard.charts.loss.data")
    step, mean, guide = plotted[0], plotted[1], plotted[5]
    assert len(step) == trace["points"]
    assert step == trace["step"]
    assert mean == pytest.approx(trace["columns"]["loss"])
    assert all(isinstance(v, float) for v in mean)
    assert summary["lr_effective"] == lr
    expected_guide = [summary["rate_C"] / (lr * t) for t in step]
    assert guide == pytest.approx(expected_guide)  # the C/(η t) line of the rate fit
    assert tab.evaluate("() => eosDashboard.charts.loss.scales.x.distr") == 3  # log-log
    assert tab.evaluate("() => eosDashboard.charts.loss.scales.y.distr") == 3
    assert all("max_points=1500" in u for u in requests if "/trace" in u)

    edge = tab.evaluate("() => eosDashboard.charts.sharpness.data[3]")
    labels = tab.evaluate("() => eosDashboard.charts.sharpness.series.map(s => s.label)")
    assert labels[3] == "2/η"
    assert edge == pytest.approx([2 / lr] * len(edge))
    assert tab.inner_text("#two-over-eta .v") == "0.02"
    sharpness = tab.evaluate("() => eosDashboard.charts.sharpness.data[1].filter(v => v !== null).length")
    assert sharpness > 0

    dynamics = api.get(
        f"/runs/{run_id}/trace",
        params={"metrics": "drift,drift_se,stable,sharpness,batch_sharpness,eta_loss", "max_points": MAX_POINTS},
    ).json()
    drift = tab.evaluate("() => eosDashboard.charts.drift.data")
    measured = [v for v in dynamics["columns"]["drift"] if v is not None]
    assert [v for v in drift[1] if v is not None] == pytest.approx(measured)
    se = [s for s in dynamics["columns"]["drift_se"] if s is not None]
    assert [v for v in drift[2] if v is not None] == pytest.approx([d + s for d, s in zip(measured, se, strict=True)])
    assert tab.evaluate("() => eosDashboard.stableRanges.length") > 0  # the stable steps are shaded

    events = api.get(f"/runs/{run_id}/events").json()["items"]
    assert any(e["kind"] == "entrance" for e in events)
    assert tab.locator("#events tbody tr").count() == len(events)
    assert [r.get_attribute("data-kind") for r in tab.locator("#events tbody tr").all()] == [e["kind"] for e in events]
    page.screenshot("run")

    tab.check("#log-steps")  # the dynamics plots switch to a log step axis, without step 0
    assert tab.evaluate("() => eosDashboard.charts.drift.scales.x.distr") == 3
    assert tab.evaluate("() => eosDashboard.charts.sharpness.data[0][0]") >= 1
    tab.select_option("#drift-scale", "linear")
    assert tab.evaluate("() => eosDashboard.charts.drift.scales.y.distr") == 1
    with tab.expect_download() as download:
        tab.click("text=Download trace (CSV)")
    assert download.value.suggested_filename == f"run-{run_id}.csv"
    page.assert_clean()


def test_a_running_run_updates_live(page: Page, data: Data, api: httpx.Client, sessions: sessionmaker[Session]) -> None:
    tab = page.open(f"/runs/{data.running_id}?poll=0.5")
    assert tab.get_attribute("#header .status", "data-status") == "running"
    assert tab.get_attribute("body", "data-live") == "polling"
    points = api.get(f"/runs/{data.running_id}/trace", params={"metrics": "loss", "start": 1}).json()["points"]
    assert 0 < tab.evaluate("() => eosDashboard.charts.loss.data[0].length") == points
    assert tab.evaluate("() => eosDashboard.charts.loss.data[5].every(v => v === null)")  # no rate fit yet
    page.screenshot("run-running")
    try:
        mark_completed(data.running_id, data.running_summary, sessions)
        tab.wait_for_selector("#header .status[data-status='completed']", timeout=10_000)
        tab.wait_for_function("document.body.dataset.live === 'idle'", timeout=10_000)
        assert tab.evaluate("() => eosDashboard.charts.loss.data[5].every(v => v !== null)")
        assert tab.inner_text("#stats") != ""
    finally:
        mark_running(data.running_id, sessions)
    page.assert_clean()


def compare_columns(api: httpx.Client, ids: list[int], metric: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(
        "/compare", params={"runs": ",".join(map(str, ids)), "metrics": metric, "max_points": MAX_POINTS}
    ).json()
    return result


def test_compare_page_overlays_runs(page: Page, data: Data, api: httpx.Client) -> None:
    ids = [run_with(data, lr, BATCHES[0]) for lr in LRS]
    tab = page.open(f"/compare?runs={ids[0]},{ids[1]}&metric=loss")
    plotted = tab.evaluate("() => eosDashboard.chart.data")
    labels = tab.evaluate("() => eosDashboard.chart.series.map(s => s.label)")
    assert len(plotted) == 3 and labels[1].startswith(f"#{ids[0]} ") and labels[2].startswith(f"#{ids[1]} ")
    expected = compare_columns(api, ids, "loss")
    keep = [i for i, s in enumerate(expected["step"]) if s >= 1]  # the log step axis has no 0
    assert plotted[0] == [expected["step"][i] for i in keep]
    for k, series in enumerate(expected["series"]):
        column = series["columns"]["loss"]
        assert plotted[k + 1] == pytest.approx([column[i] for i in keep])
        assert sum(v is not None for v in plotted[k + 1]) > 0
    assert tab.locator("#compare-table thead th").count() == 3
    page.screenshot("compare")

    tab = page.open(f"/compare?runs={ids[0]},{ids[1]}&metric=sharpness")
    labels = tab.evaluate("() => eosDashboard.chart.series.map(s => s.label)")
    assert labels[3:] == [f"2/η #{ids[0]}", f"2/η #{ids[1]}"]
    for k, lr in enumerate(LRS):
        line = tab.evaluate(f"() => eosDashboard.chart.data[{3 + k}]")
        assert line == pytest.approx([2 / lr] * len(line))
    page.assert_clean()


def test_a_long_trace_is_drawn_downsampled_and_keeps_its_spike(page: Page, data: Data, api: httpx.Client) -> None:
    tab = page.open(f"/runs/{data.long_id}")
    trace = api.get(
        f"/runs/{data.long_id}/trace", params={"metrics": "loss,test_loss", "start": 1, "max_points": MAX_POINTS}
    ).json()
    plotted = tab.evaluate("() => eosDashboard.charts.loss.data")
    assert 0 < len(plotted[0]) == trace["points"] <= MAX_POINTS < LONG_ROWS
    assert plotted[0] == trace["step"]
    # The one-step spike survives in the band (bucket max) though the bucket mean dilutes it.
    assert max(plotted[2]) == LONG_SPIKE
    assert max(plotted[1]) < LONG_SPIKE / 2
    assert "Downsampled to" in tab.inner_text("#plot-loss .caption")
    page.screenshot("run-long")
    page.assert_clean()


def test_a_failed_run_says_why_on_its_page_and_on_its_experiments(page: Page, data: Data, api: httpx.Client) -> None:
    run = api.get(f"/runs/{data.failed_id}").json()
    assert run["status"] == "failed" and run["error"] == f"RuntimeError: {FAILURE}"
    assert FAIL_AT <= run["step"] < run["steps"]
    why = f"failed at step {run['step']} of {run['steps']}: RuntimeError: {FAILURE}"

    tab = page.open(f"/runs/{data.failed_id}")
    notice = tab.locator("#header #failure")
    assert notice.locator("strong").inner_text() == f"Failed at step {run['step']} of {run['steps']}"
    assert notice.locator("pre").inner_text() == f"RuntimeError: {FAILURE}"
    assert tab.evaluate("() => eosDashboard.charts.loss.data[0].length") > 0  # the steps before the failure
    page.screenshot("run-failed")

    tab = page.open(f"/experiments/{data.failed_experiment_id}")
    cell = tab.locator(f"#status-grid td[data-run='{data.failed_id}']")
    assert cell.get_attribute("data-status") == "failed"
    assert f"at step {run['step']}: RuntimeError" in cell.inner_text()
    assert why in (cell.get_attribute("title") or "")
    assert tab.locator("#runs tbody tr[data-run]").count() == 2
    failures = tab.locator("#runs tbody tr.failure")
    assert failures.count() == 1  # the completed run has none
    assert failures.get_attribute("data-failure-of") == str(data.failed_id)
    assert failures.inner_text().strip() == why
    page.screenshot("experiment-failed")
    page.assert_clean()


def test_a_run_waiting_on_a_queue_no_worker_serves_says_so(page: Page, api: httpx.Client) -> None:
    created = api.post("/experiments", json={"spec": {**SPEC, "name": "waiting"}}).json()
    run_id = created["runs"][0]["id"]
    try:
        assert created["warnings"] and "no live worker serves the cpu queue" in created["warnings"][0]
        tab = page.open(f"/runs/{run_id}")
        assert "No live worker serves the cpu queue" in tab.inner_text("#unserved")
        assert tab.inner_text("#queue") == "queue cpu"
    finally:
        api.post(f"/runs/{run_id}/cancel")
    page.assert_clean()
