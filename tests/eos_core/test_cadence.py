"""The summary does not depend on the drift cadence beyond the resolution it states (issue 7, item 4).

One real trajectory (the iterates do not depend on the instruments: separate random streams),
measured with drift_every 1, 5 and 25.
"""

from __future__ import annotations

import itertools

import pytest

from eos_core import RunSpec, RunSummary, train

CADENCES = (1, 5, 25)
pytestmark = pytest.mark.slow  # three 600-step runs, one measuring the drift at every step


def _spec(drift_every: int) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 0,
            "dataset": {
                "kind": "gaussian_mixture",
                "classes": 5,
                "per_class": 50,
                "dim": 20,
                "separation": 1,
                "noise": 1,
            },
            "model": {"kind": "linear"},
            "optimizer": {"lr": 1000, "batch_size": 4, "steps": 600},
            "instrument": {"every": 1, "drift_every": drift_every, "sharpness_every": 0, "test_every": 0},
        }
    )


@pytest.fixture(scope="module")
def summaries() -> dict[int, RunSummary]:
    out = {}
    for c in CADENCES:
        result = train(_spec(c))
        out[c] = result.summary
    return out


def test_cadence_is_stated(summaries: dict[int, RunSummary]) -> None:
    for c, s in summaries.items():
        assert s.drift_cadence_steps == c and s.window_steps == max(100, 4 * c)


def test_entrances_agree_within_the_stated_resolution(summaries: dict[int, RunSummary]) -> None:
    for a, b in itertools.combinations(CADENCES, 2):
        sa, sb = summaries[a], summaries[b]
        assert sa.entrance_step is not None and sb.entrance_step is not None
        resolution = max(sa.window_steps or 0, sb.window_steps or 0, 2 * a, 2 * b)
        assert abs(sa.entrance_step - sb.entrance_step) <= resolution, (a, b, sa.entrance_step, sb.entrance_step)


@pytest.mark.parametrize("field", ["fraction_in_S", "fraction_in_S_after_entrance"])
def test_fractions_in_s_agree_within_their_intervals(summaries: dict[int, RunSummary], field: str) -> None:
    """The finer cadence sees more of the same steps: the coarser one's interval must cover its value."""
    for a, b in itertools.combinations(CADENCES, 2):  # a < b: a measures more often
        va, vb = summaries[a][field], summaries[b][field]
        ia, ib = summaries[a][f"{field}_interval"], summaries[b][f"{field}_interval"]
        assert ib[0] <= va <= ib[1], (field, a, b, va, ia, vb, ib)
        assert max(ia[0], ib[0]) <= min(ia[1], ib[1]), (field, a, b, ia, ib)  # and the intervals overlap


def test_exit_rates_are_given_only_where_resolved(summaries: dict[int, RunSummary]) -> None:
    for s in summaries.values():
        assert s.exits_resolved is not None
        assert (s.exit_rate_per_1000 is None) == (not s.exits_resolved)
        if not s.exits_resolved:
            assert s.exits_note is not None and "not resolved at this cadence" in s.exits_note
    assert summaries[1].exits_resolved  # every step measured: nothing is too short to see
