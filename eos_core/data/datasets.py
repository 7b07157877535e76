"""Load a dataset as the spec asks: draw or read it, subset it, scale inputs to max norm 1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import DatasetSpec
from .files import load_cifar10, load_idx_dataset
from .separability import check_separable

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Dataset:
    """Inputs as float64 (n, d) scaled so that max_i ||x_i|| = 1 on the training set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    info: dict[str, Any] = field(default_factory=dict)


def gaussian_mixture(spec: DatasetSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c: N(mu_c, noise^2 I) with mu_c = separation * g_c, g_c ~ N(0, I_d) drawn from the seed."""
    means = rng.standard_normal((spec.classes, spec.dim)) * spec.separation
    x = means.repeat(spec.per_class, axis=0)
    x = x + rng.standard_normal(x.shape) * spec.noise
    y = np.arange(spec.classes).repeat(spec.per_class)
    return x, y


def _split(x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> Arrays:
    order = rng.permutation(len(x))
    n_test = round(len(x) * fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits(spec: DatasetSpec, rng: np.random.Generator) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _split(np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target), spec.test_fraction, rng)


def _mnist1d(spec: DatasetSpec, seed: int) -> Arrays:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return (
        np.asarray(data["x"], dtype=np.float64),
        np.asarray(data["y"]),
        np.asarray(data["x_test"], dtype=np.float64),
        np.asarray(data["y_test"]),
    )


def _raw_arrays(spec: DatasetSpec, seed: int, rng: np.random.Generator) -> Arrays:
    if spec.kind == "gaussian_mixture":
        x, y = gaussian_mixture(spec, rng)
        if spec.class_subset is not None:  # before the split, so sizes match spec.known_train_size
            keep = np.isin(y, spec.class_subset)
            x, y = x[keep], y[keep]
        return _split(x, y, spec.test_fraction, rng)
    if spec.kind == "digits":
        return _digits(spec, rng)
    if spec.kind == "mnist1d":
        return _mnist1d(spec, seed)
    if spec.kind in ("mnist", "fashion_mnist"):
        xtr, ytr, xte, yte = load_idx_dataset(spec.kind)
    else:
        xtr, ytr, xte, yte = load_cifar10()
    flat = (xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1))
    return (
        flat[0].astype(np.float64) / 255.0,
        ytr.astype(np.int64),
        flat[1].astype(np.float64) / 255.0,
        yte.astype(np.int64),
    )


def _keep_classes(x: np.ndarray, y: np.ndarray, subset: list[int]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(y, subset)
    relabel = {c: i for i, c in enumerate(subset)}
    return x[mask], np.array([relabel[int(c)] for c in y[mask]], dtype=np.int64)


def _take(x: np.ndarray, y: np.ndarray, count: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if count is None or count >= len(x):
        return x, y
    keep = np.sort(rng.choice(len(x), size=count, replace=False))
    return x[keep], y[keep]


def load_dataset(spec: DatasetSpec, seed: int, check_separability: bool | None = None) -> Dataset:
    """The spec's dataset. Separability is checked for small problems unless told otherwise."""
    data_seed = spec.data_seed if spec.data_seed is not None else seed
    rng = np.random.default_rng(data_seed)
    xtr, ytr, xte, yte = _raw_arrays(spec, data_seed, rng)
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    classes = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    if spec.class_subset is not None:
        missing = [c for c in spec.class_subset if c >= classes]
        if missing:
            raise ValueError(f"dataset.class_subset: {spec.kind} has no class {missing[0]} (it has {classes})")
        xtr, ytr = _keep_classes(xtr, ytr, spec.class_subset)
        xte, yte = _keep_classes(xte, yte, spec.class_subset)
        classes = len(spec.class_subset)
    xtr, ytr = _take(xtr, ytr, spec.n_train, rng)
    xte, yte = _take(xte, yte, spec.n_test, rng)
    if len(xtr) == 0:
        raise ValueError(f"dataset: {spec.kind} with these settings has no training points")
    scale = float(np.linalg.norm(xtr, axis=1).max())
    if scale == 0:
        raise ValueError("dataset: every training input is zero")
    xtr, xte = xtr / scale, xte / scale
    info: dict[str, Any] = {
        "kind": spec.kind,
        "n_train": len(xtr),
        "n_test": len(xte),
        "dim": int(xtr.shape[1]),
        "classes": classes,
        "input_scale": scale,
        "R": float(np.linalg.norm(xtr, axis=1).max()),
        "class_counts": np.bincount(ytr, minlength=classes).tolist(),
    }
    if check_separability is None:
        # The LP is quick for small low-dimensional samples; at image dimensions it takes minutes.
        small = len(xtr) * classes * xtr.shape[1] <= 200_000 and xtr.shape[1] <= 128
        check_separability = spec.kind == "gaussian_mixture" or small
    if check_separability:
        info.update(check_separable(xtr, ytr, classes).as_dict())
    else:
        info.update({"separable": None, "margin_estimate": None, "separability_note": "not checked"})
    return Dataset(xtr, ytr, xte, yte, classes, info)
