"""The paper's models, written functionally over one flat parameter vector.

A model is a pure function `logits(theta, x)` of a flat vector `theta` (shape (P,))
and inputs `x` (shape (n, d)), returning logits of shape (n, k). Keeping the
parameters flat makes Hessian-vector products, Lanczos and a later `vmap` over the
runs of a sweep straightforward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .activations import Activation, make_activation
from .spec import ModelSpec


@dataclass
class FlatModel:
    kind: str
    shapes: list[tuple[str, tuple[int, ...]]]
    activation: Activation | None = None
    signs: torch.Tensor | None = None  # two_layer: a_s in {-1, +1}, shape (m,)
    init_scale: float = 1.0
    _offsets: list[tuple[str, int, int, tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        start = 0
        for name, shape in self.shapes:
            size = math.prod(shape)
            self._offsets.append((name, start, size, shape))
            start += size
        self.n_params = start
        # Width of the widest layer output: sizes the chunks of vmapped evaluations.
        self.widest = max(math.prod(shape[:-1]) for name, shape in self.shapes if name.startswith("W"))

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parameter views; a stack of vectors (..., P) gives stacks (..., *shape)."""
        lead = theta.shape[:-1]
        return {name: theta[..., s : s + size].view(*lead, *shape) for name, s, size, shape in self._offsets}

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., n, k) of inputs x (..., n, d) under parameters theta (..., P).

        Leading dimensions broadcast: one vector with one input set, or a stack of runs (R, P)
        with their own inputs (R, n, d) or one shared set (n, d).
        """
        return self.forward(self.unflatten(theta), x)

    def class_major_logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The linear model's logits (..., k, n), computed that way round (W x^T, contiguous)."""
        if self.kind != "linear":
            raise ValueError(f"class-major logits are made for the linear model, not {self.kind}")
        return weights_times_inputs(self.unflatten(theta)["W"], x)

    def forward(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits from named parameters (as unflatten gives them; leaves of their own for autograd)."""
        if self.kind == "linear":
            return apply_weights(x, p["W"])  # (..., n, k)
        if self.kind == "two_layer":
            assert self.activation is not None and self.signs is not None
            w = p["W"]  # (..., k, m, d)
            k, m, d = w.shape[-3:]
            lead = w.shape[:-3]
            if _shares_inputs(x, lead):
                # One product for every weight stack, and the hidden layer kept in its (n, ..., k, m)
                # layout: moving n first would copy the largest tensor there is.
                flat = x.reshape(-1, d) @ w.reshape(-1, d).transpose(0, 1)  # (n, L k m)
                hidden = self.activation(flat.view(flat.shape[0], *lead, k, m))
                return (hidden @ self.signs.to(hidden) / m).movedim(0, -2)  # (..., n, k)
            flat = apply_weights(x, w.reshape(*lead, k * m, d))  # (..., n, k m)
            pre = flat.reshape(*flat.shape[:-1], k, m)
            return self.activation(pre) @ self.signs.to(pre) / m  # (..., n, k)
        assert self.activation is not None
        h = x
        depth = len(self.shapes) // 2
        for i in range(depth):
            w, b = p[f"W{i}"], p[f"b{i}"]
            # One fused product and bias (addmm) for a run alone, as torch's own layers do.
            h = F.linear(h, w, b) if w.dim() == 2 else apply_weights(h, w) + b.unsqueeze(-2)
            if i < depth - 1:
                h = self.activation(h)
        return h

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Initial parameters (on the CPU; the caller moves them), drawn from `generator`."""
        parts: list[torch.Tensor] = []
        for name, shape in self.shapes:
            if self.kind == "linear":
                parts.append(torch.zeros(shape, dtype=dtype))
            elif self.kind == "two_layer":
                d = shape[-1]
                w = torch.randn(shape, generator=generator, dtype=torch.float64) * (self.init_scale / math.sqrt(d))
                parts.append(w.to(dtype))
            elif name.startswith("b"):  # mlp biases start at zero
                parts.append(torch.zeros(shape, dtype=dtype))
            else:  # mlp weights: He normal, N(0, 2 / fan_in), so a deep GELU stack still trains
                fan_in = shape[1]
                w = torch.randn(shape, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
                parts.append(w.to(dtype))
        return parts[0].reshape(-1) if len(parts) == 1 else torch.cat([t.reshape(-1) for t in parts])


def apply_weights(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T with broadcast leading dimensions: x (..., n, d), w (..., o, d) -> (..., n, o).

    Inputs shared by a stack of weights (x's leading dimensions all 1) are multiplied by every
    weight matrix in one product: a broadcast batched product would first copy x per matrix.
    """
    lead = w.shape[:-2]
    if _shares_inputs(x, lead):
        o, d = w.shape[-2:]
        out = x.reshape(-1, d) @ w.reshape(-1, d).transpose(0, 1)  # (n, L o)
        return out.view(out.shape[0], *lead, o).movedim(0, -2)
    return x @ w.transpose(-1, -2)


def weights_times_inputs(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w @ x^T with broadcast leading dimensions: w (..., o, d), x (..., n, d) -> (..., o, n).

    apply_weights the other way round: each output unit's values over the examples contiguous.
    """
    lead = w.shape[:-2]
    if _shares_inputs(x, lead):
        o, d = w.shape[-2:]
        return (w.reshape(-1, d) @ x.reshape(-1, d).transpose(0, 1)).view(*lead, o, x.shape[-2])
    if w.dim() == x.dim() and w.dim() in (2, 3):  # torch.mm / bmm directly: matmul's dispatch costs more
        return torch.mm(w, x.t()) if w.dim() == 2 else torch.bmm(w, x.transpose(1, 2))
    return w @ x.transpose(-1, -2)


def _shares_inputs(x: torch.Tensor, lead: torch.Size) -> bool:
    """Are inputs x (..., n, d) one set for every weight matrix of a stack with leading dims `lead`?"""
    return bool(lead) and all(size == 1 for size in x.shape[:-2]) and x.dim() - 2 <= len(lead)


def build_model(spec: ModelSpec, in_dim: int, classes: int) -> FlatModel:
    act = make_activation(spec.activation, spec.leak, spec.huber_width)
    if spec.kind == "linear":
        return FlatModel("linear", [("W", (classes, in_dim))])
    if spec.kind == "two_layer":
        m = spec.width
        # Half the units enter with +1, half with -1 (the paper's fixed output signs).
        signs = torch.ones(m, dtype=torch.float64)
        signs[m // 2 :] = -1.0
        return FlatModel("two_layer", [("W", (classes, m, in_dim))], act, signs, spec.init_scale)
    widths = [in_dim] + [spec.width] * (spec.depth - 1) + [classes]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i in range(spec.depth):
        shapes.append((f"W{i}", (widths[i + 1], widths[i])))
        shapes.append((f"b{i}", (widths[i + 1],)))
    return FlatModel("mlp", shapes, act)
