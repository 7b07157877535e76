"""Sweep throughput: run-steps/s of R runs trained one after another against one sweep slice.

Two CPU-sized workloads (pick with `--workloads`), float32, B = 16, on the same data:

  linear     linear model, synthetic gaussian_mixture (5 classes x 100 points, dim 20);
             step sizes log-spaced over lr in [1, 100]
  two_layer  two_layer leaky_softplus net (width 64, mean-field lr scaling: the applied step is
             lr * 64, as the spec does by default) on the same mixture; lr log-spaced in [0.1, 10]
             before the width scaling, i.e. 6.4 to 640 applied

The R runs of a cell differ in step size (spread over the range above) and seed (0..R-1); the
dataset's `data_seed` is fixed, so all runs share the data, which is loaded once per workload
with `eos_core.data.load_dataset` and handed to the runs (`dataset=` / `datasets=`).

Two instrument modes:

  off    instrument.every = steps (first and last step recorded), drift_samples 0,
         sharpness_every 0, test_every 0
  drift  loss and drift with K = 8 batches (drift_max_samples 8) every step,
         sharpness_every 0, test_every 0

and two ways to train the R runs, timed side by side in each (workload, mode, R) cell:

  sequential  `eos_core.train(spec, dataset=...)` for each spec, one after another
  sliced      one `eos_core.train_slice(specs, datasets=...)` call (any Exception among its
              outcomes stops the benchmark)

With instruments off, a third arm gives the reference the issue's first table used:

  plain       a plain PyTorch loop (autograd, F.cross_entropy, torch.optim.SGD: bench/instrumentation.py's
              bare loop) for each spec, one after another, on the runs timed sequentially; its loop alone
              is clocked. The column `sliced/plain` is the sliced rate over this one's.

Both are clocked with time.perf_counter around the whole calls: set-up, the training loop and
the post-run analysis, everything but loading the dataset (the runs' own `loop_seconds` would
not do: in a slice the loop is shared). On CUDA the device is synchronised before each clock
read. run-steps/s = R * steps / seconds. Sequential R is timed on at most `--sequential-max`
runs (default 8, spread evenly over the R step sizes) and scaled by R / runs: the table then says
"8 of 64". Drift every step is costly, so drift mode runs fewer steps (`--steps-drift`).

Every cell is run `--repeats` times, after an untimed warm-up per (workload, mode); the repeats
alternate the order of the arms and rotate the order of the R values. The
table shows medians with the min..max over repeats, the ratio of the medians sliced/sequential,
the issue-10 targets (this CPU: linear R = 64 >= 30x with instruments off and >= 10x with drift
every step; two_layer R = 64 >= 5x with instruments off) marked PASS or MISS, and the largest
relative difference between a sliced run's final loss and the same run's sequential one (the
engine promises 1e-9 in float64 at non-chaotic step sizes; these runs are float32 and some are
large-step, so the column is only reported).

Run it from the repository root:

    python bench/sweep.py                                # everything: about 5 minutes on 2 CPU cores while
                                                         # train_slice trains its runs one by one
    python bench/sweep.py --workloads linear --R 1 8 64 --modes off --repeats 5
    python bench/sweep.py --device cuda --sequential-max 0

On a shared CPU machine keep `--threads 1` (the default): with more intra-op threads than
free cores every parallel kernel waits for a descheduled thread and step times jump 10-50x.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eos_core.data import Dataset, load_dataset
from eos_core.models import build_model
from eos_core.spec import RunSpec
from eos_core.training import RunResult, resolve_device, train, train_slice

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from instrumentation import run_bare  # bench/ holds scripts, not a package

MODES = ("off", "drift")
ARMS = ("sequential", "sliced", "plain")
DEFAULT_R = (1, 8, 64)
# Targets for sliced / sequential run-steps/s at (workload, mode, R) (issue 10, 2-core CPU).
TARGETS: dict[tuple[str, str, int], float] = {
    ("linear", "off", 64): 30.0,
    ("linear", "drift", 64): 10.0,
    ("two_layer", "off", 64): 5.0,
}
DATA_SEED = 0
WARMUP_STEPS = 5
DEFAULT_STEPS_OFF = 400
DEFAULT_STEPS_DRIFT = 40
DEFAULT_SEQUENTIAL_MAX = 8


@dataclass(frozen=True)
class Workload:
    key: str
    lr_range: tuple[float, float]  # spec lr (before any width scaling), log-spaced over the R runs
    spec: dict[str, Any]  # RunSpec fields other than the name, seed, lr, steps, instrument and device


DATASET = {"kind": "gaussian_mixture", "classes": 5, "per_class": 100, "dim": 20, "data_seed": DATA_SEED}

WORKLOADS: dict[str, Workload] = {
    "linear": Workload(
        "linear",
        (1.0, 100.0),
        {"dataset": DATASET, "model": {"kind": "linear"}, "optimizer": {"batch_size": 16}, "dtype": "float32"},
    ),
    "two_layer": Workload(
        "two_layer",
        (0.1, 10.0),
        {
            "dataset": DATASET,
            "model": {"kind": "two_layer", "width": 64, "activation": "leaky_softplus"},
            "optimizer": {"batch_size": 16, "lr_scaling": "auto"},
            "dtype": "float32",
        },
    ),
}


def instrument_for(mode: str, steps: int) -> dict[str, Any]:
    if mode == "off":
        return {"every": max(1, steps), "drift_samples": 0, "sharpness_every": 0, "test_every": 0}
    if mode == "drift":
        return {
            "every": 1,
            "drift_every": 1,
            "drift_samples": 8,
            "drift_max_samples": 8,
            "sharpness_every": 0,
            "test_every": 0,
        }
    raise ValueError(f"no eos_core spec for mode {mode!r}")


def step_sizes(workload: Workload, runs: int) -> list[float]:
    lo, hi = workload.lr_range
    if runs == 1:
        return [math.sqrt(lo * hi)]  # the geometric middle of the range
    return [float(v) for v in np.geomspace(lo, hi, runs)]


def make_specs(workload: Workload, mode: str, runs: int, steps: int, device: str) -> list[RunSpec]:
    specs = []
    for i, lr in enumerate(step_sizes(workload, runs)):
        fields = dict(workload.spec)
        fields["name"] = f"{workload.key}-{mode}-{i}"
        fields["seed"] = i
        fields["optimizer"] = {**workload.spec["optimizer"], "lr": lr, "steps": steps}
        fields["instrument"] = instrument_for(mode, steps)
        fields["device"] = device
        specs.append(RunSpec.from_dict(fields))
    return specs


def sequential_subset(runs: int, limit: int) -> list[int]:
    """Indices of the runs timed one after another: all, or `limit` spread evenly over the step sizes."""
    if limit <= 0 or runs <= limit:
        return list(range(runs))
    return sorted(set(np.linspace(0, runs - 1, limit).round().astype(int).tolist()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sequential(specs: Sequence[RunSpec], data: Dataset, device: torch.device) -> tuple[float, list[RunResult]]:
    synchronize(device)
    started = time.perf_counter()
    results = [train(spec, dataset=data) for spec in specs]
    synchronize(device)
    return time.perf_counter() - started, results


def run_plain(specs: Sequence[RunSpec], data: Dataset, device: torch.device) -> float:
    """Seconds of the plain PyTorch loops of `specs`, one after another (their loops alone)."""
    return sum(run_bare(spec, data, device) for spec in specs)


def run_sliced(specs: Sequence[RunSpec], data: Dataset, device: torch.device) -> tuple[float, list[RunResult]]:
    synchronize(device)
    started = time.perf_counter()
    outcomes = train_slice(specs, datasets=[data] * len(specs))
    synchronize(device)
    seconds = time.perf_counter() - started
    results = []
    for spec, outcome in zip(specs, outcomes, strict=True):
        if isinstance(outcome, Exception):
            raise RuntimeError(f"train_slice: run {spec.name} failed") from outcome
        results.append(outcome)
    return seconds, results


# --- driver --------------------------------------------------------------------------------
@dataclass
class Cell:
    workload: str
    mode: str
    runs: int
    steps: int
    sequential_runs: int  # runs timed one after another (scaled to `runs`)
    rates: dict[str, list[float]] = field(default_factory=lambda: {arm: [] for arm in ARMS})  # run-steps/s
    loss_gap: float = 0.0  # max relative |final loss sliced - sequential| over the runs timed both ways
    statuses: dict[str, int] = field(default_factory=dict)  # the sliced runs' statuses, counted

    def rate(self, arm: str) -> float:
        return statistics.median(self.rates[arm])


def final_loss(result: RunResult) -> float:
    value = result.summary["final_loss"]
    return math.nan if value is None else float(value)


def relative_gap(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def benchmark(
    workloads: list[Workload],
    modes: list[str],
    rs: list[int],
    steps: dict[str, int],
    repeats: int,
    sequential_max: int,
    device: torch.device,
    datasets: dict[str, Dataset],
) -> dict[tuple[str, str, int], Cell]:
    cells: dict[tuple[str, str, int], Cell] = {}
    for w in workloads:
        for mode in modes:
            for r in rs:
                n_seq = len(sequential_subset(r, sequential_max))
                cells[(w.key, mode, r)] = Cell(w.key, mode, r, steps[mode], n_seq)
    for w in workloads:  # untimed warm-up: first calls, allocator and caches
        for mode in modes:
            specs = make_specs(w, mode, 2, WARMUP_STEPS, str(device))
            run_sequential(specs, datasets[w.key], device)
            run_sliced(specs, datasets[w.key], device)
            run_plain(specs, datasets[w.key], device)
    for rep in range(repeats):
        shift = rep % len(rs)
        r_order = rs[shift:] + rs[:shift]
        arms = ARMS if rep % 2 == 0 else ARMS[::-1]
        for w in workloads:
            data = datasets[w.key]
            for mode in modes:
                for r in r_order:
                    cell = cells[(w.key, mode, r)]
                    specs = make_specs(w, mode, r, cell.steps, str(device))
                    subset = sequential_subset(r, sequential_max)
                    finals: dict[str, list[float]] = {}
                    for arm in arms:
                        if arm == "plain":
                            if mode == "off":
                                seconds = run_plain([specs[i] for i in subset], data, device) * r / len(subset)
                                cell.rates[arm].append(r * cell.steps / seconds)
                            continue
                        if arm == "sequential":
                            seconds, results = run_sequential([specs[i] for i in subset], data, device)
                            seconds *= r / len(subset)
                            finals[arm] = [final_loss(res) for res in results]
                        else:
                            seconds, results = run_sliced(specs, data, device)
                            finals[arm] = [final_loss(results[i]) for i in subset]
                            cell.statuses = {}
                            for res in results:
                                cell.statuses[res.status] = cell.statuses.get(res.status, 0) + 1
                        cell.rates[arm].append(r * cell.steps / seconds)
                    gaps = [relative_gap(a, b) for a, b in zip(finals["sliced"], finals["sequential"], strict=True)]
                    cell.loss_gap = max([cell.loss_gap, *gaps])
                    print(
                        f"  [{rep + 1}/{repeats}] {w.key:<9} {mode:<5} R={r:<3} "
                        f"sequential {cell.rates['sequential'][-1]:10.0f}  sliced {cell.rates['sliced'][-1]:10.0f} "
                        "run-steps/s",
                        file=sys.stderr,
                    )
    return cells


def format_rate(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.0f}", f"{min(values):.0f}..{max(values):.0f}"


def format_table(cells: dict[tuple[str, str, int], Cell]) -> str:
    header = (
        f"{'workload':<11}{'mode':<7}{'R':>4}{'steps':>7}{'sequential':>12}{'min..max':>18}{'seq runs':>15}"
        f"{'sliced':>11}{'min..max':>18}{'ratio':>9}{'target':>9}{'verdict':>9}{'plain':>9}{'sliced/plain':>14}"
        f"{'loss rel diff':>15}  statuses"
    )
    lines = [header, "-" * len(header)]
    for (workload, mode, r), cell in cells.items():
        seq, seq_spread = format_rate(cell.rates["sequential"])
        sliced, sliced_spread = format_rate(cell.rates["sliced"])
        ratio = cell.rate("sliced") / cell.rate("sequential")
        target = TARGETS.get((workload, mode, r))
        verdict = "-" if target is None else ("PASS" if ratio >= target else "MISS")
        seq_runs = "all" if cell.sequential_runs == r else f"{cell.sequential_runs} of {r}, sc."
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(cell.statuses.items()))
        plain = f"{cell.rate('plain'):.0f}" if cell.rates["plain"] else "-"
        over_plain = f"{cell.rate('sliced') / cell.rate('plain'):.2f}x" if cell.rates["plain"] else "-"
        lines.append(
            f"{workload:<11}{mode:<7}{r:>4}{cell.steps:>7}{seq:>12}{seq_spread:>18}{seq_runs:>15}"
            f"{sliced:>11}{sliced_spread:>18}{ratio:>8.2f}x{'>= ' + f'{target:g}x' if target else '-':>9}"
            f"{verdict:>9}{plain:>9}{over_plain:>14}{cell.loss_gap:>15.1e}  {statuses}"
        )
    return "\n".join(lines)


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
        "--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS), help="(default: all)"
    )
    parser.add_argument("--R", dest="rs", nargs="+", type=int, default=list(DEFAULT_R), help="runs per cell")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="(default: off drift)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell; the median is shown")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on the CPU; 0 keeps torch's default (default: 1)"
    )
    parser.add_argument("--steps-off", type=int, default=DEFAULT_STEPS_OFF, help="SGD steps per run, mode off")
    parser.add_argument("--steps-drift", type=int, default=DEFAULT_STEPS_DRIFT, help="SGD steps per run, mode drift")
    parser.add_argument(
        "--sequential-max",
        type=int,
        default=DEFAULT_SEQUENTIAL_MAX,
        help=f"time sequential R on at most this many runs and scale; 0 times all (default: {DEFAULT_SEQUENTIAL_MAX})",
    )
    args = parser.parse_args(argv)
    if args.steps_off < 1 or args.steps_drift < 1 or args.repeats < 1 or min(args.rs) < 1:
        parser.error("--steps-off, --steps-drift, --repeats and --R must be at least 1")
    args.rs = sorted(set(args.rs))
    args.workloads = list(dict.fromkeys(args.workloads))
    args.modes = list(dict.fromkeys(args.modes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workloads = [WORKLOADS[k] for k in args.workloads]
    steps = {"off": args.steps_off, "drift": args.steps_drift}
    started = time.perf_counter()
    datasets: dict[str, Dataset] = {}
    print(
        f"eos sweep benchmark: device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"R={args.rs}, steps off={args.steps_off} drift={args.steps_drift}, repeats={args.repeats} (median shown), "
        f"load average {load_average()}"
    )
    for w in workloads:
        spec = make_specs(w, "off", 1, 1, str(device))[0]
        datasets[w.key] = load_dataset(spec.dataset, spec.seed)
        info = datasets[w.key].info
        lo, hi = w.lr_range
        scale = spec.effective_lr / spec.optimizer.lr
        print(
            f"  {w.key}: n={info['n_train']} d={info['dim']} k={info['classes']} "
            f"P={build_model(spec.model, info['dim'], info['classes']).n_params} B={spec.optimizer.batch_size} "
            f"{spec.dtype}, lr {lo:g}..{hi:g} log-spaced (applied {lo * scale:g}..{hi * scale:g}), seeds 0..R-1, "
            f"data_seed {DATA_SEED}"
        )
    cells = benchmark(workloads, args.modes, args.rs, steps, args.repeats, args.sequential_max, device, datasets)
    print()
    print(
        "run-steps/s = R * steps / seconds of the whole train / train_slice calls (data loading excluded); "
        "ratio = sliced / sequential medians;\n'seq runs': runs timed sequentially ('k of R, sc.' = k runs timed, "
        "scaled to R); 'plain': a plain PyTorch loop per run, one after another (instruments off only);\n"
        "'loss rel diff': max |final loss sliced - sequential| / |sequential| over those runs"
    )
    print(format_table(cells))
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
