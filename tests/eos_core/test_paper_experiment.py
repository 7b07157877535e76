"""The paper's first experiment (Fig. 4) at small scale: linear model, synthetic mixture."""

from __future__ import annotations

import numpy as np

from eos_core import RunSpec, train


def test_large_step_spikes_then_enters_s_and_decays_like_one_over_t() -> None:
    spec = RunSpec.model_validate(
        {
            "name": "fig4-small",
            "seed": 2,
            "device": "cpu",
            "dataset": {"kind": "gaussian_mixture", "classes": 4, "per_class": 30, "dim": 10, "separation": 1.0},
            "model": {"kind": "linear"},
            "optimizer": {"lr": 100.0, "batch_size": 8, "steps": 2000},
            "instrument": {
                "drift_samples": 32,
                "drift_max_samples": 256,
                "drift_every": 10,
                "sharpness_every": 0,
                "test_every": 0,
            },
        }
    )
    result = train(spec)
    trace, summary = result.trace, result.summary
    assert result.dataset_info["separable"] is True
    early = (trace["step"] < 200) & np.isfinite(trace["drift"])
    assert (trace["drift"][early] > 0).any(), "a large step should start outside S"
    assert summary["loss_spikes"] >= 1
    # Outside S most of the time at first, much less later. At this step size the iterate still
    # leaves S often late in the run (about 45% of the verdicts after step 1000 are "outside",
    # confirmed at single steps by 20,000-batch references), so no entrance is claimed here.
    verdict, step = trace["stable"], trace["step"]
    outside_early = np.mean(verdict[early] == 0.0)
    late = (step >= 1000) & np.isfinite(verdict)
    assert outside_early > 0.5 and np.mean(verdict[late] == 0.0) < outside_early
    assert summary["rate_applies"] is True
    assert -1.3 <= summary["rate_slope"] <= -0.7
    assert summary["final_loss"] < 0.01 * trace["loss"][0]
