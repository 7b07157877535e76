"""One figure for a few runs: loss on log-log axes, with drift and sharpness panels beneath.

Built on a bare matplotlib `Figure` (no pyplot, no global backend): PNG output goes through Agg.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .models import Run


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


def _drift(ax: Axes, rows: pd.DataFrame, color: str) -> None:
    step, drift = _finite(rows["step"].to_numpy(), rows["drift"].to_numpy(dtype=float))
    ax.plot(step, drift, color=color, lw=0.9, marker=".", ms=2)


def _sharpness(ax: Axes, rows: pd.DataFrame, color: str, lr: float | None) -> None:
    step, sharp = _finite(rows["step"].to_numpy(), rows["sharpness"].to_numpy(dtype=float))
    ax.plot(step, sharp, color=color, lw=0.9, marker=".", ms=3)
    if lr:
        ax.axhline(2.0 / lr, color=color, ls="--", lw=0.8)


def _scales(axes: Sequence[Axes], trace: pd.DataFrame) -> None:
    loss_ax, drift_ax, sharp_ax = axes
    loss_ax.set_xscale("log")
    loss_ax.set_yscale("log")
    drift = np.abs(trace["drift"].to_numpy(dtype=float)) if "drift" in trace else np.array([])
    drift = drift[np.isfinite(drift) & (drift > 0)]
    drift_ax.set_yscale("symlog", linthresh=float(np.percentile(drift, 10)) if drift.size else 1e-8)
    drift_ax.axhline(0.0, color="0.5", lw=0.6)
    sharp = trace["sharpness"].to_numpy(dtype=float) if "sharpness" in trace else np.array([])
    if np.isfinite(sharp).any() and np.nanmin(sharp) > 0:
        sharp_ax.set_yscale("log")


def plot_runs(runs: Sequence[Run], trace: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Loss (log-log; the shaded band is each bucket's min..max), drift D(θ) (symlog) and sharpness with
    2/η dashed, one colour per run. `trace` is `Client.trace(runs, ["loss", "drift", "sharpness"], ...)`."""
    figure = Figure(figsize=(8.0, 9.0), layout="constrained")
    axes: Any = figure.subplots(3, 1, sharex=True, height_ratios=[2, 1, 1])
    labels = run_labels(runs)
    shown = trace[trace["step"] >= 1]  # log time: step 0 has no place on the axis
    for i, run in enumerate(runs):
        rows, color = shown[shown["run"] == run.id], f"C{i % 10}"
        if rows.empty:
            continue
        _loss(axes[0], rows, color, labels[run.id])
        _drift(axes[1], rows, color)
        _sharpness(axes[2], rows, color, effective_lr(run))
    _scales(axes, shown)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("drift D(θ)")
    axes[2].set_ylabel("sharpness (-- 2/η)")
    axes[2].set_xlabel("step")
    if runs:
        axes[0].legend(fontsize="small")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure
