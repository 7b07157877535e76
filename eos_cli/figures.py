"""`eos figures paper`: the paper's Figures 4 to 6, from runs in the embedded store.

Each figure is a sweep over step sizes (and, for Fig. 4, batch sizes) of one of the paper's
Section 6 experiments. A run whose spec hash matches a finished run in the store (completed,
or diverged: a deterministic result too) is not trained again: its trace is read back. The
others are created as one experiment per figure and trained in this process, as `eos run`
does: the runs that differ only in step size train together as sweep slices (worker.slicing),
unless `--sequential` trains them one at a time (slices of one run), to time against. Each
figure's training wall time is printed, and a table of them at the end. Each PNG has one
column per batch size and three rows: the loss against the iteration on log-log axes with a
fitted C/(eta t) guide per run, the relative drift D/(eta |grad L|^2) (positive: the next step
raises the loss on average), and whether the iterate lies in the stable set S, with the
entrance step marked.

MNIST and CIFAR-10 are read from EOS_DATA_DIR when their files are there; otherwise Fig. 5
uses scikit-learn's digits and Fig. 6 mnist1d, and the title says so.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from eos_core.data import DatasetFilesMissing
from eos_core.rate import rate
from eos_core.regimes import verdict_column
from eos_core.spec import RunSpec
from eos_core.summary import RunSummary
from eos_core.sweep import expand_sweep, spec_hash
from eos_core.verdict import UNDECIDED as UNDECIDED_VERDICT

if TYPE_CHECKING:
    from worker.executors import InProcessExecutor

FIGURES = ("fig4", "fig5", "fig6")
SCALES = ("small", "paper")
HIDDEN_SCALES = ("tiny",)  # for the tests: seconds, not minutes
REUSABLE = ("completed", "diverged")  # finished runs whose trace is the result; failed/cancelled are redone
TRACE_METRICS = ("loss", "rel_drift", "stable", "stable_p", "param_norm", "test_acc")
TAG = "eos-figures"

console = Console()
err = Console(stderr=True)

figures_app = typer.Typer(help="The paper's figures, from runs in the embedded store.", no_args_is_help=True)


# --- what each figure runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class FigurePlan:
    """One figure: a base spec, the step sizes and batch sizes swept, and the title naming the data."""

    key: str
    title: str
    data_label: str
    base: RunSpec
    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    note: str = ""

    @property
    def sweep(self) -> dict[str, list[Any]]:
        return {"optimizer.batch_size": list(self.batch_sizes), "optimizer.lr": list(self.lrs)}

    def cells(self) -> list[tuple[dict[str, Any], RunSpec]]:
        """(swept values, spec) per run, batch size major, in the order of the store's sweep expansion."""
        return expand_sweep(self.base, self.sweep)


def mnist_available() -> bool:
    """MNIST's IDX files are where EOS_DATA_DIR says (read with the loader the runs use)."""
    from eos_core.data.files import load_idx_dataset

    try:
        load_idx_dataset("mnist")
    except DatasetFilesMissing:
        return False
    return True


def cifar10_available() -> bool:
    """CIFAR-10's python pickles are where EOS_DATA_DIR says."""
    from eos_core.data.files import load_cifar10

    try:
        load_cifar10()
    except DatasetFilesMissing:
        return False
    return True


def _instrument(
    every: int, drift_every: int, samples: int, sharpness_every: int, test_every: int, **kw: Any
) -> dict[str, Any]:
    return {
        "every": every,
        "drift_samples": min(32, samples),
        "drift_every": drift_every,
        "drift_max_samples": samples,
        "confidence": 0.95,
        "sharpness_every": sharpness_every,
        "batch_sharpness_samples": 8,
        "test_every": test_every,
        **kw,
    }


# Step sizes chosen so that the largest spikes early and leaves S, the smallest is stable from the
# start, and all decay like 1/t later (checked on the figures at the small scale). Two-layer step
# sizes are before the width rescaling (eta_eff = eta * m), so the same grid serves every width.
LRS = {"fig4": (30.0, 300.0, 3000.0), "fig5": (50.0, 200.0, 800.0), "fig6": (0.05, 0.15, 0.4)}
TINY_LRS = {"fig4": (300.0, 3000.0), "fig5": (50.0, 800.0), "fig6": (0.05, 0.4)}

Planned = tuple[dict[str, Any], tuple[int, ...], str]  # spec fields, batch sizes, a note for the subtitle


