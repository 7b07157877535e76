"""Sweeps: dotted paths, whole sub-objects merged into the base, overlapping paths refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from eos_core.sweep import SweepError, expand_sweep, merged

BASE: dict[str, Any] = {
    "name": "base",
    "device": "cpu",
    "dataset": {"kind": "gaussian_mixture", "classes": 3, "per_class": 8, "dim": 4},
    "model": {"kind": "linear"},
    "optimizer": {"lr": 0.5, "batch_size": 4, "steps": 1},
}


def test_a_dotted_path_sets_one_field() -> None:
    cells = expand_sweep(BASE, {"optimizer.lr": [1.0, 10.0]})
    assert [p for p, _ in cells] == [{"optimizer.lr": 1.0}, {"optimizer.lr": 10.0}]
    assert [s.optimizer.lr for _, s in cells] == [1.0, 10.0]
    assert all(s.optimizer.steps == 1 and s.optimizer.batch_size == 4 for _, s in cells)
    assert [s.name for _, s in cells] == ["base[lr=1.0]", "base[lr=10.0]"]


def test_a_whole_sub_object_merges_into_the_base_instead_of_replacing_it() -> None:
    cells = expand_sweep(BASE, {"optimizer": [{"lr": 1}, {"lr": 3, "batch_size": 2}]})
    first, second = (spec for _, spec in cells)
    # The base's other fields stay: 1 step (not the default 5000), batch 4 where it was not swept.
    assert (first.optimizer.lr, first.optimizer.batch_size, first.optimizer.steps) == (1, 4, 1)
    assert (second.optimizer.lr, second.optimizer.batch_size, second.optimizer.steps) == (3, 2, 1)
    assert cells[0][0] == {"optimizer": {"lr": 1}}  # the params record what was swept
    assert [s.name for _, s in cells] == ["base[lr=1]", "base[lr=3,batch_size=2]"]


def test_the_top_level_and_nested_mappings_merge_recursively() -> None:
    (_, spec), *_ = expand_sweep(BASE, {"dataset": [{"dim": 6}]})
    assert (spec.dataset.kind, spec.dataset.classes, spec.dataset.per_class, spec.dataset.dim) == (
        "gaussian_mixture",
        3,
        8,
        6,
    )
    assert merged({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}}) == {"a": {"b": 1, "c": 5}, "d": 3}


def test_an_unknown_key_in_a_swept_sub_object_names_the_field() -> None:
    with pytest.raises(ValidationError, match="lrr"):
        expand_sweep(BASE, {"optimizer": [{"lrr": 1}]})


def test_overlapping_paths_are_refused() -> None:
    with pytest.raises(SweepError, match=r"'optimizer' and 'optimizer\.lr' overlap"):
        expand_sweep(BASE, {"optimizer": [{"lr": 1}], "optimizer.lr": [2]})


def test_a_scalar_over_a_sub_object_is_still_refused_by_validation() -> None:
    with pytest.raises(ValidationError, match="optimizer"):
        expand_sweep(BASE, {"optimizer": [3]})


def test_unknown_paths_and_empty_values_are_refused() -> None:
    with pytest.raises(SweepError, match="no field 'lrr'"):
        expand_sweep(BASE, {"optimizer.lrr": [1]})
    with pytest.raises(SweepError, match="non-empty list"):
        expand_sweep(BASE, {"optimizer.lr": []})
