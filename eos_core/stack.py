"""The objectives of R runs as one stacked computation (a sweep slice; R = 1 for a run alone).

Parameters are a stack (R, P). The runs share one model shape; their data are held once
when every run has the same tensors (a leading dimension of 1 that broadcasts) and stacked
(R, n, d) when they differ (a seed that also draws the data, an evaluation subset). Every
function here is a batch of independent per-run computations: no value of one run enters
another's, so a run's numbers are those it has alone, up to the rounding of batched kernels.

The loss's backward is written in closed form (loss.logit_gradient): for the linear model
the whole gradient is two batched matrix products, with no autograd graph at all. The linear
model's logits are computed class-major, (..., k, n) (`class_dim` -2): the loss's reductions
over a few classes then run along contiguous rows of examples, about twice as fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .loss import logit_gradient, margins, others_mask, per_sample_loss, per_sample_loss_value, softmax
from .models import weights_times_inputs
from .objective import VMAP_BUDGET, Objective, unit_rows


def _shared_or_stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1, ...) when every run holds equal values, else (R, ...)."""
    first = tensors[0]
    if all(t is first or (t.shape == first.shape and torch.equal(t, first)) for t in tensors[1:]):
        return first.unsqueeze(0)
    return torch.stack(list(tensors))


# Elements of the widest layer an evaluation holds at once (eos_core.stack.Stack.eval_losses).
EVAL_PIECE = 2**18


