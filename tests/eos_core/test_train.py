"""The training loop: observer effect, determinism, huge steps, divergence, sinks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eos_core import COLUMNS, RunSpec, StopTraining, train

BASE = {
    "dataset": {"classes": 4, "per_class": 25, "dim": 8, "separation": 1.5},
    "optimizer": {"lr": 100.0, "batch_size": 8, "steps": 150},
    "instrument": {"drift_samples": 8, "drift_max_samples": 32, "sharpness_every": 5, "test_every": 10},
}


def _spec(**changes: object) -> RunSpec:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for p in parents:
            target = target.setdefault(p, {})  # type: ignore[assignment]
        target[leaf] = value
    return RunSpec.model_validate(data)


def test_trace_has_every_column_of_equal_length() -> None:
    result = train(_spec(device="cpu"))
    assert set(result.trace) == set(COLUMNS)
    lengths = {len(v) for v in result.trace.values()}
    assert lengths == {151}
    assert result.trace["step"].tolist() == list(range(151))
    assert np.isnan(result.trace["sharpness"][1]) and np.isfinite(result.trace["sharpness"][5])
    assert np.isfinite(result.trace["test_loss"][10]) and np.isnan(result.trace["test_loss"][11])
    assert result.status == "completed"


@pytest.mark.parametrize("sampler", ["with_replacement", "without_replacement", "reshuffle"])
def test_measuring_never_changes_the_trajectory(sampler: str) -> None:
    on = train(_spec(device="cpu", optimizer__sampler=sampler))
    off = train(
        _spec(
            device="cpu",
            optimizer__sampler=sampler,
            instrument__drift_samples=0,
            instrument__sharpness_every=0,
            instrument__test_every=0,
        )
    )
    assert np.isfinite(on.trace["drift"]).all() and np.isnan(off.trace["drift"]).all()
    np.testing.assert_array_equal(on.trace["loss"], off.trace["loss"])
    np.testing.assert_array_equal(on.trace["batch_loss"], off.trace["batch_loss"])
    np.testing.assert_array_equal(on.params, off.params)


def test_same_seed_same_trace_and_other_seed_differs() -> None:
    a, b = train(_spec(device="cpu")), train(_spec(device="cpu"))
    for name in ("loss", "drift", "sharpness", "stable_p"):
        np.testing.assert_array_equal(a.trace[name], b.trace[name])
    c = train(_spec(device="cpu", seed=1))
    assert not np.array_equal(a.trace["loss"], c.trace["loss"])


def test_huge_step_runs_to_completion_with_finite_loss() -> None:
    result = train(_spec(device="cpu", optimizer__lr=1e5, optimizer__steps=300, instrument__every=10))
    assert result.status == "completed"
    assert np.isfinite(result.trace["loss"]).all()
    assert result.trace["loss"][1] > result.trace["loss"][0]  # the first huge step overshoots
    # The margins outgrow float32's normal range: the loss underflows (terms below 3.3e-38 count as
    # 0, eos_core.loss) and the iterate stops moving; nothing overflows on the way.
    assert 0 <= result.trace["loss"][-1] < 1e-37
    assert result.summary["frozen_from_step"] is not None
    assert result.summary["diverged_step"] is None


def test_tiny_step_loss_decreases_monotonically_like_gradient_flow() -> None:
    result = train(
        _spec(
            device="cpu",
            dtype="float64",
            optimizer__lr=1e-3,
            optimizer__batch_size=80,
            optimizer__sampler="without_replacement",
        )
    )
    loss = result.trace["loss"]
    assert (np.diff(loss) < 0).all()
    assert np.all(result.trace["stable"] == 1) and np.all(result.trace["drift"] < 0)
    # rel_drift -> -1 as eta -> 0.
    assert np.allclose(result.trace["rel_drift"], -1, atol=1e-2)


def test_divergence_keeps_what_was_measured() -> None:
    spec = _spec(
        device="cpu",
        model__kind="mlp",
        model__width=8,
        model__depth=3,
        model__activation="relu",
        optimizer__lr=1e37,
        optimizer__steps=50,
    )
    result = train(spec)
    assert result.status == "diverged"
    trace = result.trace
    last = trace["step"][-1]
    assert not math.isfinite(trace["param_norm"][-1]) or not math.isfinite(trace["loss"][-1])
    assert np.isfinite(trace["loss"][0]) and trace["drift"][0] > 0
    assert result.summary["diverged_step"] == last
    assert len(trace["step"]) < 51


def test_sink_receives_the_whole_trace_in_chunks_and_progress_reaches_the_end() -> None:
    chunks: list[dict[str, np.ndarray]] = []
    seen: list[tuple[int, int]] = []
    spec = _spec(device="cpu", instrument__chunk_rows=32)
    result = train(spec, sink=chunks.append, progress=lambda s, n: seen.append((s, n)))
    assert len(chunks) >= 4
    for name in COLUMNS:
        np.testing.assert_array_equal(np.concatenate([c[name] for c in chunks]), result.trace[name])
    assert seen[-1] == (150, 150)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_sink_can_stop_the_run() -> None:
    def stop_after_two(chunk: dict[str, np.ndarray]) -> None:
        if chunk["step"][0] >= 32:
            raise StopTraining

    result = train(_spec(device="cpu", instrument__chunk_rows=32), sink=stop_after_two)
    assert result.status == "stopped"
    assert 32 < len(result.trace["step"]) < 151


def test_a_stopped_run_keeps_every_row_it_recorded() -> None:
    """Stopped before its first chunk closed, the result still holds every measured step."""
    received: list[int] = []

    def stop_at_ten(step: int, total: int) -> None:
        if step >= 10:
            raise StopTraining

    spec = _spec(device="cpu", optimizer__steps=400, instrument__chunk_rows=256)
    result = train(spec, sink=lambda chunk: received.extend(chunk["step"].tolist()), progress=stop_at_ten)
    assert result.status == "stopped" and received == []
    np.testing.assert_array_equal(result.trace["step"], np.arange(10))  # steps 0..9; the 10th iterate is unmeasured
    assert np.isfinite(result.trace["batch_loss"]).all()  # each kept row is complete
    assert result.summary["last_step"] == 9


def test_two_layer_uses_width_rescaled_step() -> None:
    spec = _spec(device="cpu", model__kind="two_layer", model__width=10, optimizer__lr=2.0, optimizer__steps=5)
    result = train(spec)
    assert result.summary["lr_effective"] == 20.0 and result.summary["lr_scaling"] == "width"
    np.testing.assert_allclose(result.trace["eta_loss"], 20.0 * result.trace["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_float64() -> None:
    cpu = train(_spec(device="cpu", dtype="float64"))
    gpu = train(_spec(device="cuda", dtype="float64"))
    np.testing.assert_allclose(gpu.trace["loss"], cpu.trace["loss"], rtol=1e-7)
    np.testing.assert_allclose(gpu.trace["sharpness"], cpu.trace["sharpness"], rtol=1e-5)
    single = train(_spec(device="cuda", dtype="float32"))
    assert single.status == "completed" and np.isfinite(single.trace["loss"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_full_batch_drift_is_exact_and_measuring_keeps_the_loss() -> None:
    gd: dict[str, object] = {
        "device": "cuda",
        "dtype": "float64",
        "optimizer__batch_size": 80,
        "optimizer__sampler": "without_replacement",
        "optimizer__lr": 500.0,
        "optimizer__steps": 40,
    }
    trace = train(_spec(**gd)).trace
    np.testing.assert_allclose(trace["drift"][:-1], np.diff(trace["loss"]), rtol=1e-9, atol=1e-13)
    off = train(_spec(**gd, instrument__drift_samples=0, instrument__sharpness_every=0))
    np.testing.assert_allclose(off.trace["loss"], trace["loss"], rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tiny_losses_in_float32() -> None:
    from eos_core.loss import per_sample_loss

    margin = torch.linspace(23, 69, 50, dtype=torch.float64)
    z = torch.zeros(50, 3, dtype=torch.float64)
    z[:, 0] = margin
    y = torch.zeros(50, dtype=torch.long)
    exact = torch.log1p(2 * torch.exp(-margin))
    got = per_sample_loss(z.float().cuda(), y.cuda()).double().cpu()
    assert (got > 0).all()
    assert ((got - exact).abs() / exact).max() < 1e-5


def test_recorder_grows_instead_of_allocating_every_step_up_front() -> None:
    from eos_core.trace import TraceRecorder

    recorder = TraceRecorder(capacity=10**12, chunk_rows=256, sink=None)
    assert len(recorder.columns["loss"]) <= 65536
    for step in range(70000):
        recorder.set(recorder.new_row(step), loss=float(step))
    result = recorder.result()
    np.testing.assert_array_equal(result["step"], np.arange(70000))
    np.testing.assert_array_equal(result["loss"], np.arange(70000.0))
    assert np.isnan(result["drift"]).all()


def test_recorder_chunks_and_result_are_copies_of_its_rows() -> None:
    from eos_core.trace import METRICS, TraceRecorder

    chunks: list[dict[str, np.ndarray]] = []
    recorder = TraceRecorder(capacity=3, chunk_rows=2, sink=chunks.append)  # grows past its capacity
    for step in range(7):
        recorder.set(recorder.new_row(10 * step), loss=float(step), sharpness=2.0 * step)
        recorder.flush()
    recorder.flush(force=True)
    result = recorder.result()
    recorder.set(0, loss=-1.0)  # neither the result nor a chunk sees a later write
    assert list(result) == [*METRICS, "step"] and [len(c["step"]) for c in chunks] == [2, 2, 2, 1]
    for name in result:
        np.testing.assert_array_equal(np.concatenate([c[name] for c in chunks]), result[name], err_msg=name)
    np.testing.assert_array_equal(result["step"], np.arange(0, 70, 10))
    np.testing.assert_array_equal(result["loss"], np.arange(7.0))
    np.testing.assert_array_equal(result["sharpness"], 2.0 * np.arange(7))
    assert np.isnan(result["drift"]).all() and result["step"].dtype == np.int64


def test_each_instrument_draws_from_its_own_stream() -> None:
    """Turning sharpness off leaves every drift value as it was, and the reverse."""
    both = train(_spec(device="cpu", optimizer__steps=40)).trace
    no_sharpness = train(_spec(device="cpu", optimizer__steps=40, instrument__sharpness_every=0)).trace
    no_drift = train(_spec(device="cpu", optimizer__steps=40, instrument__drift_samples=0)).trace
    for name in ("drift", "drift_se", "drift_samples_used", "stable_p", "stable"):
        np.testing.assert_array_equal(no_sharpness[name], both[name], err_msg=name)
    for name in ("sharpness", "hvps", "batch_sharpness"):
        np.testing.assert_array_equal(no_drift[name], both[name], err_msg=name)
    assert np.isfinite(both["quad_drift"]).any() and not np.isfinite(no_drift["quad_drift"]).any()


def test_stable_is_the_three_valued_verdict_at_the_sequential_level() -> None:
    """8 batches doubling to 32: three looks, so each decides at 1 - 0.05 / 3 (Bonferroni)."""
    trace = train(_spec(device="cpu", optimizer__steps=60, instrument__sharpness_every=0)).trace
    p, stable = trace["stable_p"], trace["stable"]
    level = 1 - 0.05 / 3
    assert set(np.unique(stable[np.isfinite(stable)])) <= {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(stable == 1.0, p >= level)
    np.testing.assert_array_equal(stable == 0.0, p <= 1 - level)
    np.testing.assert_array_equal(stable == 0.5, (p > 1 - level) & (p < level))
    assert (stable == 0.5).any() and (stable != 0.5).any()


def test_test_metrics_are_measured_at_the_final_step() -> None:
    """30 steps with test_every 100: the final row still carries the test loss and accuracy."""
    trace = train(_spec(device="cpu", optimizer__steps=30, instrument__test_every=100)).trace
    assert trace["step"][-1] == 30 and np.isfinite(trace["test_loss"][-1]) and np.isfinite(trace["test_acc"][-1])
    assert np.isfinite(trace["test_acc"]).sum() == 2  # step 0 and the final step


def test_quad_drift_with_an_eval_subset_matches_a_dense_hessian() -> None:
    """-eta <grad L_eval, grad L_train> + eta^2/2 E_i[g_i^T H_eval g_i], B = 1 enumerated, float64."""
    from torch.func import grad, hessian

    from eos_core.data import load_dataset
    from eos_core.training import _seeds, build_objective

    spec = _spec(
        device="cpu",
        dtype="float64",
        optimizer__steps=1,
        optimizer__batch_size=1,
        optimizer__lr=3.0,
        instrument__eval_subset=20,
        instrument__sharpness_every=1,
        instrument__drift_max_samples=256,  # B = 1 on the 48 training points is enumerated,
        dataset__per_class=15,  # and all 48 batch gradients enter quad_drift (at most 64 do)
    )
    trace = train(spec).trace
    obj = build_objective(spec, load_dataset(spec.dataset, spec.seed), torch.device("cpu"), _seeds(spec.seed)[3])
    theta = obj.model.init(torch.Generator().manual_seed(_seeds(spec.seed)[0]), torch.float64)
    assert obj.x_eval.shape[0] == 20 < obj.x_train.shape[0]
    h = hessian(obj.eval_loss)(theta)
    g_eval = grad(obj.eval_loss)(theta)
    per_example = [
        grad(lambda th, i=i: obj.loss_on(th, obj.x_train[i : i + 1], obj.y_train[i : i + 1]))(theta)
        for i in range(len(obj.x_train))
    ]
    g_train = torch.stack(per_example).mean(0)
    curvature = torch.stack([g @ h @ g for g in per_example]).mean()
    expected = -3.0 * float(g_eval @ g_train) + 0.5 * 9.0 * float(curvature)
    assert trace["drift_se"][0] == 0  # B = 1 on this set is enumerated: the weights are exact
    np.testing.assert_allclose(trace["quad_drift"][0], expected, rtol=1e-9)


def test_a_large_drift_budget_on_a_large_set_samples_instead_of_failing() -> None:
    """More distinct batches than can be enumerated, fewer than the budget: sample, do not crash."""
    spec = _spec(
        device="cpu",
        optimizer__steps=2,
        optimizer__batch_size=1,
        dataset__per_class=1600,  # 5,120 training points: more than MAX_EXACT_BATCHES
        instrument__drift_max_samples=8192,
        instrument__sharpness_every=0,
    )
    trace = train(spec).trace
    assert np.all(trace["drift_se"][np.isfinite(trace["drift"])] > 0)
