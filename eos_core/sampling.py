"""Batch samplers (science.md, SGD): the training stream and independent draws for measurement."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch

from .spec import MAX_EXACT_BATCHES, distinct_batches


class BatchSampler:
    """Draws the training batches from its own generator, so measuring never moves it."""

    def __init__(self, n: int, batch_size: int, kind: str, generator: torch.Generator) -> None:
        if batch_size > n:
            raise ValueError(f"optimizer.batch_size={batch_size} is larger than the training set ({n} points)")
        self.n, self.batch_size, self.kind, self.generator = n, batch_size, kind, generator
        self._epoch: torch.Tensor | None = None
        self._cursor = 0

    def next(self) -> torch.Tensor:
        """Indices of the next training batch, shape (B,), on the CPU."""
        n, b = self.n, self.batch_size
        if self.kind == "with_replacement":
            return torch.randint(n, (b,), generator=self.generator)
        if self.kind == "without_replacement":
            return torch.randperm(n, generator=self.generator)[:b]
        # reshuffle: consecutive slices of one permutation per epoch; the remainder is dropped.
        if self._epoch is None or self._cursor + b > n:
            self._epoch = torch.randperm(n, generator=self.generator)
            self._cursor = 0
        batch = self._epoch[self._cursor : self._cursor + b]
        self._cursor += b
        return batch

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` independent batches from the distribution of the next batch, shape (count, B).

        For `reshuffle` the next batch is, marginally, a uniform B-subset: drawn as such.
        """
        n, b = self.n, self.batch_size
        if self.kind == "with_replacement":
            return torch.randint(n, (count, b), generator=generator)
        keys = torch.rand(count, n, generator=generator)
        return keys.argsort(dim=1)[:, :b]

    def distinct_count(self) -> int | None:
        kind = "without_replacement" if self.kind == "reshuffle" else self.kind
        return distinct_batches(self.n, self.batch_size, kind)

    def enumerate_all(self) -> torch.Tensor:
        """Every equally likely batch, shape (count, B): the exact drift averages over these."""
        count = self.distinct_count()
        if count is None or count > MAX_EXACT_BATCHES:
            raise ValueError(f"{count or 'too many'} distinct batches: too many to enumerate")
        n, b = self.n, self.batch_size
        if b == 1:
            return torch.arange(n).unsqueeze(1)
        combos: Iterable[tuple[int, ...]]
        if self.kind == "with_replacement":
            combos = itertools.product(range(n), repeat=b)
        else:
            combos = itertools.combinations(range(n), b)
        return torch.tensor(list(combos), dtype=torch.long)
