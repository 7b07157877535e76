"""Drift: enumeration against a plain loop, Monte Carlo against enumeration, GD's exact drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eos_core import RunSpec, train
from eos_core.data import load_dataset
from eos_core.drift import DriftEstimator, control_variate_mean
from eos_core.sampling import BatchSampler, draw_weighted_runs
from eos_core.training import build_objective

DATA = {"kind": "gaussian_mixture", "classes": 3, "per_class": 15, "dim": 5, "separation": 1.0}


def _setup(lr: float, batch_size: int, sampler: str = "with_replacement", dtype: str = "float64"):  # type: ignore[no-untyped-def]
    spec = RunSpec.model_validate(
        {
            "dtype": dtype,
            "device": "cpu",
            "dataset": DATA,
            "optimizer": {"lr": lr, "batch_size": batch_size, "sampler": sampler},
        }
    )
    data = load_dataset(spec.dataset, 0)
    obj = build_objective(spec, data, torch.device("cpu"), 0)
    sampler_ = BatchSampler(len(data.x_train), batch_size, sampler, torch.Generator().manual_seed(0))
    theta = 2 * torch.randn(obj.model.n_params, generator=torch.Generator().manual_seed(1), dtype=obj.x_train.dtype)
    return obj, sampler_, theta


def _state(obj, theta):  # type: ignore[no-untyped-def]
    st = obj.eval_state(theta)
    return st["loss"], st["grad"]


def test_exact_b1_drift_equals_plain_loop() -> None:
    obj, sampler, theta = _setup(lr=5.0, batch_size=1)
    est = DriftEstimator(obj, sampler, torch.Generator().manual_seed(2), "exact", 256, 0.95)
    loss, grad = _state(obj, theta)
    result = est(theta, grad)
    # Independent computation: one autograd step per training point, no vmap.
    after = []
    for i in range(len(obj.x_train)):
        th = theta.clone().requires_grad_(True)
        li = obj.loss_on(th, obj.x_train[i : i + 1], obj.y_train[i : i + 1])
        (g,) = torch.autograd.grad(li, th)
        after.append(obj.eval_loss(theta - obj.lr * g).item())
    expected = float(np.mean(after)) - loss.item()
    assert result.exact and result.se == 0.0 and result.samples == len(obj.x_train)
    assert abs(result.drift - expected) < 1e-12 * max(1.0, abs(expected))
    assert result.stable_p == (1.0 if expected <= 0 else 0.0)


def test_monte_carlo_b1_within_four_standard_errors_of_exact() -> None:
    obj, sampler, theta = _setup(lr=5.0, batch_size=1)
    _, grad = _state(obj, theta)
    exact = DriftEstimator(obj, sampler, torch.Generator().manual_seed(2), "exact", 256, 0.95)(theta, grad)
    for seed in range(5):
        # 32 batches, fewer than the 36 distinct ones, so it must sample.
        mc = DriftEstimator(obj, sampler, torch.Generator().manual_seed(seed), 32, 32, 0.95)
        assert not mc.exact
        estimate = mc(theta, grad)
        assert estimate.se > 0
        assert abs(estimate.drift - exact.drift) <= 4 * estimate.se, (seed, estimate, exact.drift)


def test_full_batch_drift_is_next_loss_minus_this_one() -> None:
    spec = RunSpec.model_validate(
        {
            "dtype": "float64",
            "device": "cpu",
            "dataset": DATA,
            "optimizer": {"lr": 1000.0, "batch_size": 36, "sampler": "without_replacement", "steps": 60},
            "instrument": {"drift_samples": 16, "sharpness_every": 0, "test_every": 0},
        }
    )
    trace = train(spec).trace
    assert np.all(trace["drift_se"] == 0) and np.all(trace["drift_samples_used"] == 1)
    step_change = np.diff(trace["loss"])
    np.testing.assert_allclose(trace["drift"][:-1], step_change, rtol=1e-10, atol=1e-14)
    assert (step_change > 0).any() and (step_change < 0).any()  # a large step: both signs occur
    np.testing.assert_array_equal(trace["stable"][:-1], (step_change <= 0).astype(float))


def test_control_variate_reduces_variance_at_small_steps() -> None:
    obj, sampler, theta = _setup(lr=0.05, batch_size=4)
    _, grad = _state(obj, theta)
    est = DriftEstimator(obj, sampler, torch.Generator().manual_seed(3), 64, 64, 0.95)
    result = est(theta, grad)
    # At a small step the drift is nearly linear in g_b, so the control explains most of it.
    assert result.cv_variance < 0.01 * result.raw_variance


def test_control_variate_mean_is_unbiased_on_a_known_model() -> None:
    # Y = 2 + 3 C + noise with E[C] = 0 known: the estimate is near 2 with a small error.
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(4000, generator=gen, dtype=torch.float64)
    y = 2 + 3 * c + 0.1 * torch.randn(4000, generator=gen, dtype=torch.float64)
    mean, se, raw, cv = control_variate_mean(y, c, 0.0)
    assert abs(mean - 2) < 4 * se and se < 0.01
    assert cv < raw / 100


def test_jackknife_error_matches_explicit_leave_one_out() -> None:
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(20, generator=gen, dtype=torch.float64)
    c = torch.randn(20, generator=gen, dtype=torch.float64) + 0.3 * y

    def estimate(yy: torch.Tensor, cc: torch.Tensor) -> float:
        centred = cc - cc.mean()
        beta = float(((yy - yy.mean()) * centred).sum() / (centred**2).sum())
        return float((yy - beta * (cc - 0.1)).mean())

    mean, se, _, _ = control_variate_mean(y, c, 0.1)
    loo = np.array([estimate(torch.cat([y[:i], y[i + 1 :]]), torch.cat([c[:i], c[i + 1 :]])) for i in range(20)])
    assert abs(mean - estimate(y, c)) < 1e-12
    assert abs(se - np.sqrt(19 / 20 * ((loo - loo.mean()) ** 2).sum())) < 1e-12


def test_sequential_sampling_draws_more_when_the_sign_is_unclear() -> None:
    obj, sampler, theta = _setup(lr=30.0, batch_size=4)
    _, grad = _state(obj, theta)
    result = DriftEstimator(obj, sampler, torch.Generator().manual_seed(0), 4, 256, 0.95)(theta, grad)
    # B=4 of 36 points: far too many batches to enumerate, so this samples.
    decided = abs(result.drift) > 1.96 * result.se
    assert decided or result.samples == 256
    assert result.samples in (4, 8, 16, 32, 64, 128, 256)
    assert 0.0 <= result.stable_p <= 1.0
    # stable_p is the normal probability that D <= 0 given the estimate and its error.
    from scipy.stats import norm

    assert abs(result.stable_p - norm.cdf(-result.drift / result.se)) < 1e-12


def test_b1_is_enumerated_by_default_when_the_budget_covers_it() -> None:
    obj, sampler, _ = _setup(lr=5.0, batch_size=1)  # n = 36 distinct batches, budget 256
    assert DriftEstimator(obj, sampler, torch.Generator(), 32, 256, 0.95).exact
    assert not DriftEstimator(obj, sampler, torch.Generator(), 16, 32, 0.95).exact


def test_multiset_enumeration_with_replacement_equals_every_ordered_pair() -> None:
    obj, sampler, theta = _setup(lr=50.0, batch_size=2)
    loss, grad = _state(obj, theta)
    result = DriftEstimator(obj, sampler, torch.Generator(), "exact", 4096, 0.95)(theta, grad)
    n = len(obj.x_train)
    after = []
    for i in range(n):
        for j in range(n):
            g, _ = obj.batch_grad_and_loss(theta, torch.tensor([i, j]))
            after.append(obj.eval_loss(theta - obj.lr * g).item())
    expected = float(np.mean(after)) - loss.item()
    assert result.exact and result.samples == n * (n + 1) // 2
    assert abs(result.drift - expected) < 1e-11 * max(1.0, abs(expected))


def test_importance_weights_make_every_batch_count_at_its_own_probability() -> None:
    """E_Q[w 1{b}] = p(b) for each distinct batch, for both samplers, from a skewed proposal."""
    n, b, draws = 5, 2, 200_000
    proposal = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    for kind in ("with_replacement", "without_replacement"):
        sampler = BatchSampler(n, b, kind, torch.Generator().manual_seed(0))
        batches, weights = sampler.draw_weighted(draws, proposal, torch.Generator().manual_seed(1))
        assert float(weights.max()) <= 1 / (n * float(proposal.min())) + 1e-12
        keys = batches.sort(dim=1).values
        codes = keys[:, 0] * n + keys[:, 1]
        exact_batches, exact_weights = sampler.enumerate_all()
        probability = exact_weights / len(exact_batches)  # p(b) of each distinct batch
        for batch, p in zip(exact_batches.tolist(), probability.tolist(), strict=True):
            hit = (codes == batch[0] * n + batch[1]).double() * weights
            se = float(hit.std()) / math.sqrt(draws)
            assert abs(float(hit.mean()) - p) < 4 * se, (kind, batch, float(hit.mean()), p)


def test_a_sampled_verdict_is_undecided_when_the_budget_cannot_settle_it() -> None:
    """Few batches and no clear sign: stable_p stays between the confidence bounds."""
    obj, sampler, theta = _setup(lr=5.0, batch_size=1)
    _, grad = _state(obj, theta)
    estimate = DriftEstimator(obj, sampler, torch.Generator().manual_seed(0), 2, 2, 0.95, enumerate_when_few=False)(
        theta, grad
    )
    assert estimate.samples == 2 and estimate.stable_p == 0.5  # too few to estimate an error


def test_a_loss_underflowed_to_zero_is_undecided_without_spending_the_budget() -> None:
    obj, sampler, theta = _setup(lr=5.0, batch_size=4, dtype="float32")
    # Gradient descent separates this set (margin 3); scaled up, every float32 loss is exactly 0.
    theta = torch.zeros_like(theta)
    for _ in range(200):
        g, _ = obj.batch_grad_and_loss(theta, torch.arange(len(obj.x_train)))
        theta = theta - 500.0 * g
    theta = 1e4 * theta
    assert float(obj.eval_loss(theta)) == 0.0
    estimate = DriftEstimator(obj, sampler, torch.Generator().manual_seed(0), 16, 256, 0.95)(
        theta, obj.eval_state(theta)["grad"]
    )
    assert estimate.drift == 0.0 and estimate.samples == 16 and estimate.verdict == 0.5


def test_a_float32_drift_below_float32_resolution_is_enumerated_in_float64() -> None:
    """At lr 1e-6 the drift is ~1e-7 of the loss, at float32's rounding: the run goes over to float64."""
    obj32, sampler, theta = _setup(lr=1e-6, batch_size=1, dtype="float32")
    obj64, _, _ = _setup(lr=1e-6, batch_size=1, dtype="float64")
    obj64.x_train, obj64.x_eval = obj32.x_train.double(), obj32.x_eval.double()  # the same rounded data
    theta64 = theta.double()
    exact32 = DriftEstimator(obj32, sampler, torch.Generator(), "exact", 256, 0.95)(theta, _state(obj32, theta)[1])
    exact64 = DriftEstimator(obj64, sampler, torch.Generator(), "exact", 256, 0.95)(theta64, _state(obj64, theta64)[1])
    loss = float(_state(obj64, theta64)[0])
    assert abs(exact64.drift) < 1e-5 * loss  # below what float32 losses resolve
    assert abs(exact32.drift - exact64.drift) < 1e-6 * abs(exact64.drift)
    assert exact32.batch_grads.dtype == torch.float32  # quad_drift gets the run's own dtype


@pytest.mark.parametrize("kind", ["with_replacement", "without_replacement", "reshuffle"])
def test_batched_importance_draws_are_each_runs_own(kind: str) -> None:
    """draw_weighted_runs for three runs: bit for bit what each run's generator draws alone."""
    n, b, count = 12, 3, 7
    proposals = torch.rand(3, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    proposals /= proposals.sum(dim=1, keepdim=True)
    samplers = [BatchSampler(n, b, kind, torch.Generator().manual_seed(r)) for r in range(3)]
    batches, weights = draw_weighted_runs(
        samplers, count, proposals, [torch.Generator().manual_seed(10 + r) for r in range(3)]
    )
    for r, sampler in enumerate(samplers):
        alone_b, alone_w = sampler.draw_weighted(count, proposals[r], torch.Generator().manual_seed(10 + r))
        assert torch.equal(batches[r], alone_b) and torch.equal(weights[r], alone_w)
