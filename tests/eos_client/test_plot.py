"""`plot_runs` (what `eos plot` and Client.plot draw): a title with the ids, drift tick labels that do not
overlap, the standard-error band and the verdict shading, and every drift point inside the axes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eos_client import Run
from eos_client.plot import plot_runs, stable_spans


def runs(*ids: int) -> list[Run]:
    return [
        Run(id=i, experiment_id=4, name=f"demo[lr={i}]", status="completed", params={"optimizer.lr": i}) for i in ids
    ]


def trace(run_ids: list[int], steps: int = 400) -> pd.DataFrame:
    """Drift over many decades on both sides of 0 (1e-7 .. 0.3), the largest at step 0, as the demo's runs."""
    rng = np.random.default_rng(0)
    frames = []
    for run_id in run_ids:
        step = np.arange(steps)
        measured = step % 10 == 0
        magnitude = 0.3 * (step + 1.0) ** -2.0
        drift = np.where(measured, magnitude * np.where(rng.random(steps) < 0.6, -1.0, 1.0), np.nan)
        drift[0] = -0.3 if run_id % 2 else 0.3
        se = np.where(measured, 0.3 * np.abs(drift), np.nan)
        stable = np.where(measured, np.where(drift < 0, 1.0, np.where(rng.random(steps) < 0.5, 0.5, 0.0)), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "run": run_id,
                    "step": step,
                    "loss": 1.0 / (step + 1.0) ** 0.5,
                    "drift": drift,
                    "drift_se": se,
                    "stable": stable,
                    "sharpness": np.where(step % 50 == 0, 0.05, np.nan),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def draw(figure: Figure) -> RendererBase:
    """Lay out and render the figure on an Agg canvas (a bare Figure's canvas draws nothing)."""
    canvas = FigureCanvasAgg(figure)
    figure.canvas.draw()
    return canvas.get_renderer()


def drawn(figure: Figure) -> tuple[Axes, Axes]:
    draw(figure)
    return figure.axes[0], figure.axes[1]


@pytest.mark.parametrize("ids", [[7], [7, 8, 9]])
def test_title_names_experiment_and_runs(ids: list[int]) -> None:
    figure = plot_runs(runs(*ids), trace(ids))
    title = figure.get_suptitle()
    assert "experiment 4" in title and "demo" in title
    assert title.endswith("run 7" if len(ids) == 1 else "runs 7–9")


@pytest.mark.parametrize("ids", [[1], [1, 2]])
def test_drift_tick_labels_do_not_overlap(ids: list[int]) -> None:
    figure = plot_runs(runs(*ids), trace(ids))
    renderer = draw(figure)
    drift_ax = figure.axes[1]
    lo, hi = drift_ax.get_ylim()
    labels = [t for t in drift_ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(labels) >= 3 and any(t.get_position()[1] == 0 for t in labels)  # 0 and a decade either side
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.y0)
    for below, above in itertools.pairwise(boxes):
        assert below.y1 <= above.y0, [t.get_text() for t in labels]


def test_drift_has_error_band_and_stable_shading() -> None:
    figure = plot_runs(runs(1), trace([1]))
    _, drift_ax = drawn(figure)
    band = [c for c in drift_ax.collections if c.get_gid() == "drift-se"]
    assert len(band) == 1 and isinstance(band[0], PolyCollection)
    shading = [c for c in drift_ax.collections if c.get_gid() == "stable"]
    assert len(shading) == 1 and isinstance(shading[0], PolyCollection) and len(shading[0].get_paths()) > 0
    alphas = {round(float(a), 3) for a in np.asarray(shading[0].get_facecolor())[:, 3]}
    assert alphas <= {0.22, 0.11} and 0.22 in alphas and 0.11 in alphas  # in S full, undecided half


def test_several_runs_get_a_lane_each() -> None:
    figure = plot_runs(runs(1, 2), trace([1, 2]))
    draw(figure)
    _, drift_ax, strip, _ = figure.axes
    assert len([c for c in drift_ax.collections if c.get_gid() == "drift-se"]) == 2
    assert len([c for c in strip.collections if c.get_gid() == "stable"]) == 2
    assert [t.get_text() for t in strip.get_yticklabels()] == ["lr=1", "lr=2"]


def test_stable_spans_hold_each_verdict_until_the_next() -> None:
    step = np.array([0.0, 10.0, 20.0, 30.0])
    spans = stable_spans(step, np.array([1.0, np.nan, 0.5, 0.0]))
    assert spans == [(0.0, 10.0, 1.0), (10.0, 20.0, 1.0), (20.0, 30.0, 0.5)]  # outside S: no shade


@pytest.mark.parametrize("ids", [[1], [1, 2]])
def test_every_drift_point_is_in_view(ids: list[int]) -> None:
    _, drift_ax = drawn(plot_runs(runs(*ids), trace(ids)))
    (x0, x1), (y0, y1) = drift_ax.get_xlim(), drift_ax.get_ylim()
    lines = [line for line in drift_ax.get_lines() if line.get_gid() == "drift"]
    assert len(lines) == len(ids)
    for line in lines:
        assert isinstance(line, Line2D)
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert x.min() == 0.0  # step 0, the largest drift, is drawn
        assert (x0 <= x).all() and (x <= x1).all() and (y0 < y).all() and (y < y1).all()


def test_without_se_and_stable_it_still_plots(tmp_path: Path) -> None:
    frame = trace([1]).drop(columns=["drift_se", "stable"])
    figure = plot_runs(runs(1), frame, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").stat().st_size > 10_000
    assert not [c for c in figure.axes[1].collections if c.get_gid() in ("drift-se", "stable")]
