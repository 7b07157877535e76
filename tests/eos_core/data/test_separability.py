"""check_separable: the LP feasibility check and its margin estimate, against independent answers.

The multiclass margin of a sample is

    gamma* = max_W  min_{i, j != y_i} <w_{y_i} - w_j, x_i> / ||W||_F,

equivalently gamma* = 1 / ||W°||_F with W° = argmin ||W||_F subject to <w_{y_i} - w_j, x_i> >= 1. The estimate
of check_separable is the margin of one feasible W, so it must satisfy 0 < estimate <= gamma*.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from eos_core.data import separability
from eos_core.data.separability import check_separable


def constraint_matrix(x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Rows a_{ij} with <a_{ij}, vec(W)> = <w_{y_i} - w_j, x_i> for every i and j != y_i (W row-major, k x d)."""
    n, d = x.shape
    rows = []
    for i in range(n):
        for j in range(classes):
            if j != y[i]:
                row = np.zeros((classes, d))
                row[y[i]] += x[i]
                row[j] -= x[i]
                rows.append(row.ravel())
    return np.asarray(rows)


def margin_of(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """min_{i, j != y_i} <w_{y_i} - w_j, x_i> / ||W||_F for one W."""
    scores = x @ w.T
    own = scores[np.arange(len(x)), y].copy()
    scores[np.arange(len(x)), y] = -np.inf
    return float((own - scores.max(axis=1)).min() / np.linalg.norm(w))


def margin_bounds(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[float, float]:
    """(lower, upper) with lower <= gamma* <= upper, from the dual of min ||W||^2 / 2 s.t. A vec(W) >= 1.

    Weak duality: for any alpha >= 0, D(alpha) = sum(alpha) - ||A^T alpha||^2 / 2 <= ||W°||^2 / 2, so
    gamma* = 1 / ||W°|| <= 1 / sqrt(2 D(alpha)) whatever the solver returns. The primal W = A^T alpha is some
    matrix, and its margin is a lower bound.
    """
    a = constraint_matrix(x, y, classes)

    def negative_dual(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        v = a.T @ alpha
        return float(0.5 * v @ v - alpha.sum()), a @ v - 1.0

    start = np.full(len(a), 1e-3)
    result = minimize(
        negative_dual,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * len(a),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    dual = -float(result.fun)
    assert dual > 0
    upper = 1.0 / math.sqrt(2.0 * dual)
    lower = margin_of((a.T @ result.x).reshape(classes, x.shape[1]), x, y)
    return lower, upper


def pair_bound(x: np.ndarray, y: np.ndarray) -> float:
    """gamma* <= min over differently labelled pairs of ||x_a - x_b|| / sqrt(2).

    Adding the constraints of (a, j=y_b) and (b, j=y_a): <w_{y_a} - w_{y_b}, x_a - x_b> >= 2 m, and
    ||w_{y_a} - w_{y_b}|| <= sqrt(2) ||W||_F, so m / ||W||_F <= ||x_a - x_b|| / sqrt(2).
    """
    best = math.inf
    for a in range(len(x)):
        for b in range(len(x)):
            if y[a] != y[b]:
                best = min(best, float(np.linalg.norm(x[a] - x[b])) / math.sqrt(2))
    return best


def clustered_sample(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Three tight clusters around 4 e_c in R^3: separable by W = I with a wide margin."""
    rng = np.random.default_rng(seed)
    k, per = 3, 8
    y = np.repeat(np.arange(k), per)
    x = 4.0 * np.eye(k)[y] + 0.3 * rng.standard_normal((k * per, k))
    return x, y, k


@pytest.mark.parametrize("seed", [0, 1])
def test_separable_clusters_give_a_valid_positive_margin(seed: int) -> None:
    x, y, k = clustered_sample(seed)
    assert margin_of(np.eye(k), x, y) > 0  # the sample really is separable
    result = check_separable(x, y, k)
    assert result.separable is True
    assert result.margin is not None and result.margin > 0
    lower, upper = margin_bounds(x, y, k)
    assert lower == pytest.approx(upper, rel=1e-4)  # the independent solve is tight
    assert result.margin <= upper * (1 + 1e-9)
    assert result.margin <= pair_bound(x, y) * (1 + 1e-9)
    # The LP minimises max |W_ab|, so ||W_LP||_F <= sqrt(k d) ||W°||_max <= sqrt(k d) / gamma*.
    assert result.margin >= 0.99 * lower / math.sqrt(k * x.shape[1])
    assert result.note.startswith("LP feasible")


def test_two_points_at_plus_minus_e1_margin_is_sqrt2() -> None:
    # x_1 = e1 (class 0), x_2 = -e1 (class 1). Both constraints read <u, e1> >= m with u = w_0 - w_1, and
    # ||W||_F >= ||u|| / sqrt(2) (equality at w_0 = -w_1 = u / 2), so m / ||W||_F <= sqrt(2) <u, e1> / ||u||
    # <= sqrt(2), attained by w_0 = e1 / 2, w_1 = -e1 / 2: gamma* = sqrt(2).
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    y = np.array([0, 1])
    true_margin = math.sqrt(2)
    assert margin_of(np.array([[0.5, 0.0], [-0.5, 0.0]]), x, y) == pytest.approx(true_margin)
    lower, upper = margin_bounds(x, y, 2)
    assert lower == pytest.approx(true_margin, rel=1e-6) and upper == pytest.approx(true_margin, rel=1e-6)
    result = check_separable(x, y, 2)
    assert result.separable is True
    assert result.margin is not None
    assert 0 < result.margin <= true_margin + 1e-9
    assert result.margin >= true_margin / 2 - 1e-9  # sqrt(k d) = 2, see the clustered test


@pytest.mark.parametrize("k", [2, 3, 4])
def test_orthonormal_simplex_margin(k: int) -> None:
    # x_c = e_c in R^k with label c. Summing the k(k-1) constraints <w_c - w_j, e_c> >= m gives
    # <W, k I - 1 1^T> >= k (k-1) m, and ||k I - 1 1^T||_F = k sqrt(k-1), so by Cauchy-Schwarz
    # m / ||W||_F <= 1 / sqrt(k-1); W = I - 1 1^T / k attains it: gamma* = 1 / sqrt(k-1).
    x = np.eye(k)
    y = np.arange(k)
    true_margin = 1 / math.sqrt(k - 1)
    assert margin_of(np.eye(k) - np.ones((k, k)) / k, x, y) == pytest.approx(true_margin)
    result = check_separable(x, y, k)
    assert result.separable is True
    assert result.margin is not None
    assert 0 < result.margin <= true_margin + 1e-9
    assert result.margin >= true_margin / k - 1e-9


def test_xor_labels_are_not_separable() -> None:
    # No bias: x and -x carry the same label, so <u, x> >= 1 and <u, -x> >= 1 cannot both hold.
    x = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    result = check_separable(x, y, 2)
    assert result.separable is False
    assert result.margin is None
    assert "infeasible" in result.note


def test_identical_points_with_different_labels_are_not_separable() -> None:
    x, y, k = clustered_sample(2)
    x = np.vstack([x, x[:1]])
    y = np.concatenate([y, [(y[0] + 1) % k]])
    result = check_separable(x, y, k)
    assert result.separable is False
    assert result.as_dict() == {
        "separable": False,
        "margin_estimate": None,
        "separability_note": result.note,
    }


def test_overlapping_gaussians_are_not_separable() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 2))
    y = rng.integers(0, 2, size=60)
    assert check_separable(x, y, 2).separable is False


def test_large_problems_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, k = clustered_sample(0)
    monkeypatch.setattr(separability, "MAX_NONZEROS", 10)
    result = check_separable(x, y, k)
    assert result.separable is None and result.margin is None
    assert result.note.startswith("not checked")
    assert result.as_dict()["separable"] is None
