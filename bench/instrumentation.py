"""What the instrumentation costs: time per SGD step of `eos_core.train` against a bare PyTorch loop.

Three CPU-sized workloads (pick with `--workloads`):

  a  linear model, synthetic gaussian_mixture (5 classes x 100 points, dim 20), B=16, lr 10
  b  two_layer leaky_softplus net (width 64, mean-field lr scaling) on sklearn `digits`, 512 points, B=32
  c  8-layer GELU mlp (width 64) on `mnist1d`, 1000 points, B=32

For each workload four modes are timed on the same data tensors (float32, same device):

  bare   a plain PyTorch SGD loop written here: torch.randint batches with replacement,
         F.cross_entropy, torch.optim.SGD; no measurement at all
  off    eos_core.train with the instruments off: instrument.every = steps (first and last
         step recorded), drift_samples 0, sharpness_every 0, test_every 0
  light  loss every step, drift (K=8) and sharpness every 100 steps, test_every 0
  full   drift with K=8 every step, sharpness every 10 steps, test_every 0
  hand   a hand-written loop that measures, every step, what drift mode's trace needs at the
         least: the loss and gradient norm on the whole training set, and the drift from 8
         batches (their gradients and the 8 losses after a step, each batch of gradients and of
         losses one vmapped call); no control variate, no error bar, no verdict
  drift  eos_core.train with drift K=8 (no doubling) every step, no sharpness, test_every 0;
         held against hand (target <= 1.5x hand)

Time per step is the loop time divided by the steps (eos_core's own `timing.loop_seconds`,
which excludes set-up and the post-run analysis; the bare loop is clocked the same way, and
on CUDA both synchronise before the clock is read). Every configuration is run `--repeats`
times, the modes interleaved and their order rotated from one repeat to the next, after an
untimed warm-up of each; the table shows the median, the spread and the ratio to the bare
loop's median, with the targets off <= 1.1x and full <= 3x marked PASS or MISS.

It also counts Hessian-vector products per sharpness call: warm-started Lanczos as
`eos_core.train` runs it (the `hvps` column of the full-mode trace: the first call, which
starts from a random vector, and the mean of the later calls) against the same solver
started cold from a fresh random vector at the same parameters, for which a second full-mode
run swaps in a tracker that also makes the cold call (target: warm <= 8 on average after the
first call).

Run it from the repository root:

    python bench/instrumentation.py                      # everything, about 2-3 minutes on 2 CPU cores
    python bench/instrumentation.py --workloads a --steps 500 --repeats 5
    python bench/instrumentation.py --device cuda
    python bench/instrumentation.py --workloads a --profile   # adds a cProfile of workload a, full mode

On a shared CPU machine keep `--threads 1` (the default): with more intra-op threads than
free cores every parallel kernel waits for a descheduled thread and step times jump 10-50x.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import math
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from eos_core.data import Dataset, load_dataset
from eos_core.models import build_model
from eos_core.sharpness import EigenPair, SharpnessTracker, lanczos_top_batched, track_sharpness
from eos_core.spec import RunSpec
from eos_core.training import RunResult, train

# The training loop lives in eos_core.training (the package exports its `train` function).
eos_train = importlib.import_module("eos_core.training")

MODES = ("bare", "off", "light", "full", "hand", "drift")
TARGETS = {"off": 1.1, "full": 3.0}
# drift is held against the hand-written loop that measures the same quantities, not the bare one.
HAND_TARGET = 1.5
DRIFT_K = 8
HVP_TARGET = 8.0
WARMUP_STEPS = 20
# train() measures steps 0..N (N + 1 points); N = 199 keeps the cadences exact: 2 per 200, 20 per 200.
DEFAULT_STEPS = 199


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    spec: dict[str, Any]  # RunSpec fields other than the instrument, steps and device


WORKLOADS: dict[str, Workload] = {
    "a": Workload(
        "a",
        "linear/gmix",
        {
            "dataset": {"kind": "gaussian_mixture", "classes": 5, "per_class": 100, "dim": 20},
            "model": {"kind": "linear"},
            "optimizer": {"lr": 10.0, "batch_size": 16},
        },
    ),
    "b": Workload(
        "b",
        "2layer/digits",
        {
            "dataset": {"kind": "digits", "n_train": 512},
            "model": {"kind": "two_layer", "width": 64, "activation": "leaky_softplus"},
            "optimizer": {"lr": 1.0, "batch_size": 32},
        },
    ),
    "c": Workload(
        "c",
        "mlp8/mnist1d",
        {
            "dataset": {"kind": "mnist1d", "n_train": 1000},
            "model": {"kind": "mlp", "depth": 8, "width": 64, "activation": "gelu"},
            "optimizer": {"lr": 0.5, "batch_size": 32},
        },
    ),
}


def instrument_for(mode: str, steps: int) -> dict[str, Any]:
    if mode == "off":
        return {"every": max(1, steps), "drift_samples": 0, "sharpness_every": 0, "test_every": 0}
    if mode == "light":
        return {
            "every": 1,
            "drift_every": 100,
            "sharpness_every": 100,
            "drift_samples": 8,
            "drift_max_samples": 8,
            "test_every": 0,
        }
    if mode == "drift":
        return {
            "every": 1,
            "drift_every": 1,
            "sharpness_every": 0,
            "drift_samples": DRIFT_K,
            "drift_max_samples": DRIFT_K,
            "test_every": 0,
        }
    if mode == "full":
        return {
            "every": 1,
            "drift_every": 1,
            "sharpness_every": 10,
            "drift_samples": 8,
            "drift_max_samples": 8,
            "test_every": 0,
        }
    raise ValueError(f"no eos_core spec for mode {mode!r}")


def make_spec(workload: Workload, mode: str, steps: int, device: str) -> RunSpec:
    fields = dict(workload.spec)
    fields["optimizer"] = {**workload.spec["optimizer"], "steps": steps}
    fields["instrument"] = instrument_for(mode, steps)
    fields["device"] = device
    return RunSpec.from_dict(fields)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the bare loop ----------------------------------------------------------------------
def plain_activation(name: str, leak: float) -> Callable[[torch.Tensor], torch.Tensor]:
    bases: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softplus": F.softplus,
        "gelu": F.gelu,
        "silu": F.silu,
        "relu": F.relu,
        "identity": lambda z: z,
    }
    if name.startswith("leaky_"):
        base = bases[name.removeprefix("leaky_")]
        return lambda z: leak * z + (1.0 - leak) * base(z)
    return bases[name]


def bare_model(
    spec: RunSpec, in_dim: int, classes: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """Leaf parameters (the same initial values eos_core draws) and a plain-torch forward."""
    flat = build_model(spec.model, in_dim, classes)
    theta = flat.init(torch.Generator().manual_seed(eos_train._seeds(spec.seed)[0]), dtype)
    parts = {name: value.clone().to(device).requires_grad_(True) for name, value in flat.unflatten(theta).items()}
    params = list(parts.values())
    ms = spec.model
    if ms.kind == "linear":
        w = parts["W"]
        return params, lambda x: x @ w.T
    act = plain_activation(ms.activation, ms.leak)
    if ms.kind == "two_layer":
        w = parts["W"]
        k, m, d = w.shape
        signs = torch.ones(m, device=device, dtype=dtype)
        signs[m // 2 :] = -1.0

        def two_layer(x: torch.Tensor) -> torch.Tensor:
            pre = (x @ w.reshape(k * m, d).T).view(-1, k, m)
            return act(pre) @ signs / m

        return params, two_layer
    depth = ms.depth

    def mlp(x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(depth):
            h = F.linear(h, parts[f"W{i}"], parts[f"b{i}"])
            if i < depth - 1:
                h = act(h)
        return h

    return params, mlp


def run_bare(spec: RunSpec, data: Dataset, device: torch.device) -> float:
    """Seconds for `spec.optimizer.steps` plain SGD steps."""
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    x = torch.as_tensor(data.x_train, dtype=dtype, device=device)
    y = torch.as_tensor(data.y_train, dtype=torch.long, device=device)
    params, forward = bare_model(spec, x.shape[1], data.classes, device, dtype)
    optimizer = torch.optim.SGD(params, lr=spec.effective_lr)
    generator = torch.Generator().manual_seed(eos_train._seeds(spec.seed)[1])
    n, batch = len(x), spec.optimizer.batch_size
    synchronize(device)
    started = time.perf_counter()
    for _ in range(spec.optimizer.steps):
        idx = torch.randint(n, (batch,), generator=generator).to(device)
        loss = F.cross_entropy(forward(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def functional_forward(spec: RunSpec, dtype: torch.dtype, device: torch.device) -> Callable[..., torch.Tensor]:
    """forward(parts, x) of the bare model, as a function of its parameters (for torch.func)."""
    ms = spec.model
    if ms.kind == "linear":
        return lambda parts, x: x @ parts["W"].T
    act = plain_activation(ms.activation, ms.leak)
    if ms.kind == "two_layer":
        m = ms.width
        signs = torch.ones(m, device=device, dtype=dtype)
        signs[m // 2 :] = -1.0

        def two_layer(parts: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            w = parts["W"]
            k, m, d = w.shape
            return act((x @ w.reshape(k * m, d).T).view(-1, k, m)) @ signs / m

        return two_layer

    def mlp(parts: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(ms.depth):
            h = F.linear(h, parts[f"W{i}"], parts[f"b{i}"])
            if i < ms.depth - 1:
                h = act(h)
        return h

    return mlp


def run_hand(spec: RunSpec, data: Dataset, device: torch.device) -> float:
    """Seconds for plain SGD steps that measure loss, gradient norm and an 8-batch drift every step."""
    from torch.func import grad, vmap

    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    x = torch.as_tensor(data.x_train, dtype=dtype, device=device)
    y = torch.as_tensor(data.y_train, dtype=torch.long, device=device)
    params, _ = bare_model(spec, x.shape[1], data.classes, device, dtype)
    names = [name for name, _ in build_model(spec.model, x.shape[1], data.classes).shapes]
    forward = functional_forward(spec, dtype, device)
    lr = spec.effective_lr
    optimizer = torch.optim.SGD(params, lr=lr)
    generator = torch.Generator().manual_seed(eos_train._seeds(spec.seed)[1])
    measure = torch.Generator().manual_seed(7)
    n, batch = len(x), spec.optimizer.batch_size

    def batch_loss(parts: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(parts, x[idx]), y[idx])

    def full_loss(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(forward(parts, x), y)

    batch_grads = vmap(grad(batch_loss), in_dims=(None, 0))
    losses_after = vmap(full_loss)
    trace: list[tuple[float, float, float]] = []
    synchronize(device)
    started = time.perf_counter()
    for _ in range(spec.optimizer.steps):
        parts = dict(zip(names, params, strict=True))
        loss = full_loss(parts)
        full_grads = torch.autograd.grad(loss, params)
        grad_norm = torch.sqrt(sum((g * g).sum() for g in full_grads))
        with torch.no_grad():
            detached = {k: v.detach() for k, v in parts.items()}
            idx = torch.randint(n, (DRIFT_K, batch), generator=measure).to(device)
            grads = batch_grads(detached, idx)
            stepped = {k: detached[k].unsqueeze(0) - lr * grads[k] for k in names}
            drift = losses_after(stepped).mean() - loss.detach()
        trace.append((float(loss), float(grad_norm), float(drift)))
        idx = torch.randint(n, (batch,), generator=generator).to(device)
        step_loss = F.cross_entropy(forward(parts, x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def run_eos(spec: RunSpec, data: Dataset) -> tuple[float, RunResult]:
    result = train(spec, dataset=data)
    return float(result.summary["timing"]["loop_seconds"]), result


# --- Hessian-vector products: warm against cold ------------------------------------------
class ColdComparison:
    """Wraps eos_core's batched sharpness call (the warm-started pairs are what gets recorded) and
    adds a cold call: lanczos_top_batched from fresh random vectors with the same operator, i.e.
    at the same parameters, drawing from its own generator so the run's streams are untouched."""

    def __init__(self) -> None:
        self.cold_generator = torch.Generator().manual_seed(12345)
        self.calls: list[tuple[EigenPair, EigenPair]] = []  # (warm, cold), one run's calls in order

    def __call__(
        self, trackers: list[SharpnessTracker], hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor
    ) -> list[EigenPair]:
        warm = track_sharpness(trackers, hvp, like)
        starts = torch.randn(like.shape, generator=self.cold_generator, dtype=torch.float64).to(like)
        cold = lanczos_top_batched(hvp, starts, trackers[0].tol, trackers[0].max_iter)
        self.calls.extend(zip(warm, cold, strict=True))
        return warm


