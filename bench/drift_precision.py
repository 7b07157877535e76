"""Drift at tiny losses in float32: CPU against CUDA on the Fig. 4 run that reaches L ~ 1e-9.

    python bench/drift_precision.py [--device cuda]

Prints, after the loss has fallen below 1e-6, the spread of rel_drift = D / (eta ||grad L||^2)
(about -1 when the step is stable and the drift is measured correctly) and the exits from S.
"""

from __future__ import annotations

import argparse

import numpy as np

from eos_core import RunSpec, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    spec = RunSpec.model_validate(
        {
            "name": "fig4-b4-eta3000",
            "device": args.device,
            "dtype": "float32",
            "dataset": {"kind": "gaussian_mixture", "classes": 5, "per_class": 100, "dim": 20, "separation": 1.0},
            "model": {"kind": "linear"},
            "optimizer": {"lr": 3000.0, "batch_size": 4, "steps": args.steps},
            "instrument": {
                "drift_samples": 16,
                "drift_max_samples": 64,
                "drift_every": 10,
                "sharpness_every": 0,
                "test_every": 0,
            },
        }
    )
    result = train(spec)
    trace = result.trace
    tiny = (trace["loss"] < 1e-6) & np.isfinite(trace["rel_drift"])
    rel = trace["rel_drift"][tiny]
    if not len(rel):
        print(f"device={args.device}: the loss never fell below 1e-6 (final {result.summary['final_loss']:.3g})")
        return
    exits_late = [s for s in result.summary["exit_steps"] if trace["loss"][s] < 1e-6]
    print(
        f"device={args.device} final loss {result.summary['final_loss']:.3g}; steps with L<1e-6 and drift: "
        f"{tiny.sum()}; rel_drift median {np.median(rel):.3f}, 5-95% [{np.percentile(rel, 5):.3f}, "
        f"{np.percentile(rel, 95):.3f}]; exits from S at L<1e-6: {len(exits_late)}"
    )


if __name__ == "__main__":
    main()
