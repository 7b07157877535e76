"""The instrumented SGD loop: `train(spec) -> RunResult`, and `train_slice(specs)` for a sweep slice.

A slice is R runs trained as one stacked computation (eos_core.stack): parameters (R, P),
each run with its own batches, random streams and trace. A run alone is a slice of one, so
there is one loop. The hot loop does no host synchronisation and no per-run Python: the
training batches are drawn BLOCK steps ahead, the loss's backward is in closed form, and
finiteness is checked every CHECK_EVERY steps and at recorded steps; when a run is found
non-finite, the steps since the last check are replayed (the same computation, so the same
bits) to find the exact step it diverged at. A diverged, stopped or failed run leaves the
stack at the next check and the others go on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from .analysis import analyze
from .data import Dataset, load_dataset
from .drift import DriftEstimate, DriftPlan, estimate_drifts
from .models import build_model
from .objective import Objective
from .sampling import BatchSampler
from .sharpness import SharpnessTracker, track_sharpness
from .slices import slice_key
from .spec import RunSpec
from .stack import Stack
from .summary import RunSummary
from .trace import Sink, Trace, TraceRecorder

Progress = Callable[[int, int], object]
# quad_drift averages v^T H v over at most this many of the drift's batch gradients.
QUAD_DRIFT_MAX_BATCHES = 64


class StopTraining(Exception):
    """Raised by a sink or progress callback to stop the run early (status `stopped`)."""


@dataclass
class RunResult:
    spec: RunSpec
    trace: Trace
    summary: RunSummary  # reads by name too (summary["final_loss"]); summary.to_json() is what the store keeps
    dataset_info: dict[str, Any]
    params: np.ndarray = field(repr=False)

    @property
    def status(self) -> str:
        return str(self.summary["status"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for, but CUDA is not available here")
    return device


def _seeds(seed: int) -> tuple[int, int, int, int]:
    """Independent seeds for init, the training stream, measurement and the eval subset."""
    children = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64)
    return tuple(int(c) & 0x7FFF_FFFF_FFFF_FFFF for c in children)  # type: ignore[return-value]


def build_objective(spec: RunSpec, data: Dataset, device: torch.device, eval_seed: int) -> Objective:
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    model = build_model(spec.model, data.x_train.shape[1], data.classes)
    if model.signs is not None:
        model.signs = model.signs.to(device=device, dtype=dtype)

    def tensor(a: np.ndarray, labels: bool = False) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long if labels else dtype, device=device)

    x_eval, y_eval = data.x_train, data.y_train
    subset = spec.instrument.eval_subset
    if subset is not None and subset < len(x_eval):
        keep = np.sort(np.random.default_rng(eval_seed).choice(len(x_eval), subset, replace=False))
        x_eval, y_eval = x_eval[keep], y_eval[keep]
    return Objective(
        model,
        tensor(data.x_train),
        tensor(data.y_train, True),
        tensor(x_eval),
        tensor(y_eval, True),
        tensor(data.x_test),
        tensor(data.y_test, True),
        spec.effective_lr,
    )


def _instrument_streams(measure_seed: int) -> dict[str, torch.Generator]:
    """One generator per instrument, so that turning one off changes no other's values."""
    children = np.random.SeedSequence(measure_seed).generate_state(4, dtype=np.uint64)
    names = ("drift", "sharpness", "batch_sharpness", "quad_drift")
    return {name: _gen(int(c) & 0x7FFF_FFFF_FFFF_FFFF) for name, c in zip(names, children, strict=True)}


class _LazyStreams:
    """A run's instrument generators (_instrument_streams), made on first use: a run with its
    instruments off never needs them, and they were a third of a run's set-up in a slice."""

    def __init__(self, measure_seed: int) -> None:
        self._seed = measure_seed
        self._made: dict[str, torch.Generator] | None = None

    def __getitem__(self, name: str) -> torch.Generator:
        if self._made is None:
            self._made = _instrument_streams(self._seed)
        return self._made[name]


# Training batches drawn ahead per run, and steps between finiteness checks when none is recorded.
BLOCK = 256
CHECK_EVERY = 32