@dataclass
class HvpReport:
    warm_first: float
    warm_later_mean: float
    warm_later_max: float
    calls: int
    cold_mean: float
    cold_capped: int  # cold calls that hit max_iter
    max_rel_gap: float  # max |lambda_warm - lambda_cold| / |lambda_cold|
    trace_matches: bool  # the instrumented run's warm counts equal the timed full run's


def hvp_comparison(spec: RunSpec, data: Dataset, timed_hvps: np.ndarray) -> HvpReport:
    tracker = ColdComparison()
    with mock.patch.object(eos_train, "track_sharpness", tracker):
        result = train(spec, dataset=data)
    warm = np.array([w.products for w, _ in tracker.calls], dtype=float)
    cold = np.array([c.products for _, c in tracker.calls], dtype=float)
    gaps = [abs(w.value - c.value) / max(abs(c.value), 1e-30) for w, c in tracker.calls]
    traced = result.trace["hvps"][np.isfinite(result.trace["hvps"])]
    timed = timed_hvps[np.isfinite(timed_hvps)]
    return HvpReport(
        warm_first=float(timed[0]) if len(timed) else math.nan,
        warm_later_mean=float(timed[1:].mean()) if len(timed) > 1 else math.nan,
        warm_later_max=float(timed[1:].max()) if len(timed) > 1 else math.nan,
        calls=len(timed),
        cold_mean=float(cold.mean()) if len(cold) else math.nan,
        cold_capped=int((cold >= spec.instrument.sharpness_max_iter).sum()),
        max_rel_gap=max(gaps) if gaps else math.nan,
        trace_matches=np.array_equal(traced, timed) and np.array_equal(warm, timed),
    )