def _fig4(scale: str) -> Planned:
    """examples/fig4_linear.yaml: linear, zero init, 5 classes x 100 points in R^20."""
    mixture = {"kind": "gaussian_mixture", "classes": 5, "per_class": 100, "dim": 20, "separation": 1.0, "noise": 1.0}
    spec: dict[str, Any] = {"name": "fig4-linear", "dataset": mixture, "model": {"kind": "linear"}}
    batches: tuple[int, ...] = (4, 16, 64)
    if scale == "paper":
        spec["optimizer"] = {"steps": 5000}
        spec["instrument"] = _instrument(1, 1, 256, 10, 100)
    elif scale == "small":
        spec["optimizer"] = {"steps": 3000}
        spec["instrument"] = _instrument(1, 10, 64, 500, 500)
    else:
        spec["dataset"] = {**mixture, "per_class": 20}
        spec["optimizer"] = {"steps": 40}
        spec["instrument"] = _instrument(1, 5, 16, 0, 0)
        batches = (4, 16)
    per_class = spec["dataset"]["per_class"]
    return spec, batches, f"5 classes x {per_class} points in R^20, 80% for training"


def _fig5(scale: str, real: bool) -> Planned:
    """examples/fig5_mnist_two_layer.yaml (MNIST) or fig5_digits_two_layer.yaml (offline)."""
    model = {"kind": "two_layer", "activation": "leaky_softplus", "leak": 0.5, "init_scale": 1.0}
    spec: dict[str, Any] = {"name": "fig5-mnist-two-layer" if real else "fig5-digits-two-layer"}
    if scale == "paper":
        spec["dataset"] = {"kind": "mnist", "n_train": 10000} if real else {"kind": "digits", "test_fraction": 0.2}
        spec["model"] = {**model, "width": 256}
        spec["optimizer"] = {"steps": 20000 if real else 10000}
        spec["instrument"] = _instrument(10, 10, 256, 100, 500) if real else _instrument(5, 5, 256, 50, 250)
        batches = (64,) if real else (32,)
    elif scale == "small":
        spec["dataset"] = {"kind": "mnist", "n_train": 2000} if real else {"kind": "digits", "test_fraction": 0.2}
        spec["model"] = {**model, "width": 64}
        spec["optimizer"] = {"steps": 3000}
        spec["instrument"] = _instrument(5, 25, 32, 1000, 250, eval_subset=256)
        batches = (32,)
    else:
        spec["dataset"] = {"kind": "mnist", "n_train": 24} if real else {"kind": "digits", "n_train": 64}
        spec["model"] = {**model, "width": 4}
        spec["optimizer"] = {"steps": 30}
        spec["instrument"] = _instrument(1, 5, 16, 0, 10, eval_subset=32)
        batches = (8,)
    return spec, batches, f"m = {spec['model']['width']} units per class, η_eff = η·m"


def _fig6(scale: str, real: bool) -> Planned:
    """examples/fig6_cifar10_mlp.yaml (CIFAR-10) or fig6_mnist1d_mlp.yaml (offline)."""
    spec: dict[str, Any] = {"name": "fig6-cifar10-mlp" if real else "fig6-mnist1d-mlp"}
    model = {"kind": "mlp", "depth": 8, "activation": "gelu"}
    kind = "cifar10" if real else "mnist1d"
    if scale == "paper":
        spec["dataset"] = {"kind": kind}
        spec["model"] = {**model, "width": 512 if real else 256}
        spec["optimizer"] = {"steps": 20000 if real else 10000}
        spec["instrument"] = _instrument(10, 10, 128 if real else 256, 100, 500, eval_subset=5000 if real else None)
        batches = (128,) if real else (64,)
    elif scale == "small":
        spec["dataset"] = {"kind": kind, "n_train": 256}
        spec["model"] = {**model, "width": 64}
        spec["optimizer"] = {"steps": 12000}
        spec["instrument"] = _instrument(10, 50, 32, 2000, 500, eval_subset=256)
        batches = (32,)
    else:
        spec["dataset"] = {"kind": kind, "n_train": 32, "n_test": 32}
        spec["model"] = {**model, "width": 8}
        spec["optimizer"] = {"steps": 30}
        spec["instrument"] = _instrument(1, 5, 16, 0, 10)
        batches = (8,)
    n_train = spec["dataset"].get("n_train")
    subset = f"{n_train} training points, " if n_train else ""
    return spec, batches, f"{subset}depth 8, width {spec['model']['width']}, He-normal init"


