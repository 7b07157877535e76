"""Stored metric ids are frozen: the table only grows, whatever the order of the engine's columns."""

from __future__ import annotations

import numpy as np

from eos_core.trace import COLUMNS
from store.trace_codec import METRIC_IDS, SUMMARY, encode, metric_ids

# The table as shipped: rows on disk hold these numbers. Add new metrics here, never change a line.
SHIPPED = {
    "step": 0, "loss": 1, "acc": 2, "batch_loss": 3, "grad_norm": 4, "batch_grad_norm": 5,
    "drift": 6, "drift_se": 7, "drift_samples_used": 8, "rel_drift": 9, "stable": 10,
    "stable_p": 11, "quad_drift": 12, "sharpness": 13, "sharpness_residual": 14, "hvps": 15,
    "batch_sharpness": 16, "eta_loss": 17, "margin": 18, "param_norm": 19, "test_loss": 20,
    "test_acc": 21,
}  # fmt: skip


def test_no_shipped_id_changes_or_disappears() -> None:
    assert {name: METRIC_IDS.get(name) for name in SHIPPED} == SHIPPED


def test_every_column_has_its_own_id_below_the_summary_range() -> None:
    assert set(COLUMNS) <= set(METRIC_IDS)
    ids = list(METRIC_IDS.values())
    assert len(set(ids)) == len(ids) and all(0 <= i < SUMMARY for i in ids)


def test_rows_are_keyed_by_the_frozen_id_not_the_column_position() -> None:
    """A chunk's `sharpness` is stored under id 13, and metric_ids follows trace order."""
    chunk = {name: np.full(3, np.nan) for name in COLUMNS}
    chunk["step"] = np.arange(3)
    chunk["sharpness"] = np.array([1.0, 2.0, 3.0])
    stored = {row[1] for row in encode(7, chunk, np.arange(3), 4096)}
    assert stored == {0, SUMMARY, METRIC_IDS["sharpness"], SUMMARY + METRIC_IDS["sharpness"]}
    assert metric_ids(["test_acc", "loss"]) == [METRIC_IDS["loss"], METRIC_IDS["test_acc"]]