# --- driver --------------------------------------------------------------------------------
@dataclass
class Row:
    workload: Workload
    mode: str
    seconds: list[float]
    status: str = "completed"
    measure_share: float = math.nan  # eos_core's own instruments.seconds / loop_seconds


def time_one(workload: Workload, mode: str, steps: int, data: Dataset, device: str) -> tuple[float, RunResult | None]:
    spec = make_spec(workload, "off" if mode in ("bare", "hand") else mode, steps, device)
    if mode == "bare":
        return run_bare(spec, data, eos_train.resolve_device(device)), None
    if mode == "hand":
        return run_hand(spec, data, eos_train.resolve_device(device)), None
    return run_eos(spec, data)


def benchmark(
    workloads: list[Workload], steps: int, repeats: int, device: str, datasets: dict[str, Dataset]
) -> tuple[dict[tuple[str, str], Row], dict[str, np.ndarray]]:
    rows = {(w.key, m): Row(w, m, []) for w in workloads for m in MODES}
    full_hvps: dict[str, np.ndarray] = {}
    shares: dict[tuple[str, str], list[float]] = {key: [] for key in rows}
    for w in workloads:  # untimed warm-up: first calls, allocator and caches
        for mode in MODES:
            time_one(w, mode, WARMUP_STEPS, datasets[w.key], device)
    for rep in range(repeats):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for w in workloads:
            for mode in order:
                seconds, result = time_one(w, mode, steps, datasets[w.key], device)
                row = rows[(w.key, mode)]
                row.seconds.append(seconds)
                if result is not None:
                    if result.status != "completed":
                        row.status = result.status
                    timing = result.summary["timing"]
                    shares[(w.key, mode)].append(timing["measure_seconds"] / max(timing["loop_seconds"], 1e-12))
                    if mode == "full" and w.key not in full_hvps:
                        full_hvps[w.key] = result.trace["hvps"]
                print(
                    f"  [{rep + 1}/{repeats}] {w.key} {mode:<5} {1e3 * seconds / steps:9.3f} ms/step", file=sys.stderr
                )
    for key, row in rows.items():
        if shares[key]:
            row.measure_share = statistics.median(shares[key])
    return rows, full_hvps