def plan_figures(
    scale: str = "small",
    only: Sequence[str] = FIGURES,
    mnist: bool | None = None,
    cifar10: bool | None = None,
) -> list[FigurePlan]:
    """The figures to draw at `scale`: specs, sweeps and titles. `mnist`/`cifar10`: None looks in EOS_DATA_DIR."""
    if scale not in SCALES + HIDDEN_SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    unknown = [k for k in only if k not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; choose among {', '.join(FIGURES)}")
    plans = []
    for key in (k for k in FIGURES if k in only):
        if key == "fig4":
            spec, batches, note = _fig4(scale)
            label = "the synthetic Gaussian mixture"
            title = f"Fig. 4: linear model on {label}"
        elif key == "fig5":
            real = mnist_available() if mnist is None else mnist
            spec, batches, note = _fig5(scale, real)
            label = "MNIST" if real else "digits (offline stand-in for MNIST)"
            title = f"Fig. 5: two-layer leaky-softplus network on {label}"
        else:
            real = cifar10_available() if cifar10 is None else cifar10
            spec, batches, note = _fig6(scale, real)
            label = "CIFAR-10" if real else "mnist1d (offline stand-in for CIFAR-10)"
            title = f"Fig. 6: 8-layer GELU network on {label}"
        lrs = TINY_LRS[key] if scale == "tiny" else LRS[key]
        spec["optimizer"] = {"sampler": "with_replacement", "lr": lrs[0], "batch_size": batches[0], **spec["optimizer"]}
        spec.update(seed=0, dtype="float32", device="auto")
        plans.append(FigurePlan(key, title, label, RunSpec.model_validate(spec), lrs, batches, note))
    return plans


# --- runs: reuse from the store, or train ----------------------------------------------------------


@dataclass
class RunData:
    """What a figure needs of one run."""

    params: dict[str, Any]
    spec: RunSpec
    run_id: int
    status: str
    reused: bool
    summary: RunSummary
    trace: dict[str, np.ndarray]

    @property
    def lr(self) -> float:
        return self.spec.optimizer.lr

    @property
    def batch_size(self) -> int:
        return self.spec.optimizer.batch_size


@dataclass
class FigureRuns:
    plan: FigurePlan
    runs: list[RunData] = field(default_factory=list)
    experiment_id: int | None = None
    slices: int = 0  # slices the trained runs were grouped into
    train_seconds: float = 0.0  # wall time of training them (reading back and drawing not included)

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.runs)

    @property
    def trained(self) -> int:
        return sum(not r.reused for r in self.runs)


