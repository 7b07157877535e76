"""Cross-entropy in the paper's log1p form, accurate for tiny losses and safe for huge ones.

    l_i = log(1 + sum_{j != y} exp(z_j - z_y))

With M = max(0, max_{j != y}(z_j - z_y)) and S = sum_{j != y} exp(z_j - z_y - M):

    l_i = M + log(exp(-M) + S) = M + log1p(expm1(-M) + S)

For M = 0 this is exactly log1p(S): relative accuracy down to the smallest normal
number (about 1e-38 in float32), where `logsumexp(z) - z_y` rounds to 0 near 1e-8.
For large M every exponent is <= 0, so nothing overflows; the loss is M plus O(1).
The gradient flows through exp(z_j - z_y - M), which stays relatively accurate too.

No exp of the loss's terms returns a subnormal number or 0: on x86 such an exp costs 10-120x
a normal one, and a run at tiny losses has most of its terms there. Exponents are floored at
exp_floor (about log of the dtype's smallest normal number) and terms at most twice
e^exp_floor (3.3e-38 in float32, 6.6e-308 in float64) then count as 0, as an underflowed
term would: the loss only changes where it is near the underflow itself, and it still
underflows to exactly 0 (where it was a subnormal number before). Through autograd
(per_sample_loss: the Hessian-vector products) a cut term has no gradient. The training
step's softmax (logit_gradient) is torch's fused kernel, one pass where the floored exp took
five, and keeps subnormal entries: they move no parameter, but at terms below 3.3e-38 in
float32 the step and the Hessian disagree on which terms exist.

`dim` is the class dimension: -1 for logits (..., n, k); -2 for class-major logits (..., k, n),
whose reductions over the classes run along contiguous rows (about 2x faster over many short
rows, as a stack of runs' evaluations has them).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def exp_floor(dtype: torch.dtype) -> float:
    """The least exponent whose exp is a normal number of `dtype` (-87 in float32, -708 in float64)."""
    return float(math.ceil(math.log(torch.finfo(dtype).tiny)))


# From this many elements on, a CPU tensor is first checked for terms near the floor (one read):
# without any, the clamp and the threshold (two writes) are skipped.
FLOOR_CHECK_NUMEL = 2**16


def exp_terms(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """exp(x), with terms at most twice e^exp_floor set to 0, never computing a subnormal (module doc)."""
    floor = exp_floor(x.dtype)
    checked = x.device.type == "cpu" and x.numel() >= FLOOR_CHECK_NUMEL and not x.requires_grad
    if checked and float(x.amin()) > floor + 1.0:  # every exp then exceeds twice e^floor: nothing to cut
        return x.exp_() if inplace else x.exp()
    if inplace:
        return F.threshold(x.clamp_min_(floor).exp_(), 2 * math.exp(floor), 0.0, inplace=True)
    return F.threshold(x.clamp_min(floor).exp(), 2 * math.exp(floor), 0.0)


def _classes(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """0..k-1 laid along `dim`, to compare with labels.unsqueeze(dim)."""
    shape = [1] * logits.dim()
    shape[dim] = logits.shape[dim]
    return torch.arange(logits.shape[dim], device=logits.device).view(shape)


def _own(logits: torch.Tensor, labels: torch.Tensor, dim: int) -> torch.Tensor:
    """True at the true class: a bool mask that broadcasts to logits (as small as the labels are)."""
    return labels.unsqueeze(dim) == _classes(logits, dim)


def label_shape(shape: torch.Size, dim: int) -> list[int]:
    """The labels' shape for logits of `shape` with classes along `dim`."""
    return [size for i, size in enumerate(shape) if i != dim % len(shape)]


def _true_class(logits: torch.Tensor, labels: torch.Tensor, dim: int) -> torch.Tensor:
    """The labels as an index along `dim` of the logits (for gather and scatter)."""
    return labels.expand(label_shape(logits.shape, dim)).unsqueeze(dim)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    diff = logits - logits.gather(dim, _true_class(logits, labels, dim))  # the true class's entry is exactly 0
    # M = max(0, max_{j != y} diff_j) is the max over every class. A shift: its gradient cancels
    # analytically, so it is cut off the graph.
    worst = diff.amax(dim=dim, keepdim=True).detach()
    rest = exp_terms(diff - worst).masked_fill(_own(logits, labels, dim), 0.0).sum(dim=dim)
    m = worst.squeeze(dim)
    return m + torch.log1p(torch.expm1(-m) + rest)


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return per_sample_loss(logits, labels).mean()


