"""load_dataset on the offline datasets: the synthetic mixture, scikit-learn's digits and mnist1d."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from eos_core.data import Dataset, load_dataset
from eos_core.data.datasets import gaussian_mixture
from eos_core.spec import DatasetSpec, RunSpec, known_train_size


def mixture(**fields: Any) -> DatasetSpec:
    return DatasetSpec(kind="gaussian_mixture", **fields)


def assert_same(a: Dataset, b: Dataset) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.info == b.info


def assert_unit_scaled(data: Dataset) -> None:
    assert data.x_train.dtype == np.float64
    assert abs(float(np.linalg.norm(data.x_train, axis=1).max()) - 1.0) <= 1e-12
    assert abs(data.info["R"] - 1.0) <= 1e-12
    assert data.info["input_scale"] > 0


# --- gaussian mixture ------------------------------------------------------------------------------


def test_gaussian_mixture_is_reproducible_per_seed() -> None:
    spec = mixture(classes=3, per_class=20, dim=5)
    first, again = load_dataset(spec, seed=0), load_dataset(spec, seed=0)
    assert_same(first, again)
    other = load_dataset(spec, seed=1)
    assert not np.array_equal(other.x_train * other.info["input_scale"], first.x_train * first.info["input_scale"])


def test_data_seed_overrides_the_run_seed() -> None:
    spec = mixture(classes=3, per_class=20, dim=5, data_seed=7)
    assert_same(load_dataset(spec, seed=0), load_dataset(spec, seed=1))
    plain = load_dataset(mixture(classes=3, per_class=20, dim=5), seed=7)
    assert_same(load_dataset(spec, seed=0), plain)


def test_gaussian_mixture_draw_follows_the_formula() -> None:
    # noise 0: every point of class c is exactly mu_c = separation * g_c, so doubling separation doubles x.
    base = DatasetSpec(classes=4, per_class=3, dim=6, noise=0.0, separation=1.0)
    x1, y1 = gaussian_mixture(base, np.random.default_rng(3))
    x2, y2 = gaussian_mixture(base.model_copy(update={"separation": 2.0}), np.random.default_rng(3))
    np.testing.assert_array_equal(y1, np.repeat(np.arange(4), 3))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(x2, 2.0 * x1, rtol=1e-15)
    for c in range(4):
        rows = x1[y1 == c]
        np.testing.assert_array_equal(rows, np.broadcast_to(rows[0], rows.shape))
    assert len({tuple(x1[y1 == c][0]) for c in range(4)}) == 4
    # with noise, the class means are near mu_c: the spread around them is sigma
    noisy = base.model_copy(update={"noise": 0.5, "per_class": 400})
    x, _y = gaussian_mixture(noisy, np.random.default_rng(3))
    means, _ = gaussian_mixture(noisy.model_copy(update={"noise": 0.0}), np.random.default_rng(3))
    residual = x - means
    assert residual.std() == pytest.approx(0.5, rel=0.05)
    assert np.abs(residual.mean(axis=0)).max() < 0.1


@pytest.mark.parametrize(
    ("classes", "per_class", "test_fraction", "n_train", "class_subset"),
    [
        (5, 100, 0.2, None, None),
        (4, 25, 0.3, None, None),
        (3, 10, 0.0, None, None),
        (5, 40, 0.25, 50, None),
        (6, 20, 0.2, None, [5, 1, 3]),
    ],
)
def test_gaussian_mixture_sizes(
    classes: int, per_class: int, test_fraction: float, n_train: int | None, class_subset: list[int] | None
) -> None:
    spec = mixture(
        classes=classes,
        per_class=per_class,
        dim=4,
        test_fraction=test_fraction,
        n_train=n_train,
        class_subset=class_subset,
    )
    data = load_dataset(spec, seed=0)
    kept = len(class_subset) if class_subset else classes
    total = kept * per_class
    n_test = round(total * test_fraction)
    expected_train = total - n_test if n_train is None else min(n_train, total - n_test)
    assert len(data.x_train) == len(data.y_train) == expected_train == data.info["n_train"]
    assert len(data.x_test) == len(data.y_test) == n_test == data.info["n_test"]
    assert data.classes == kept == data.info["classes"]
    assert data.x_train.shape[1] == 4 == data.info["dim"]
    assert set(np.unique(np.concatenate([data.y_train, data.y_test])).tolist()) == set(range(kept))
    assert sum(data.info["class_counts"]) == expected_train
    assert data.info["class_counts"] == np.bincount(data.y_train, minlength=kept).tolist()
    # the spec's own arithmetic (used to validate batch sizes) agrees with what is loaded
    assert known_train_size(RunSpec(dataset=spec, optimizer={"batch_size": 1})) == expected_train
    assert_unit_scaled(data)


def test_test_split_is_scaled_by_the_training_scale() -> None:
    spec = mixture(classes=3, per_class=30, dim=4)
    data = load_dataset(spec, seed=0)
    x, _ = gaussian_mixture(spec, np.random.default_rng(0))
    original = np.sort(np.linalg.norm(x, axis=1))
    reloaded = np.linalg.norm(np.vstack([data.x_train, data.x_test]), axis=1) * data.info["input_scale"]
    np.testing.assert_allclose(np.sort(reloaded), original, rtol=1e-12)


def test_gaussian_mixture_reports_separability() -> None:
    separable = load_dataset(mixture(classes=5, per_class=100, dim=20, separation=3.0, noise=1.0), seed=0)
    assert separable.info["separable"] is True
    assert separable.info["margin_estimate"] > 0
    assert "separability_note" in separable.info
    # Means on top of each other and a few dimensions: many points, no separating W.
    mixed = load_dataset(mixture(classes=3, per_class=60, dim=2, separation=0.01, noise=1.0), seed=0)
    assert mixed.info["separable"] is False
    assert mixed.info["margin_estimate"] is None


def test_separability_check_can_be_turned_off() -> None:
    data = load_dataset(mixture(classes=3, per_class=10, dim=3), seed=0, check_separability=False)
    assert data.info["separable"] is None and data.info["margin_estimate"] is None


def test_class_subset_beyond_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="class_subset"):
        load_dataset(DatasetSpec(kind="digits", class_subset=[3, 10]), seed=0)


# --- digits and mnist1d ----------------------------------------------------------------------------


def test_digits_loads_offline() -> None:
    data = load_dataset(DatasetSpec(kind="digits"), seed=0)
    assert data.x_train.shape[1] == 64 and data.x_test.shape[1] == 64
    assert data.classes == 10
    assert len(data.x_train) + len(data.x_test) == 1797  # the whole bundled set
    assert len(data.x_test) == round(1797 * 0.2)
    assert set(np.unique(data.y_train).tolist()) == set(range(10))
    assert_unit_scaled(data)
    pixels = data.x_train * data.info["input_scale"]  # back to the 0..16 grey levels
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-9)
    assert pixels.min() >= 0 and pixels.max() == pytest.approx(16)


def test_digits_class_subset_and_n_train() -> None:
    data = load_dataset(DatasetSpec(kind="digits", class_subset=[3, 8], n_train=100), seed=0)
    assert data.classes == 2 and len(data.x_train) == 100
    assert set(np.unique(data.y_train).tolist()) == {0, 1}
    assert_unit_scaled(data)


@pytest.mark.slow
def test_mnist1d_loads_offline() -> None:
    data = load_dataset(DatasetSpec(kind="mnist1d"), seed=0)
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.info["dim"] == 40
    assert data.classes == 10
    assert set(np.unique(data.y_train).tolist()) == set(range(10))
    assert_unit_scaled(data)
    assert np.isfinite(data.x_test).all()