def _finished_run(session: Any, digest: str) -> Any:
    from sqlalchemy import select

    from store.models import Run

    stmt = (
        select(Run)
        .where(Run.spec_hash == digest, Run.status.in_(REUSABLE))
        .order_by(Run.finished_at.desc(), Run.id.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def _read(session: Any, run: Any, params: dict[str, Any], spec: RunSpec, reused: bool) -> RunData:
    from store.traces import read_trace

    trace = read_trace(session=session, run_id=run.id, metrics=list(TRACE_METRICS))
    summary = RunSummary.from_stored(run.summary) or RunSummary()
    return RunData(params, spec, run.id, run.status, reused, summary, trace)


def collect_runs(
    plan: FigurePlan, sessions: Any, executor: InProcessExecutor | None = None, show: bool = True
) -> FigureRuns:
    """The plan's runs: finished ones with the same spec hash are read back, the rest trained now."""
    from store import queries

    if executor is None:
        from worker.executors import InProcessExecutor

        executor = InProcessExecutor(sessions, heartbeat_seconds=1.0)
    cells = plan.cells()
    digests = [spec_hash(spec) for _, spec in cells]
    found: dict[str, int] = {}
    with sessions.begin() as session:
        for digest in digests:
            run = _finished_run(session, digest)
            if run is not None:
                found[digest] = run.id
    missing = [d for d in digests if d not in found]
    result = FigureRuns(plan)
    new_ids: dict[str, int] = {}
    if missing:
        with sessions.begin() as session:
            owner = queries.local_user(session=session)
            experiment = queries.create_experiment(
                session=session,
                owner=owner,
                spec=plan.base.model_dump(mode="json"),
                sweep=plan.sweep,
                name=f"{plan.base.name} ({TAG})",
                tags=[TAG, plan.key],
            )
            result.experiment_id = experiment.id
            for run in queries.list_runs(session=session, experiment_id=experiment.id):
                if run.spec_hash in found:  # already in the store: this cell is read back, not redone
                    queries.delete_run(session=session, run=run)
                else:
                    new_ids[run.spec_hash] = run.id
        labels = {
            new_ids[digest]: f"{plan.key} run {new_ids[digest]} ({_describe(params)})"
            for (params, _), digest in zip(cells, digests, strict=True)
            if digest in new_ids
        }
        _train(labels, executor, result, show)
    with sessions.begin() as session:
        for (params, spec), digest in zip(cells, digests, strict=True):
            run_id = found.get(digest, new_ids.get(digest))
            assert run_id is not None
            run = queries.get_run(session=session, run_id=run_id)
            result.runs.append(_read(session, run, params, spec, reused=digest in found))
    return result


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{'eta' if k.endswith('lr') else 'B'}={v:g}" for k, v in params.items())


def _train(labels: dict[int, str], executor: InProcessExecutor, result: FigureRuns, show: bool) -> None:
    """Train the runs (`labels`: id -> bar label) as the executor plans them, one slice at a time."""
    from .slices import slice_note, train_with_bars

    started = time.perf_counter()
    groups = executor.plan(list(labels))
    for group in groups:
        statuses, seconds = train_with_bars(executor, group, labels, console, show)
        if show:
            for run_id in group:
                console.print(f"{labels[run_id].split(' (')[0]}: {statuses[run_id]} {slice_note(len(group), seconds)}")
    result.slices = len(groups)
    result.train_seconds = time.perf_counter() - started


# --- drawing ---------------------------------------------------------------------------------------


GUIDE_DECADES = 0.5  # the guide looks at steps >= T / 10**(2 * GUIDE_DECADES), after entrance: the last decade
DRIFT_BINS = 48  # log-spaced bins of the drift panel's median line


@dataclass
class Guide:
    slope: float
    C: float
    t_from: float
    t_to: float


def tail_guide(run: RunData) -> Guide | None:
    """The analysis's rate (eos_core.rate) on [max(entrance, T / 10**(2 GUIDE_DECADES)), T]: the slope of
    the loss's running upper envelope, and Ĉ = max η t L there, so Ĉ/(η t) lies on or above the loss.

    The analysis measures from the entrance into S on; a figure's guide describes where the run ends up,
    after the early transients, so it looks at the last decade only.
    """
    step, loss = run.trace["step"], run.trace["loss"]
    ok = np.isfinite(loss) & (loss > 0)
    if ok.sum() < 3 or run.summary.rate_applies is False:  # no C/(eta t) guide where the 1/t rate does not apply
        return None
    last = int(step[ok][-1])
    entrance = run.summary.entrance_step or 0
    start = max(int(entrance), int(last / 10 ** (2 * GUIDE_DECADES)), 1)
    norm = run.trace.get("param_norm", np.full(len(step), np.nan))
    fit = rate(step, loss, norm, run.spec.effective_lr, start, (True, None))
    if fit.get("rate_slope") is None or fit.get("rate_C") is None:
        return None
    end = fit.get("rate_window_end") or last
    return Guide(float(fit["rate_slope"]), float(fit["rate_C"]), float(fit["rate_window_start"]), float(end))


def _segments(step: np.ndarray, states: np.ndarray, end: float) -> dict[float, list[tuple[float, float]]]:
    """Runs of equal state as (start, width) on the x axis, keyed by state (1 in S, 0 out, NaN undecided)."""
    out: dict[float, list[tuple[float, float]]] = {1.0: [], 0.0: [], math.nan: []}
    if not len(step):
        return out
    edges = np.append(np.maximum(step.astype(float), 1.0), max(end, float(step[-1]) + 1))
    i = 0
    while i < len(states):
        j = i
        while j + 1 < len(states) and (states[j + 1] == states[i] or (np.isnan(states[j + 1]) and np.isnan(states[i]))):
            j += 1
        key = math.nan if np.isnan(states[i]) else float(states[i])
        left, right = edges[i], edges[j + 1]
        if right > left:
            out[key].append((left, right - left))
        i = j + 1
    return out


def binned_median(x: np.ndarray, y: np.ndarray, bins: int = DRIFT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The median of y in log-spaced bins of x (x >= 1), at each bin's geometric-mean x: a readable trend."""
    if not len(x):
        return np.array([]), np.array([])
    edges = np.geomspace(max(float(x.min()), 1.0), float(x.max()) * (1 + 1e-9), bins + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    xs, ys = [], []
    for b in np.unique(which):
        here = which == b
        xs.append(float(np.exp(np.log(x[here]).mean())))
        ys.append(float(np.median(y[here])))
    return np.array(xs), np.array(ys)


IN_S, OUT_S, UNDECIDED = "#4daf4a", "#e41a1c", "#d9d9d9"


def render(figure: FigureRuns, path: Path, scale: str, dpi: int = 100) -> Path:
    """Write the figure as a PNG (its title also in the PNG's Title field) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plan = figure.plan
    batches = list(plan.batch_sizes)
    lrs = list(plan.lrs)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(lrs)))[::-1]
    color_of = {lr: colors[i] for i, lr in enumerate(lrs)}
    cols = len(batches)
    fig, axes = plt.subplots(
        3,
        cols,
        figsize=(max(7.2, 1.0 + 4.6 * cols), 8.6),
        sharex=True,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [3.2, 1.6, 0.35 + 0.28 * len(lrs)], "hspace": 0.08, "wspace": 0.06},
    )
    confidence = plan.base.instrument.confidence
    t_max = 1.0
    for col, batch in enumerate(batches):
        ax_loss, ax_drift, ax_s = axes[0, col], axes[1, col], axes[2, col]
        runs = [r for r in figure.runs if r.batch_size == batch]
        runs.sort(key=lambda r: r.lr)
        handles = []
        for row, run in enumerate(runs):
            color = color_of[run.lr]
            step = run.trace["step"].astype(float)
            if not len(step):  # a run that failed before its first record
                handles.append(Line2D([], [], color=color, lw=0.8, label=f"η = {run.lr:g}: {run.status}, no trace"))
                continue
            t_max = max(t_max, float(step[-1]) if len(step) else 1.0)
            positive = step >= 1
            loss = run.trace["loss"]
            guide = tail_guide(run)
            label = f"η = {run.lr:g}"
            if guide is not None:
                label += f"  (tail slope {guide.slope:+.2f})"
            acc = run.summary.final_test_acc
            if plan.key != "fig4" and acc is not None:
                label += f", test acc {acc:.2f}"
            if run.status == "diverged":
                label += f", diverged at {run.summary.diverged_step}"
            (line,) = ax_loss.plot(step[positive], loss[positive], color=color, lw=0.8, label=label)
            handles.append(line)
            if guide is not None:
                t = np.geomspace(max(1.0, guide.t_from / 10), guide.t_to, 50)
                eta = run.spec.effective_lr
                ax_loss.plot(t, guide.C / (eta * t), color=color, lw=1.6, ls=(0, (4, 2)), alpha=0.95, zorder=5)
            rel = run.trace["rel_drift"]
            measured = positive & np.isfinite(rel)
            ax_drift.plot(step[measured], rel[measured], ".", color=color, ms=2.4, alpha=0.45, mew=0)
            ax_drift.plot(*binned_median(step[measured], rel[measured]), color=color, lw=1.3)
            verdict, _ = verdict_column(run.trace["stable"], run.trace["stable_p"], confidence)
            decided = np.isfinite(verdict)
            states = np.where(verdict[decided] == UNDECIDED_VERDICT, math.nan, verdict[decided])
            y = len(runs) - 1 - row
            for state, color_s in ((1.0, IN_S), (0.0, OUT_S), (math.nan, UNDECIDED)):
                spans = _segments(run.trace["step"][decided], states, float(step[-1]))[state]
                if spans:
                    ax_s.broken_barh(spans, (y - 0.36, 0.72), facecolors=color_s, edgecolors="none")
            entrance = run.summary.entrance_step
            if entrance is not None:
                ax_s.plot([max(entrance, 1)], [y + 0.36], marker="v", color="black", ms=6, zorder=6, clip_on=False)
        guide_handle = Line2D(
            [], [], color="0.3", lw=1.6, ls=(0, (4, 2)), label="Ĉ/(η t), Ĉ = max η t L on the last decade"
        )
        ax_loss.legend(handles=[*handles, guide_handle], fontsize=7.5, loc="lower left", framealpha=0.85)
        ax_loss.set_xscale("log")
        ax_loss.set_yscale("log")
        ax_loss.set_title(f"batch size B = {batch}", fontsize=10)
        ax_loss.grid(True, which="major", alpha=0.3)
        ax_drift.set_yscale("symlog", linthresh=1.0)
        ax_drift.axhline(0.0, color="black", lw=0.9)
        ax_drift.axhline(-1.0, color="0.5", lw=0.7, ls=":")
        ax_drift.grid(True, which="major", alpha=0.3)
        ax_s.set_yticks(range(len(runs)), [f"η={r.lr:g}" for r in reversed(runs)], fontsize=7.5)
        ax_s.set_ylim(-0.6, len(runs) - 0.4)
        ax_s.set_xlabel("iteration t")
    for ax in axes[0]:
        ax.set_xlim(1, t_max * 1.05)
    lo, hi = axes[1, 0].get_ylim()
    axes[1, 0].set_ylim(max(lo, -30.0), min(max(hi, 3.0), 1e3))
    axes[0, 0].set_ylabel("training loss L(θ_t)")
    axes[1, 0].set_ylabel("drift D / (η‖∇L‖²)")
    axes[2, 0].set_ylabel("in S?")
    stability_legend = [
        Patch(color=IN_S, label=f"in S (D ≤ 0, wrong at most {1 - confidence:.0%} of the time)"),
        Patch(color=OUT_S, label="outside S (D > 0)"),
        Patch(color=UNDECIDED, label="undecided"),
        Line2D([], [], color="black", marker="v", ls="none", label="entrance into S"),
    ]
    fig.legend(handles=stability_legend, fontsize=7.5, loc="lower center", ncol=4, frameon=False)
    spec = plan.base
    sub = (
        f"SGD ({spec.optimizer.sampler.replace('_', ' ')}), {plan.note}; {spec.optimizer.steps} steps, "
        f"{spec.dtype}; drift from ≥{spec.instrument.drift_samples} batches every {spec.instrument.drift_every} "
        f"steps; scale: {scale}"
    )
    chars = int(11.5 * max(7.2, 1.0 + 4.6 * cols))
    wrapped = "\n".join([*textwrap.wrap(plan.title, width=chars), *textwrap.wrap(sub, width=chars)])
    fig.suptitle(wrapped, fontsize=10.5, y=0.995)
    top = 1.0 - (0.42 + 0.19 * (1 + wrapped.count("\n"))) / 8.6
    fig.subplots_adjust(left=0.09 if cols > 1 else 0.13, right=0.98, top=top, bottom=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Title": plan.title, "Description": sub})
    plt.close(fig)
    return path


# --- the command -----------------------------------------------------------------------------------


@dataclass
class FiguresReport:
    paths: list[Path]
    figures: list[FigureRuns]
    seconds: dict[str, float]

    @property
    def reused(self) -> int:
        return sum(f.reused for f in self.figures)

    @property
    def trained(self) -> int:
        return sum(f.trained for f in self.figures)

    @property
    def unfinished(self) -> list[RunData]:
        return [r for f in self.figures for r in f.runs if r.status not in REUSABLE]


def make_figures(
    out: Path,
    sessions: Any,
    scale: str = "small",
    only: Sequence[str] = FIGURES,
    dpi: int = 100,
    show: bool = True,
    executor: InProcessExecutor | None = None,
    sequential: bool = False,
) -> FiguresReport:
    """Plan, collect (reuse or train) and draw each figure into OUT/<key>.png. The runs a figure
    trains go as sweep slices, or one at a time with `sequential` (ignored when `executor` is given)."""
    if executor is None:
        from worker.executors import InProcessExecutor

        executor = InProcessExecutor(sessions, heartbeat_seconds=1.0, slice_runs=1 if sequential else None)
    plans = plan_figures(scale, only)
    report = FiguresReport([], [], {})
    for plan in plans:
        started = time.perf_counter()
        if show:
            console.print(f"[bold]{plan.key}[/bold]: {plan.title} ({len(plan.cells())} runs)")
        figure = collect_runs(plan, sessions, executor=executor, show=show)
        path = render(figure, out / f"{plan.key}.png", scale, dpi)
        report.paths.append(path)
        report.figures.append(figure)
        report.seconds[plan.key] = time.perf_counter() - started
        if show:
            console.print(_table(figure))
            console.print(
                f"{path}: {figure.reused} run(s) reused from the store, {figure.trained} trained"
                f"{_training(figure, executor.slice_runs)}, {report.seconds[plan.key]:.1f} s in all"
            )
    return report


def _training(figure: FigureRuns, slice_runs: int) -> str:
    """' in 2 slice(s), training 12.3 s': how the trained runs went, and their wall time."""
    if not figure.trained:
        return ""
    how = "one at a time" if slice_runs == 1 else f"in {figure.slices} slice(s)"
    return f" {how}, training {figure.train_seconds:.1f} s"


def timing_table(report: FiguresReport, sequential: bool) -> Table:
    """Each figure's training wall time: what `--sequential` and the default are compared by."""
    mode = "sequential" if sequential else "sliced"
    table = Table(title=f"training wall time ({mode}; runs reused from the store are not timed)")
    for column in ("figure", "runs trained", "slices", "training s", "s per run"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for figure in report.figures:
        trained = figure.trained
        per_run = f"{figure.train_seconds / trained:.2f}" if trained else "-"
        slices = str(figure.slices) if trained else "-"
        table.add_row(figure.plan.key, str(trained), slices, f"{figure.train_seconds:.1f}", per_run)
    return table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(figure: FigureRuns) -> Table:
    table = Table(title=figure.plan.title)
    for column in (
        "run",
        "eta",
        "B",
        "source",
        "status",
        "entrance",
        "exits/1k",
        "tail slope",
        "final loss",
        "test acc",
    ):
        table.add_column(column, justify="left" if column in ("source", "status") else "right")
    for run in figure.runs:
        guide = tail_guide(run)
        s = run.summary
        table.add_row(
            str(run.run_id),
            f"{run.lr:g}",
            str(run.batch_size),
            "store" if run.reused else "trained",
            run.status,
            _fmt(s.entrance_step),
            _fmt(s.exit_rate_per_1000) if s.exits_resolved is not False else "n.r.",
            _fmt(guide.slope if guide else None),
            _fmt(s.final_loss),
            _fmt(s.final_test_acc),
        )
    return table


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(FIGURES)
    keys = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in keys if k not in FIGURES]
    if unknown or not keys:
        raise typer.BadParameter(f"--only takes a comma-separated subset of {','.join(FIGURES)}, got {value!r}")
    return keys


@figures_app.command("paper")
def paper(
    out: Annotated[Path, typer.Option("--out", help="folder for fig4.png, fig5.png, fig6.png")],
    db: Annotated[
        str | None,
        typer.Option("--db", help="database URL or SQLite file (default: EOS_DATABASE_URL or ~/.eos/eos.sqlite)"),
    ] = None,
    scale: Annotated[str, typer.Option(help="small (minutes on a laptop CPU) or paper (the example specs' sizes)")] = (
        "small"
    ),
    only: Annotated[str | None, typer.Option(help="comma-separated subset, e.g. fig4,fig6")] = None,
    dpi: Annotated[int, typer.Option(help="resolution of the PNGs")] = 100,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential",
            help="train the runs one at a time (slices of one run), to compare the training wall time "
            "(give each mode a fresh --db: runs found in the store are reused, not trained)",
        ),
    ] = False,
) -> None:
    """Run (or reuse from the store) the paper's Section 6 experiments and draw Figures 4 to 6.

    The runs of each figure train as sweep slices; each figure's training time is printed at the end."""
    from eos_client.local import local_engine
    from store.db import database_url, session_factory, upgrade

    if scale not in SCALES + HIDDEN_SCALES:
        raise typer.BadParameter(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    keys = parse_only(only)
    if db is not None and "://" not in db:
        Path(db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = local_engine(database_url(db))  # BEGIN IMMEDIATE on SQLite: a slice's heartbeats write at once
    upgrade(engine)
    sessions = session_factory(engine)
    started = time.perf_counter()
    report = make_figures(out, sessions, scale=scale, only=keys, dpi=dpi, sequential=sequential)
    console.print(timing_table(report, sequential))
    console.print(
        f"{len(report.paths)} figure(s) in {out}: {report.reused} run(s) reused from the store, "
        f"{report.trained} trained, {time.perf_counter() - started:.1f} s"
    )
    if report.unfinished:
        bad = ", ".join(f"run {r.run_id} ({r.status})" for r in report.unfinished)
        err.print(f"[red]warning:[/red] not drawn in full: {bad}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `eos figures ...` to the command line."""
    app.add_typer(figures_app, name="figures")
