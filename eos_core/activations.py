"""Activations, including the paper's leaky family phi(z) = c z + (1 - c) psi(z) (Lemma 5.2)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def huberized_relu(z: torch.Tensor, h: float = 1.0) -> torch.Tensor:
    """0 for z < 0, z^2 / (2h) on [0, h], z - h/2 above: a C^1 ReLU."""
    inner = z.clamp(0.0, h)
    # On [0, h] this is inner^2 / 2h; above h, (z - h) is added to h/2, giving z - h/2.
    return inner * inner / (2 * h) + (z - h).clamp_min(0.0)


def _base(name: str, huber_width: float) -> Activation:
    table: dict[str, Activation] = {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softplus": F.softplus,
        "huberized_relu": partial(huberized_relu, h=huber_width),
        "gelu": F.gelu,
        "silu": F.silu,
        "relu": F.relu,
        "identity": lambda z: z,
    }
    return table[name]


def make_activation(name: str, leak: float = 0.5, huber_width: float = 1.0) -> Activation:
    """Activation by name: `leaky_<base>` mixes in the identity with weight `leak`."""
    if name.startswith("leaky_"):
        base = _base(name.removeprefix("leaky_"), huber_width)
        c = float(leak)

        def leaky(z: torch.Tensor) -> torch.Tensor:
            # (1 - c) base(z) + c z in one pass (and one in the backward), where the sum of two
            # products took three: the hidden layer is the largest tensor of a two-layer step.
            return torch.lerp(base(z), z, c)  # (NaN at an infinite z, where the sum gave inf: non-finite either way)

        return leaky
    return _base(name, huber_width)
