"""Sweep slices: runs that can be trained as one stacked computation (eos_core.training.train_slice).

Runs share a slice when they differ only in their name, seed and step size: the same dataset
kind and shape, model, batch size, sampler, dtype, device, step count and instruments. Each
run keeps its own random streams (data draw, initialisation, batches, measurement), so its
trajectory and measurements are those it has when trained alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from .resources import GIB, estimate
from .spec import RunSpec

# Runs in one slice at most (a worker's setting may lower it).
DEFAULT_SLICE_RUNS = 64
# A slice's memory estimate at most, GiB (the sum of its runs' estimates: shared data counted once each).
DEFAULT_SLICE_MEMORY_GIB = 4.0


def slice_key(spec: RunSpec) -> str:
    """Runs with equal keys can share a slice: everything but the name, the seed and the step size."""
    data = spec.model_dump(mode="json")
    data.pop("name", None)
    data.pop("seed", None)
    data["optimizer"].pop("lr", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_slices(
    specs: Sequence[RunSpec], max_runs: int = DEFAULT_SLICE_RUNS, max_memory_gib: float = DEFAULT_SLICE_MEMORY_GIB
) -> list[list[int]]:
    """Indices of `specs` grouped into slices, in order of first appearance.

    A slice holds runs of one key, at most `max_runs` of them and at most `max_memory_gib`
    by the runs' estimates (a run alone is always a slice, whatever its estimate).
    """
    if max_runs < 1:
        raise ValueError("a slice holds at least one run")
    open_slices: dict[str, list[int]] = {}
    memory: dict[str, float] = {}
    order: list[list[int]] = []
    for i, spec in enumerate(specs):
        key = slice_key(spec)
        need = estimate(spec).memory_bytes / GIB
        current = open_slices.get(key)
        if current is not None and (len(current) >= max_runs or memory[key] + need > max_memory_gib):
            current = None
        if current is None:
            current = open_slices[key] = []
            memory[key] = 0.0
            order.append(current)
        current.append(i)
        memory[key] += need
    return [group for group in order if group]
