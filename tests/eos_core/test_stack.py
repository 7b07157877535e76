"""The stacked objective (R runs at once) against dense per-run Hessians and plain per-run gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian

from eos_core import RunSpec
from eos_core.data import load_dataset
from eos_core.loss import mean_loss
from eos_core.objective import Objective
from eos_core.sharpness import lanczos_top_batched
from eos_core.stack import Stack
from eos_core.training import build_objective

MODELS = {
    "linear": {"kind": "linear"},
    "two_layer": {"kind": "two_layer", "width": 6, "activation": "leaky_softplus"},
    "mlp": {"kind": "mlp", "width": 5, "depth": 3, "activation": "gelu"},
}
RUNS = 3


def _stack(model: dict[str, object], own_data: bool) -> tuple[Stack, list[Objective], torch.Tensor]:
    objectives = []
    for r in range(RUNS):
        spec = RunSpec.model_validate(
            {
                "dtype": "float64",
                "device": "cpu",
                "dataset": {"classes": 3, "per_class": 10, "dim": 4, "separation": 1.0},
                "model": model,
                "optimizer": {"batch_size": 4},
            }
        )
        data = load_dataset(spec.dataset, r if own_data else 0)
        objectives.append(build_objective(spec, data, torch.device("cpu"), 0))
    p = objectives[0].model.n_params
    thetas = torch.randn(RUNS, p, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return Stack(objectives), objectives, thetas


@pytest.mark.parametrize("own_data", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_stacked_curvature_equals_each_run_dense_hessian(name: str, own_data: bool) -> None:
    stack, objectives, thetas = _stack(MODELS[name], own_data)
    assert (stack.x_train.shape[0] == 1) != own_data
    rows = torch.arange(RUNS)
    dense = [hessian(o.eval_loss)(thetas[r]) for r, o in enumerate(objectives)]
    vectors = torch.randn(thetas.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products = stack.eval_hvp(thetas, rows)(vectors)
    for r in range(RUNS):
        torch.testing.assert_close(products[r], dense[r] @ vectors[r], rtol=1e-9, atol=1e-12)
    pairs = lanczos_top_batched(stack.eval_hvp(thetas, rows), vectors, tol=1e-8, max_iter=200)
    for r, pair in enumerate(pairs):
        exact = torch.linalg.eigvalsh(dense[r])[-1].item()
        assert abs(pair.value - exact) <= 1e-4 * abs(exact)
        true_residual = torch.linalg.vector_norm(dense[r] @ pair.vector - pair.value * pair.vector).item()
        assert abs(true_residual - pair.residual) < 1e-8 + 1e-3 * true_residual
    many = torch.randn(RUNS, 4, thetas.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    forms = stack.eval_quadratic_forms(thetas, rows, many)
    for r in range(RUNS):
        expected = torch.einsum("kp,pq,kq->k", many[r], dense[r], many[r])
        torch.testing.assert_close(forms[r], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_stacked_batch_gradients_and_batch_sharpness_equal_per_batch_autograd(name: str) -> None:
    stack, objectives, thetas = _stack(MODELS[name], own_data=True)
    rows = torch.arange(RUNS)
    batches = torch.randint(24, (RUNS, 2, 4), generator=torch.Generator().manual_seed(3))
    items = thetas.unsqueeze(1).expand(RUNS, 2, -1).reshape(RUNS * 2, -1)
    g, losses = stack.batch_grads(items, rows.repeat_interleave(2), batches.reshape(RUNS * 2, 4), with_loss=True)
    terms = stack.batch_sharpness_terms(thetas, rows, batches)
    assert losses is not None
    for r, o in enumerate(objectives):
        for k in range(2):
            idx = batches[r, k]

            def loss(th: torch.Tensor, idx: torch.Tensor = idx, o: Objective = o) -> torch.Tensor:
                return mean_loss(o.model.logits(th, o.x_train[idx]), o.y_train[idx])

            expected = grad(loss)(thetas[r])
            torch.testing.assert_close(g[2 * r + k], expected, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(losses[2 * r + k], loss(thetas[r]), rtol=1e-12, atol=0)
            u = expected / torch.linalg.vector_norm(expected)
            sharp = u @ hessian(loss)(thetas[r]) @ u
            torch.testing.assert_close(terms[r, k], sharp, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("runs", [1, RUNS])
@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_step_is_theta_minus_lr_times_each_batch_gradient(
    name: str, runs: int, wide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused / per-layer step against torch.func's gradient of each run's batch loss, with
    unequal step sizes; `wide`: a stack too wide for one graph, stepped in pieces."""
    if wide:
        monkeypatch.setattr("eos_core.stack.VMAP_BUDGET", 1)
    _, objectives, thetas = _stack(MODELS[name], own_data=True)
    stack = Stack(objectives[:runs])
    thetas = thetas[:runs].clone()
    rows = torch.arange(runs)
    lr = torch.tensor([0.3, 2.0, 7.5][:runs], dtype=torch.float64)
    idx = torch.randint(24, (runs, 4), generator=torch.Generator().manual_seed(8))
    before = thetas.clone()
    g, losses = stack.sgd_step(thetas, rows, idx, lr.unsqueeze(1), record=True)
    assert g is not None and losses is not None
    for r, o in enumerate(objectives[:runs]):

        def loss(th: torch.Tensor, b: torch.Tensor = idx[r], o: Objective = o) -> torch.Tensor:
            return mean_loss(o.model.logits(th, o.x_train[b]), o.y_train[b])

        expected = grad(loss)(before[r])
        torch.testing.assert_close(g[r], expected, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(losses[r], loss(before[r]), rtol=1e-12, atol=0)
        torch.testing.assert_close(thetas[r], before[r] - lr[r] * expected, rtol=1e-12, atol=1e-13)
    again = before.clone()
    stack.sgd_step(again, rows, idx, lr)  # unrecorded, lr as (R,): the same update, bit for bit
    assert torch.equal(again, thetas)


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_state_accuracy_and_margin_are_argmax_and_the_runner_up_gap(name: str) -> None:
    """Accuracy as argmax == label (the first of tied classes, as at a zero start) and the smallest
    margin z_y - max_{j != y} z_j, against a plain computation on each run's logits."""
    stack, objectives, thetas = _stack(MODELS[name], own_data=True)
    thetas[0] = 0.0  # every logit of run 0 tied (the linear model's start)
    state = stack.eval_state(thetas, torch.arange(RUNS))
    for r, o in enumerate(objectives):
        logits = o.model.logits(thetas[r], o.x_eval)
        expected_acc = (logits.argmax(dim=-1) == o.y_eval).double().mean()
        torch.testing.assert_close(state["acc"][r], expected_acc, rtol=0, atol=0)
        z_y = logits.gather(1, o.y_eval.unsqueeze(1)).squeeze(1)
        others = logits.scatter(1, o.y_eval.unsqueeze(1), float("-inf")).amax(dim=1)
        torch.testing.assert_close(state["margin"][r], (z_y - others).min(), rtol=1e-12, atol=1e-12)
