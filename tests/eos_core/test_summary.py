"""RunSummary's validation: numbers, non-finite values and unknown keys."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from eos_core.summary import RunSummary


class _Float(float):
    pass


def test_numbers_become_python_floats_and_non_finite_ones_none() -> None:
    cases = [
        (1.5, 1.5),
        (math.inf, None),
        (-math.inf, None),
        (math.nan, None),
        (np.float64(2.5), 2.5),
        (np.float64(np.inf), None),
        (np.float32(0.1), float(np.float32(0.1))),
        (np.int64(3), 3.0),
        (3, 3.0),
        (_Float(math.inf), None),
        (_Float(0.5), 0.5),
        (None, None),
    ]
    for given, expected in cases:
        s = RunSummary.model_validate({"final_loss": given, "rate_slope_interval": [given, 1.0]})
        assert s.final_loss == expected or (expected is None and s.final_loss is None), given
        assert type(s.final_loss) is (float if expected is not None else type(None)), given
        assert s.rate_slope_interval == [s.final_loss, 1.0]


def test_a_fresh_summary_validates_as_any_mapping_and_is_not_modified() -> None:
    data = {
        "final_loss": 0.5,
        "rate_C": math.inf,
        "sharpness_edge": {"measured": 2, "fraction_above": np.float64(0.5)},
        "best_iterate_curve": {"step": [0, 1], "loss": [1.0, math.nan]},
        "timing": {"loop_seconds": 1.0, "slice_runs": 2},
        "legacy": {"old": math.nan},
    }
    copy = dict(data)
    fresh = RunSummary.model_validate(data)
    assert data == copy and data["rate_C"] is copy["rate_C"]
    assert fresh == RunSummary.model_validate(MappingProxyType(data))
    assert fresh.rate_C is None
    assert fresh.best_iterate_curve is not None and fresh.best_iterate_curve.loss == [1.0, None]
    assert fresh.sharpness_edge is not None and type(fresh.sharpness_edge.fraction_above) is float


def test_unknown_keys_go_to_legacy_from_a_dict_and_from_any_mapping() -> None:
    data = {"final_loss": 0.5, "n_exits": 3, "legacy": {"a": 1}}
    for given in (data, MappingProxyType(data)):
        s = RunSummary.model_validate(given)
        assert s.final_loss == 0.5 and s.legacy == {"a": 1, "n_exits": 3}
    assert data == {"final_loss": 0.5, "n_exits": 3, "legacy": {"a": 1}}
