"""Linear separability of a multiclass sample, by LP feasibility (science.md, Datasets 1).

Is there W with <w_{y_i} - w_j, x_i> >= 1 for all i and j != y_i? We solve
min t subject to those constraints and |W_ab| <= t (HiGHS). A feasible W gives a
margin estimate gamma = 1 / ||W||_F: a lower bound on the largest achievable
min_{i, j != y_i} <w_{y_i} - w_j, x_i> / ||W||_F.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

# Above this many constraint non-zeros the check is skipped (MNIST-sized problems).
MAX_NONZEROS = 20_000_000


@dataclass
class Separability:
    separable: bool | None  # None: not checked
    margin: float | None
    note: str

    def as_dict(self) -> dict[str, object]:
        return {"separable": self.separable, "margin_estimate": self.margin, "separability_note": self.note}


def check_separable(x: np.ndarray, y: np.ndarray, classes: int) -> Separability:
    n, d = x.shape
    k = classes
    nonzeros = 2 * n * (k - 1) * d
    if nonzeros > MAX_NONZEROS:
        return Separability(None, None, f"not checked: {nonzeros:,} constraint entries exceed {MAX_NONZEROS:,}")
    rows, cols, vals = [], [], []
    r = 0
    base = np.arange(d)
    for i in range(n):
        yi = int(y[i])
        for j in range(k):
            if j == yi:
                continue
            # -(w_y - w_j) . x_i <= -1
            rows.append(np.full(2 * d, r))
            cols.append(np.concatenate([yi * d + base, j * d + base]))
            vals.append(np.concatenate([-x[i], x[i]]))
            r += 1
    n_w = k * d
    a_margin = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n_w + 1))
    # |W_ab| <= t as W - t <= 0 and -W - t <= 0.
    eye = sp.identity(n_w, format="csr")
    t_col = sp.csr_matrix(-np.ones((n_w, 1)))
    a_box = sp.vstack([sp.hstack([eye, t_col]), sp.hstack([-eye, t_col])])
    a_ub = sp.vstack([a_margin, a_box]).tocsr()
    b_ub = np.concatenate([-np.ones(r), np.zeros(2 * n_w)])
    cost = np.zeros(n_w + 1)
    cost[-1] = 1.0
    bounds = [(None, None)] * n_w + [(0, None)]
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status == 2:
        return Separability(False, None, "LP infeasible: not linearly separable")
    if result.status != 0:
        return Separability(None, None, f"LP did not finish: {result.message}")
    w = result.x[:n_w].reshape(k, d)
    scores = x @ w.T
    own = scores[np.arange(n), y]
    scores[np.arange(n), y] = -np.inf
    achieved = float((own - scores.max(axis=1)).min())
    norm = float(np.linalg.norm(w))
    margin = achieved / norm if norm > 0 else None
    return Separability(True, margin, "LP feasible: linearly separable")
