"""The summary against the drift cadence: one trajectory, drift measured every 1, 5 and 25 steps.

    python bench/cadence.py [--steps 600] [--cadences 1,5,25]

The trajectory is issue 7's (gaussian_mixture 5 x 50, dim 20, separation 1, noise 1, linear,
lr 1000, B = 4, seed 0, float32); the iterates do not depend on the instruments, so only the
measurement changes. Prints entrance, exit rate (or "not resolved"), rate slope, Ĉ, κ_B and the
fraction of steps in S, each with the resolution or interval the summary states.
"""

from __future__ import annotations

import argparse
import time

from eos_core import RunSpec, RunSummary, train


def spec(drift_every: int, steps: int) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 0,
            "dtype": "float32",
            "dataset": {
                "kind": "gaussian_mixture",
                "classes": 5,
                "per_class": 50,
                "dim": 20,
                "separation": 1,
                "noise": 1,
            },
            "model": {"kind": "linear"},
            "optimizer": {"lr": 1000, "batch_size": 4, "steps": steps},
            "instrument": {"every": 1, "drift_every": drift_every, "sharpness_every": 0, "test_every": 0},
        }
    )


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _iv(pair: list[float | None] | None, digits: int = 3) -> str:
    return "" if not pair else f" [{_g(pair[0], digits)}, {'inf' if pair[1] is None else _g(pair[1], digits)}]"


def row(c: int, s: RunSummary, seconds: float) -> list[str]:
    exits = (
        f"{_g(s.exit_rate_per_1000)}{_iv(s.exit_rate_interval)}"
        if s.exits_resolved
        else f"not resolved ({s.exits_observed} seen)"
    )
    bound = {"upper": "<=", "lower": ">="}.get(s.kappa_B_bound or "", "")
    return [
        str(c),
        f"{s.entrance_step} (W={s.window_steps})",
        exits,
        f"{_g(s.rate_slope)}{_iv(s.rate_slope_interval)}",
        f"{_g(s.rate_C)} @ {s.rate_C_step}",
        f"{bound}{_g(s.kappa_B)}{_iv(s.kappa_B_interval)}",
        f"{_g(s.fraction_in_S)}{_iv(s.fraction_in_S_interval, 2)}",
        f"{_g(s.fraction_in_S_after_entrance)}{_iv(s.fraction_in_S_after_entrance_interval, 2)}",
        f"{seconds:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--cadences", default="1,5,25")
    args = parser.parse_args()
    header = ["drift_every", "entrance", "exits/1k steps in S", "slope", "Ĉ", "κ_B", "in S", "in S after entr.", "s"]
    rows = []
    for c in (int(x) for x in args.cadences.split(",")):
        started = time.perf_counter()
        result = train(spec(c, args.steps))
        rows.append(row(c, result.summary, time.perf_counter() - started))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    s = result.summary
    print(f"frozen from step {s.frozen_from_step}; rate window from {s.rate_window_start} ({s.rate_window_rule})")


if __name__ == "__main__":
    main()
