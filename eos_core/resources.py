"""What a run will cost, from its spec alone: peak memory and arithmetic work.

The service refuses, at submission, a run beyond the server's limits (a shared worker must
not be tied up or taken down by one spec), and shows the estimate in the submit response
and `eos submit --dry-run`. The estimate follows what training allocates:

- the data: the raw float64 arrays while generating or reading (a synthetic mixture holds
  its means, samples and noise at once), then the tensors in the run's dtype;
- the parameters and their few working copies (iterate, gradient, step);
- the drift's batch gradients (every batch drawn is kept: drift_max_samples x P, with the
  steps taken from them and their float64 products: about four copies) and the
  sharpness' Lanczos basis (sharpness_max_iter x P);
- the largest batched evaluation: vmap chunks are capped at VMAP_BUDGET elements, but one
  item (the whole evaluation set through the widest layer) is never split.

Work counts multiply-adds x 2 per step: the SGD step, the loss every `every` steps, the
drift's K batch gradients and K + 1 losses every `drift_every`, the Lanczos iterations every
`sharpness_every` and the test metrics every `test_every`. The drift is counted at its first
draw (drift_samples batches); a hard sign doubles it up to drift_max_samples.
tests/eos_core/test_resources.py checks the memory against what training really takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .objective import VMAP_BUDGET
from .spec import RunSpec

# (train, test, dim, classes) of the datasets read from files or bundled.
KNOWN_DATASETS = {
    "digits": (1438, 359, 64, 10),
    "mnist1d": (4000, 1000, 40, 10),
    "mnist": (60000, 10000, 784, 10),
    "fashion_mnist": (60000, 10000, 784, 10),
    "cifar10": (50000, 10000, 3072, 10),
}
GIB = 2**30
WORKING_COPIES = 8  # parameter-sized tensors alive at once outside the instruments
ACTIVATION_FACTOR = 4  # activations and their derivatives per element of the widest layer (objective._chunk)


@dataclass(frozen=True)
class RunCost:
    memory_bytes: int
    flops: float
    parameters: int
    parts: dict[str, int] = field(default_factory=dict)  # memory by what holds it

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    def describe(self) -> str:
        largest = max(self.parts, key=lambda k: self.parts[k]) if self.parts else "-"
        return (
            f"about {self.memory_gib:.2f} GiB at its peak (mostly {largest}), {self.flops:.3g} floating-point "
            f"operations, {self.parameters:,} parameters"
        )


def sizes(spec: RunSpec) -> tuple[int, int, int, int, int]:
    """(total points generated or read, train, test, dim, classes) as training will see them."""
    ds = spec.dataset
    if ds.kind == "gaussian_mixture":
        classes = len(ds.class_subset) if ds.class_subset else ds.classes
        generated = ds.classes * ds.per_class
        total = classes * ds.per_class
        test = round(total * ds.test_fraction)
        train, dim = total - test, ds.dim
    else:
        train, test, dim, classes = KNOWN_DATASETS[ds.kind]
        generated = train + test
        if ds.class_subset:
            share = len(ds.class_subset) / classes
            train, test, classes = math.ceil(train * share), math.ceil(test * share), len(ds.class_subset)
    if ds.n_train is not None:
        train = min(train, ds.n_train)
    if ds.n_test is not None:
        test = min(test, ds.n_test)
    return generated, train, test, dim, classes


def layer_shapes(spec: RunSpec, dim: int, classes: int) -> list[tuple[int, int]]:
    """(out, in) of each weight matrix, as eos_core.models.build_model makes them."""
    m = spec.model
    if m.kind == "linear":
        return [(classes, dim)]
    if m.kind == "two_layer":
        return [(classes * m.width, dim)]
    widths = [dim] + [m.width] * (m.depth - 1) + [classes]
    return [(widths[i + 1], widths[i]) for i in range(m.depth)]


def estimate(spec: RunSpec) -> RunCost:
    generated, train, test, dim, classes = sizes(spec)
    shapes = layer_shapes(spec, dim, classes)
    has_bias = spec.model.kind == "mlp"
    params = sum(o * i + (o if has_bias else 0) for o, i in shapes)
    widest = max(o for o, _ in shapes)
    width = 8 if spec.dtype == "float64" else 4
    ins = spec.instrument
    n_eval = min(ins.eval_subset or train, train)
    drift_kept = ins.drift_max_samples if ins.drift_samples != 0 else 0  # every batch drawn is kept
    lanczos = ins.sharpness_max_iter if ins.sharpness_every else 0
    raw = generated * dim * 8 * (3 if spec.dataset.kind == "gaussian_mixture" else 2)
    one_item = n_eval * widest * ACTIVATION_FACTOR
    parts = {
        "the data": raw + (train + test) * dim * width,
        "the parameters": params * width * WORKING_COPIES,
        "the drift's batch gradients": drift_kept * params * width * 4,
        "the Lanczos basis": lanczos * params * width * 2,
        # x2: the float64 copies the losses and the control variate are computed in
        "the batched evaluations": max(one_item, min(VMAP_BUDGET, (drift_kept + 1) * one_item)) * width * 2,
    }
    return RunCost(sum(parts.values()), _flops(spec, params, train, test, n_eval), params, parts)


def _flops(spec: RunSpec, params: int, train: int, test: int, n_eval: int) -> float:
    ins, opt = spec.instrument, spec.optimizer
    steps = opt.steps
    forward = 2.0 * params  # multiply-adds x 2 per example
    per_step = 3 * forward * opt.batch_size  # forward and backward of the batch
    recorded = steps / ins.every
    total = steps * per_step + recorded * 3 * forward * n_eval  # the loss and its gradient (the control variate)
    if ins.drift_samples != 0:
        k = ins.drift_max_samples if ins.drift_samples == "exact" else max(ins.drift_samples, 1)
        total += recorded / ins.drift_every * k * (3 * forward * opt.batch_size + forward * n_eval)
    if ins.sharpness_every:
        total += steps / ins.sharpness_every * ins.sharpness_max_iter * 4 * forward * n_eval
    if ins.test_every:
        total += (steps / ins.test_every + 1) * forward * test
    return total


class TooCostly(ValueError):
    """A run beyond the server's limits; the message names the limit and the estimate."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits of a server (0: no limit)."""

    max_memory_gib: float = 0.0
    max_tflop: float = 0.0

    def check(self, spec: RunSpec, label: str = "the run") -> RunCost:
        cost = estimate(spec)
        if self.max_memory_gib and cost.memory_gib > self.max_memory_gib:
            raise TooCostly(
                f"{label} would need {cost.describe()}; this server allows {self.max_memory_gib:g} GiB per run "
                "(EOS_MAX_RUN_MEMORY_GIB): use fewer or smaller inputs, a narrower model, or fewer drift samples"
            )
        if self.max_tflop and cost.flops / 1e12 > self.max_tflop:
            raise TooCostly(
                f"{label} would need {cost.flops / 1e12:.3g} TFLOP ({cost.describe()}); this server allows "
                f"{self.max_tflop:g} TFLOP per run (EOS_MAX_RUN_TFLOP): fewer steps, a sparser instrument cadence "
                "or a smaller model"
            )
        return cost
