"""One figure for a few runs: loss on log-log axes, with drift and sharpness panels beneath.

Built on a bare matplotlib `Figure` (no pyplot, no global backend): PNG output goes through Agg.
The step axis is logarithmic from step 1 and linear below it, so step 0 (the initial drift) is in view.
The drift panel shows ± one standard error as a band and shades the stability verdict as the dashboard
does: full green in S, half undecided, none outside S (eos_core.verdict), held until the next measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis, XAxis
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import Locator

from .models import Run

# What plot_runs draws: pass these to Client.trace (drift_se and stable are optional: without them, no band
# and no shading).
TRACE_METRICS = ("loss", "drift", "drift_se", "stable", "sharpness")
STABLE_COLOR = "#2e9e5b"  # the dashboard's green
STABLE_ALPHA = 0.22  # the shade of a verdict of 1 (in S); 0.5 (undecided) gets half of it
BAND_ALPHA = 0.2


def run_labels(runs: Sequence[Run]) -> dict[int, str]:
    """Label runs by their swept params ('lr=10'); prefixed by the run id where labels would repeat."""
    labels = {r.id: r.label for r in runs}
    if len(set(labels.values())) == len(labels):
        return labels
    return {r.id: f"run {r.id}: {r.label}" if r.params else r.label for r in runs}


def effective_lr(run: Run) -> float | None:
    """The step size SGD used (width-scaled for two_layer), from the summary or else the spec."""
    value = (run.summary.lr_effective if run.summary else None) or (run.spec.get("optimizer") or {}).get("lr")
    return float(value) if value else None


def _finite(step: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(values)
    return step[keep], values[keep]


def _loss(ax: Axes, rows: pd.DataFrame, color: str, label: str) -> None:
    step, loss = _finite(rows["step"].to_numpy(), rows["loss"].to_numpy(dtype=float))
    ax.plot(step, loss, color=color, lw=1.2, label=label)
    if "loss_min" in rows:  # downsampled: the band shows what each bucket spans (spikes included)
        lo, hi = rows["loss_min"].to_numpy(dtype=float), rows["loss_max"].to_numpy(dtype=float)
        keep = np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
        ax.fill_between(rows["step"].to_numpy()[keep], lo[keep], hi[keep], color=color, alpha=0.2, lw=0)


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    return rows[name].to_numpy(dtype=float) if name in rows else np.full(len(rows), np.nan)


def _drift(ax: Axes, rows: pd.DataFrame, color: str) -> None:
    step, drift, se = rows["step"].to_numpy(dtype=float), _column(rows, "drift"), _column(rows, "drift_se")
    banded = np.isfinite(drift) & np.isfinite(se)
    if banded.any():
        ax.fill_between(
            step[banded],
            (drift - se)[banded],
            (drift + se)[banded],
            color=color,
            alpha=BAND_ALPHA,
            lw=0,
            gid="drift-se",
        )
    step, drift = _finite(step, drift)
    ax.plot(step, drift, color=color, lw=0.9, marker=".", ms=3, gid="drift")


def stable_spans(step: np.ndarray, stable: np.ndarray) -> list[tuple[float, float, float]]:
    """(from, to, verdict) for each step where a verdict holds: each measured `stable` value (1 in S, 0.5
    undecided, 0 outside S; a bucket's mean) holds until the next one, as on the dashboard. Outside S is left
    out (no shade)."""
    spans: list[tuple[float, float, float]] = []
    value = np.nan
    for i, at in enumerate(step):
        if np.isfinite(stable[i]):
            value = float(stable[i])
        last = float(at) + (float(at - step[i - 1]) if i > 0 else 1.0)  # the final one holds for a step's width
        to = float(step[i + 1]) if i + 1 < len(step) else last
        if np.isfinite(value) and value > 0:
            spans.append((float(at), to, value))
    return spans


def _stable(ax: Axes, rows: pd.DataFrame, lane: int, lanes: int) -> None:
    """The run's verdict shaded green over the panel's height, or over its lane of `lanes` (top first)."""
    spans = stable_spans(rows["step"].to_numpy(dtype=float), _column(rows, "stable"))
    if not spans:
        return
    top, bottom = 1.0 - lane / lanes, 1.0 - (lane + 1) / lanes
    verts = [[(a, bottom), (b, bottom), (b, top), (a, top)] for a, b, _ in spans]
    colors = [to_rgba(STABLE_COLOR, STABLE_ALPHA * min(v, 1.0)) for _, _, v in spans]
    shading = PolyCollection(verts, facecolors=colors, edgecolors="none", transform=ax.get_xaxis_transform())
    shading.set_gid("stable")
    shading.set_zorder(0)
    ax.add_collection(shading, autolim=False)


def _lanes(ax: Axes, runs: Sequence[Run], labels: dict[int, str], colors: dict[int, str]) -> None:
    """The verdict strip: one lane per run, top to bottom, named by the run's label in its colour."""
    ax.set_ylim(0.0, 1.0)
    ax.set_yticks([1.0 - (i + 0.5) / len(runs) for i in range(len(runs))], [labels[r.id] for r in runs])
    ax.tick_params(axis="y", length=0, labelsize="x-small")
    for run, tick in zip(runs, ax.get_yticklabels(), strict=True):
        tick.set_color(colors[run.id])
    ax.set_ylabel("in S", fontsize="small")


def _sharpness(ax: Axes, rows: pd.DataFrame, color: str, lr: float | None) -> None:
    step, sharp = _finite(rows["step"].to_numpy(), rows["sharpness"].to_numpy(dtype=float))
    ax.plot(step, sharp, color=color, lw=0.9, marker=".", ms=3)
    if lr:
        ax.axhline(2.0 / lr, color=color, ls="--", lw=0.8)


class SpacedSymlogLocator(Locator):
    """Ticks for a symlog axis at 0 and at ±whole decades, thinned at draw time to a common stride so that no
    two labels come closer than `gap` times their font size (the default locator crowds 10⁻⁶, 0, -10⁻⁶)."""

    def __init__(self, linthresh: float, gap: float = 1.9) -> None:
        self.linthresh = linthresh
        self.gap = gap

    def __call__(self) -> Any:
        vmin, vmax = self.axis.get_view_interval() if self.axis is not None else (-1.0, 1.0)
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        vmin, vmax = min(vmin, vmax), max(vmin, vmax)
        big = max(abs(vmin), abs(vmax), self.linthresh)
        exponents = np.arange(np.ceil(np.log10(self.linthresh) - 1e-9), np.floor(np.log10(big) + 1e-9) + 1)
        sides = [[-(10.0**k) for k in exponents], [10.0**k for k in exponents]]  # each from 0 outward
        sides = [[v for v in side if vmin <= v <= vmax] for side in sides]
        center = [0.0] if vmin <= 0.0 <= vmax else []
        pixels = self._pixels(vmin, vmax)
        if pixels is None:
            return np.array(sorted(center + sides[0] + sides[1]))
        min_gap = self.gap * _label_pixels(self.axis)
        per_decade = max((abs(float(pixels(10.0 * self.linthresh) - pixels(self.linthresh)))), 1e-9)
        stride = max(1, int(np.ceil(min_gap / per_decade)))
        ticks = list(center)
        for side in sides:
            last = 0.0 if center else None
            for v in side:
                if round(np.log10(abs(v))) % stride:
                    continue
                if last is not None and abs(pixels(v) - pixels(last)) < min_gap:
                    continue
                ticks.append(v)
                last = v
        return np.array(sorted(ticks))

    def _pixels(self, vmin: float, vmax: float) -> Any:
        """A function from data value to pixels along the axis, or None before the axis has a size."""
        axis = self.axis
        if not isinstance(axis, Axis) or axis.axes is None:
            return None
        scale = axis.get_transform()
        lo, hi = scale.transform([vmin, vmax])
        length = axis.axes.bbox.width if isinstance(axis, XAxis) else axis.axes.bbox.height
        if not np.isfinite(hi - lo) or hi == lo or length <= 0:
            return None
        return lambda v: (float(scale.transform([v])[0]) - lo) / (hi - lo) * length


def _label_pixels(axis: Any) -> float:
    ticks = axis.get_major_ticks(1)
    size = ticks[0].label1.get_size() if ticks else FontProperties().get_size_in_points()
    dpi = axis.axes.figure.dpi if axis.axes is not None else 72.0
    return float(size) * dpi / 72.0


def decade_below(values: np.ndarray, quantile: float = 20.0) -> float:
    """A whole decade at the given percentile of the non-zero |values| (the dashboard's linthresh): the
    linear part of the symlog drift axis, so that the axis labels stay round."""
    mags = np.abs(values[np.isfinite(values)])
    mags = mags[mags > 0]
    if not mags.size:
        return 1e-8
    return float(10.0 ** np.floor(np.log10(np.percentile(mags, quantile))))


def _symlog_limits(ax: Axes, values: np.ndarray, margin: float = 0.05) -> None:
    """View limits holding every value and 0, with a margin measured on the symlog scale."""
    values = values[np.isfinite(values)]
    if not values.size:
        return
    scale = ax.yaxis.get_transform()
    lo, hi = scale.transform([min(values.min(), 0.0), max(values.max(), 0.0)])
    pad = (hi - lo) * margin or 1.0
    inverse = scale.inverted()
    ax.set_ylim(float(inverse.transform([lo - pad])[0]), float(inverse.transform([hi + pad])[0]))


def _scales(axes: Sequence[Axes], trace: pd.DataFrame) -> None:
    loss_ax, drift_ax, sharp_ax = axes
    loss_ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)  # log from step 1; step 0 at the left edge
    loss_ax.set_yscale("log")
    drift, se = _column(trace, "drift"), _column(trace, "drift_se")
    linthresh = decade_below(drift)
    drift_ax.set_yscale("symlog", linthresh=linthresh)
    drift_ax.yaxis.set_major_locator(SpacedSymlogLocator(linthresh))
    se = np.where(np.isfinite(se), se, 0.0)
    _symlog_limits(drift_ax, np.concatenate([drift - se, drift + se]))
    drift_ax.axhline(0.0, color="0.5", lw=0.6)
    sharp = _column(trace, "sharpness")
    if np.isfinite(sharp).any() and np.nanmin(sharp) > 0:
        sharp_ax.set_yscale("log")
    steps = trace["step"].to_numpy(dtype=float)
    if steps.size:
        loss_ax.set_xlim(0.0, _symlog_pad(loss_ax, float(steps.max())))


