"""The rate's bootstrap and the regimes' intervals against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from eos_core.rate import RATE_BLOCKS, RATE_RESAMPLES, envelope_slope, upper_envelope
from eos_core.regimes import LEVEL, fraction_interval, poisson_rate


def _bootstrap_by_concatenation(t: np.ndarray, loss: np.ndarray) -> list[float]:
    """The block bootstrap as the module doc states it: resampled blocks concatenated and refitted."""
    x, y = np.log(t.astype(np.float64)), np.log(upper_envelope(loss))
    edges = np.linspace(x[0], x[-1], RATE_BLOCKS + 1)
    block = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, RATE_BLOCKS - 1)
    members = [m for m in (np.flatnonzero(block == b) for b in range(RATE_BLOCKS)) if len(m)]
    picks = np.random.default_rng(0).integers(0, len(members), (RATE_RESAMPLES, len(members)))
    slopes = []
    for pick in picks:
        points = np.concatenate([members[b] for b in pick])
        if np.ptp(x[points]) > 0:
            slopes.append(np.polyfit(x[points], y[points], 1)[0])
    a = (1 - LEVEL) / 2
    return [float(np.quantile(slopes, a)), float(np.quantile(slopes, 1 - a))]


@pytest.mark.parametrize("rows", [12, 41, 400])
def test_envelope_slope_interval_is_the_concatenated_block_bootstrap(rows: int) -> None:
    rng = np.random.default_rng(rows)
    t = np.unique(np.geomspace(1, 5000, rows).round()).astype(np.int64)
    loss = 3.0 / t * np.exp(0.4 * rng.standard_normal(len(t)))
    slope, interval = envelope_slope(t, loss)
    x, y = np.log(t.astype(np.float64)), np.log(upper_envelope(loss))
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    assert interval == pytest.approx(_bootstrap_by_concatenation(t, loss), rel=1e-9)


def test_envelope_slope_interval_with_empty_and_one_point_blocks() -> None:
    """Dense early steps, then a few far apart: empty blocks between, and blocks of one point."""
    t = np.concatenate([np.arange(1, 200), [10**5, 3 * 10**5, 10**6]])
    loss = 3.0 / t * np.exp(0.4 * np.random.default_rng(1).standard_normal(len(t)))
    _, interval = envelope_slope(t, loss)
    assert interval == pytest.approx(_bootstrap_by_concatenation(t, loss), rel=1e-9)


def test_poisson_rate_is_garwoods_interval() -> None:
    a = (1 - LEVEL) / 2
    for count in (0, 1, 4, 37):
        rate, low, high = poisson_rate(count, 2500.0)  # type: ignore[misc]
        scale = 1000.0 / 2500.0
        assert rate == pytest.approx(count * scale)
        expected_low = stats.chi2.ppf(a, 2 * count) / 2 * scale if count else 0.0
        assert low == pytest.approx(expected_low, rel=1e-12, abs=1e-300)
        assert high == pytest.approx(stats.chi2.ppf(1 - a, 2 * count + 2) / 2 * scale, rel=1e-12)


def test_fraction_interval_is_clopper_pearson_on_the_effective_size() -> None:
    inside = np.array([1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0], dtype=bool)  # r clips to 0: n_eff = n
    frac, low, high = fraction_interval(inside, np.ones(len(inside)))  # type: ignore[misc]
    k, n, a = int(inside.sum()), len(inside), (1 - LEVEL) / 2
    assert frac == pytest.approx(k / n)
    assert low == pytest.approx(stats.beta.ppf(a, k, n - k + 1), rel=1e-12)
    assert high == pytest.approx(stats.beta.ppf(1 - a, k + 1, n - k), rel=1e-12)
