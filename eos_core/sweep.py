"""Sweeps: a grid over spec fields by dotted path, expanded into one RunSpec per cell."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from typing import Any

from .spec import RunSpec

Sweep = dict[str, list[Any]]


class SweepError(ValueError):
    """A sweep names a field that does not exist, has no values, or grows too large."""


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = data
    for part in parts[:-1]:
        if not isinstance(target, dict) or part not in target:
            raise SweepError(f"sweep path {dotted!r}: no field {part!r}")
        target = target[part]
    if not isinstance(target, dict) or parts[-1] not in target:
        raise SweepError(f"sweep path {dotted!r}: no field {parts[-1]!r}")
    target[parts[-1]] = value


def sweep_size(sweep: Sweep | None) -> int:
    size = 1
    for values in (sweep or {}).values():
        size *= len(values)
    return size


def expand_sweep(
    base: RunSpec | dict[str, Any], sweep: Sweep | None = None, limit: int | None = None
) -> list[tuple[dict[str, Any], RunSpec]]:
    """[(swept parameters, spec)] for every cell of the grid, in row-major order.

    Each cell is validated as a whole RunSpec, so a bad value names its field.
    """
    base_spec = base if isinstance(base, RunSpec) else RunSpec.model_validate(base)
    sweep = sweep or {}
    for path, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep path {path!r} needs a non-empty list of values")
    size = sweep_size(sweep)
    if limit is not None and size > limit:
        raise SweepError(f"the sweep expands to {size} runs, more than the limit of {limit}")
    full = base_spec.model_dump(mode="json")
    paths = list(sweep)
    cells = []
    for combo in itertools.product(*(sweep[p] for p in paths)):
        data = copy.deepcopy(full)
        params = dict(zip(paths, combo, strict=True))
        for path, value in params.items():
            _set_path(data, path, value)
        if params:
            suffix = ",".join(f"{p.split('.')[-1]}={v}" for p, v in params.items())
            data["name"] = f"{base_spec.name}[{suffix}]"
        cells.append((params, RunSpec.model_validate(data)))
    return cells


def spec_hash(spec: RunSpec) -> str:
    """A stable hash of everything that determines a run's result (the name excluded)."""
    data = spec.model_dump(mode="json")
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