def _symlog_pad(ax: Axes, right: float, margin: float = 0.02) -> float:
    """The right x limit that leaves a small margin beyond the last step on the x axis' scale."""
    scale = ax.xaxis.get_transform()
    lo, hi = scale.transform([0.0, right])
    return float(scale.inverted().transform([hi + (hi - lo) * margin])[0])


def _ids(ids: Sequence[int]) -> str:
    """'1-3, 7' for [1, 2, 3, 7]."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    start = prev = ordered[0] if ordered else 0
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}" if prev > start + 1 else f"{start}, {prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def figure_title(runs: Sequence[Run]) -> str:
    """'demo-fig4: experiment 1, runs 1–3' (the experiment's name from the runs' names, 'name[lr=3]')."""
    if not runs:
        return "no runs"
    names = {r.name.split("[", 1)[0] for r in runs if r.name}
    experiments = sorted({r.experiment_id for r in runs})
    which = f"experiment {experiments[0]}" if len(experiments) == 1 else f"experiments {_ids(experiments)}"
    ids = [r.id for r in runs]
    title = f"{which}, {'run' if len(ids) == 1 else 'runs'} {_ids(ids)}"
    return f"{names.pop()}: {title}" if len(names) == 1 else title


def plot_runs(runs: Sequence[Run], trace: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Loss (log-log; the shaded band is each bucket's min..max), drift D(θ) (symlog; the band is ± one
    standard error, the green shade the stability verdict) and sharpness with 2/η dashed, one colour per run,
    under a title naming the experiment and the runs. `trace` is `Client.trace(runs, TRACE_METRICS, ...)`."""
    figure = Figure(figsize=(8.0, 9.0), layout="constrained")
    drawn = [run for run in runs if not trace[trace["run"] == run.id].empty]
    strip = len(drawn) > 1  # several runs: each run's verdict in a lane of its own beneath the drift
    ratios = [2.0, 1.3, 0.12 * len(drawn), 1.0] if strip else [2.0, 1.3, 1.0]
    panels: Any = figure.subplots(len(ratios), 1, sharex=True, height_ratios=ratios)
    axes = [panels[0], panels[1], panels[-1]]
    verdict_ax = panels[2] if strip else panels[1]
    figure.suptitle(figure_title(runs), fontsize="large")
    labels = run_labels(runs)
    colors = {run.id: f"C{i % 10}" for i, run in enumerate(runs)}
    for run in runs:
        rows, color = trace[trace["run"] == run.id], colors[run.id]
        if rows.empty:
            continue
        _loss(axes[0], rows, color, labels[run.id])
        _drift(axes[1], rows, color)
        _stable(verdict_ax, rows, drawn.index(run) if strip else 0, len(drawn) if strip else 1)
        _sharpness(axes[2], rows, color, effective_lr(run))
    _scales(axes, trace)
    if strip:
        _lanes(verdict_ax, drawn, labels, colors)
    axes[1].set_title(
        "band: ± one standard error; green: in S (drift confidently ≤ 0), light green: undecided",
        fontsize="small",
        loc="left",
    )
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("drift D(θ)")
    axes[2].set_ylabel("sharpness (-- 2/η)")
    axes[2].set_xlabel("step")
    if runs:
        axes[0].legend(fontsize="small")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure
