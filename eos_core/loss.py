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
    """z_j - z_y with the true class set to -inf, shape (n, k)."""
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
