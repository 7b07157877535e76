"""Batch samplers (science.md, SGD): the training stream and independent draws for measurement."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

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
        return self.block(1)[0]

    def block(self, steps: int) -> torch.Tensor:
        """The next `steps` training batches, (steps, B): the same stream as `steps` calls of next()."""
        if self.kind == "with_replacement":  # one draw of (steps, B) is `steps` draws of (B,) in turn
            return torch.randint(self.n, (steps, self.batch_size), generator=self.generator)
        return torch.stack([self._one() for _ in range(steps)])

    def _one(self) -> torch.Tensor:
        n, b = self.n, self.batch_size
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

    def draw_weighted(
        self, count: int, proposal: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` batches from an importance proposal, with their weights p(b) / Q(b), float64.

        Each batch has one member drawn from `proposal` (probabilities over the n examples,
        float64) and its other B - 1 members as the sampler draws them (i.i.d. uniform with
        replacement; a uniform subset of the other n - 1 without). For either sampler the
        proposal probability of a batch is (sum of its members' q) times its own probability
        divided by B/n, so the weight is B / (n * sum_{i in b} q_i): at most 1/min(n q).
        """
        batches, weights = draw_weighted_runs([self], count, proposal.unsqueeze(0), [generator])
        return batches[0], weights[0]

    def distinct_count(self) -> int | None:
        kind = "without_replacement" if self.kind == "reshuffle" else self.kind
        return distinct_batches(self.n, self.batch_size, kind)

    def enumerate_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every distinct batch (count, B) and its weight count * P(b), float64 (mean(w f) = E f).

        Without replacement the C(n, B) subsets are equally likely (weights 1). With
        replacement a batch is a multiset, with probability B! / (prod of multiplicities!) / n^B.
        """
        count = self.distinct_count()
        if count is None or count > MAX_EXACT_BATCHES:
            raise ValueError(f"{count or 'too many'} distinct batches: too many to enumerate")
        n, b = self.n, self.batch_size
        if b == 1:
            return torch.arange(n).unsqueeze(1), torch.ones(n, dtype=torch.float64)
        if self.kind != "with_replacement":
            combos = torch.tensor(list(itertools.combinations(range(n), b)), dtype=torch.long)
            return combos, torch.ones(len(combos), dtype=torch.float64)
        multisets = list(itertools.combinations_with_replacement(range(n), b))
        log_p = [_log_multinomial(m) - b * math.log(n) for m in multisets]
        weights = torch.tensor(log_p, dtype=torch.float64).exp() * len(multisets)
        return torch.tensor(multisets, dtype=torch.long), weights


def draw_weighted_runs(
    samplers: Sequence[BatchSampler], count: int, proposals: torch.Tensor, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchSampler.draw_weighted for R runs of one slice (same n, B and kind), each from its own
    proposal (R, n) and generator: (R, count, B) batches and (R, count) weights.

    Each run's generator is called as draw_weighted calls it, so its batches are those it draws
    alone; only the work that needs no random numbers is batched across the runs.
    """
    first = samplers[0]
    n, b, runs = first.n, first.batch_size, len(samplers)
    assert all((s.n, s.batch_size, s.kind) == (n, b, first.kind) for s in samplers), "one slice's samplers"
    special = torch.stack(
        [torch.multinomial(proposals[i], count, replacement=True, generator=g) for i, g in enumerate(generators)]
    )  # (R, count)
    if b == 1:
        others = torch.empty(runs, count, 0, dtype=torch.long)
    elif first.kind == "with_replacement":
        others = torch.stack([torch.randint(n, (count, b - 1), generator=g) for g in generators])
    else:  # one run's (count, n) keys at a time: all runs' at once would take R times the memory
        others = torch.stack([_others_without(special[i], n, b, g) for i, g in enumerate(generators)])
    batches = torch.cat([special.unsqueeze(-1), others], dim=-1)
    weights = b / (n * proposals.gather(1, batches.view(runs, -1)).view(runs, count, b).sum(dim=-1))
    return batches, weights


def _others_without(special: torch.Tensor, n: int, b: int, generator: torch.Generator) -> torch.Tensor:
    """B - 1 distinct members besides each batch's `special` one (count,), uniformly: (count, B - 1)."""
    keys = torch.rand(len(special), n, generator=generator)
    keys[torch.arange(len(special)), special] = 2.0  # never among the others: keys are < 1
    return keys.argsort(dim=1)[:, : b - 1]


def _log_multinomial(members: tuple[int, ...]) -> float:
    """log of B! / prod_j c_j! for the multiplicities c_j of a sorted multiset."""
    total = math.lgamma(len(members) + 1)
    for _, group in itertools.groupby(members):
        total -= math.lgamma(len(list(group)) + 1)
    return total
