"""The top Hessian eigenvalue by warm-started Lanczos with full reorthogonalisation.

Returns the algebraically largest eigenvalue (not the largest in magnitude), the
residual ||H v - lambda v|| of the returned pair and the Hessian-vector products
spent. Started from the previous step's eigenvector, a slowly moving top pair
converges in a few products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

WARM_MIN_ITER = 4


@dataclass
class EigenPair:
    value: float
    vector: torch.Tensor
    residual: float
    products: int


def lanczos_top(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    tol: float = 1e-4,
    max_iter: int = 100,
    min_iter: int = 1,
) -> EigenPair:
    """Largest eigenpair of the symmetric operator `hvp`, to relative residual `tol`."""
    size = start.numel()
    steps = min(max_iter, size)
    basis = torch.empty((steps + 1, size), dtype=start.dtype, device=start.device)
    norm = torch.linalg.vector_norm(start)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("Lanczos needs a finite non-zero start vector")
    basis[0] = start / norm
    alphas: list[float] = []
    betas: list[float] = []
    value, ritz, residual = float("nan"), np.ones(1), float("inf")
    for j in range(steps):
        w = hvp(basis[j])
        alpha = torch.dot(w, basis[j])
        # Full reorthogonalisation, twice ("twice is enough"), keeps the basis orthonormal.
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(float(alpha))
        tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(tri)
        value, ritz = float(evals[-1]), evecs[:, -1]
        # H V s - value V s = beta * s_last * v_{j+1}: the residual without another product.
        residual = abs(beta * ritz[-1])
        scale = max(abs(value), float(np.abs(evals).max()), 1e-30)
        if beta <= 1e-12 * scale or j + 1 == steps or (residual <= tol * scale and j + 1 >= min_iter):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    coeffs = torch.as_tensor(ritz, dtype=start.dtype, device=start.device)
    vector = coeffs @ basis[: len(ritz)]
    vector = vector / torch.linalg.vector_norm(vector)
    return EigenPair(value, vector, residual, len(alphas))


def lanczos_top_batched(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor,
    tol: float = 1e-4,
    max_iter: int = 100,
    min_iter: int = 1,
) -> list[EigenPair]:
    """lanczos_top for R independent operators at once: `hvp` maps (R, P) to (R, P), row r by H_r.

    Every run follows its own Lanczos recurrence and stops by its own test; the products of
    all runs still iterating are one call. A run that has stopped multiplies zeros meanwhile.
    """
    runs, size = starts.shape
    steps = min(max_iter, size)
    basis = torch.zeros((runs, steps + 1, size), dtype=starts.dtype, device=starts.device)
    norms = torch.linalg.vector_norm(starts, dim=1)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
        raise ValueError("Lanczos needs finite non-zero start vectors")
    basis[:, 0] = starts / norms.unsqueeze(1)
    alphas: list[list[float]] = [[] for _ in range(runs)]
    betas: list[list[float]] = [[] for _ in range(runs)]
    done: list[EigenPair | None] = [None] * runs
    active = torch.ones(runs, dtype=torch.bool)
    for j in range(steps):
        w = hvp(basis[:, j] * active.to(basis).unsqueeze(1))
        alpha = (w * basis[:, j]).sum(dim=1).tolist()
        # Full reorthogonalisation, twice ("twice is enough"), keeps each basis orthonormal.
        seen = basis[:, : j + 1]
        for _ in range(2):
            w = w - (seen.transpose(1, 2) @ (seen @ w.unsqueeze(-1))).squeeze(-1)
        beta = torch.linalg.vector_norm(w, dim=1).tolist()
        for r in range(runs):
            if done[r] is not None:
                continue
            alphas[r].append(float(alpha[r]))
            tri = np.diag(alphas[r]) + np.diag(betas[r], 1) + np.diag(betas[r], -1)
            evals, evecs = np.linalg.eigh(tri)
            value, ritz = float(evals[-1]), evecs[:, -1]
            # H V s - value V s = beta * s_last * v_{j+1}: the residual without another product.
            residual = abs(beta[r] * ritz[-1])
            scale = max(abs(value), float(np.abs(evals).max()), 1e-30)
            if beta[r] <= 1e-12 * scale or j + 1 == steps or (residual <= tol * scale and j + 1 >= min_iter):
                coeffs = torch.as_tensor(ritz, dtype=starts.dtype, device=starts.device)
                vector = coeffs @ basis[r, : len(ritz)]
                done[r] = EigenPair(value, vector / torch.linalg.vector_norm(vector), residual, len(alphas[r]))
                active[r] = False
                continue
            betas[r].append(beta[r])
            basis[r, j + 1] = w[r] / beta[r]
        if not bool(active.any()):
            break
    return [pair for pair in done if pair is not None]


class SharpnessTracker:
    """Keeps the last eigenvector to warm-start the next call."""

    def __init__(self, tol: float, max_iter: int, generator: torch.Generator) -> None:
        self.tol, self.max_iter, self.generator = tol, max_iter, generator
        self.previous: torch.Tensor | None = None

    def start(self, like: torch.Tensor) -> torch.Tensor:
        """The next call's start vector: a random one, or the previous vector plus a random part."""
        noise = torch.randn(like.shape, generator=self.generator, dtype=torch.float64).to(like)
        if self.previous is None:
            return noise
        # The previous vector plus a random part well above the tolerance: a start with
        # (almost) no component along a new top eigenvector could otherwise stop at the
        # second eigenvalue with a small residual; the random part must be resolved first.
        scale = max(10 * self.tol, 1e-3) * float(torch.linalg.vector_norm(self.previous))
        return self.previous + scale * noise / torch.linalg.vector_norm(noise)

    def keep(self, pair: EigenPair) -> EigenPair:
        if torch.isfinite(pair.vector).all():
            self.previous = pair.vector
        return pair

    def __call__(self, hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor) -> EigenPair:
        # A few steps at least let a small component along a new top direction grow before
        # a converged-looking second eigenpair could stop the iteration.
        return self.keep(lanczos_top(hvp, self.start(like), self.tol, self.max_iter, min_iter=WARM_MIN_ITER))


def track_sharpness(
    trackers: list[SharpnessTracker], hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor
) -> list[EigenPair]:
    """Each tracker's next pair, for R runs at once (hvp: (R, P) -> (R, P)); trackers share tol and max_iter."""
    first = trackers[0]
    starts = torch.stack([t.start(like[r]) for r, t in enumerate(trackers)])
    pairs = lanczos_top_batched(hvp, starts, first.tol, first.max_iter, min_iter=WARM_MIN_ITER)
    return [t.keep(pair) for t, pair in zip(trackers, pairs, strict=True)]