@dataclass
class _Run:
    """One run of a slice: its spec, data, streams and trace, and how it ended."""

    spec: RunSpec
    data: Dataset
    objective: Objective
    sampler: BatchSampler
    streams: _LazyStreams
    recorder: TraceRecorder
    theta0: torch.Tensor
    setup_seconds: float
    sink: Sink | None = None
    progress: Progress | None = None
    sharpness: SharpnessTracker | None = None
    status: str = "running"
    error: Exception | None = None
    theta: torch.Tensor | None = None  # the last finite parameters, once it has ended
    measure_seconds: float = 0.0

    @property
    def running(self) -> bool:
        return self.status == "running"

    def end(self, status: str, error: Exception | None = None) -> None:
        if self.running:
            self.status, self.error = status, error

    def guarded(self, action: Callable[[], object]) -> None:
        """Call the run's sink or progress: a stop or an error there ends this run alone."""
        try:
            action()
        except StopTraining:
            self.end("stopped")
        except Exception as error:
            self.end("failed", error)


def _prepare(
    spec: RunSpec,
    dataset: Dataset | None,
    device: torch.device,
    sink: Sink | None,
    progress: Progress | None,
    loaded: dict[tuple[str, int], Dataset],
    built: dict[int, Objective],
) -> _Run:
    started = time.perf_counter()
    init_seed, train_seed, measure_seed, eval_seed = _seeds(spec.seed)
    if dataset is None:
        # Runs that draw the same data (a fixed data_seed, or a file dataset) load it once.
        key = (
            spec.dataset.model_dump_json(),
            spec.dataset.data_seed if spec.dataset.data_seed is not None else spec.seed,
        )
        if key not in loaded:
            loaded[key] = load_dataset(spec.dataset, spec.seed)
        dataset = loaded[key]
    if spec.instrument.eval_subset is None and id(dataset) in built:
        # Runs on the same data share its tensors (the stack then holds them once) and the model.
        objective = dataclasses.replace(built[id(dataset)], lr=spec.effective_lr)
    else:
        objective = build_objective(spec, dataset, device, eval_seed)
        if spec.instrument.eval_subset is None:
            built[id(dataset)] = objective
    sampler = BatchSampler(len(dataset.x_train), spec.optimizer.batch_size, spec.optimizer.sampler, _gen(train_seed))
    streams = _LazyStreams(measure_seed)
    ins = spec.instrument
    tracker = (
        SharpnessTracker(ins.sharpness_tol, ins.sharpness_max_iter, streams["sharpness"])
        if ins.sharpness_every
        else None
    )
    theta = objective.model.init(_gen(init_seed), objective.x_train.dtype).to(device)
    recorder = TraceRecorder(spec.optimizer.steps // ins.every + 3, ins.chunk_rows, sink)
    run = _Run(spec, dataset, objective, sampler, streams, recorder, theta, 0.0, sink, progress, tracker)
    run.setup_seconds = time.perf_counter() - started
    return run


class _Slice:
    """The runs of a slice and the stack of their live parameters."""

    def __init__(self, runs: list[_Run]) -> None:
        self.runs = runs
        self.stack = Stack([r.objective for r in runs])
        self.spec = runs[0].spec
        ins = self.spec.instrument
        self.drift_plan = (
            DriftPlan.make(runs[0].sampler, ins.drift_samples, ins.drift_max_samples, ins.confidence)
            if ins.drift_samples != 0
            else None
        )
        self.live = list(range(len(runs)))  # positions in `runs` of the rows of `thetas`
        self.rows = torch.arange(len(runs))
        self.thetas = torch.stack([r.theta0 for r in runs])
        self.stack.pin(self.thetas)
        self.lr = self.stack.lr.unsqueeze(1)
        self.snapshot = self.thetas.clone()
        self.snapshot_step = 0
        self.since_snapshot: list[torch.Tensor] = []
        self.block = torch.empty(0)
        self.block_start = 0

    # --- the training step ----------------------------------------------------------------
    def batches(self, t: int, steps: int) -> torch.Tensor:
        """The live runs' batches at step t, (R', B), from blocks drawn ahead."""
        if not self.block.numel() or t - self.block_start >= self.block.shape[0]:
            count = min(BLOCK, steps - t)
            blocks = [self.runs[i].sampler.block(count) for i in self.live]
            # (steps, R', B): one copy to the device per block, not per step, and each step's
            # batches contiguous (a strided column would be copied again to index the data)
            self.block = torch.stack(blocks, dim=1).to(self.thetas.device)
            self.block_start = t
        return self.block[t - self.block_start]

    def step(self, t: int, steps: int, recorded: list[int] | None) -> None:
        """One SGD update of every live run; with the batch loss and gradient norm of the recorded rows."""
        idx = self.batches(t, steps)
        # in place: the stack's autograd leaves view these parameters
        g, batch_loss = self.stack.sgd_step(self.thetas, self.rows, idx, self.lr, record=recorded is not None)
        if recorded is not None and g is not None and batch_loss is not None:
            norms = torch.linalg.vector_norm(g, dim=1, dtype=torch.float64).cpu().numpy()
            losses = batch_loss.double().cpu().numpy()
            for j, row in enumerate(recorded):
                run = self.runs[self.live[j]]
                if run.running and row >= 0:
                    run.recorder.set(row, batch_loss=losses[j], batch_grad_norm=norms[j])
        self.since_snapshot.append(idx)

    # --- finiteness, divergence and leaving the stack ----------------------------------------
    def check(self, t: int) -> None:
        """Find runs whose parameters are no longer finite, end them at the exact step, drop ended runs."""
        sums = self.thetas.sum(dim=1)
        suspect = ~torch.isfinite(sums)
        if bool(suspect.any()):  # a finite vector can overflow its sum: look closer before replaying
            suspect &= ~torch.isfinite(self.thetas).all(dim=1)
            if bool(suspect.any()):
                self._replay(suspect)
        # Runs that ended took their iterate with them (where they ended); they leave the stack here.
        keep = [j for j, i in enumerate(self.live) if self.runs[i].running]
        if len(keep) < len(self.live):
            at = torch.tensor(keep, dtype=torch.long)
            self.live = [self.live[j] for j in keep]
            self.thetas, self.rows, self.lr = self.thetas[at], self.rows[at], self.lr[at]
            self.stack.pin(self.thetas)
            if self.block.numel():
                self.block = self.block[:, at]
        self.snapshot, self.snapshot_step, self.since_snapshot = self.thetas.clone(), t, []

    def _replay(self, suspect: torch.Tensor) -> None:
        """Redo the steps since the last check (the same computation: the same bits) to find where
        each suspect run first left the finite numbers; record that step and keep its last finite iterate."""
        thetas = self.snapshot.clone()
        found = torch.zeros_like(suspect)
        for s, idx in enumerate(self.since_snapshot):
            after = thetas.clone()
            self.stack.sgd_step(after, self.rows, idx, self.lr)
            bad = ~torch.isfinite(after).all(dim=1) & suspect & ~found
            for j in torch.nonzero(bad).flatten().tolist():
                run = self.runs[self.live[j]]
                if run.running:
                    run.recorder.set(
                        run.recorder.new_row(self.snapshot_step + s + 1), param_norm=math.inf, loss=math.inf
                    )
                    run.end("diverged")
                    run.theta = thetas[j].detach().clone()
            found |= bad
            thetas = after

    # --- measuring -----------------------------------------------------------------------------
    def measure(self, t: int, final: bool) -> list[int]:
        """Record a row for every live run at step t; returns each live run's row (-1: ended)."""
        started = time.perf_counter()
        ins, stack, rows, thetas = self.spec.instrument, self.stack, self.rows, self.thetas
        state = stack.eval_state(thetas, rows)
        grad64 = state["grad"].double()  # float64: squares of float32 values can overflow
        grad_sq = (grad64 * grad64).sum(dim=1).cpu().numpy()
        values: dict[str, np.ndarray] = {
            "loss": state["loss"].double().cpu().numpy(),
            "acc": state["acc"].double().cpu().numpy(),
            "margin": state["margin"].double().cpu().numpy(),
            "param_norm": torch.linalg.vector_norm(thetas, dim=1, dtype=torch.float64).cpu().numpy(),
        }
        values["grad_norm"] = np.sqrt(grad_sq)
        values["eta_loss"] = self.stack.lr64[rows].numpy() * values["loss"]
        finite = np.isfinite(values["loss"])
        per_run: list[dict[str, float]] = [{name: float(v[j]) for name, v in values.items()} for j in range(len(rows))]
        estimates: list[DriftEstimate | None] = [None] * len(rows)
        if self.drift_plan is not None and t % ins.drift_every == 0 and finite.any():
            at = torch.tensor(np.flatnonzero(finite), dtype=torch.long)
            every = bool(finite.all())  # the stack itself then: its evaluation logits are reused
            drifts = estimate_drifts(
                stack,
                rows if every else rows[at],
                thetas if every else thetas[at],
                state["grad"] if every else state["grad"][at],
                state["logit_scale"] if every else state["logit_scale"][at],
                [self.runs[self.live[j]].sampler for j in at.tolist()],
                [self.runs[self.live[j]].streams["drift"] for j in at.tolist()],
                self.drift_plan,
            )
            for j, estimate in zip(at.tolist(), drifts, strict=True):
                estimates[j] = estimate
                per_run[j].update(
                    drift=estimate.drift,
                    drift_se=estimate.se,
                    drift_samples_used=estimate.samples,
                    rel_drift=estimate.drift / (self.runs[self.live[j]].objective.lr * grad_sq[j])
                    if grad_sq[j] > 0
                    else math.nan,
                    stable_p=estimate.stable_p,
                    stable=estimate.verdict,
                )
        if ins.sharpness_every and t % ins.sharpness_every == 0 and finite.any():
            measured = np.flatnonzero(finite).tolist()
            for j, values_j in zip(measured, self._curvature(measured, estimates), strict=True):
                per_run[j].update(values_j)
        if ins.test_every and (t % ins.test_every == 0 or final) and stack.x_test.shape[1]:
            test_loss, test_acc = stack.test_state(thetas, rows)
            for j, (tl, ta) in enumerate(zip(test_loss.double().tolist(), test_acc.double().tolist(), strict=True)):
                per_run[j].update(test_loss=tl, test_acc=ta)
        out = []
        share = (time.perf_counter() - started) / max(1, len(rows))
        for j, i in enumerate(self.live):
            run = self.runs[i]
            run.measure_seconds += share
            if not run.running:
                out.append(-1)
                continue
            row = run.recorder.new_row(t)
            run.recorder.set(row, **per_run[j])
            out.append(row)
            if not finite[j]:
                run.end("diverged")  # the guarded loss overflowed: logits beyond the dtype
                run.theta = thetas[j].detach().clone()  # the iterate measured; the stack moves on
        return out

    def _curvature(self, at: list[int], estimates: list[DriftEstimate | None]) -> list[dict[str, float]]:
        """Sharpness, batch sharpness and quad_drift of the live runs at positions `at`, batched across runs."""
        ins, stack = self.spec.instrument, self.stack
        index = torch.tensor(at, dtype=torch.long)
        rows, thetas = self.rows[index], self.thetas[index]
        runs = [self.runs[self.live[j]] for j in at]
        trackers = [run.sharpness for run in runs]
        assert all(tracker is not None for tracker in trackers)
        pairs = track_sharpness(trackers, stack.eval_hvp(thetas, rows), thetas)  # type: ignore[arg-type]
        batches = torch.stack(
            [run.sampler.draw(ins.batch_sharpness_samples, run.streams["batch_sharpness"]) for run in runs]
        )
        terms = stack.batch_sharpness_terms(thetas, rows, batches).double().mean(dim=1).tolist()
        out = [
            {
                "sharpness": pair.value,
                "sharpness_residual": pair.residual,
                "hvps": float(pair.products),
                "batch_sharpness": term,
            }
            for pair, term in zip(pairs, terms, strict=True)
        ]
        # quad_drift: E_B[g_B^T H g_B] as mean(w * form) over the drift's batches (weights: importance
        # or enumeration), batched over the runs that kept as many batches.
        picked: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for i, (j, run) in enumerate(zip(at, runs, strict=True)):
            estimate = estimates[j]
            if estimate is None:
                continue
            grads, weights = estimate.batch_grads, estimate.batch_weights
            if len(grads) > QUAD_DRIFT_MAX_BATCHES:
                pick = torch.randperm(len(grads), generator=run.streams["quad_drift"])[:QUAD_DRIFT_MAX_BATCHES]
                grads, weights = grads[pick.to(grads.device)], weights[pick]
            picked.setdefault(len(grads), []).append((i, grads, weights))
        for group in picked.values():
            where = torch.tensor([at[i] for i, _, _ in group], dtype=torch.long)
            forms = stack.eval_quadratic_forms(
                self.thetas[where], self.rows[where], torch.stack([g for _, g, _ in group])
            ).cpu()
            for (i, _, weights), form in zip(group, forms, strict=True):
                estimate = estimates[at[i]]
                assert estimate is not None
                lr = runs[i].objective.lr
                out[i]["quad_drift"] = estimate.first_order + 0.5 * lr * lr * float((weights * form).mean())
        return out


def _loop(sl: _Slice, steps: int) -> None:
    every = sl.spec.instrument.every
    # Often enough that a worker's heartbeat never waits on a long run's cadence.
    report_every = max(1, min(steps // 200, 50))
    watched = any(run.progress is not None for run in sl.runs)  # else no step is due for a report
    for t in range(steps + 1):
        recorded = t % every == 0 or t == steps
        if recorded or t % CHECK_EVERY == 0:
            sl.check(t)
            if not sl.live:
                return
        rows = sl.measure(t, final=t == steps) if recorded else None
        if t == steps:
            return
        sl.step(t, steps, rows)
        due = (t + 1) % report_every == 0 and watched
        if rows is None and not due:
            continue  # the hot path: nothing for the sinks or the progress callbacks
        for j, i in enumerate(sl.live):
            run = sl.runs[i]
            if run.running and rows is not None:
                run.guarded(run.recorder.flush)
            if run.running and run.progress is not None and due:
                run.guarded(partial(run.progress, t + 1, steps))
            if not run.running and run.theta is None:  # stopped or failed here: its iterate now
                run.theta = sl.thetas[j].detach().clone()


def train_slice(
    specs: Sequence[RunSpec],
    sinks: Sequence[Sink | None] | None = None,
    progress: Sequence[Progress | None] | None = None,
    *,
    datasets: Sequence[Dataset | None] | None = None,
) -> list[RunResult | Exception]:
    """Train the runs of one slice (eos_core.slices.slice_key equal) and measure each as if alone.

    One outcome per spec, in order: its RunResult, or the exception that ended it. A run's
    sink or progress callback raising StopTraining stops that run alone (status `stopped`,
    every row kept, including those not yet handed to the sink); any other exception from
    them ends that run alone, as its outcome. The others go on.
    """
    if not specs:
        return []
    keys = {slice_key(spec) for spec in specs}
    if len(keys) > 1:
        raise ValueError("train_slice: the specs differ in more than their name, seed and step size")
    started = time.perf_counter()
    device = resolve_device(specs[0].device)
    loaded: dict[tuple[str, int], Dataset] = {}
    built: dict[int, Objective] = {}
    runs = [
        _prepare(
            spec,
            datasets[i] if datasets is not None else None,
            device,
            sinks[i] if sinks is not None else None,
            progress[i] if progress is not None else None,
            loaded,
            built,
        )
        for i, spec in enumerate(specs)
    ]
    sl = _Slice(runs)
    shared_setup = time.perf_counter() - started - sum(r.setup_seconds for r in runs)
    steps = specs[0].optimizer.steps
    loop_started = time.perf_counter()
    _loop(sl, steps)
    sl.check(steps)  # the runs that ended at the last step leave with their iterates
    for j, i in enumerate(sl.live):
        runs[i].end("completed")
        runs[i].theta = sl.thetas[j].detach().clone()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loop_seconds = time.perf_counter() - loop_started
    outcomes: list[RunResult | Exception] = []
    for run in runs:
        if run.status == "completed":
            if run.progress is not None:
                run.guarded(partial(run.progress, steps, steps))
            run.guarded(partial(run.recorder.flush, force=True))
        if run.error is not None:
            outcomes.append(run.error)
            continue
        setup = run.setup_seconds + shared_setup / len(runs)
        outcomes.append(_result(run, device, setup, loop_seconds, len(runs)))
    return outcomes


def _result(run: _Run, device: torch.device, setup: float, loop_seconds: float, slice_runs: int) -> RunResult:
    spec, objective = run.spec, run.objective
    trace = run.recorder.result()
    assert run.theta is not None
    summary = RunSummary.model_validate(
        {
            **analyze(trace, spec, run.data.info),
            "status": run.status,
            "device": str(device),
            "lr_effective": objective.lr,
            "lr_scaling": "width" if spec.uses_width_scaling else "none",
            "n_params": objective.model.n_params,
            "timing": {
                "setup_seconds": setup,
                "loop_seconds": loop_seconds,
                "measure_seconds": run.measure_seconds,
                "seconds_per_step": loop_seconds / max(1, spec.optimizer.steps),
                "slice_runs": slice_runs,
            },
        }
    )
    return RunResult(spec, trace, summary, run.data.info, run.theta.detach().cpu().numpy())


def train(
    spec: RunSpec,
    sink: Sink | None = None,
    progress: Progress | None = None,
    *,
    dataset: Dataset | None = None,
) -> RunResult:
    """Run SGD as the spec says and measure it. `sink` gets the trace in chunks as it grows.

    A run whose iterate stops being finite ends as `diverged`, keeping what was measured.
    A sink or progress callback may raise `StopTraining` to end the run as `stopped`; the
    result then holds every row recorded, including those not yet handed to the sink.
    Any other exception they raise propagates.
    """
    (outcome,) = train_slice([spec], [sink], [progress], datasets=[dataset])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
