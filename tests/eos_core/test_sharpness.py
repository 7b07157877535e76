"""Lanczos against dense Hessians (float64, torch.linalg.eigvalsh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import hessian

from eos_core import RunSpec, train
from eos_core.data import load_dataset
from eos_core.sharpness import SharpnessTracker, lanczos_top
from eos_core.stack import Stack
from eos_core.training import build_objective

SMALL_DATA = {"kind": "gaussian_mixture", "classes": 3, "per_class": 10, "dim": 4, "separation": 1.0}
MODELS = {
    "linear": {"kind": "linear"},
    "two_layer": {"kind": "two_layer", "width": 6, "activation": "leaky_softplus"},
    "mlp": {"kind": "mlp", "width": 5, "depth": 3, "activation": "gelu"},
    "mlp_huber": {"kind": "mlp", "width": 5, "depth": 2, "activation": "leaky_huberized_relu", "leak": 0.3},
}


def _objective(model: dict[str, object], seed: int = 0):  # type: ignore[no-untyped-def]
    spec = RunSpec.model_validate(
        {
            "seed": seed,
            "dtype": "float64",
            "device": "cpu",
            "dataset": SMALL_DATA,
            "model": model,
            "optimizer": {"batch_size": 4},
        }
    )
    data = load_dataset(spec.dataset, seed)
    obj = build_objective(spec, data, torch.device("cpu"), 0)
    theta = torch.randn(obj.model.n_params, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    return obj, theta


@pytest.mark.parametrize("name", list(MODELS))
def test_lanczos_matches_dense_hessian(name: str) -> None:
    obj, theta = _objective(MODELS[name])
    dense = hessian(obj.eval_loss)(theta)
    assert torch.allclose(dense, dense.T, atol=1e-10)
    exact = torch.linalg.eigvalsh(dense)[-1].item()
    start = torch.randn(theta.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pair = lanczos_top(obj.eval_hvp(theta), start, tol=1e-8, max_iter=200)
    assert abs(pair.value - exact) / abs(exact) < 1e-4
    # The reported residual is the true ||H v - lambda v||.
    true_residual = torch.linalg.vector_norm(dense @ pair.vector - pair.value * pair.vector).item()
    assert abs(true_residual - pair.residual) < 1e-8 + 1e-3 * true_residual
    assert pair.products <= theta.numel()


def test_algebraically_largest_not_largest_magnitude() -> None:
    eigen = torch.tensor([-10.0, -3.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    matrix = q @ torch.diag(eigen) @ q.T
    pair = lanczos_top(lambda v: matrix @ v, torch.ones(5, dtype=torch.float64), tol=1e-12)
    assert abs(pair.value - 2.0) < 1e-10


def test_indefinite_network_hessian_top_eigenvalue() -> None:
    # At a random point an MLP's Hessian is indefinite; the solver must still return the top.
    obj, theta = _objective(MODELS["mlp"], seed=4)
    evals = torch.linalg.eigvalsh(hessian(obj.eval_loss)(theta))
    assert evals[0] < 0 < evals[-1]
    start = torch.randn(theta.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pair = lanczos_top(obj.eval_hvp(theta), start, tol=1e-8, max_iter=200)
    assert abs(pair.value - evals[-1].item()) / evals[-1].item() < 1e-4


def test_warm_start_spends_fewer_products() -> None:
    obj, theta = _objective(MODELS["two_layer"])
    tracker = SharpnessTracker(tol=1e-4, max_iter=200, generator=torch.Generator().manual_seed(0))
    first = tracker(obj.eval_hvp(theta), theta)
    nearby = theta + 1e-3 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    warm = tracker(obj.eval_hvp(nearby), nearby)
    exact = torch.linalg.eigvalsh(hessian(obj.eval_loss)(nearby))[-1].item()
    assert abs(warm.value - exact) / exact < 1e-4
    assert warm.products < first.products
    assert warm.products <= 8


def test_linear_sharpness_bounded_by_twice_loss_times_r_squared() -> None:
    spec = RunSpec.model_validate(
        {
            "dtype": "float64",
            "device": "cpu",
            "dataset": {"classes": 4, "per_class": 20, "dim": 6, "separation": 1.5},
            "optimizer": {"lr": 50.0, "batch_size": 4, "steps": 200},
            "instrument": {"sharpness_every": 1, "drift_samples": 0, "test_every": 0},
        }
    )
    result = train(spec)
    r = result.dataset_info["R"]
    sharp, loss = result.trace["sharpness"], result.trace["loss"]
    assert np.isfinite(sharp).all() and len(sharp) == 201
    assert (sharp <= 2 * loss * r**2 * (1 + 1e-9)).all()
    assert (sharp > 0).all()


def test_warm_start_still_finds_a_top_eigenvalue_that_overtook_the_previous_one() -> None:
    # The previous eigenvector is e2; the top direction e1 is (almost) absent from it.
    matrix = torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.1], dtype=torch.float64))
    tracker = SharpnessTracker(tol=1e-4, max_iter=50, generator=torch.Generator().manual_seed(0))
    tracker.previous = torch.tensor([1e-5, 1.0, 0.0, 0.0], dtype=torch.float64)
    pair = tracker(lambda v: matrix @ v, torch.zeros(4, dtype=torch.float64))
    assert abs(pair.value - 2.0) < 1e-8
    # Without the safeguards a plain warm start stops at the second eigenvalue.
    plain = lanczos_top(lambda v: matrix @ v, torch.tensor([1e-5, 1.0, 0.0, 0.0], dtype=torch.float64), tol=1e-4)
    assert abs(plain.value - 1.0) < 1e-3


def test_batch_sharpness_and_quadratic_forms_survive_tiny_float32_losses() -> None:
    # A separating linear model scaled up until the loss is ~1e-20: ||g||^2 ~ 1e-40 underflows in float32.
    base = {
        "device": "cpu",
        "dataset": {"classes": 2, "per_class": 10, "dim": 10, "separation": 4.0},
        "optimizer": {"batch_size": 16, "lr": 50.0, "steps": 300, "sampler": "without_replacement"},
        "instrument": {"every": 300, "drift_samples": 0, "sharpness_every": 0, "test_every": 0},
    }
    fitted = train(RunSpec.model_validate({**base, "dtype": "float64"}))
    assert fitted.summary["final_acc"] == 1.0
    results = {}
    stacked = {}
    for dtype in ("float32", "float64"):
        spec = RunSpec.model_validate({**base, "dtype": dtype})
        obj = build_objective(spec, load_dataset(spec.dataset, 0), torch.device("cpu"), 0)
        theta64 = torch.as_tensor(fitted.params, dtype=torch.float64)
        logits = obj.model.logits(theta64, obj.x_train.double())
        margin = float(
            (logits[torch.arange(len(logits)), obj.y_train] - logits[torch.arange(len(logits)), 1 - obj.y_train]).min()
        )
        theta = (theta64 * (46.0 / margin)).to(obj.x_train.dtype)  # smallest margin 46: l ~ 1e-20
        batches = torch.arange(8).reshape(2, 4)
        g = obj.batch_grads(batches)(theta)
        results[dtype] = (
            float(obj.eval_loss(theta)),
            obj.batch_sharpness_terms(theta, batches).double(),
            obj.eval_quadratic_forms(theta, g),
        )
        # The stacked objective the training loop uses (a slice of one) keeps the same scaling.
        stack, row = Stack([obj]), torch.zeros(1, dtype=torch.long)
        stacked[dtype] = (
            stack.batch_sharpness_terms(theta[None], row, batches[None])[0].double(),
            stack.eval_quadratic_forms(theta[None], row, g[None])[0],
        )
    loss32, sharp32, forms32 = results["float32"]
    _, sharp64, forms64 = results["float64"]
    for dtype in ("float32", "float64"):
        torch.testing.assert_close(stacked[dtype][0], sharp64, rtol=1e-3, atol=0)
        torch.testing.assert_close(stacked[dtype][1], forms64, rtol=1e-2, atol=0)
    assert 0 < loss32 < 1e-15
    assert torch.isfinite(sharp32).all() and (sharp32 > 0).all()
    torch.testing.assert_close(sharp32, sharp64, rtol=1e-3, atol=0)
    assert (forms64 > 0).all()
    torch.testing.assert_close(forms32, forms64, rtol=1e-2, atol=0)