class Stack:
    """Losses, gradients and measurements of R runs at once. `rows` name the runs (0..R-1)."""

    def __init__(self, objectives: Sequence[Objective]) -> None:
        first = objectives[0]
        self.objectives = list(objectives)
        self.model = first.model
        self.linear = first.model.kind == "linear"
        self.class_dim = -2 if self.linear else -1  # where the classes lie in the logits made here
        self.x_train = _shared_or_stacked([o.x_train for o in objectives])
        self.y_train = _shared_or_stacked([o.y_train for o in objectives])
        self.x_eval = _shared_or_stacked([o.x_eval for o in objectives])
        self.y_eval = _shared_or_stacked([o.y_eval for o in objectives])
        self.x_test = _shared_or_stacked([o.x_test for o in objectives])
        self.y_test = _shared_or_stacked([o.y_test for o in objectives])
        self.eval_is_train = all(o.eval_is_train for o in objectives)
        self.lr64 = torch.tensor([o.lr for o in objectives], dtype=torch.float64)
        self.lr = self.lr64.to(device=first.x_train.device, dtype=first.x_train.dtype)
        self._pinned: torch.Tensor | None = None
        self._pinned_leaves: dict[str, torch.Tensor] = {}
        self._pinned_views: dict[str, torch.Tensor] = {}
        self._pinned_row: torch.Tensor | None = None
        # The last evaluation's logits, with the parameters (and their version) they were taken at.
        self._eval_logits: tuple[torch.Tensor, int, torch.Tensor] | None = None

    # --- data of some runs -------------------------------------------------------------
    @staticmethod
    def _of(data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The runs' own data (R', ...), or the shared tensor (1, ...)."""
        return data if data.shape[0] == 1 else data[rows.to(data.device)]

    def _batch(self, rows: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (M, B, d) and labels (M, B) of batch idx[i] (M, B) of run rows[i]."""
        idx = idx.to(self.x_train.device)
        if self.x_train.shape[0] == 1:  # index_select: several times cheaper than advanced indexing
            flat = idx.reshape(-1)
            x = self.x_train[0].index_select(0, flat).view(*idx.shape, -1)
            return x, self.y_train[0].index_select(0, flat).view(idx.shape)
        run = rows.to(self.x_train.device).unsqueeze(-1)
        return self.x_train[run, idx], self.y_train[run, idx]

    def _chunk(self, rows_per_item: int) -> int:
        return max(1, VMAP_BUDGET // max(1, rows_per_item * self.model.widest * 4))

    # --- gradients ---------------------------------------------------------------------
    def batch_grads(
        self, thetas: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, with_loss: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """g_b (M, P) of batch idx[i] at thetas[i] for run rows[i]; with the batch losses (M,) if asked."""
        if len(thetas) > self._chunk(idx.shape[-1]):
            step = self._chunk(idx.shape[-1])
            parts = [
                self.batch_grads(thetas[i : i + step], rows[i : i + step], idx[i : i + step], with_loss)
                for i in range(0, len(thetas), step)
            ]
            losses = [p[1] for p in parts]
            return torch.cat([p[0] for p in parts]), torch.cat(losses) if with_loss else None  # type: ignore[arg-type]
        x, y = self._batch(rows, idx)
        grads, logits = self._grads(thetas, x, y)
        loss = per_sample_loss_value(logits, y, self.class_dim).mean(dim=-1) if with_loss else None
        return grads, loss

    def sgd_step(
        self, thetas: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, lr: torch.Tensor, record: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """thetas[i] -= lr[i] g_b, b = idx[i], in place; with the batch gradients and losses if `record`.
        `lr`: the runs' step sizes, (R',) or (R', 1), in the parameters' dtype and device.

        The linear model's step is fused: each run's logit gradient is scaled by its lr and
        added into its parameters, times -1/b, by one batched product, without forming g_b.
        Replaying a step through here gives the same bits.
        """
        lr = lr.reshape(-1, 1)
        if not self.linear:
            return self._layered_step(thetas, rows, idx, lr, record)
        x, y = self._batch(rows, idx)
        w, b = self._views(thetas)["W"], idx.shape[-1]
        if len(thetas) == 1:  # plain matrix products for a run alone
            w, x, y = w[0], x[0], y[0]
        logits = weights_times_inputs(w, x)  # (R', k, b)
        p = logit_gradient(logits, y, dim=-2)
        g: torch.Tensor | None = None
        loss: torch.Tensor | None = None
        if record:
            g = (p @ x).div_(b).reshape(thetas.shape)
            loss = per_sample_loss_value(logits, y, dim=-2).mean(dim=-1).reshape(len(thetas))
        step = p.mul_(lr.unsqueeze(-1) if p.dim() == 3 else lr)  # lr: (R', 1)
        w.baddbmm_(step, x, alpha=-1.0 / b) if w.dim() == 3 else w.addmm_(step, x, alpha=-1.0 / b)
        return g, loss

    def pin(self, thetas: torch.Tensor) -> None:
        """Keep autograd leaves viewing each layer of `thetas` (the live stack, updated in place)."""
        self._pinned = thetas
        self._pinned_row = thetas[0] if len(thetas) == 1 else None  # a run alone: leaves of its own vector
        self._pinned_leaves = self._make_leaves(thetas if self._pinned_row is None else self._pinned_row)
        self._pinned_views = self.model.unflatten(thetas)

    def _views(self, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named layer views of thetas (the live stack's kept from pin())."""
        return self._pinned_views if thetas is self._pinned else self.model.unflatten(thetas)

    def _make_leaves(self, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        # Each layer a leaf of its own: the gradient of one flat leaf through slices of it would
        # build and sum a parameter-sized tensor per layer. detach() shares the storage.
        return {name: part.detach().requires_grad_(True) for name, part in self.model.unflatten(thetas).items()}

    def _leaves(self, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        pinned = thetas is self._pinned or (
            thetas.dim() == 1 and self._pinned_row is not None and _same(thetas, self._pinned_row)
        )
        return self._pinned_leaves if pinned else self._make_leaves(thetas)

    def _grads(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients (M, P) of the mean loss over each item's examples (x: (M, b, d)), and the logits
        (M, b, k), or (M, k, b) where class_dim is -2."""
        # One run: plain matrix products (a batch of one costs more, in the backward pass above all).
        one = len(thetas) == 1 and x.dim() == 3
        if one:
            x, y = x[0], y.expand(x.shape[:-1])[0]
        scale = 1.0 / x.shape[-2]
        if self.linear:
            w = self._views(thetas)["W"]
            w = w[0] if one else w
            logits = weights_times_inputs(w, x)  # (M, k, b)
            p = logit_gradient(logits, y, dim=-2).mul_(scale)
            if x.dim() == 3 and x.shape[0] == 1 and p.dim() == 3:  # shared inputs: one product for all runs
                g = (p.reshape(-1, x.shape[1]) @ x[0]).view(len(p), -1)
            else:
                g = p @ x  # (M, k, d)
            return g.reshape(thetas.shape), logits.unsqueeze(0) if one else logits
        _, grads, logits = self._layer_grads(thetas[0] if one else thetas, x, y)
        return _flat(grads, len(thetas)), logits.unsqueeze(0) if one else logits

    def _layer_grads(
        self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...], torch.Tensor]:
        """Autograd leaves viewing each layer of thetas ((M, P), or (P,) for a run alone: then no
        per-layer select sits in the graph), the mean loss's gradient per layer, and the logits."""
        with torch.enable_grad():
            named = self._leaves(thetas)
            leaves = list(named.values())
            logits = self.model.forward(named, x)
            scale = 1.0 / x.shape[-2]
            grads = torch.autograd.grad(logits, leaves, logit_gradient(logits.detach(), y).mul_(scale))
        return leaves, grads, logits.detach()

    def _layered_step(
        self, thetas: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, lr: torch.Tensor, record: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """sgd_step of a model with autograd layers: each layer's gradient is added into its leaf,
        times -lr, in one call (no copy of the gradient into a flat vector, as an optimizer does it)."""
        if len(thetas) > self._chunk(idx.shape[-1]):  # a stack too wide for one graph: in pieces
            flat, losses = self.batch_grads(thetas, rows, idx, with_loss=record)
            thetas.sub_(lr * flat)
            return (flat, losses) if record else (None, None)
        x, y = self._batch(rows, idx)
        one = len(thetas) == 1
        leaves, grads, logits = self._layer_grads(thetas[0] if one else thetas, x[0] if one else x, y[0] if one else y)
        g: torch.Tensor | None = None
        loss: torch.Tensor | None = None
        if record:
            g = _flat(grads, len(thetas))
            loss = per_sample_loss_value(logits, y[0] if one else y).mean(dim=-1).reshape(len(thetas))
        with torch.no_grad():
            if one and lr.device.type == "cpu":  # torch's fused multi-tensor add, as torch.optim.SGD takes it
                torch._foreach_add_(leaves, list(grads), alpha=-float(lr[0, 0]))
            else:  # each run its own lr (or one on a device, not read back): a product per layer
                neg = -lr
                factors = [neg.view(-1, *[1] * (leaf.dim() - 1)) for leaf in leaves]
                torch._foreach_addcmul_(leaves, list(grads), factors)
        return g, loss

    def _grads_in_pieces(
        self, thetas: torch.Tensor, rows: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """_grads on a whole data set (x_all: shared or per run), a few runs at a time (see EVAL_PIECE)."""
        group = max(1, EVAL_PIECE // max(1, x_all.shape[1] * self.model.widest))  # runs at a time
        if len(thetas) <= group:
            return self._grads(thetas, self._of(x_all, rows), self._of(y_all, rows))
        pieces = []
        for r in range(0, len(thetas), group):
            some = rows[r : r + group]
            pieces.append(self._grads(thetas[r : r + group], self._of(x_all, some), self._of(y_all, some)))
        return torch.cat([g for g, _ in pieces]), torch.cat([z for _, z in pieces])

    # --- evaluation --------------------------------------------------------------------
    def eval_state(self, thetas: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per run on the evaluation set: loss, gradient (R', P), accuracy, smallest margin, largest |logit|."""
        grads, logits = self._grads_in_pieces(thetas, rows, self.x_eval, self.y_eval)
        y, dim = self._of(self.y_eval, rows), self.class_dim
        self._eval_logits = (thetas, thetas._version, logits)
        # The labels as they are (one set shared by the runs, or each run's): masks made from them
        # are that small, where the expanded labels would make masks as large as the logits.
        margin = margins(logits, y, dim)
        return {
            "loss": per_sample_loss_value(logits, y, dim).mean(dim=-1),
            "grad": grads,
            "acc": _correct(logits, y, dim, margin).to(thetas.dtype).mean(dim=-1),
            "margin": margin.amin(dim=-1),
            "logit_scale": logits.abs().flatten(1).amax(dim=1),
        }

    def eval_losses(self, thetas: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """L(theta) for a stack (R', J, P) of parameters of runs rows (R',) -> (R', J).

        Evaluated in pieces of about EVAL_PIECE elements of the widest layer: small enough for
        the core's cache, where elementwise passes run several times faster than from memory.
        """
        runs, count = thetas.shape[:2]
        items = max(1, EVAL_PIECE // max(1, self.x_eval.shape[1] * self.model.widest))
        per_run = min(count, items)
        run_group = max(1, items // per_run)
        out = torch.empty(runs, count, dtype=thetas.dtype, device=thetas.device)
        for r in range(0, runs, run_group):
            group = rows[r : r + run_group]
            x, y = self._of(self.x_eval, group).unsqueeze(1), self._of(self.y_eval, group).unsqueeze(1)
            for j in range(0, count, per_run):
                logits = self._logits(thetas[r : r + run_group, j : j + per_run], x)
                loss = per_sample_loss_value(logits, y, self.class_dim, overwrite=True)
                out[r : r + run_group, j : j + per_run] = loss.mean(dim=-1)
        return out

    def test_state(self, thetas: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, dim = self._of(self.x_test, rows), self._of(self.y_test, rows), self.class_dim
        logits = self._logits(thetas, x)
        accuracy = (_predicted(logits, dim) == y).to(thetas.dtype).mean(-1)
        return per_sample_loss_value(logits, y, dim).mean(dim=-1), accuracy

    def _logits(self, thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits laid out as class_dim says."""
        return self.model.class_major_logits(thetas, x) if self.linear else self.model.logits(thetas, x)

    def train_grads(self, thetas: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Gradient of the loss on the whole training set (R', P): E_B[g_B] for every sampler."""
        return self._grads_in_pieces(thetas, rows, self.x_train, self.y_train)[0]

    def train_scores(self, thetas: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per run and training example (R', n), ||d l_i / d z|| * ||x_i||, float64 (see Objective.train_scores)."""
        x, y = self._of(self.x_train, rows), self._of(self.y_train, rows)
        cached = self._eval_logits
        if self.eval_is_train and cached is not None and cached[0] is thetas and cached[1] == thetas._version:
            logits = cached[2].double()  # eval_state's logits at these very parameters: the training set's
        else:
            logits = self._logits(thetas, x).double()
        # p_j = softmax(z)_j for j != y, each relatively accurate however small; 1 - p_y as their sum.
        dim = self.class_dim
        p = softmax(logits, dim).mul_(others_mask(logits, y, dim))
        miss = p.sum(dim=dim)  # 1 - p_y
        norm_z = torch.sqrt(p.mul_(p).sum(dim=dim) + miss * miss)
        return norm_z * torch.linalg.vector_norm(x.double(), dim=-1)

    # --- curvature -------------------------------------------------------------------------
    def eval_hvp(self, thetas: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """V (R', P) -> row r is H_r v_r, H_r the Hessian of run r's evaluation loss at thetas[r].

        The runs' gradients are built once as one graph (of the sum of their losses: run r's
        gradient depends on its own parameters only) and each product is one double backward.
        """
        x, y = self._of(self.x_eval, rows), self._of(self.y_eval, rows)
        with torch.enable_grad():
            leaves = self._make_leaves(thetas.detach())
            logits = self.model.forward(leaves, x)
            total = per_sample_loss(logits, y.expand(logits.shape[:-1])).mean(dim=-1).sum()
            grads = torch.autograd.grad(total, list(leaves.values()), create_graph=True)
        shapes = [leaf.shape for leaf in leaves.values()]

        def hvp(vectors: torch.Tensor) -> torch.Tensor:
            parts = _split(vectors, shapes)
            products = torch.autograd.grad(grads, list(leaves.values()), parts, retain_graph=True)
            return _flat(products, len(vectors)).detach()

        return hvp

    def eval_quadratic_forms(self, thetas: torch.Tensor, rows: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """v^T H_r v for K vectors per run (R', K, P) -> (R', K), in float64.

        Taken as ||v||^2 (u^T H u) with u = v / ||v||: at small float32 losses ||v||^2 itself
        underflows, while the direction and the curvature along it are well scaled.
        """
        hvp = self.eval_hvp(thetas, rows)
        units, scale, length = unit_rows(vectors)
        forms = torch.stack([(units[:, k] * hvp(units[:, k])).sum(dim=-1) for k in range(vectors.shape[1])], dim=1)
        return forms.double() * (scale.double() * length.double()) ** 2

    def batch_sharpness_terms(self, thetas: torch.Tensor, rows: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        """g_b^T H_b g_b / ||g_b||^2 with gradient and Hessian on the same batch b, for (R', K, B) -> (R', K).

        Computed as u^T H_b u with u = g_b / ||g_b||, which stays finite where ||g_b||^2
        underflows in float32. All R' K batches are one graph.
        """
        r, k = batches.shape[:2]
        items = thetas.detach().unsqueeze(1).expand(r, k, thetas.shape[-1]).reshape(r * k, -1)
        x, y = self._batch(rows.repeat_interleave(k), batches.reshape(r * k, -1))
        with torch.enable_grad():
            leaves = self._make_leaves(items)
            logits = self.model.forward(leaves, x)
            total = per_sample_loss(logits, y).mean(dim=-1).sum()
            grads = torch.autograd.grad(total, list(leaves.values()), create_graph=True)
            flat = _flat(grads, r * k)
            units, _, _ = unit_rows(flat.detach())
            shapes = [leaf.shape for leaf in leaves.values()]
            products = torch.autograd.grad(grads, list(leaves.values()), _split(units, shapes))
        hu = _flat(products, r * k)
        return (units * hu).sum(dim=-1).view(r, k)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Do two views cover the same memory the same way (thetas[0] is a new view object each time)?"""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def _flat(parts: Sequence[torch.Tensor], rows: int) -> torch.Tensor:
    """Per-layer tensors (each (rows, *layer shape), or one run's layer shape) as rows (rows, P):
    the inverse of _split."""
    return torch.cat([part.reshape(rows, -1) for part in parts], dim=-1)


def _split(vectors: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Rows (M, P) cut into the layers' shapes (M, *shape)."""
    parts, start = [], 0
    for shape in shapes:
        size = math.prod(shape[1:])
        parts.append(vectors[..., start : start + size].reshape(shape))
        start += size
    return parts


def _correct(logits: torch.Tensor, labels: torch.Tensor, dim: int, margin: torch.Tensor) -> torch.Tensor:
    """Is the predicted class (argmax's: the first of tied ones) the label? A positive margin says
    so without a search over the classes; only where some margin is 0 (ties, as at a linear
    model's zero start) are the predictions themselves taken."""
    if bool((margin == 0).any()):
        return _predicted(logits, dim) == labels
    return margin > 0


def _predicted(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """The predicted class, the first of tied ones as argmax gives it: max(dim).indices is the same
    index, and several times faster along a dimension that is not contiguous (class-major logits)."""
    return logits.max(dim=dim).indices
