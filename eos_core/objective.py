"""The training objective of one run as pure functions of its flat parameters (torch.func friendly).

The training loop computes on stacks of runs (eos_core.stack); these single-run functions are
what its tests and the calibration bank hold it against, and what the analysis tools use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, grad_and_value, jvp, vmap

from .loss import margins, mean_loss
from .models import FlatModel

# Elements of the largest intermediate a vmapped evaluation may hold at once.
VMAP_BUDGET = 2**25


@dataclass
class Objective:
    """Loss, gradients and curvature on the training, evaluation and test sets."""

    model: FlatModel
    x_train: torch.Tensor  # (n, d)
    y_train: torch.Tensor  # (n,)
    x_eval: torch.Tensor  # (n_eval, d)
    y_eval: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    lr: float  # effective step size

    # --- plain losses -------------------------------------------------------------
    def loss_on(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mean_loss(self.model.logits(theta, x), y)

    def eval_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.loss_on(theta, self.x_eval, self.y_eval)

    def batch_loss(self, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.loss_on(theta, self.x_train[idx], self.y_train[idx])

    # --- the training step ----------------------------------------------------------
    def batch_grad_and_loss(self, theta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_B, L_B): the one function the training step uses, with or without measurement.

        Plain reverse mode: per step it costs a third of torch.func.grad_and_value's overhead.
        """
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            value = self.batch_loss(th, idx)
            (g,) = torch.autograd.grad(value, th)
        return g, value.detach()

    # --- evaluation -----------------------------------------------------------------
    def eval_state(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss, gradient, accuracy and margin on the evaluation set, in one pass."""

        def loss_with_logits(th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model.logits(th, self.x_eval)
            return mean_loss(logits, self.y_eval), logits

        g, (value, logits) = grad_and_value(loss_with_logits, has_aux=True)(theta)
        return {
            "loss": value,
            "grad": g,
            "acc": (logits.argmax(-1) == self.y_eval).to(theta.dtype).mean(),
            "margin": margins(logits, self.y_eval).min(),
        }

    @property
    def eval_is_train(self) -> bool:
        """Is the evaluation set the whole training set (no eval_subset)?"""
        return len(self.x_eval) == len(self.x_train)

    def _chunk(self, rows: int) -> int:
        per_item = rows * self.model.widest * 4  # activations and their derivatives
        return max(1, VMAP_BUDGET // max(1, per_item))

    def eval_losses(self, thetas: torch.Tensor) -> torch.Tensor:
        """L(theta_b) for a stack of parameter vectors (K, P) -> (K,)."""
        return vmap(self.eval_loss, chunk_size=self._chunk(len(self.x_eval)))(thetas)

    def batch_grads(self, batches: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """theta -> g_b for each row of `batches` (K, B), stacked as (K, P)."""

        def grads(theta: torch.Tensor) -> torch.Tensor:
            per_batch = vmap(grad(self.batch_loss), in_dims=(None, 0), chunk_size=self._chunk(batches.shape[1]))
            return per_batch(theta, batches)

        return grads

    # --- curvature ------------------------------------------------------------------
    def eval_hvp(self, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> H v with H the Hessian of the evaluation loss at theta.

        The gradient's graph is built once and each product is one backward pass through it
        (double backward): several times cheaper per product than a fresh jvp-of-grad.
        """
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.eval_loss(th), th, create_graph=True)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            (product,) = torch.autograd.grad(gradient, th, v, retain_graph=True)
            return product.detach()

        return hvp

    def _eval_hvp_functional(self, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same product as a pure function (forward over reverse), for use under vmap."""
        gradient = grad(self.eval_loss)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return jvp(gradient, (theta,), (v,))[1]

        return hvp

    def eval_quadratic_forms(self, theta: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """v_b^T H v_b for each row of `vectors` (K, P) -> (K,), in float64.

        Taken as ||v||^2 (u^T H u) with u = v / ||v||: at small float32 losses ||v||^2 itself
        underflows, while the direction and the curvature along it are well scaled.
        """
        hvp = self._eval_hvp_functional(theta)
        chunk = self._chunk(len(self.x_eval))

        def form(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            u, scale, length = unit_rows(v)
            return torch.dot(u, hvp(u)), scale, length

        curvature, scale, length = vmap(form, chunk_size=chunk)(vectors)
        return curvature.double() * (scale.double() * length.double()) ** 2

    def batch_sharpness_terms(self, theta: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        """g_b^T H_b g_b / ||g_b||^2 with gradient and Hessian on the same batch b, (K,).

        Computed as u^T H_b u with u = g_b / ||g_b||, which stays finite where ||g_b||^2
        underflows in float32.
        """

        def one(idx: torch.Tensor) -> torch.Tensor:
            def loss(th: torch.Tensor) -> torch.Tensor:
                return self.batch_loss(th, idx)

            u, _, _ = unit_rows(grad(loss)(theta))
            return torch.dot(u, jvp(grad(loss), (theta,), (u,))[1])

        return vmap(one, chunk_size=self._chunk(batches.shape[1]))(batches)


def unit_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of v (..., P): (v / ||v||, s, ||v / s||) with s = max |v_i|: v = s ||v / s|| u
    without under- or overflow (a vector alone gives scalars)."""
    scale = v.abs().amax(dim=-1, keepdim=True)
    scaled = v / scale
    length = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return scaled / length, scale.squeeze(-1), length.squeeze(-1)
