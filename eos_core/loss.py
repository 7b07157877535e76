"""Cross-entropy in the paper's log1p form, accurate for tiny losses and safe for huge ones.

    l_i = log(1 + sum_{j != y} exp(z_j - z_y))

With M = max(0, max_{j != y}(z_j - z_y)) and S = sum_{j != y} exp(z_j - z_y - M):

    l_i = M + log(exp(-M) + S) = M + log1p(expm1(-M) + S)

For M = 0 this is exactly log1p(S): relative accuracy down to the smallest normal
number (about 1e-38 in float32), where `logsumexp(z) - z_y` rounds to 0 near 1e-8.
For large M every exponent is <= 0, so nothing overflows; the loss is M plus O(1).
The gradient flows through exp(z_j - z_y - M), which stays relatively accurate too.
"""

from __future__ import annotations

import torch


def _differences(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_j - z_y with the true class set to -inf, shape (..., n, k); labels broadcast to (..., n)."""
    labels = labels.expand(logits.shape[:-1])
    z_y = logits.gather(-1, labels.unsqueeze(-1))
    diff = logits - z_y
    own = labels.unsqueeze(-1) == torch.arange(logits.shape[-1], device=logits.device)
    return diff.masked_fill(own, float("-inf"))


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    diff = _differences(logits, labels)
    worst = diff.amax(dim=-1, keepdim=True).clamp_min(0.0)  # M >= 0, shape (n, 1)
    # M is a shift: its gradient cancels analytically, so cut it off the graph.
    worst = worst.detach()
    rest = torch.exp(diff - worst).sum(dim=-1)
    m = worst.squeeze(-1)
    return m + torch.log1p(torch.expm1(-m) + rest)


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return per_sample_loss(logits, labels).mean()


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample: positive where the point is classified correctly."""
    return -_differences(logits, labels).amax(dim=-1)


def logit_gradient(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d l_i / d z for every example, (..., n, k): the loss's backward in closed form.

    It is softmax(z) - e_y, with the true class's entry taken as minus the sum of the others:
    those are relatively accurate however small (softmax shifts by the largest logit), while
    p_y - 1 would round to 0 at losses below the dtype's epsilon.
    """
    labels = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    # softmax by hand: torch.softmax is several times slower on many short rows (a stack of runs).
    p = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
    p = p.div_(p.sum(dim=-1, keepdim=True)).scatter_(-1, labels, 0.0)
    return p.scatter_(-1, labels, -p.sum(dim=-1, keepdim=True))


def per_sample_loss_value(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """per_sample_loss without a graph (values only), in fewer passes over the logits.

    The same formula; the true class is set to -inf in place and each pass overwrites its
    input: on a stack of runs' evaluations the logits are the largest tensor there is.
    """
    labels = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    with torch.no_grad():
        diff = logits - logits.gather(-1, labels)
        diff.scatter_(-1, labels, float("-inf"))
        worst = diff.amax(dim=-1, keepdim=True).clamp_min_(0.0)
        rest = diff.sub_(worst).exp_().sum(dim=-1)
        m = worst.squeeze(-1)
        return m + torch.log1p(torch.expm1(-m) + rest)
