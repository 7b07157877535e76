"""The guarded cross-entropy against closed forms, at tiny and at huge losses."""

from __future__ import annotations

import math

import pytest
import torch

from eos_core.loss import (
    FLOOR_CHECK_NUMEL,
    exp_floor,
    exp_terms,
    logit_gradient,
    margins,
    mean_loss,
    per_sample_loss,
    per_sample_loss_value,
)


def _logits(margin: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, the true one ahead of the other two by `margin`: l = log(1 + 2 e^-margin)."""
    return torch.tensor([[margin, 0.0, 0.0]], dtype=dtype), torch.tensor([0])


@pytest.mark.parametrize("target", [1e-10, 1e-15, 1e-20, 1e-25, 1e-30])
def test_tiny_loss_float32_matches_closed_form(target: float) -> None:
    margin = math.log(2 / target)  # so that the loss is about `target`
    exact = math.log1p(2 * math.exp(-margin))
    logits, labels = _logits(margin, torch.float32)
    logits.requires_grad_(True)
    loss = per_sample_loss(logits, labels)[0]
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() > 0
    assert abs(loss.item() - exact) / exact < 1e-5
    # d l / d z_j = e^{-margin} / (1 + 2 e^{-margin}) for j != y, and -2x that for y.
    other = math.exp(-margin) / (1 + 2 * math.exp(-margin))
    assert abs(grad[0, 1].item() - other) / other < 1e-5
    assert abs(grad[0, 0].item() + 2 * other) / (2 * other) < 1e-5


def test_float32_agrees_with_float64_on_random_tiny_losses() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(5, (200,), generator=gen)
    z[torch.arange(200), y] += torch.linspace(23, 69, 200, dtype=torch.float64)  # losses 1e-10 .. 1e-30
    z32 = z.float()
    ref = per_sample_loss(z32.double(), y)  # the same (rounded) logits, in float64
    got = per_sample_loss(z32, y).double()
    assert ref.max() < 1e-8 and ref.min() > 1e-32
    assert ((got - ref).abs() / ref).max() < 1e-5


def test_naive_logsumexp_would_round_to_zero() -> None:
    # Why the guarded form exists: the textbook formula loses these losses entirely.
    logits, labels = _logits(40.0, torch.float32)
    naive = torch.logsumexp(logits, -1) - logits[0, 0]
    assert naive.item() == 0.0
    assert per_sample_loss(logits, labels).item() > 0


def test_never_exactly_zero_while_margin_is_representable() -> None:
    for margin in [10.0, 30.0, 60.0, 80.0, 86.0]:
        logits, labels = _logits(margin, torch.float32)
        assert per_sample_loss(logits, labels).item() > 0, margin


def test_huge_misclassification_stays_finite() -> None:
    logits = torch.tensor([[0.0, 1e30, -1e30]], dtype=torch.float32, requires_grad=True)
    loss = per_sample_loss(logits, torch.tensor([0]))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert math.isfinite(loss.item())
    assert abs(loss.item() - 1e30) / 1e30 < 1e-6  # l = M + log(1 + ...) ~ M
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, torch.tensor([[-1.0, 1.0, 0.0]]))


def test_matches_cross_entropy_at_ordinary_values() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(64, 7, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(7, (64,), generator=gen)
    expected = torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(mean_loss(z, y), expected, rtol=1e-13, atol=0)


def test_margins() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margins(z, torch.tensor([0, 2])).tolist() == [1.0, -4.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_exp_is_subnormal_and_terms_below_the_cut_count_as_zero(dtype: torch.dtype) -> None:
    floor = exp_floor(dtype)
    tiny = torch.finfo(dtype).tiny
    assert math.exp(floor) >= tiny and math.exp(floor - 1) < tiny  # the least exponent with a normal exp
    x = torch.tensor([0.0, -10.0, floor + 1.0, floor + 0.5, floor, floor - 5, -1e4, float("-inf")], dtype=dtype)
    out = exp_terms(x)
    nonzero = out[out != 0]
    assert (nonzero.abs() >= tiny).all()  # nothing subnormal
    assert torch.equal(out[:3], torch.exp(x[:3]))  # normal terms: exp itself
    assert (out[3:] == 0).all()  # at most twice e^floor: 0, as an underflowed term
    # a loss whose terms all lie below the cut underflows to exactly 0, in both layouts
    logits, labels = _logits(-floor + 2.0, dtype)
    assert per_sample_loss_value(logits, labels).item() == 0.0
    assert per_sample_loss(logits, labels).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_major_logits_give_the_same_losses_gradients_and_margins(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(4, 30, 6, generator=gen, dtype=torch.float64) * 20).to(dtype)  # (runs, n, k)
    y = torch.randint(6, (4, 30), generator=gen)
    by_class = z.transpose(1, 2).contiguous()  # (runs, k, n)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14  # the sums over the classes may round in another order
    assert torch.allclose(per_sample_loss_value(by_class, y, dim=-2), per_sample_loss_value(z, y), rtol=rtol, atol=0)
    assert torch.allclose(per_sample_loss(by_class, y, dim=-2), per_sample_loss(z, y), rtol=rtol, atol=0)
    assert torch.allclose(logit_gradient(by_class, y, dim=-2).transpose(1, 2), logit_gradient(z, y), rtol=rtol, atol=0)
    assert torch.equal(margins(by_class, y, dim=-2), margins(z, y))
    # and against float64 references written independently: log(1 + sum_{j != y} e^{z_j - z_y}), softmax - e_y
    onehot = torch.nn.functional.one_hot(y, 6).double()
    d = z.double() - z.double().gather(-1, y.unsqueeze(-1))
    ref = torch.log1p((torch.exp(d) * (1 - onehot)).sum(-1))
    assert torch.allclose(per_sample_loss_value(by_class, y, dim=-2).double(), ref, rtol=1e-5, atol=0)
    grad_ref = torch.softmax(z.double(), -1) - onehot
    assert torch.allclose(logit_gradient(z, y).double(), grad_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("low", [-30.0, -86.5, -200.0])
def test_large_tensors_skip_the_floor_only_when_no_term_is_near_it(low: float) -> None:
    """Above FLOOR_CHECK_NUMEL elements the clamp and cut are skipped when nothing is near the floor:
    the result must be that of the small-tensor path, element by element."""
    x = torch.linspace(low, 0.0, FLOOR_CHECK_NUMEL + 7, dtype=torch.float32)
    pieces = torch.cat([exp_terms(part) for part in x.split(1000)])  # each piece below the check's size
    assert torch.equal(exp_terms(x), pieces)
    assert torch.equal(exp_terms(x.clone(), inplace=True), pieces)


def test_overwriting_the_logits_gives_the_same_losses() -> None:
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, 2, 5, 40, generator=gen) * 30  # (runs, items, k, n): some misclassified
    y = torch.randint(5, (1, 1, 40), generator=gen)  # one label set shared by all
    expected = per_sample_loss_value(z, y, dim=-2)
    scratch = z.clone()
    assert torch.equal(per_sample_loss_value(scratch, y, dim=-2, overwrite=True), expected)
    assert not torch.equal(scratch, z)  # it did overwrite
    by_example = z.movedim(-2, -1)  # (runs, items, n, k), labels (1, 1, n)
    assert torch.allclose(per_sample_loss_value(by_example, y), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("shape", "dim", "label_shape"),
    [
        ((5, 16), -2, (16,)),  # a run alone, class-major
        ((7, 5, 16), -2, (7, 16)),  # a stack, class-major
        ((3, 2, 5, 9), -2, (1, 1, 9)),  # labels shared by every run and item (broadcast)
        ((4, 6, 3), 0, (6, 3)),  # classes first
        ((4, 6, 3), 1, (4, 3)),
    ],
)
def test_logit_gradient_writes_the_true_class_where_a_scatter_would(
    shape: tuple[int, ...], dim: int, label_shape: tuple[int, ...]
) -> None:
    """The contiguous path (indexed writes into the flat tensor) against the scatter formulation
    written out here, bit for bit, and against softmax - e_y in float64."""
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(shape, generator=gen) * 20
    y = torch.randint(shape[dim], label_shape, generator=gen)
    grad = logit_gradient(z, y, dim=dim)
    index = y.expand([s for i, s in enumerate(shape) if i != dim % len(shape)]).unsqueeze(dim)
    p = torch.softmax(z, dim=dim).scatter_(dim, index, 0.0)
    expected = p.scatter_(dim, index, -p.sum(dim=dim, keepdim=True))
    assert torch.equal(grad, expected)
    onehot = torch.zeros(shape, dtype=torch.float64).scatter_(dim, index, 1.0)
    reference = torch.softmax(z.double(), dim=dim) - onehot
    assert torch.allclose(grad.double(), reference, rtol=1e-4, atol=1e-6)
    assert (grad.sum(dim=dim).abs() < 1e-6).all()  # the true class's entry is minus the others' sum


@pytest.mark.parametrize("dim", [-1, -2])
def test_margins_equal_the_largest_difference_to_the_true_class(dim: int) -> None:
    """margins() against -max_{j != y} (z_j - z_y) written out, bit for bit, with infinite and NaN logits."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, 6, generator=gen) * 50
    z[0, 0, 0], z[1, 2, 3], z[2, 1, 1], z[3, 3, 2] = math.inf, -math.inf, math.nan, math.inf
    y = torch.randint(z.shape[dim], [s for i, s in enumerate(z.shape) if i != dim % 3], generator=gen)
    index = y.unsqueeze(dim)
    differences = (z - z.gather(dim, index)).scatter(dim, index, -math.inf)
    expected = -differences.amax(dim=dim)
    assert torch.equal(margins(z, y, dim).isnan(), expected.isnan())
    assert torch.equal(margins(z, y, dim).nan_to_num(0.0), expected.nan_to_num(0.0))
