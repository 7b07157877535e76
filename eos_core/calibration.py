"""Calibration of the drift's stated error against exact answers (bench/drift_calibration.py).

A bank of points (theta, eta, B, sampler) on problems small enough to enumerate every
distinct batch: iterates along real SGD trajectories and random perturbations of them.
The exact drift is computed by independent float64 code (per-example gradients, every
batch enumerated with its probability); an estimator is then judged by z = (D_hat - D)/se:
the fraction with |z| > 3 (0.27% for a calibrated normal error), the median |z| (0.674),
and its confidently wrong verdicts (the wrong sign at the spec's confidence).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import grad, vmap

from .data import load_dataset
from .drift import DriftEstimate, DriftEstimator
from .loss import mean_loss
from .objective import Objective
from .sampling import BatchSampler
from .spec import RunSpec
from .training import build_objective
from .verdict import IN_S, OUTSIDE_S

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Setting:
    model: str  # linear | two_layer
    dtype: str  # float32 | float64
    batch_size: int
    sampler: str  # with_replacement | without_replacement

    @property
    def label(self) -> str:
        return f"{self.model} {self.dtype} B={self.batch_size} {self.sampler.split('_')[0]}"


@dataclass
class Point:
    setting: Setting
    lr: float
    origin: str  # trajectory step or perturbation
    objective: Objective
    sampler: BatchSampler
    theta: torch.Tensor
    exact: float = math.nan


@dataclass
class Outcome:
    setting: Setting
    z: float
    wrong: bool  # a confident verdict of the wrong sign
    evaluations: int
    exact_over_se: float = math.nan  # how many stated errors the exact drift lies from 0


@dataclass
class Table:
    rows: dict[str, list[Outcome]] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.rows.setdefault(outcome.setting.label, []).append(outcome)

    @staticmethod
    def stats(outcomes: list[Outcome]) -> dict[str, float]:
        z = np.abs([o.z for o in outcomes])
        return {
            "points": len(outcomes),
            "over3": float((z > 3).mean()),
            "median": float(np.median(z)),
            "wrong": int(sum(o.wrong for o in outcomes)),
            "evals": float(np.mean([o.evaluations for o in outcomes])),
        }

    def overall(self) -> dict[str, float]:
        return self.stats([o for rows in self.rows.values() for o in rows])


def problem_spec(setting: Setting, lr: float, seed: int = 5) -> RunSpec:
    """4 classes in dimension 10, no test split: n = 40 for B <= 2, n = 24 for B = 4."""
    per_class = 10 if setting.batch_size <= 2 else 6
    return RunSpec.model_validate(
        {
            "seed": seed,
            "dtype": setting.dtype,
            "device": "cpu",
            "dataset": {"classes": 4, "per_class": per_class, "dim": 10, "separation": 1.0, "test_fraction": 0.0},
            "model": {"kind": setting.model, "width": 8, "init_scale": 1.0},
            "optimizer": {
                "lr": lr,
                "batch_size": setting.batch_size,
                "sampler": setting.sampler,
                "lr_scaling": "none",
            },
        }
    )


def bank(
    settings: list[Setting], lrs: list[float], steps: tuple[int, ...], perturbations: int, seed: int = 0
) -> Iterator[Point]:
    """Points along a real SGD trajectory of each (setting, lr), and perturbations of them."""
    rng = torch.Generator().manual_seed(seed)
    for setting in settings:
        for lr in lrs:
            spec = problem_spec(setting, lr)
            data = load_dataset(spec.dataset, spec.seed)
            objective = build_objective(spec, data, torch.device("cpu"), 0)
            n = len(objective.x_train)
            train_stream = BatchSampler(n, setting.batch_size, setting.sampler, torch.Generator().manual_seed(1))
            theta = objective.model.init(torch.Generator().manual_seed(2), objective.x_train.dtype)
            iterates = []
            for t in range(max(steps) + 1):
                if t in steps:
                    iterates.append((f"step {t}", theta))
                g, _ = objective.batch_grad_and_loss(theta, train_stream.next())
                theta = theta - objective.lr * g
            for origin, th in list(iterates):
                yield Point(setting, lr, origin, objective, train_stream, th)
            for k in range(perturbations):
                origin, base = iterates[(k + 1) * len(iterates) // (perturbations + 1)]
                noise = torch.randn(base.shape, generator=rng, dtype=torch.float64).to(base.dtype)
                scale = 0.3 * float(torch.linalg.vector_norm(base)) / math.sqrt(base.numel()) + 0.1
                yield Point(setting, lr, f"{origin} perturbed", objective, train_stream, base + scale * noise)


def exact_drift(point: Point) -> float:
    """D(theta) in float64 by enumerating every distinct batch, with independent code."""
    obj = point.objective
    x, y = obj.x_train.double(), obj.y_train
    theta = point.theta.double()
    model = obj.model
    if model.signs is not None:
        model.signs = model.signs.double()

    def loss(th: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return mean_loss(model.logits(th, xs), ys)

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(theta, x.unsqueeze(1), y.unsqueeze(1))  # (n, P)
    n, b = len(x), point.setting.batch_size
    if point.setting.sampler == "with_replacement":
        batches = list(itertools.combinations_with_replacement(range(n), b))
        log_p = np.array([_log_count(m) for m in batches]) - b * math.log(n)
        probs = torch.tensor(np.exp(log_p))
    else:
        batches = list(itertools.combinations(range(n), b))
        probs = torch.full((len(batches),), 1.0 / len(batches), dtype=torch.float64)
    index = torch.tensor(batches, dtype=torch.long)
    total = 0.0
    for start in range(0, len(index), 4096):
        rows = index[start : start + 4096]
        g = per_example[rows].mean(dim=1)  # (chunk, P)
        after = vmap(lambda th: loss(th, x, y))(theta - obj.lr * g)
        total += float((probs[start : start + 4096] * after).sum())
    if model.signs is not None:
        model.signs = model.signs.to(obj.x_train.dtype)
    return total - float(loss(theta, x, y))


def _log_count(members: tuple[int, ...]) -> float:
    total = math.lgamma(len(members) + 1)
    for _, group in itertools.groupby(members):
        total -= math.lgamma(len(list(group)) + 1)
    return total


Estimator = Callable[[Point, int], DriftEstimate]


def sampled(point: Point, seed: int, *, importance: bool = True, samples: int = 32, budget: int = 256) -> DriftEstimate:
    """The service's Monte Carlo estimator, made to sample even where it would enumerate."""
    estimator = DriftEstimator(
        point.objective,
        point.sampler,
        torch.Generator().manual_seed(seed),
        samples,
        budget,
        CONFIDENCE,
        importance=importance,
        enumerate_when_few=False,
    )
    return estimator(point.theta, point.objective.eval_state(point.theta)["grad"])


def judge(point: Point, estimate: DriftEstimate) -> Outcome:
    error = estimate.drift - point.exact
    if estimate.se > 0 and math.isfinite(estimate.se):
        z = error / estimate.se
    else:
        z = 0.0 if error == 0 else math.copysign(math.inf, error)
    wrong = (estimate.verdict == IN_S and point.exact > 0) or (estimate.verdict == OUTSIDE_S and point.exact < 0)
    resolved = point.exact / estimate.se if estimate.se > 0 else math.copysign(math.inf, point.exact)
    return Outcome(point.setting, z, wrong, estimate.evaluations or estimate.samples + 1, resolved)


ALL_SETTINGS = [
    Setting(m, d, b, s)
    for m in ("linear", "two_layer")
    for d in ("float64", "float32")
    for b in (1, 2, 4)
    for s in ("with_replacement", "without_replacement")
    if not (b == 1 and s == "without_replacement")  # the same distribution as with replacement
]
