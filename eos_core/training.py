"""The instrumented SGD loop: `train(spec, sink=None, progress=None) -> RunResult`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .analysis import analyze
from .data import Dataset, load_dataset
from .drift import DriftEstimate, DriftEstimator
from .models import build_model
from .objective import Objective
from .sampling import BatchSampler
from .sharpness import SharpnessTracker
from .spec import RunSpec
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


class _Instruments:
    """Everything measured at a recorded step; each instrument draws from its own stream."""

    def __init__(self, spec: RunSpec, objective: Objective, sampler: BatchSampler, measure_seed: int) -> None:
        ins = spec.instrument
        self.spec, self.objective = spec, objective
        self.streams = _instrument_streams(measure_seed)
        self.drift = (
            DriftEstimator(
                objective, sampler, self.streams["drift"], ins.drift_samples, ins.drift_max_samples, ins.confidence
            )
            if ins.drift_samples != 0
            else None
        )
        self.sharpness = (
            SharpnessTracker(ins.sharpness_tol, ins.sharpness_max_iter, self.streams["sharpness"])
            if ins.sharpness_every
            else None
        )
        self.sampler = sampler
        self.seconds = 0.0

    def measure(self, step: int, theta: torch.Tensor, final: bool = False) -> dict[str, float]:
        started = time.perf_counter()
        ins, obj, lr = self.spec.instrument, self.objective, self.objective.lr
        state = obj.eval_state(theta)
        loss = float(state["loss"])
        grad64 = state["grad"].double()  # float64: squares of float32 values can overflow
        grad_sq = float(torch.dot(grad64, grad64))
        row = {
            "loss": loss,
            "acc": float(state["acc"]),
            "grad_norm": math.sqrt(grad_sq),
            "margin": float(state["margin"]),
            "param_norm": float(torch.linalg.vector_norm(theta, dtype=torch.float64)),
            "eta_loss": lr * loss,
        }
        estimate: DriftEstimate | None = None
        if self.drift is not None and math.isfinite(loss) and step % ins.drift_every == 0:
            estimate = self.drift(theta, state["grad"])
            row.update(
                drift=estimate.drift,
                drift_se=estimate.se,
                drift_samples_used=estimate.samples,
                rel_drift=estimate.drift / (lr * grad_sq) if grad_sq > 0 else math.nan,
                stable_p=estimate.stable_p,
                stable=estimate.verdict,
            )
        if self.sharpness is not None and math.isfinite(loss) and step % ins.sharpness_every == 0:
            row.update(self._curvature(theta, estimate))
        if ins.test_every and (step % ins.test_every == 0 or final) and len(obj.x_test):
            test_loss, test_acc = obj.test_state(theta)
            row.update(test_loss=float(test_loss), test_acc=float(test_acc))
        self.seconds += time.perf_counter() - started
        return row

    def _curvature(self, theta: torch.Tensor, estimate: DriftEstimate | None) -> dict[str, float]:
        assert self.sharpness is not None
        obj, lr = self.objective, self.objective.lr
        pair = self.sharpness(obj.eval_hvp(theta), theta)
        batches = self.sampler.draw(self.spec.instrument.batch_sharpness_samples, self.streams["batch_sharpness"])
        terms = obj.batch_sharpness_terms(theta, batches.to(theta.device))
        row = {
            "sharpness": pair.value,
            "sharpness_residual": pair.residual,
            "hvps": float(pair.products),
            "batch_sharpness": float(terms.double().mean()),
        }
        if estimate is not None:
            # E_B[g_B^T H g_B] as mean(w * form) over the drift's batches (weights: importance or enumeration).
            grads, weights = estimate.batch_grads, estimate.batch_weights
            if len(grads) > QUAD_DRIFT_MAX_BATCHES:
                pick = torch.randperm(len(grads), generator=self.streams["quad_drift"])[:QUAD_DRIFT_MAX_BATCHES]
                grads, weights = grads[pick.to(grads.device)], weights[pick]
            forms = obj.eval_quadratic_forms(theta, grads)
            row["quad_drift"] = estimate.first_order + 0.5 * lr * lr * float((weights * forms.cpu()).mean())
        return row


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
    """
    started = time.perf_counter()
    device = resolve_device(spec.device)
    init_seed, train_seed, measure_seed, eval_seed = _seeds(spec.seed)
    data = dataset if dataset is not None else load_dataset(spec.dataset, spec.seed)
    objective = build_objective(spec, data, device, eval_seed)
    sampler = BatchSampler(len(data.x_train), spec.optimizer.batch_size, spec.optimizer.sampler, _gen(train_seed))
    instruments = _Instruments(spec, objective, sampler, measure_seed)
    theta = objective.model.init(_gen(init_seed), objective.x_train.dtype).to(device)
    setup_seconds = time.perf_counter() - started

    steps, every = spec.optimizer.steps, spec.instrument.every
    recorder = TraceRecorder(steps // every + 3, spec.instrument.chunk_rows, sink)
    status, lr = "completed", objective.lr
    # Often enough that a worker's heartbeat never waits on a long run's cadence.
    report_every = max(1, min(steps // 200, 50))
    loop_started = time.perf_counter()
    try:
        for t in range(steps + 1):
            idx = sampler.next() if t < steps else None
            row = -1
            if t % every == 0 or t == steps:
                row = recorder.new_row(t)
                values = instruments.measure(t, theta, final=t == steps)
                recorder.set(row, **values)
                if not math.isfinite(values["loss"]):
                    status = "diverged"  # the guarded loss overflowed: logits beyond the dtype
                    break
            if idx is None:
                break
            g, batch_loss = objective.batch_grad_and_loss(theta, idx.to(device))
            if row >= 0:
                recorder.set(
                    row,
                    batch_loss=float(batch_loss),
                    batch_grad_norm=float(torch.linalg.vector_norm(g, dtype=torch.float64)),
                )
            theta_next = theta - lr * g
            if not _finite(theta_next):
                status = "diverged"
                recorder.set(recorder.new_row(t + 1), param_norm=math.inf, loss=math.inf)
                break
            theta = theta_next
            recorder.flush()
            if progress is not None and (t + 1) % report_every == 0:
                progress(t + 1, steps)
        if progress is not None and status == "completed":
            progress(steps, steps)
        recorder.flush(force=True)
    except StopTraining:
        # Every row recorded so far is complete (a stop is raised between steps) and kept:
        # the result holds them all, and the caller stores those the sink has not yet received.
        status = "stopped"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loop_seconds = time.perf_counter() - loop_started
    trace = recorder.result()
    summary = RunSummary.model_validate(
        {
            **analyze(trace, spec, data.info),
            "status": status,
            "device": str(device),
            "lr_effective": lr,
            "lr_scaling": "width" if spec.uses_width_scaling else "none",
            "n_params": objective.model.n_params,
            "timing": {
                "setup_seconds": setup_seconds,
                "loop_seconds": loop_seconds,
                "measure_seconds": instruments.seconds,
                "seconds_per_step": loop_seconds / max(1, steps),
            },
        }
    )
    return RunResult(spec, trace, summary, data.info, theta.detach().cpu().numpy())


def _finite(theta: torch.Tensor) -> bool:
    """All entries finite? The sum is one cheap reduction; only if it overflows look closer."""
    return bool(torch.isfinite(theta.sum())) or bool(torch.isfinite(theta).all())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_slice(
    specs: Sequence[RunSpec],
    sinks: Sequence[Sink | None] | None = None,
    progress: Sequence[Progress | None] | None = None,
    *,
    datasets: Sequence[Dataset | None] | None = None,
) -> list[RunResult | Exception]:
    """Train the runs of one slice (eos_core.slices.slice_key equal) and measure each as if alone.

    One outcome per spec, in order: its RunResult, or the exception that ended it. A run's
    sink or progress callback raising StopTraining stops that run alone (status `stopped`);
    any other exception from them ends that run alone, as its outcome. The others go on.
    """
    outcomes: list[RunResult | Exception] = []
    for i, spec in enumerate(specs):
        sink = sinks[i] if sinks is not None else None
        report = progress[i] if progress is not None else None
        data = datasets[i] if datasets is not None else None
        try:
            outcomes.append(train(spec, sink, report, dataset=data))
        except Exception as error:  # one run's failure is its outcome, not the slice's
            outcomes.append(error)
    return outcomes