def margins(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample: positive where the point is classified correctly."""
    z_y = logits.gather(dim, _true_class(logits, labels, dim)).squeeze(dim)
    # z_y - max_{j != y} z_j: rounding is monotone, so this is -max_{j != y} fl(z_j - z_y) to the
    # bit, without a pass over the logits for the differences
    return z_y - logits.masked_fill(_own(logits, labels, dim), float("-inf")).amax(dim=dim)


def logit_gradient(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """d l_i / d z for every example, shaped like logits: the loss's backward in closed form.

    It is softmax(z) - e_y, with the true class's entry taken as minus the sum of the others:
    those are relatively accurate however small (softmax shifts by the largest logit), while
    p_y - 1 would round to 0 at losses below the dtype's epsilon. Unlike the loss's terms, the
    softmax keeps subnormal entries (torch.softmax, one fused pass): they change no step.
    """
    p = softmax(logits, dim)
    if p.is_contiguous():  # two indexed writes into the flat tensor: faster than scatters along dim
        at = torch.add(_class_zero_positions(p.shape, dim, p.device), labels, alpha=p.stride(dim)).view(-1)
        flat = p.view(-1)
        flat.index_fill_(0, at, 0.0)
        flat.index_add_(0, at, p.sum(dim=dim).view(-1), alpha=-1.0)  # 0 - sum: exactly -sum
        return p
    index = _true_class(logits, labels, dim)
    p = p.scatter_(dim, index, 0.0)
    return p.scatter_(dim, index, -p.sum(dim=dim, keepdim=True))


@functools.lru_cache(maxsize=64)
def _class_zero_positions(shape: torch.Size, dim: int, device: torch.device) -> torch.Tensor:
    """Flat positions of class 0's entries in a contiguous tensor of `shape` (classes along
    `dim`), shaped label_shape(shape, dim): adding label * stride gives the true classes'.
    Cached, as a training loop asks for one shape at every step; never written to."""
    return torch.arange(math.prod(shape), device=device).view(shape).select(dim, 0).contiguous()


def softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.softmax over `dim`, never over the last dimension: torch's kernel for that one is
    7-14x slower over a few classes (a stack of runs has many short rows), the other one is not."""
    if dim % logits.dim() == logits.dim() - 1:
        return torch.softmax(logits.transpose(-1, -2), dim=-2).transpose(-1, -2)
    return torch.softmax(logits, dim=dim)


def per_sample_loss_value(
    logits: torch.Tensor, labels: torch.Tensor, dim: int = -1, overwrite: bool = False
) -> torch.Tensor:
    """per_sample_loss without a graph (values only), in fewer passes over the logits.

    The same formula, each pass overwriting its input: on a stack of runs' evaluations the
    logits are the largest tensor there is. `overwrite`: the caller's logits may be overwritten
    too (no tensor of their size is allocated).
    """
    index = _true_class(logits, labels, dim)
    with torch.no_grad():
        top = logits.amax(dim=dim, keepdim=True)  # max_j z_j, over every class: z_y + M
        # z_j - z_y - M is z_j - top: no pass over the logits for the differences to z_y
        m = (top - logits.gather(dim, index)).squeeze(dim)  # M = max(0, max_{j != y} z_j - z_y)
        shifted = logits.sub_(top) if overwrite else logits - top
        rest = exp_terms(shifted, inplace=True).mul_(others_mask(logits, labels, dim)).sum(dim=dim)
        # Every example classified (M = 0): the loss is log1p(rest) exactly, in two passes fewer.
        # Asked on the CPU only: on an accelerator the answer would wait for the device.
        if m.device.type == "cpu" and m.numel() and float(m.max()) == 0.0:  # (M >= 0; a NaN fails the test)
            return torch.log1p(rest)
        return m + torch.log1p(torch.expm1(-m) + rest)


def others_mask(logits: torch.Tensor, labels: torch.Tensor, dim: int) -> torch.Tensor:
    """1 at the classes other than the true one, 0 at it, in logits' dtype; from the labels as given,
    so that it is as small as they are (a stack's items share them) and broadcasts to logits.
    Multiplying by it is several times faster than scattering zeros along a strided dimension."""
    return (labels.unsqueeze(dim) != _classes(logits, dim)).to(logits.dtype)
