"""Sweeps: a grid over spec fields by dotted path, expanded into one RunSpec per cell.

A value that is a mapping, swept over a field that holds a sub-object, is merged into the base's
sub-object key by key (recursively), never put in its place: sweeping `optimizer` over
`[{"lr": 1}, {"lr": 10}]` changes the step size and keeps the base's batch size and steps. Any
other value replaces the field. Two paths of one sweep may not overlap (`optimizer` and
`optimizer.lr`): which would win is refused rather than guessed.
"""

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


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key; a mapping meeting a mapping merges in turn."""
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        out[key] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else copy.deepcopy(value)
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = data
    for part in parts[:-1]:
        if not isinstance(target, dict) or part not in target:
            raise SweepError(f"sweep path {dotted!r}: no field {part!r}")
        target = target[part]
    if not isinstance(target, dict) or parts[-1] not in target:
        raise SweepError(f"sweep path {dotted!r}: no field {parts[-1]!r}")
    old = target[parts[-1]]
    target[parts[-1]] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def _check_overlap(paths: list[str]) -> None:
    for path in paths:
        for other in paths:
            if other != path and other.startswith(path + "."):
                raise SweepError(
                    f"sweep paths {path!r} and {other!r} overlap: sweep {other!r} alone, or put it in {path!r}'s values"
                )


def _label(path: str, value: Any) -> list[str]:
    """'lr=10' for a swept field; one such item per leaf of a merged mapping."""
    if isinstance(value, dict) and value:
        return [item for key, sub in value.items() for item in _label(f"{path}.{key}", sub)]
    return [f"{path.split('.')[-1]}={value}"]


def sweep_size(sweep: Sweep | None) -> int:
    size = 1
    for values in (sweep or {}).values():
        size *= len(values)
    return size


def expand_sweep(
    base: RunSpec | dict[str, Any], sweep: Sweep | None = None, limit: int | None = None
) -> list[tuple[dict[str, Any], RunSpec]]:
    """[(swept parameters, spec)] for every cell of the grid, in row-major order.

    Each cell is validated as a whole RunSpec, so a bad value names its field. A mapping swept
    over a sub-object merges into the base's (see the module's docstring).
    """
    base_spec = base if isinstance(base, RunSpec) else RunSpec.model_validate(base)
    sweep = sweep or {}
    for path, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep path {path!r} needs a non-empty list of values")
    _check_overlap(list(sweep))
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
            suffix = ",".join(item for p, v in params.items() for item in _label(p, v))
            data["name"] = f"{base_spec.name}[{suffix}]"
        cells.append((params, RunSpec.model_validate(data)))
    return cells


def spec_hash(spec: RunSpec) -> str:
    """A stable hash of everything that determines a run's result (the name excluded)."""
    data = spec.model_dump(mode="json")
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
