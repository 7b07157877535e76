"""A run's cost from its spec (eos_core.resources): checked against the memory training really
takes (the peak RSS while training, in a process where a warm-up run has paid for imports and thread pools)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from eos_core.resources import Limits, TooCostly, estimate
from eos_core.spec import RunSpec

# The peak RSS while training the spec, above the RSS just before it: a tiny version of the spec
# is trained first (lazy imports, thread pools), then Linux's peak is reset (clear_refs 5).
PROBE = """
import gc, json, sys
import torch
from eos_core import RunSpec, train
torch.set_num_threads(1)
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
spec = RunSpec.model_validate(json.loads(sys.argv[1]))
train(spec.model_copy(update={
    "dataset": spec.dataset.model_copy(update={"per_class": 4}),
    "optimizer": spec.optimizer.model_copy(update={"batch_size": 2}),
}))
gc.collect()
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
train(spec)
print(status("VmHWM:") - before)
"""

CASES: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": {"classes": 10, "per_class": 10000, "dim": 100},
        "optimizer": {"steps": 2},
        "instrument": {"sharpness_every": 0},
    },
    "drift gradients": {
        "dataset": {"classes": 10, "per_class": 30, "dim": 50},
        "model": {"kind": "mlp", "width": 192, "depth": 3},
        "optimizer": {"steps": 1},
        "instrument": {"drift_samples": 256, "drift_max_samples": 256, "sharpness_every": 1, "sharpness_max_iter": 5},
    },
}


def _training_peak(spec: RunSpec) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(spec.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return int(probe.stdout.strip().splitlines()[-1])


def _spec(**parts: Any) -> RunSpec:
    return RunSpec.model_validate({"device": "cpu", **parts})


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_the_memory_estimate_is_close_to_what_training_takes(case: str) -> None:
    spec = _spec(**CASES[case])
    measured, estimated = _training_peak(spec), estimate(spec).memory_bytes
    assert measured > 0 and 0.5 * measured <= estimated <= 3 * measured, (case, measured, estimate(spec).parts)


def test_the_issues_runs_are_far_beyond_any_worker() -> None:
    huge_data = estimate(_spec(dataset={"classes": 10**9, "per_class": 10**9, "dim": 10**9}))
    huge_model = estimate(_spec(model={"kind": "mlp", "width": 10**8, "depth": 10**5}))
    failed_at_run_time = estimate(_spec(dataset={"classes": 10, "per_class": 10**6, "dim": 1000}))
    assert huge_data.memory_gib > 1e15 and huge_model.parameters > 1e20
    assert failed_at_run_time.memory_gib > 74.5  # it failed with "Unable to allocate 74.5 GiB"


def test_limits_name_the_limit_and_the_estimate() -> None:
    limits = Limits(max_memory_gib=8, max_tflop=1000)
    assert limits.check(_spec()).memory_gib < 8
    with pytest.raises(TooCostly, match=r"8 GiB per run \(EOS_MAX_RUN_MEMORY_GIB\)") as caught:
        limits.check(_spec(dataset={"classes": 10, "per_class": 10**6, "dim": 1000}), "run {'seed': 1}")
    assert "run {'seed': 1} would need about" in str(caught.value)
    with pytest.raises(TooCostly, match="TFLOP per run"):
        limits.check(_spec(optimizer={"steps": 2 * 10**9}, model={"kind": "mlp", "width": 512, "depth": 4}))
    assert Limits().check(_spec(dataset={"classes": 10, "per_class": 10**6, "dim": 1000})).memory_gib > 74


def test_work_grows_with_steps_and_instruments() -> None:
    bare = {"drift_samples": 0, "sharpness_every": 0, "test_every": 0}
    base = estimate(_spec(instrument=bare))
    assert estimate(_spec(optimizer={"steps": 10000}, instrument=bare)).flops == pytest.approx(2 * base.flops)
    assert estimate(_spec()).flops > 2 * base.flops  # the drift every step and the sharpness every 10