def format_table(rows: dict[tuple[str, str], Row], workloads: list[Workload], steps: int) -> str:
    header = (
        f"{'workload':<16}{'mode':<7}{'ms/step':>10}{'min..max':>20}{'x bare':>9}"
        f"{'target':>9}{'verdict':>9}{'measuring':>11}  status"
    )
    lines = [header, "-" * len(header)]
    for w in workloads:
        bare = statistics.median(rows[(w.key, "bare")].seconds) / steps
        for mode in MODES:
            row = rows[(w.key, mode)]
            per_step = [s / steps for s in row.seconds]
            median = statistics.median(per_step)
            ratio = median / bare
            target = TARGETS.get(mode)
            verdict = "-" if target is None else ("PASS" if ratio <= target else "MISS")
            if mode == "drift":  # held against the hand-written measuring loop
                hand = statistics.median(rows[(w.key, "hand")].seconds) / steps
                verdict = "PASS" if median / hand <= HAND_TARGET else "MISS"
                row.status = f"{row.status}; {median / hand:.2f}x hand (target <= {HAND_TARGET}x hand)"
            spread = f"{1e3 * min(per_step):.3f}..{1e3 * max(per_step):.3f}"
            share = "-" if math.isnan(row.measure_share) else f"{100 * row.measure_share:.0f}%"
            lines.append(
                f"{w.key + ' ' + w.label:<16}{mode:<7}{1e3 * median:>10.3f}{spread:>20}{ratio:>8.2f}x"
                f"{'<= ' + str(target) + 'x' if target else '-':>9}{verdict:>9}{share:>11}  {row.status}"
            )
    return "\n".join(lines)


def format_hvps(reports: dict[str, HvpReport], workloads: list[Workload]) -> str:
    header = (
        f"{'workload':<16}{'calls':>6}{'warm 1st':>10}{'warm mean>1st':>15}{'warm max>1st':>14}"
        f"{'cold mean':>11}{'cold capped':>13}{'max rel gap':>13}{'target':>8}{'verdict':>9}"
    )
    lines = [header, "-" * len(header)]
    for w in workloads:
        r = reports.get(w.key)
        if r is None:
            continue
        verdict = "PASS" if r.warm_later_mean <= HVP_TARGET else "MISS"
        lines.append(
            f"{w.key + ' ' + w.label:<16}{r.calls:>6}{r.warm_first:>10.0f}{r.warm_later_mean:>15.2f}"
            f"{r.warm_later_max:>14.0f}{r.cold_mean:>11.2f}{r.cold_capped:>13}{r.max_rel_gap:>13.1e}"
            f"{'<= ' + str(int(HVP_TARGET)):>8}{verdict:>9}"
            + ("" if r.trace_matches else "  (warm counts differ from the timed run)")
        )
    return "\n".join(lines)


def profile_full(workload: Workload, steps: int, data: Dataset, device: str, limit: int = 25) -> str:
    spec = make_spec(workload, "full", steps, device)
    profiler = cProfile.Profile()
    profiler.enable()
    train(spec, dataset=data)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(r"drift|sharpness|objective|loss|models|train|sampling|trace", limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def load_average() -> str:
    """The 1-minute load average: above the core count, other processes shared the CPU."""
    try:
        return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"), help="(default: auto)")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"SGD steps per timed run (default: {DEFAULT_STEPS}; with N = 100 j - 1 the N + 1 measured steps give "
        "light mode exactly one drift and sharpness call per 100 steps and full mode one sharpness call per 10)",
    )
    parser.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c (default: a,b,c)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; the median is shown")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on the CPU; 0 keeps torch's default (default: 1)"
    )
    parser.add_argument("--no-hvps", action="store_true", help="skip the warm/cold Hessian-vector product count")
    parser.add_argument("--profile", action="store_true", help="also cProfile one full-mode run of the first workload")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown or not keys:
        parser.error(f"--workloads takes a comma-separated subset of {','.join(WORKLOADS)}")
    args.workload_list = [WORKLOADS[k] for k in keys]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = str(eos_train.resolve_device(args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workloads: list[Workload] = args.workload_list
    started = time.perf_counter()
    datasets: dict[str, Dataset] = {}
    for w in workloads:
        spec = make_spec(w, "off", args.steps, device)
        datasets[w.key] = load_dataset(spec.dataset, spec.seed)
    print(
        f"eos instrumentation benchmark: device={device}, torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, steps={args.steps}, repeats={args.repeats} (median shown), "
        f"load average {load_average()}"
    )
    for w in workloads:
        info = datasets[w.key].info
        spec = make_spec(w, "off", args.steps, device)
        print(
            f"  {w.key} {w.label}: n={info['n_train']} d={info['dim']} k={info['classes']} "
            f"P={build_model(spec.model, info['dim'], info['classes']).n_params} "
            f"B={spec.optimizer.batch_size} lr_eff={spec.effective_lr:g}"
        )
    rows, full_hvps = benchmark(workloads, args.steps, args.repeats, device, datasets)
    print()
    print("time per step (loop only; 'measuring' = eos_core's instruments.seconds / loop_seconds)")
    print(format_table(rows, workloads, args.steps))
    if not args.no_hvps:
        reports = {
            w.key: hvp_comparison(make_spec(w, "full", args.steps, device), datasets[w.key], full_hvps[w.key])
            for w in workloads
            if w.key in full_hvps
        }
        print()
        print("Hessian-vector products per sharpness call (full mode: every 10 steps, tol 1e-4, max_iter 100)")
        print(format_hvps(reports, workloads))
    if args.profile:
        print()
        print(f"cProfile of one full-mode run, workload {workloads[0].key}")
        print(profile_full(workloads[0], args.steps, datasets[workloads[0].key], device))
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
